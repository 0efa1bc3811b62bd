"""Specification of hybridir.evaluation.retrieval: blocked exact search equals brute force,
bounded memory."""
import math

import jax
import jax.extend
import numpy as np
import pytest

from hybridir.evaluation import retrieval


def _integer_embeddings(seed, num_queries, pool_size, dim=16):
  """Small-integer embeddings: every dot product is exact in float32, and many scores tie."""
  rng = np.random.default_rng(seed)
  return (rng.integers(-3, 4, (num_queries, dim)).astype(np.float32),
          rng.integers(-3, 4, (pool_size, dim)).astype(np.float32))


def _brute_force(queries, pool, k):
  """NumPy reference: full score matrix, sorted by score descending then pool index ascending."""
  scores = queries @ pool.T
  index = np.broadcast_to(np.arange(pool.shape[0]), scores.shape)
  order = np.lexsort((index, -scores), axis=1)[:, :k]
  return np.take_along_axis(scores, order, axis=1), order


def test_blocked_top_k_equals_brute_force_when_pool_is_not_a_multiple_of_the_block():
  queries, pool = _integer_embeddings(0, num_queries=37, pool_size=1003)
  scores, indices = retrieval.top_k(queries, pool, k=10, block_size=64, query_block_size=16)
  expected_scores, expected_indices = _brute_force(queries, pool, 10)
  np.testing.assert_array_equal(indices, expected_indices)
  np.testing.assert_array_equal(scores, expected_scores)
  assert scores.dtype == np.float32 and indices.dtype == np.int64


def test_equal_scores_keep_the_lower_pool_index_first():
  queries = np.ones((2, 4), np.float32)
  pool = np.zeros((300, 4), np.float32)
  pool[[250, 7, 130]] = 1.0  # Same score, in three different blocks.
  _, indices = retrieval.top_k(queries, pool, k=5, block_size=64)
  np.testing.assert_array_equal(indices, [[7, 130, 250, 0, 1]] * 2)


def test_sharded_over_all_local_devices_equals_unsharded():
  assert len(jax.local_devices()) == 8, "tests/conftest.py should give 8 virtual CPU devices"
  rng = np.random.default_rng(1)
  queries = rng.standard_normal((20, 32)).astype(np.float32)
  pool = rng.standard_normal((2021, 32)).astype(np.float32)
  unsharded = retrieval.top_k(queries, pool, k=25, block_size=128, query_block_size=8)
  sharded = retrieval.top_k(queries, pool, k=25, block_size=128, query_block_size=8, shard=True)
  np.testing.assert_array_equal(sharded[1], unsharded[1])
  np.testing.assert_array_equal(sharded[0], unsharded[0])
  np.testing.assert_array_equal(sharded[1], _brute_force(queries, pool, 25)[1])


def test_the_whole_scan_compiles_the_block_step_once():
  queries, pool = _integer_embeddings(2, num_queries=30, pool_size=1000)
  k = 13  # A k no other test uses: a fresh step function.
  retrieval.top_k(queries, pool, k=k, block_size=96, query_block_size=8)
  step = retrieval._group_step(tuple(jax.local_devices()[:1]), k)[0]
  assert step._cache_size() == 1


def _largest_intermediate(jaxpr):
  """Largest array any equation produces, looking inside nested jaxprs (shard_map, pjit)."""
  largest = 0
  for eqn in jaxpr.eqns:
    for var in eqn.outvars:
      largest = max(largest, math.prod(getattr(var.aval, "shape", ())))
    for param in eqn.params.values():
      inner = getattr(param, "jaxpr", param)
      if isinstance(inner, jax.extend.core.Jaxpr):
        largest = max(largest, _largest_intermediate(inner))
  return largest


@pytest.mark.parametrize("devices", [1, 8])
def test_block_step_intermediates_are_bounded_by_query_block_times_block(devices):
  query_block, block, dim, k = 64, 256, 32, 10  # query_block > dim: the score tile is the largest.
  step = retrieval._group_step(tuple(jax.local_devices()[:devices]), k)[0]
  shapes = (jax.ShapeDtypeStruct((query_block, dim), np.float32),
            jax.ShapeDtypeStruct((devices, block, dim), np.float32),
            jax.ShapeDtypeStruct((), np.int32), jax.ShapeDtypeStruct((), np.int32),
            jax.ShapeDtypeStruct((query_block, k), np.float32),
            jax.ShapeDtypeStruct((query_block, k), np.int32))
  jaxpr = jax.make_jaxpr(step)(*shapes).jaxpr
  # Per device: one [query_block, block] score tile (shard_map bodies have per-device shapes).
  assert _largest_intermediate(jaxpr) == query_block * block
  out_shapes = jax.eval_shape(step, *shapes)
  assert [x.shape for x in out_shapes] == [(query_block, k), (query_block, k)]


def test_ranks_of_equals_the_position_in_a_full_sort():
  queries, pool = _integer_embeddings(3, num_queries=9, pool_size=200)
  priority = np.random.default_rng(4).permutation(200)
  targets = np.array([[5, 17, -1]] * 9)
  ranks = retrieval.ranks_of(queries, pool, targets, tie_priority=priority, query_block_size=4)
  scores = queries @ pool.T
  for q in range(9):
    order = list(np.lexsort((priority, -scores[q])))
    assert ranks[q].tolist() == [order.index(5) + 1, order.index(17) + 1, 0]


def test_ranking_to_run_maps_indices_to_docids():
  run = retrieval.ranking_to_run(["q1"], ["a", "b", "c"], np.array([[0.5, 0.25]]),
                                 np.array([[2, 0]]))
  assert run == {"q1": {"c": 0.5, "a": 0.25}}


def test_mismatched_dims_are_rejected_before_compiling():
  with pytest.raises(ValueError, match="embedding dims differ: queries 8, pool 4"):
    retrieval.top_k(np.zeros((2, 8), np.float32), np.zeros((10, 4), np.float32), k=3)
  with pytest.raises(ValueError, match="k must be in"):
    retrieval.top_k(np.zeros((2, 4), np.float32), np.zeros((10, 4), np.float32), k=11)


def test_aligned_empty_starts_on_a_64_byte_boundary():
  array = retrieval.aligned_empty((3, 5), np.float32)
  assert array.shape == (3, 5) and array.dtype == np.float32 and array.ctypes.data % 64 == 0
