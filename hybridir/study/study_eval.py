"""The study's scores on equal terms: per-query AP on full and on matched pools, with chance.

In-domain and out-of-domain sets differ in pool size (XQuAD-R's held-out articles ~250 candidates
per language, MLQA-R ~2,900), and mAP falls with pool size alone. So each setting is also scored
on matched pools: for every query, the candidates of each pool language are subsampled to a common
size, its relevant candidates always kept; several seeded draws, per-query AP averaged over draws.
Every mAP comes with its chance value: a random ranking's expected AP for that query's pool size
and number of relevant candidates, computed exactly (study_stats.expected_random_average_precision).

Size matching alone keeps every candidate of a small pool but a sample of a large one, so the
in-domain pools keep all the sentences of the relevant one's paragraph (~4 per query) and MLQA-R's
a tenth of them: the hard distractors, since LAReQA encodes a candidate with its paragraph. The
second matching (`score_distractor_matched`) draws each query's block of a pool language with its
relevant candidates, exactly `distractors` same-paragraph ones and random others up to a size
common to both datasets; a query with fewer same-paragraph candidates in a block is left out.

Ties rank the candidate listed first higher (a deterministic order, not in a relevant one's
favour). Groups: a language (mono, multi) or `x-y` (cross).
"""
import collections
from typing import Callable, Mapping, Sequence

import numpy as np

from hybridir.evaluation import evaluate
from hybridir.study import study_stats

SETTINGS = ("monolingual", "cross_lingual", "multilingual")
_CHUNK = 64  # Queries compared at once against a pool (bounds memory on large pools).
# The distractor count: the largest that leaves every dataset at least this share of its queries.
MIN_QUERIES_KEPT = 0.75

# prepare(chunk_targets, chunk_valid, pool rows) -> draw(rng) -> kept pool rows [q, K].
Chooser = Callable[[np.ndarray, np.ndarray, int], Callable[[np.random.Generator], np.ndarray]]


def _chance(pool_size: int, num_relevant: int, cache: dict) -> float:
  key = (pool_size, num_relevant)
  if key not in cache:
    cache[key] = study_stats.expected_random_average_precision(pool_size, num_relevant)
  return cache[key]


def _smallest_per_block(keys: np.ndarray, blocks: Sequence[tuple[int, int]],
                        pool_size: int) -> np.ndarray:
  """[q, K] rows: per block, the `pool_size` rows of smallest key (the whole block if smaller)."""
  parts = []
  for block_start, block_end in blocks:
    block = keys[:, block_start:block_end]
    if block.shape[1] > pool_size:
      parts.append(block_start + np.argpartition(block, pool_size - 1, axis=1)[:, :pool_size])
    else:
      parts.append(np.broadcast_to(np.arange(block_start, block_end), block.shape))
  return np.concatenate(parts, axis=1)


def _size_matched(blocks: Sequence[tuple[int, int]], pool_size: int) -> Chooser:
  """Each block subsampled to `pool_size` rows per query, its relevant rows always kept."""

  def prepare(targets, valid, num_rows):
    del valid  # Padding repeats a relevant row.

    def draw(rng):
      keys = rng.random((len(targets), num_rows))
      np.put_along_axis(keys, targets, -1.0, axis=1)  # Relevant rows: always kept.
      return _smallest_per_block(keys, blocks, pool_size)
    return draw
  return prepare


