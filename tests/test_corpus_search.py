"""Exact top-k over a stored index equals a brute-force sort, ties included, whatever the memory
bound, the shard split or the number of processes; memory does not grow with the corpus."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hybridir.evaluation import corpus_index
from hybridir.evaluation import corpus_search
from hybridir import fs
from tests.conftest import REPO_ROOT


def write_index(index_dir, embeddings, shard_size, dtype="float32"):
  """An index holding `embeddings` as they are (passage i has id 'd<i>')."""
  spec = {"format": corpus_index.FORMAT, "format_version": corpus_index.FORMAT_VERSION,
          "num_passages": len(embeddings), "shard_size": shard_size,
          "num_shards": -(-len(embeddings) // shard_size), "dimension": embeddings.shape[1],
          "dtype": dtype, "source": {"kind": "test"}, "encoder": "none"}
  fs.makedirs(index_dir)
  fs.write_text_atomically(os.path.join(index_dir, corpus_index.INDEX_FILE), json.dumps(spec))
  for shard in range(spec["num_shards"]):
    start, stop = corpus_index.shard_bounds(spec, shard)
    corpus_index.write_shard(index_dir, spec, shard, [f"d{i}" for i in range(start, stop)],
                             embeddings[start:stop])
  return spec


def integer_vectors(rng, count, dim=8):
  """Small integers: every dot product is exact in float32 (and bfloat16 holds them), and many
  scores tie, so the tie order is tested too."""
  return rng.integers(-3, 4, size=(count, dim)).astype(np.float32)


def brute_force(queries, passages, k):
  """Scores in float64 (exact here), sorted by score descending, then position ascending."""
  scores = queries.astype(np.float64) @ passages.astype(np.float64).T
  order = np.lexsort((np.broadcast_to(np.arange(len(passages)), scores.shape), -scores), axis=1)
  return np.take_along_axis(scores, order, axis=1)[:, :k], order[:, :k]


@pytest.mark.parametrize("memory_bytes,dtype", [(50_000, "float32"), (1 << 16, "bfloat16"),
                                                (1 << 24, "float32")])
def test_streamed_top_k_equals_brute_force_with_ties_in_position_order(tmp_path, memory_bytes,
                                                                       dtype):
  rng = np.random.default_rng(0)
  passages, queries = integer_vectors(rng, 1000), integer_vectors(rng, 37)
  write_index(str(tmp_path), passages, shard_size=96, dtype=dtype)
  scores, indices = corpus_search.search_index(str(tmp_path), queries, 25, memory_bytes)
  expected_scores, expected_indices = brute_force(queries, passages, 25)
  np.testing.assert_array_equal(indices, expected_indices)
  np.testing.assert_array_equal(scores, expected_scores)
  assert (np.diff(scores, axis=1) == 0).mean() > 0.3  # Ties are common.


def test_plan_reads_few_rows_at_a_time_under_a_small_bound():
  plan = corpus_search.plan_search(37, 8, 25, 50_000, num_devices=8, max_rows=96)
  assert plan.rows_per_read < 96
  assert plan.estimated_bytes <= 50_000
  assert corpus_search.plan_search(37, 8, 25, 1 << 24, 8, 96).rows_per_read == 96


def test_per_process_lists_merge_into_the_global_top_k(tmp_path):
  rng = np.random.default_rng(1)
  passages, queries = integer_vectors(rng, 300), integer_vectors(rng, 11)
  spec = write_index(str(tmp_path), passages, shard_size=16)
  lists = [corpus_search.search_shards(str(tmp_path), spec, queries, 20, 1 << 20,
                                       corpus_index.shards_of_process(spec["num_shards"], p, 3))
           for p in range(3)]
  scores, indices = corpus_search.merge_top_k(np.concatenate([s for s, _ in lists], axis=1),
                                              np.concatenate([i for _, i in lists], axis=1), 20)
  expected_scores, expected_indices = brute_force(queries, passages, 20)
  np.testing.assert_array_equal(indices, expected_indices)
  np.testing.assert_array_equal(scores, expected_scores)
  # One process alone holds fewer than k passages of a small index: its list is padded with -1.
  spec = write_index(str(tmp_path / "small"), passages[:40], shard_size=16)
  _, few = corpus_search.search_shards(str(tmp_path / "small"), spec, queries, 20, 1 << 20, [2])
  assert (few[:, :8] >= 32).all() and (few[:, 8:] == -1).all()


def test_passage_ids_of_positions_read_only_their_shards(tmp_path):
  spec = write_index(str(tmp_path), integer_vectors(np.random.default_rng(2), 50), 16)
  os.remove(tmp_path / "shard-00001-of-00004.ids.npy")  # Not needed for these positions.
  ids = corpus_search.passage_ids(str(tmp_path), spec, np.array([[49, 3], [0, 33]]))
  assert ids.tolist() == [["d49", "d3"], ["d0", "d33"]]
  with pytest.raises(ValueError, match=r"positions must be in \[0, 50\)"):
    corpus_search.passage_ids(str(tmp_path), spec, np.array([50]))


def test_a_memory_bound_too_small_for_the_queries_says_what_it_needs():
  with pytest.raises(ValueError, match="memory_bytes=1000 is too small for 500 queries"):
    corpus_search.plan_search(500, 768, 100, 1000, 1, 10**6)


# Child-process source: peak_rss_growth(call) runs call() once more, after gc and malloc_trim,
# sampling this process's resident memory every ms; the growth over the baseline before it.
PEAK_RSS_GROWTH = """
import ctypes, gc, threading

def rss():  # Bytes resident now, from the kernel's accounting of this process.
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * 4096

def peak_rss_growth(call):
  gc.collect()
  ctypes.CDLL("libc.so.6").malloc_trim(0)  # What earlier calls freed leaves now, not during it.
  before, peak, done = rss(), [0], threading.Event()
  def sample():
    while not done.wait(0.001):
      peak[0] = max(peak[0], rss())
  sampler = threading.Thread(target=sample)
  sampler.start()
  call()
  done.set()
  sampler.join()
  return max(peak[0], rss()) - before
"""

SEARCH_AND_REPORT_PEAK_RSS = PEAK_RSS_GROWTH + """
import sys
import numpy as np
from hybridir.evaluation import corpus_search

queries = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
def search():
  corpus_search.search_index(sys.argv[1], queries, 10, memory_bytes=int(sys.argv[2]))

search()  # jax's start-up and the step's compilation (XLA's memory, not arrays): out of the count.
print(peak_rss_growth(search))
"""


def test_search_memory_stays_under_the_bound_while_the_corpus_grows_tenfold(tmp_path):
  """Peak RSS growth of a search process (measured, not timed) over 30k and 300k passages x 64
  (7.7 and 77 MB of embeddings) with a 4 MiB bound."""
  rng = np.random.default_rng(3)
  budget = 4 << 20
  growth = {}
  for count in (30_000, 300_000):
    index_dir = str(tmp_path / str(count))
    write_index(index_dir, rng.standard_normal((count, 64)).astype(np.float32), 10_000)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SEARCH_AND_REPORT_PEAK_RSS, index_dir,
                          str(budget)], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=300, check=True)
    growth[count] = int(out.stdout.split()[-1])
  # The bound holds arrays; the search's own buffers (queries, top-k lists, Python) add a few MiB.
  assert max(growth.values()) < budget + (8 << 20), growth
  # RSS can shrink below the baseline while searching (the allocator returns pages): no growth is 0.
  assert growth[300_000] - max(growth[30_000], 0) < budget, growth
