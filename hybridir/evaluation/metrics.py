"""Ranking metrics as pure functions, numerically equal to trec_eval / pytrec_eval.

Inputs use pytrec_eval's shapes: a run is `{qid: {docid: score}}`, qrels are
`{qid: {docid: relevance}}`. Measure names are trec_eval's: `map`, `recall_K`, `ndcg_cut_K`,
`recip_rank`, `P_K`, `success_K`, plus `recip_rank_cut_K` (MRR@K: reciprocal rank counting only the
top K), which trec_eval lacks.

trec_eval conventions followed here (checked against pytrec_eval in tests/test_metrics.py):
  * a run is ordered by score descending, ties broken by docid descending (byte order);
  * a document is relevant when its relevance is >= 1; nDCG's gain is the relevance (negative as 0);
  * queries absent from the qrels, or with no judgements at all, are skipped; a judged query with no
    relevant document scores 0 on every measure;
  * P_K divides by K even when fewer than K documents were retrieved.
"""
import math
import re
from typing import Hashable, Iterable, Mapping, Optional, Sequence

import numpy as np

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]

DEFAULT_MEASURES = ("map", "recip_rank", "recip_rank_cut_10", "recall_10", "recall_100",
                    "ndcg_cut_10", "P_1")

_MEASURE = re.compile(
    r"^(map|recip_rank)$|^(recall|ndcg_cut|recip_rank_cut|P|success)_([1-9][0-9]*)$")


def parse_measure(name: str) -> tuple[str, Optional[int]]:
  """Splits a measure name into (family, cutoff), e.g. 'ndcg_cut_10' -> ('ndcg_cut', 10)."""
  match = _MEASURE.match(name)
  if not match:
    raise ValueError(f"unknown measure {name!r}; expected one of map, recip_rank, recall_K, "
                     f"ndcg_cut_K, recip_rank_cut_K, P_K, success_K (K a positive integer)")
  if match.group(1):
    return match.group(1), None
  return match.group(2), int(match.group(3))


def trec_order(doc_scores: Mapping[str, float]) -> list[str]:
  """Docids in trec_eval's ranking order: score descending, then docid descending."""
  return sorted(doc_scores, key=lambda docid: (doc_scores[docid], docid), reverse=True)