def _distractor_matched(blocks: Sequence[tuple[int, int]], pool_size: int, distractors: int,
                        paragraphs: np.ndarray) -> Chooser:
  """Per query and block: its relevant rows, `distractors` random rows of their paragraphs and
  random rows of other paragraphs, `pool_size` in all (the common size leaves enough others)."""

  def prepare(targets, valid, num_rows):
    relevant = np.zeros((len(targets), num_rows), bool)
    np.put_along_axis(relevant, targets, True, axis=1)
    same = np.stack([np.isin(paragraphs, paragraphs[t[v]]) for t, v in zip(targets, valid)])
    same &= ~relevant

    def draw(rng):
      keys = rng.random((len(targets), num_rows))
      chosen = np.zeros_like(same)
      for start, end in blocks:
        if distractors and end - start >= distractors:
          block_keys = np.where(same[:, start:end], keys[:, start:end], np.inf)
          kth = np.partition(block_keys, distractors - 1, axis=1)[:, distractors - 1:distractors]
          chosen[:, start:end] = same[:, start:end] & (block_keys <= kth)
      # Relevant first, then the chosen same-paragraph rows, random others, the rest never.
      keys = np.where(relevant, -2.0, np.where(chosen, -1.0, np.where(same, 2.0, keys)))
      return _smallest_per_block(keys, blocks, pool_size)
    return draw
  return prepare


