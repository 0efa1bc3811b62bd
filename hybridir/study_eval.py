"""The study's scores on equal terms: per-query AP on full and on size-matched pools, with chance.

In-domain and out-of-domain sets differ in pool size (XQuAD-R's held-out articles ~250 candidates
per language, MLQA-R ~2,900), and mAP falls with pool size alone. So each setting is also scored
on matched pools: for every query, the candidates of each pool language are subsampled to a common
size, its relevant candidates always kept; several seeded draws, per-query AP averaged over draws.
Every mAP comes with its chance value: a random ranking's expected AP for that query's pool size
and number of relevant candidates, computed exactly (study_stats.expected_random_average_precision).

Ties rank the candidate listed first higher (a deterministic order, not in a relevant one's
favour). Groups: a language (mono, multi) or `x-y` (cross).
"""
from typing import Mapping, Sequence

import numpy as np

from hybridir import evaluate
from hybridir import study_stats

SETTINGS = ("monolingual", "cross_lingual", "multilingual")
_CHUNK = 64  # Queries compared at once against a pool (bounds memory on large pools).


def _chance(pool_size: int, num_relevant: int, cache: dict) -> float:
  key = (pool_size, num_relevant)
  if key not in cache:
    cache[key] = study_stats.expected_random_average_precision(pool_size, num_relevant)
  return cache[key]