def relevant_ranks(ranking: Sequence[str],
                   relevance: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
  """1-based ranks (0 = not retrieved) and gains of the relevant documents of one query."""
  position = {docid: rank for rank, docid in enumerate(ranking, start=1)}
  relevant = [docid for docid, grade in relevance.items() if grade >= 1]
  ranks = np.array([position.get(docid, 0) for docid in relevant], dtype=np.int64)
  gains = np.array([relevance[docid] for docid in relevant], dtype=np.float64)
  return ranks, gains


def measures_from_ranks(ranks: np.ndarray, gains: np.ndarray,
                        measures: Iterable[str]) -> dict[str, float]:
  """All `measures` of one query from its relevant documents' ranks (0 = not retrieved) and gains.

  This is the core every other entry point uses: the ranks of the relevant documents determine every
  supported measure, so callers with a full score matrix never need to build a ranked list.
  """
  ranks = np.asarray(ranks, dtype=np.int64)
  gains = np.asarray(gains, dtype=np.float64)
  if ranks.shape != gains.shape or ranks.ndim != 1:
    raise ValueError(f"ranks {ranks.shape} and gains {gains.shape} must be 1-D and of equal length")
  retrieved = np.sort(ranks[ranks > 0])
  num_relevant = len(ranks)
  out = {}
  for name in measures:
    family, cutoff = parse_measure(name)
    if num_relevant == 0:
      out[name] = 0.0
    elif family == "map":
      out[name] = _average_precision(retrieved, num_relevant)
    elif family == "recall":
      out[name] = np.count_nonzero(retrieved <= cutoff) / num_relevant
    elif family == "P":
      out[name] = np.count_nonzero(retrieved <= cutoff) / cutoff
    elif family == "success":
      out[name] = float(len(retrieved) > 0 and retrieved[0] <= cutoff)
    elif family == "recip_rank":
      out[name] = 1.0 / retrieved[0] if len(retrieved) else 0.0
    elif family == "recip_rank_cut":
      out[name] = 1.0 / retrieved[0] if len(retrieved) and retrieved[0] <= cutoff else 0.0
    else:
      out[name] = _ndcg(ranks, gains, cutoff)
    out[name] = float(out[name])
  return out


def _average_precision(sorted_ranks: np.ndarray, num_relevant: int) -> float:
  # AP = (1/R) * sum_i i / rank_i over the retrieved relevant documents in rank order
  # (LAReQA's mAP: relevant documents never retrieved add 0).
  hits = np.arange(1, len(sorted_ranks) + 1)
  return float(np.sum(hits / sorted_ranks) / num_relevant)


def _ndcg(ranks: np.ndarray, gains: np.ndarray, cutoff: int) -> float:
  # trec_eval ndcg_cut: DCG = sum gain / log2(rank + 1) over ranks <= K, divided by the ideal DCG.
  in_cut = (ranks > 0) & (ranks <= cutoff)
  dcg = np.sum(gains[in_cut] / np.log2(ranks[in_cut] + 1.0))
  ideal = np.sort(gains)[::-1][:cutoff]
  idcg = np.sum(ideal / np.log2(np.arange(2, len(ideal) + 2)))
  return float(dcg / idcg) if idcg > 0 else 0.0


def evaluate_run(run: Run, qrels: Qrels,
                 measures: Iterable[str] = DEFAULT_MEASURES) -> dict[str, dict[str, float]]:
  """Per-query measures, `{qid: {measure: value}}`, for the queries of `run` judged in `qrels`."""
  measures = list(measures)
  for name in measures:
    parse_measure(name)
  per_query = {}
  for qid, doc_scores in run.items():
    if not qrels.get(qid):
      continue
    ranks, gains = relevant_ranks(trec_order(doc_scores), qrels[qid])
    per_query[qid] = measures_from_ranks(ranks, gains, measures)
  return per_query


def aggregate(per_query: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
  """Mean of each measure over the queries (trec_eval's 'all' line, without num_q)."""
  if not per_query:
    return {}
  names = next(iter(per_query.values())).keys()
  return {name: float(np.mean([values[name] for values in per_query.values()])) for name in names}


def expected_random_rank_distance(pool_size: int, num_relevant: int) -> float:
  """A random ranking's expected maximum rank distance: E[max - min] of `num_relevant` distinct
  ranks drawn uniformly from 1..pool_size, exactly (k - 1)(N + 1) / (k + 1)."""
  if not 1 <= num_relevant <= pool_size:
    raise ValueError(f"need 1 <= num_relevant <= pool_size, found {num_relevant} relevant in a "
                     f"pool of {pool_size}")
  return (num_relevant - 1) * (pool_size + 1) / (num_relevant + 1)


def rank_distances(relevant_ranks_by_query: Mapping[str, Mapping[str, int]],
                   candidate_language: Mapping[str, Hashable],
                   pool_size: int | Mapping[str, int]) -> dict[str, tuple[float, float]]:
  """Language bias of each query: `{qid: (maximum rank distance, a random ranking's value)}`.

  The maximum rank distance of a query (the paper's language bias, after Huang et al., SIGIR
  2023) is the rank of its lowest-ranked relevant candidate minus the rank of its highest-ranked
  one, in its ranking over a multilingual pool: n - 1 (the least) when its n relevant candidates
  are adjacent, as a language-agnostic ranking puts them; large when its own language's candidates
  come a whole pool ahead of the others. Lower is better. Queries whose relevant candidates lie in fewer
  than two languages are left out (no language bias to measure).

  Args:
    relevant_ranks_by_query: `{qid: {relevant docid: 1-based rank}}`.
    candidate_language: `{docid: language}` for at least the relevant candidates.
    pool_size: the number of ranked candidates (for every query, or `{qid: size}`), for the
      random ranking's expectation (`expected_random_rank_distance`).
  """
  result = {}
  for qid, ranks in relevant_ranks_by_query.items():
    for docid in ranks:
      if docid not in candidate_language:
        raise ValueError(f"query {qid!r}: relevant candidate {docid!r} has no language")
    if len({candidate_language[docid] for docid in ranks}) < 2:
      continue
    size = pool_size if isinstance(pool_size, int) else pool_size[qid]
    result[qid] = (float(max(ranks.values()) - min(ranks.values())),
                   expected_random_rank_distance(size, len(ranks)))
  return result


def rank_distance_means(distances: Mapping[str, tuple[float, float]]) -> dict[str, float]:
  """Mean maximum rank distance and a random ranking's mean over queries (NaN if none)."""
  values = np.array(list(distances.values()), np.float64).reshape(-1, 2)
  mean = values.mean(axis=0) if len(values) else (math.nan, math.nan)
  return {"rank_distance": float(mean[0]), "rank_distance_random": float(mean[1])}


def rank_distance_of_ranks(ranks_by_query: Mapping[str, Mapping[str, int]],
                           pool_sizes: Mapping[str, int], languages: Mapping[str, str]) -> dict:
  """evaluate.rank_distance_of_run's result from `{qid: {relevant docid: rank}}` and each
  query's pool size: the mean per query language (else one group "all"), then over languages."""
  distances = rank_distances(ranks_by_query, languages, pool_sizes)
  with_language = [qid for qid in distances if qid in languages]
  if with_language and len(with_language) < len(distances):
    unlabelled = sorted(set(distances) - set(with_language))
    raise ValueError(f"queries {unlabelled[:3]} have no language, but {len(with_language)} others "
                     "do: give every query's language or none")
  groups = {}
  for qid, values in distances.items():
    groups.setdefault(languages[qid] if with_language else "all", {})[qid] = values
  per_language = {}
  for language, group in sorted(groups.items()):
    means = rank_distance_means(group)
    per_language[language] = {"mean": means["rank_distance"],
                              "random": means["rank_distance_random"], "num_q": len(group)}
  return {"mean": float(np.mean([v["mean"] for v in per_language.values()]))
          if per_language else math.nan,
          "random": float(np.mean([v["random"] for v in per_language.values()]))
          if per_language else math.nan,
          "num_q": len(distances), "per_query_language": per_language}