def _pool_ap(question_emb: np.ndarray, relevant: Sequence[Sequence[int]], pool_emb: np.ndarray,
             choose: Chooser, draws: int,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Per query: AP per draw [draws, Q], and pool sizes [Q]; relevant rows index the pool, and
  `choose` gives each draw's kept rows."""
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
    draw = choose(chunk_targets, chunk_valid, len(pool_emb))
    for d in range(draws):
      kept = draw(rng)
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


def _score(inputs: Mapping, chooser: Callable[[Sequence[str], list], Chooser], draws: int,
           seed: int, keep: Callable[[Sequence[str], int, str], bool] | None = None) -> dict:
  """score_dataset's output for the pools `chooser(pool languages, pool ids)` draws; `keep(pool
  languages, question row, query language)` false leaves a question out (counted in "left_out")."""
  rng = np.random.default_rng(seed)
  question_emb = {k: np.asarray(v, np.float32) for k, v in inputs["question_emb"].items()}
  candidate_emb = {k: np.asarray(v, np.float32) for k, v in inputs["candidate_emb"].items()}
  above = {setting: {} for setting in SETTINGS}
  collected = {setting: [] for setting in SETTINGS}  # (AP per draw, chance, above) per group.
  left_out = dict.fromkeys(SETTINGS, 0)
  cache = {}
  for (setting, group), (query_language, pool_languages) in _pools(inputs).items():
    ids, kept = _relevant_rows(inputs, query_language, pool_languages)
    if keep is not None:
      left_out[setting] += len(kept)
      kept = [(q, rows) for q, rows in kept if keep(pool_languages, q, query_language)]
      left_out[setting] -= len(kept)
    if not kept:
      continue
    pool_emb = np.concatenate([candidate_emb[y] for y in pool_languages])
    ap, sizes = _pool_ap(question_emb[query_language][[q for q, _ in kept]],
                         [rows for _, rows in kept], pool_emb, chooser(pool_languages, ids),
                         draws, rng)
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
  result = {"per_query_above_chance": above, "summary": summary}
  return result if keep is None else {**result, "left_out": left_out}


def _blocks(inputs: Mapping, pool_languages: Sequence[str]) -> list[tuple[int, int]]:
  """The [start, end) pool rows of each pool language."""
  ends = np.cumsum([len(inputs["candidates"][y]) for y in pool_languages])
  return [(int(end - len(inputs["candidates"][y])), int(end))
          for y, end in zip(pool_languages, ends)]


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
  return _score(inputs, lambda languages, _: _size_matched(_blocks(inputs, languages), pool_size),
                draws, seed)


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


def paragraph_of(candidate_id: str) -> str:
  """`{language}:{paragraph}` of a LAReQA candidate id `{language}:{paragraph}:{sentence}`
  (retrieval_data.load_lareqa): the candidates of one paragraph share their context."""
  parts = candidate_id.split(":")
  if len(parts) != 3:
    raise ValueError(f"candidate id {candidate_id!r} is not a LAReQA sentence id "
                     "'{language}:{paragraph}:{sentence}': distractor-matched pools need "
                     "LAReQA's paragraphs")
  return f"{parts[0]}:{parts[1]}"


def _same_paragraph_counts(inputs: Mapping) -> dict[str, list[dict[str, int]]]:
  """{query language: per question, {pool language: its candidates there that share a paragraph
  with a relevant one and are not relevant}}, for the languages holding a relevant one."""
  sizes = collections.Counter(paragraph_of(d) for ids in inputs["candidates"].values()
                              for d in ids)
  language_of = {d: y for y, ids in inputs["candidates"].items() for d in ids}
  counts = {}
  for x, items in inputs["questions"].items():
    counts[x] = []
    for _, relevant in items:
      paragraphs, found = collections.defaultdict(set), collections.Counter()
      for d in relevant:
        if d in language_of:
          paragraphs[language_of[d]].add(paragraph_of(d))
          found[language_of[d]] += 1
      counts[x].append({y: sum(sizes[p] for p in ps) - found[y] for y, ps in paragraphs.items()})
  return counts


def distractor_count(datasets: Mapping[str, Mapping],
                     min_queries_kept: float = MIN_QUERIES_KEPT) -> int:
  """The largest number of same-paragraph distractors that at least `min_queries_kept` of every
  dataset's questions have in their own language's pool."""
  common = None
  for name, inputs in datasets.items():
    counts = sorted(by_language[x] for x, rows in _same_paragraph_counts(inputs).items()
                    for by_language in rows if x in by_language)
    if not counts:
      raise ValueError(f"dataset {name!r}: no question has a relevant candidate in its own "
                       "language: nothing to match distractors on")
    quantile = counts[int(np.floor((1.0 - min_queries_kept) * len(counts)))]
    common = quantile if common is None else min(common, quantile)
  return common


def distractor_matched_pool_size(datasets: Mapping[str, Mapping], distractors: int) -> int:
  """The largest size every block of every kept query can give with `distractors`
  same-paragraph candidates and no others of their paragraphs (at most matched_pool_size)."""
  size = matched_pool_size(datasets)
  for inputs in datasets.values():
    for rows in _same_paragraph_counts(inputs).values():
      for by_language in rows:
        for y, same in by_language.items():
          if same >= distractors:
            size = min(size, len(inputs["candidates"][y]) - same + distractors)
  return size


def score_dataset_distractor_matched(inputs: Mapping, pool_size: int, distractors: int,
                                     draws: int = 5, seed: int = 0) -> dict:
  """score_dataset's output on distractor-matched pools, plus "left_out" (per setting, queries
  with fewer than `distractors` same-paragraph candidates in a pool language holding a relevant
  one), "distractors" and "pool_size"."""
  codes, names = {}, {}
  for y, ids in sorted(inputs["candidates"].items()):
    codes[y] = np.array([names.setdefault(paragraph_of(d), len(names)) for d in ids], np.int64)
  counts = _same_paragraph_counts(inputs)

  def keep(pool_languages, question, query_language):
    return all(same >= distractors for y, same in counts[query_language][question].items()
               if y in pool_languages)

  def chooser(pool_languages, _):
    return _distractor_matched(_blocks(inputs, pool_languages), pool_size, distractors,
                               np.concatenate([codes[y] for y in pool_languages]))

  return {**_score(inputs, chooser, draws, seed, keep), "distractors": distractors,
          "pool_size": pool_size}


def score_distractor_matched(datasets: Mapping[str, Mapping], draws: int = 5, seed: int = 0,
                             min_queries_kept: float = MIN_QUERIES_KEPT) -> dict[str, dict]:
  """{dataset: its scores on distractor-matched pools}, with the distractor count and pool size
  common to all the datasets (distractor_count, distractor_matched_pool_size)."""
  distractors = distractor_count(datasets, min_queries_kept)
  pool_size = distractor_matched_pool_size(datasets, distractors)
  return {name: score_dataset_distractor_matched(inputs, pool_size, distractors, draws, seed)
          for name, inputs in datasets.items()}


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
