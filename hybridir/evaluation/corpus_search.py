"""Exact top-k search over a stored corpus index (hybridir.evaluation.corpus_index), in
bounded memory.

Each process streams its own shards from storage, a bounded number of rows at a time, scores them
against the queries with `retrieval.top_k` (all local devices) and keeps a running top-k; the
processes' lists are gathered and merged into the global top-k, which every process returns.
Order: score descending, then global passage position ascending, as a stable brute-force sort.
"""
import dataclasses
import os

import jax
from jax.experimental import multihost_utils
import numpy as np

from hybridir.evaluation import corpus_index
from hybridir.evaluation import retrieval

MAX_BLOCK_SIZE = 32768  # Rows per device and step in retrieval.top_k.


@dataclasses.dataclass(frozen=True)
class SearchPlan:
  """How a search fits `memory_bytes`: rows read at a time, top_k's block and query block."""
  rows_per_read: int
  block_size: int
  query_block_size: int
  estimated_bytes: int


def plan_search(num_queries: int, dimension: int, k: int, memory_bytes: int,
                num_devices: int, max_rows: int) -> SearchPlan:
  """Sizes a search so its arrays stay within memory_bytes: the queries and running top-k lists
  (fixed by Q and k), then half of the rest for rows read (stored bytes, float32 copy, aligned
  copy, device copy) and half for the [query block, rows] score tiles."""
  fixed = num_queries * (2 * dimension * 4 + 3 * k * (4 + 8))
  rest = memory_bytes - fixed
  per_row = dimension * 4 * 4
  smallest = max(8, -(-k // 8) * 8)
  if rest < 2 * smallest * (per_row + 8 * 4):
    raise ValueError(
        f"memory_bytes={memory_bytes} is too small for {num_queries} queries of dimension "
        f"{dimension} and k={k}: need at least "
        f"{fixed + 2 * smallest * (per_row + 8 * 4)} bytes; search fewer queries at a time")
  rows = max(smallest, min(rest // 2 // per_row // 8 * 8, -(-max_rows // 8) * 8))
  block_size = max(min(MAX_BLOCK_SIZE, -(-rows // num_devices)), k)
  query_block = max(1, min(num_queries, rest // 2 // (4 * min(rows, block_size * num_devices))))
  estimate = fixed + rows * per_row + query_block * min(rows, block_size * num_devices) * 4
  return SearchPlan(rows, block_size, query_block, estimate)


def merge_top_k(scores: np.ndarray, indices: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Top k of [Q, M] candidate lists by score descending, then position ascending; -1 (no
  candidate) last."""
  keys = np.where(indices < 0, np.iinfo(np.int64).max, indices)
  order = np.lexsort((keys, -scores.astype(np.float64)), axis=1)[:, :k]
  return (np.take_along_axis(scores, order, axis=1),
          np.take_along_axis(indices, order, axis=1))


def search_shards(index_dir: str, spec: dict, query_emb: np.ndarray, k: int, memory_bytes: int,
                  shards) -> tuple[np.ndarray, np.ndarray]:
  """This process's top-k over `shards`: (scores [Q, k] float32, positions [Q, k] int64, -1 and
  -inf where the shards hold fewer than k passages)."""
  query_emb = np.asarray(query_emb, np.float32)
  if query_emb.ndim != 2 or query_emb.shape[1] != spec["dimension"]:
    raise ValueError(f"queries {query_emb.shape}: expected [count, {spec['dimension']}] "
                     f"({os.path.join(index_dir, corpus_index.INDEX_FILE)})")
  plan = plan_search(len(query_emb), spec["dimension"], k, memory_bytes,
                     jax.local_device_count(), spec["shard_size"])
  best_scores = np.full((len(query_emb), k), -np.inf, np.float32)
  best_indices = np.full((len(query_emb), k), -1, np.int64)
  for shard in shards:
    for first, rows in corpus_index.iter_shard_rows(index_dir, spec, shard, plan.rows_per_read):
      pool = retrieval.aligned_empty(rows.shape)
      pool[:] = rows
      del rows
      scores, where = retrieval.top_k(query_emb, pool, min(k, len(pool)), plan.block_size,
                                      plan.query_block_size, shard=True)
      best_scores, best_indices = merge_top_k(np.concatenate([best_scores, scores], axis=1),
                                              np.concatenate([best_indices, first + where], axis=1),
                                              k)
  return best_scores, best_indices


def search_index(index_dir: str, query_emb: np.ndarray, k: int,
                 memory_bytes: int = 2 << 30) -> tuple[np.ndarray, np.ndarray]:
  """The global top-k (scores [Q, k], positions [Q, k]) of a complete index, on every process.

  Each process searches its shards (corpus_index.shards_of_process) within memory_bytes; the
  per-process lists are gathered and merged.
  """
  spec = corpus_index.read_spec(index_dir)
  if not 1 <= k <= spec["num_passages"]:
    raise ValueError(f"k must be in [1, {spec['num_passages']}] (passages in {index_dir}), "
                     f"got {k}")
  scores, indices = search_shards(index_dir, spec, query_emb, k, memory_bytes,
                                  corpus_index.shards_of_process(spec["num_shards"]))
  if jax.process_count() > 1:  # [processes, Q, k]; positions fit int32 (corpus_index checks).
    scores = multihost_utils.process_allgather(scores)
    indices = multihost_utils.process_allgather(indices.astype(np.int32)).astype(np.int64)
    scores, indices = merge_top_k(np.concatenate(list(np.asarray(scores)), axis=1),
                                  np.concatenate(list(np.asarray(indices)), axis=1), k)
  return scores, indices


def passage_ids(index_dir: str, spec: dict, indices: np.ndarray) -> np.ndarray:
  """The passage ids at global positions `indices` (any shape), reading only the shards needed."""
  indices = np.asarray(indices)
  if indices.size and (indices.min() < 0 or indices.max() >= spec["num_passages"]):
    raise ValueError(f"positions must be in [0, {spec['num_passages']}), found "
                     f"[{indices.min()}, {indices.max()}]")
  out = np.empty(indices.shape, dtype=object)
  shards = indices // spec["shard_size"]
  for shard in np.unique(shards):
    where = shards == shard
    ids = corpus_index.read_shard_ids(index_dir, spec, int(shard))
    out[where] = ids[indices[where] - shard * spec["shard_size"]]
  return out
