"""Exact top-k search throughput: hybridir.evaluation.retrieval.top_k against faiss
IndexFlatIP, one process.

    python bench/eval.py [--pool_size 1000000] [--num_queries 1000] [--dim 768] [--k 100]

Runs the two alternately (after one warm-up each), prints a table of queries/s and the ratio.
Needs the optional `bench` extra (faiss-cpu).
"""
import argparse
import os
import platform
import statistics
import time

import jax
import numpy as np

from hybridir.evaluation import retrieval


def _random_rows(rng: np.random.Generator, rows: int, dim: int, aligned: bool = True,
                 chunk: int = 65536) -> np.ndarray:
  """Unit-norm float32 rows, generated in place chunk by chunk (no float64 or second copy)."""
  out = retrieval.aligned_empty((rows, dim)) if aligned else np.empty((rows, dim), np.float32)
  for start in range(0, rows, chunk):
    block = out[start:start + chunk]
    rng.standard_normal(out=block, dtype=np.float32)
    block /= np.linalg.norm(block, axis=1, keepdims=True)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--pool_size", type=int, default=1_000_000)
  parser.add_argument("--num_queries", type=int, default=1000)
  parser.add_argument("--dim", type=int, default=768)
  parser.add_argument("--k", type=int, default=100)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--block_size", type=int, default=32768)
  parser.add_argument("--query_block_size", type=int, default=1024)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--unaligned_pool", action="store_true",
                      help="a plain numpy pool (16-byte aligned): top_k then copies every block")
  args = parser.parse_args()
  import faiss  # pylint: disable=g-import-not-at-top  (optional dependency)

  rng = np.random.default_rng(args.seed)
  pool = _random_rows(rng, args.pool_size, args.dim, aligned=not args.unaligned_pool)
  queries = _random_rows(rng, args.num_queries, args.dim)
  index = faiss.IndexFlatIP(args.dim)
  index.add(pool)  # faiss keeps its own copy of the pool.

  def run_jax():
    return retrieval.top_k(queries, pool, args.k, block_size=args.block_size,
                           query_block_size=args.query_block_size)

  def run_faiss():
    return index.search(queries, args.k)

  # Warm-up: compiles the block step (same shapes as the full scan) and touches faiss's code paths.
  warm = retrieval.block_rows(args.pool_size, args.block_size, 1, args.k)
  retrieval.top_k(queries, pool[:warm], args.k, block_size=args.block_size,
                  query_block_size=args.query_block_size)
  index.search(queries[:8], args.k)

  times = {"hybridir.evaluation.retrieval.top_k": [], "faiss IndexFlatIP": []}
  for _ in range(args.repeats):
    for name, fn in (("hybridir.evaluation.retrieval.top_k", run_jax),
                     ("faiss IndexFlatIP", run_faiss)):
      start = time.perf_counter()
      result = fn()
      times[name].append(time.perf_counter() - start)
      if name.startswith("hybridir"):
        jax_indices = result[1]
      else:
        faiss_indices = result[1]

  agreement = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(jax_indices, faiss_indices)])
  alignment = "unaligned" if args.unaligned_pool else "64-byte-aligned"
  print(f"pool {args.pool_size} x {args.dim} float32 ({alignment}), {args.num_queries} queries, "
        f"k={args.k}; {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"jax {jax.__version__} on {jax.devices()[0].platform}, faiss {faiss.__version__} "
        f"({faiss.omp_get_max_threads()} threads)")
  print(f"{'method':<26} {'median s':>9} {'min s':>8} {'queries/s':>10}  every run (s)")
  rates = {}
  for name, seconds in times.items():
    rates[name] = args.num_queries / statistics.median(seconds)
    print(f"{name:<26} {statistics.median(seconds):9.2f} {min(seconds):8.2f} {rates[name]:10.1f}  "
          + " ".join(f"{s:.2f}" for s in seconds))
  print(f"ratio (hybridir / faiss queries/s): "
        f"{rates['hybridir.evaluation.retrieval.top_k'] / rates['faiss IndexFlatIP']:.2f}")
  print(f"top-{args.k} overlap between the two: {agreement:.4f}")


if __name__ == "__main__":
  main()
