"""Exact maximum-inner-product search over large pools, in bounded memory.

`top_k` scans the pool in fixed-size blocks (one compilation), keeps a running top-k per query chunk
on the device, and can spread consecutive blocks over all local devices. It never forms the Q x N
score matrix: peak memory is O(query_block_size * block_size * devices + Q * k) plus a few groups of
blocks.
"""
import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hybridir.training import partitioning


def aligned_empty(shape: Sequence[int], dtype=np.float32, alignment: int = 64) -> np.ndarray:
  """An uninitialised array whose data starts on an `alignment`-byte boundary.

  XLA:CPU reads 64-byte-aligned host arrays in place; `top_k` over a pool built in such an array
  skips copying every block to the device (numpy's own large arrays are usually 16-byte aligned).
  """
  dtype = np.dtype(dtype)
  count = int(np.prod(shape))
  raw = np.empty(count * dtype.itemsize + alignment, np.uint8)
  start = -raw.ctypes.data % alignment
  return raw[start:start + count * dtype.itemsize].view(dtype).reshape(shape)


def _validate(query_emb: np.ndarray, pool_emb: np.ndarray, k: int) -> None:
  if query_emb.ndim != 2 or pool_emb.ndim != 2:
    raise ValueError(f"query_emb and pool_emb must be 2-D [count, dim], got {query_emb.shape} and "
                     f"{pool_emb.shape}")
  if query_emb.shape[1] != pool_emb.shape[1]:
    raise ValueError(f"embedding dims differ: queries {query_emb.shape[1]}, "
                     f"pool {pool_emb.shape[1]}")
  if pool_emb.shape[0] >= 2**31:
    raise ValueError(f"pool of {pool_emb.shape[0]} rows: indices are int32, split it below 2**31")
  if not 1 <= k <= pool_emb.shape[0]:
    raise ValueError(f"k must be in [1, pool size {pool_emb.shape[0]}], got {k}")


def _merge(scores: jax.Array, indices: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """Top k of [Qb, M] candidates; lax.top_k puts equal scores in position order (lower first)."""
  best, where = jax.lax.top_k(scores, k)
  return best, jnp.take_along_axis(indices, where, axis=1)


def _block_top_k(queries, block, block_start, pool_size, k):
  """Top k of one [B, D] block for [Qb, D] queries; rows past the pool end score -inf."""
  contract_dims = (((1,), (1,)), ((), ()))  # queries @ block.T without materialising the transpose.
  scores = jax.lax.dot_general(queries, block, contract_dims, preferred_element_type=jnp.float32)
  index = block_start + jnp.arange(block.shape[0], dtype=jnp.int32)
  scores = jnp.where(index[None, :] < pool_size, scores, -jnp.inf)
  best, where = jax.lax.top_k(scores, k)
  return best, block_start + where


@functools.lru_cache(maxsize=None)
def _group_step(devices: tuple[jax.Device, ...], k: int):
  """Jitted: folds a group of blocks [num_devices, B, D] (one per device) into a running top-k.

  A local mesh of `devices`, unrelated to the training mesh: the blocks are split like a batch."""
  mesh = partitioning.create_mesh(1, devices=list(devices))
  split, whole = partitioning.batch_spec(), partitioning.replicated_spec()

  def per_device(queries, blocks, group_start, pool_size):
    block_start = group_start + partitioning.batch_index() * blocks.shape[1]
    scores, indices = _block_top_k(queries, blocks[0], block_start, pool_size, k)
    return scores[None], indices[None]

  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(whole, split, whole, whole),
                          out_specs=(split, split))

  def step(queries, blocks, group_start, pool_size, best_scores, best_indices):
    scores, indices = sharded(queries, blocks, group_start, pool_size)  # [devices, Qb, k]
    # Running best first, then blocks in pool order: position order is index order for ties.
    scores = jnp.concatenate([best_scores, *scores], axis=1)
    indices = jnp.concatenate([best_indices, *indices], axis=1)
    return _merge(scores, indices, k)

  replicated = partitioning.replicated(mesh)
  return jax.jit(step, out_shardings=replicated), replicated, partitioning.batch_sharding(mesh)