def _pool_ap(question_emb: np.ndarray, relevant: Sequence[Sequence[int]], pool_emb: np.ndarray,
             blocks: Sequence[tuple[int, int]], pool_size: int | None, draws: int,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Per query: AP per draw [draws, Q], and pool sizes [Q]; relevant rows index the pool.

  blocks: the [start, end) rows of each language in the pool; with `pool_size`, each block is
  subsampled to that many rows per query (all its relevant rows kept), else kept whole.
  """
  num_queries = len(relevant)
  width = max(len(r) for r in relevant)
  targets = np.full((num_queries, width), -1, np.int64)
  for q, rows in enumerate(relevant):
    targets[q, :len(rows)] = rows
  valid = targets >= 0
  counts = valid.sum(axis=1)
  targets = np.where(valid, targets, targets[:, :1])  # Padding repeats a relevant row.
  ap = np.zeros((draws, num_queries))
  sizes = np.zeros(num_queries, np.int64)
  for start in range(0, num_queries, _CHUNK):
    chunk = slice(start, start + _CHUNK)
    scores = question_emb[chunk] @ pool_emb.T  # [q, C]
    chunk_targets, chunk_valid = targets[chunk], valid[chunk]
    target_scores = np.take_along_axis(scores, chunk_targets, axis=1)  # [q, R]
    for d in range(draws):
      if pool_size is None:
        kept = np.broadcast_to(np.arange(len(pool_emb)), scores.shape)
      else:
        keys = rng.random(scores.shape)
        np.put_along_axis(keys, chunk_targets, -1.0, axis=1)  # Relevant rows: always kept.
        parts = []
        for block_start, block_end in blocks:
          block = keys[:, block_start:block_end]
          if block.shape[1] > pool_size:
            parts.append(block_start + np.argpartition(block, pool_size - 1, axis=1)[:, :pool_size])
          else:
            parts.append(np.broadcast_to(np.arange(block_start, block_end), block.shape))
        kept = np.concatenate(parts, axis=1)
      kept_scores = np.take_along_axis(scores, kept, axis=1)[:, None, :]  # [q, 1, K]
      # A kept candidate outranks relevant r: a higher score, or a tie and listed first.
      above = ((kept_scores > target_scores[:, :, None])
               | ((kept_scores == target_scores[:, :, None])
                  & (kept[:, None, :] < chunk_targets[:, :, None])))
      ranks = np.where(chunk_valid, 1 + above.sum(axis=2), np.iinfo(np.int64).max)
      ranks.sort(axis=1)
      hits = np.arange(1, width + 1)[None, :]
      in_count = np.arange(width)[None, :] < counts[chunk, None]
      ap[d, chunk] = np.sum(np.where(in_count, hits / ranks, 0.0), axis=1) / counts[chunk]
      sizes[chunk] = kept.shape[1]
  return ap, sizes


def _pools(inputs: Mapping) -> dict:
  """{(setting, group): (query language, pool languages)}."""
  languages, pool_languages = sorted(inputs["questions"]), sorted(inputs["candidates"])
  pools = {}
  for x in languages:
    pools["monolingual", x] = (x, [x])
    for y in pool_languages:
      if y != x:
        pools["cross_lingual", f"{x}-{y}"] = (x, [y])
    pools["multilingual", x] = (x, pool_languages)
  return pools


def _relevant_rows(inputs: Mapping, query_language: str, pool_languages: Sequence[str]):
  """(pool ids, [(question row, relevant pool rows)] for questions with any in the pool)."""
  ids = [docid for y in pool_languages for docid in inputs["candidates"][y]]
  position = {docid: i for i, docid in enumerate(ids)}
  kept = [(q, [position[d] for d in relevant if d in position])
          for q, (_, relevant) in enumerate(inputs["questions"][query_language])]
  return ids, [(q, rows) for q, rows in kept if rows]


def score_dataset(inputs: Mapping, pool_size: int, draws: int = 5, seed: int = 0) -> dict:
  """Per-query AP above chance and mAP beside chance, every setting, on size-matched pools.

  Args:
    inputs: eval_run.encode_dataset's output (ids and embeddings per language).
    pool_size: candidates kept per pool language and query.
    draws: seeded subsamples; a query's AP is the mean over them.

  Returns:
    `{"per_query_above_chance": {setting: {group: {qid: (AP - chance) / (1 - chance)}}},
      "summary": {setting: {"map", "chance", "map_std_over_draws", "above_chance"}}}`,
    summaries macro-averaged over groups as evaluate_settings does; the spread is over draws.
  """
  rng = np.random.default_rng(seed)
  question_emb = {k: np.asarray(v, np.float32) for k, v in inputs["question_emb"].items()}
  candidate_emb = {k: np.asarray(v, np.float32) for k, v in inputs["candidate_emb"].items()}
  above = {setting: {} for setting in SETTINGS}
  collected = {setting: [] for setting in SETTINGS}  # (AP per draw, chance, above) per group.
  cache = {}
  for (setting, group), (query_language, pool_languages) in _pools(inputs).items():
    _, kept = _relevant_rows(inputs, query_language, pool_languages)
    if not kept:
      continue
    blocks, start = [], 0
    for y in pool_languages:
      blocks.append((start, start + len(inputs["candidates"][y])))
      start += len(inputs["candidates"][y])
    pool_emb = np.concatenate([candidate_emb[y] for y in pool_languages])
    ap, sizes = _pool_ap(question_emb[query_language][[q for q, _ in kept]],
                         [rows for _, rows in kept], pool_emb, blocks, pool_size, draws, rng)
    chance = np.array([_chance(int(n), len(rows), cache) for n, (_, rows) in zip(sizes, kept)])
    adjusted = (ap.mean(axis=0) - chance) / (1.0 - chance)
    qids = [inputs["questions"][query_language][q][0] for q, _ in kept]
    above[setting][group] = {qid: float(v) for qid, v in zip(qids, adjusted)}
    collected[setting].append((ap.mean(axis=1), chance.mean(), adjusted.mean()))
  summary = {}
  for setting in SETTINGS:
    if collected[setting]:
      by_draw = np.mean([c[0] for c in collected[setting]], axis=0)
      summary[setting] = {
          "map": float(by_draw.mean()), "chance": float(np.mean([c[1] for c in collected[setting]])),
          "map_std_over_draws": float(by_draw.std(ddof=1)) if len(by_draw) > 1 else 0.0,
          "above_chance": float(np.mean([c[2] for c in collected[setting]]))}
  return {"per_query_above_chance": above, "summary": summary}


def full_pool_chance(inputs: Mapping) -> dict[str, float]:
  """{setting: a random ranking's mAP on the full pools}, macro-averaged as evaluate_settings."""
  cache, out = {}, {}
  for setting in SETTINGS:
    groups = []
    for (name, _), (query_language, pool_languages) in _pools(inputs).items():
      if name != setting:
        continue
      ids, kept = _relevant_rows(inputs, query_language, pool_languages)
      if kept:
        groups.append(np.mean([_chance(len(ids), len(rows), cache) for _, rows in kept]))
    if groups:
      out[setting] = float(np.mean(groups))
  return out


def matched_pool_size(datasets: Mapping[str, Mapping]) -> int:
  """The largest size every pool language of every dataset can give: the smallest language."""
  sizes = [len(ids) for inputs in datasets.values() for ids in inputs["candidates"].values()]
  if not sizes:
    raise ValueError("no candidates in any dataset: nothing to match pool sizes to")
  return min(sizes)


NDCG_MEASURE = "ndcg_cut_10"  # MIRACL's measure (the paper's): nDCG@10.


def ndcg_above_chance(ndcg: Mapping[str, float], num_relevant: Mapping[str, int],
                      pool_size: int, cutoff: int = 10) -> dict[str, float]:
  """{qid: (nDCG@cutoff - chance) / (1 - chance)}, chance a random ranking's exact expectation
  for the query's relevant count in a pool of `pool_size` (study_stats.expected_random_ndcg);
  queries without a relevant candidate are left out."""
  out = {}
  for qid, value in ndcg.items():
    if not num_relevant.get(qid):
      continue
    chance = study_stats.expected_random_ndcg(pool_size, num_relevant[qid], cutoff)
    out[qid] = float((value - chance) / (1.0 - chance)) if chance < 1 else 0.0
  return out


def monolingual_ndcg_above_chance(inputs: Mapping) -> dict:
  """`{"monolingual": {language: {qid: nDCG@10 above chance}}}` on each language's full pool: the
  measure the study compares with MIRACL's."""
  per_query = evaluate.monolingual_per_query(**inputs, measures=[NDCG_MEASURE])
  out = {}
  for language, values in per_query.items():
    pool = set(inputs["candidates"].get(language, ()))
    relevant = {qid: sum(d in pool for d in docids)
                for qid, docids in inputs["questions"][language]}
    out[language] = ndcg_above_chance({q: m[NDCG_MEASURE] for q, m in values.items()}, relevant,
                                      len(pool))
  return {"monolingual": {language: values for language, values in out.items() if values}}