def block_rows(pool_size: int, block_size: int, num_devices: int, k: int) -> int:
  """Rows per block used: at most `block_size`, spread evenly so the last group is barely padded."""
  num_groups = -(-pool_size // (block_size * num_devices))
  rows = -(-pool_size // (num_groups * num_devices))
  return max(-(-rows // 8) * 8, k)


def top_k(query_emb: np.ndarray, pool_emb: np.ndarray, k: int, block_size: int = 32768,
          query_block_size: int = 1024, shard: bool = False,
          devices: Optional[Sequence[jax.Device]] = None) -> tuple[np.ndarray, np.ndarray]:
  """Exact top-k pool rows by inner product: (scores [Q, k] float32, indices [Q, k] int64).

  Rows come in score order; equal scores keep the lower pool index first. `pool_emb` may be any
  array that supports row slicing (e.g. a np.memmap): it is read one group of blocks at a time.
  With `shard=True` each local device (or each of `devices`) scores its own block of every group.
  """
  query_emb = np.asarray(query_emb)
  _validate(query_emb, pool_emb, k)
  num_queries, pool_size = query_emb.shape[0], pool_emb.shape[0]
  if k > block_size:
    raise ValueError(f"block_size ({block_size}) must be >= k ({k})")
  devices = tuple(devices or (jax.local_devices() if shard else jax.local_devices()[:1]))
  block_size = block_rows(pool_size, block_size, len(devices), k)
  query_block_size = min(query_block_size, num_queries)
  step, replicated, blocks_sharding = _group_step(devices, k)
  dtype = pool_emb.dtype

  chunks = []  # Per query chunk: [queries, best_scores, best_indices], all on the devices.
  for start in range(0, num_queries, query_block_size):
    queries = np.zeros((query_block_size, query_emb.shape[1]), dtype)
    rows = query_emb[start:start + query_block_size]
    queries[:len(rows)] = rows
    chunks.append([jax.device_put(queries, replicated),
                   jax.device_put(np.full((query_block_size, k), -np.inf, np.float32), replicated),
                   jax.device_put(np.full((query_block_size, k), -1, np.int32), replicated)])

  group_rows = block_size * len(devices)
  in_flight = None  # Wait for the previous group before reading another: bounded host memory.
  for group_start in range(0, pool_size, group_rows):
    group = np.asarray(pool_emb[group_start:group_start + group_rows], dtype)
    if len(group) < group_rows:  # The last group: zero rows, masked to -inf inside the step.
      group = np.concatenate([group, np.zeros((group_rows - len(group), group.shape[1]), dtype)])
    blocks = jax.device_put(group.reshape(len(devices), block_size, -1), blocks_sharding)
    del group
    offset = np.int32(group_start)
    for chunk in chunks:
      chunk[1], chunk[2] = step(chunk[0], blocks, offset, np.int32(pool_size), chunk[1], chunk[2])
    if in_flight is not None:
      in_flight.block_until_ready()
    in_flight = chunks[-1][1]

  scores = np.concatenate([np.asarray(chunk[1]) for chunk in chunks])[:num_queries]
  indices = np.concatenate([np.asarray(chunk[2]) for chunk in chunks])[:num_queries]
  return scores, indices.astype(np.int64)


def ranks_of(query_emb: np.ndarray, pool_emb: np.ndarray, targets: np.ndarray,
             tie_priority: Optional[np.ndarray] = None, query_block_size: int = 128) -> np.ndarray:
  """1-based rank of pool row `targets[q, t]` in query q's full ranking of the pool (0 if t < 0).

  The ranking is by score descending, then by `tie_priority` ascending (default: pool index). Memory
  stays O(query_block_size * N): the full ranking is never sorted.
  """
  query_emb, pool_emb, targets = np.asarray(query_emb), np.asarray(pool_emb), np.asarray(targets)
  _validate(query_emb, pool_emb, 1)
  if targets.shape[0] != query_emb.shape[0] or targets.ndim != 2:
    raise ValueError(f"targets must be [num_queries={query_emb.shape[0]}, T], got {targets.shape}")
  if tie_priority is None:
    tie_priority = np.arange(pool_emb.shape[0])
  ranks = np.zeros(targets.shape, np.int64)
  for start in range(0, len(query_emb), query_block_size):
    scores = query_emb[start:start + query_block_size] @ pool_emb.T  # [Qb, N]
    rows = np.arange(len(scores))
    for column in range(targets.shape[1]):
      target = targets[start:start + query_block_size, column]
      safe = np.maximum(target, 0)
      target_score = scores[rows, safe][:, None]
      higher = np.count_nonzero(scores > target_score, axis=1)
      tied_before = np.count_nonzero((scores == target_score) &
                                     (tie_priority[None, :] < tie_priority[safe][:, None]), axis=1)
      ranks[start:start + len(scores), column] = np.where(target >= 0, 1 + higher + tied_before, 0)
  return ranks


def ranking_to_run(qids: Sequence[str], docids: Sequence[str], scores: np.ndarray,
                   indices: np.ndarray) -> dict[str, dict[str, float]]:
  """A pytrec_eval-style run `{qid: {docid: score}}` from `top_k`'s output."""
  if len(qids) != len(scores) or scores.shape != indices.shape:
    raise ValueError(f"{len(qids)} qids, scores {scores.shape} and indices {indices.shape} "
                     f"disagree")
  return {qid: {docids[j]: float(s) for s, j in zip(score_row, index_row)}
          for qid, score_row, index_row in zip(qids, scores, indices)}


def trec_tie_priority(docids: Sequence[str]) -> np.ndarray:
  """Each candidate's place in trec_eval's tie order (docid descending): ranks match trec_eval."""
  priority = np.empty(len(docids), np.int64)
  order = sorted(range(len(docids)), key=lambda i: docids[i], reverse=True)
  priority[order] = np.arange(len(docids))
  return priority
