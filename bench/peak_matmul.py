"""Measured peak matmul rate (FLOP/s) of this machine: one large square matmul, jitted, best of N.

The denominator of model-FLOPs utilisation (bench/train_step.py). Reports JAX (XLA:CPU) and,
as a reference for what the hardware can do, PyTorch, in float32 and bfloat16.

  python bench/peak_matmul.py [--size 4096] [--repeats 5]
"""
import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def jax_matmul_rate(dtype: str = "float32", size: int = 4096, repeats: int = 5) -> float:
  """FLOP/s of a jitted [size, size] @ [size, size] with `dtype` operands accumulated in float32
  (as hybridir's layers multiply; a bf16-output dot runs at half the rate on XLA:CPU): best of
  `repeats`, after warm-up."""
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.standard_normal((size, size), np.float32), dtype)
  b = jnp.asarray(rng.standard_normal((size, size), np.float32), dtype)
  matmul = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  matmul(a, b).block_until_ready()
  best = min(_timed(lambda: matmul(a, b).block_until_ready()) for _ in range(repeats))
  return 2 * size ** 3 / best


def torch_matmul_rate(dtype: str = "float32", size: int = 4096, repeats: int = 5) -> float:
  """FLOP/s of torch.mm in `dtype` with torch's current thread count (best of `repeats`)."""
  import torch
  a = torch.randn(size, size).to(getattr(torch, dtype))
  b = torch.randn(size, size).to(getattr(torch, dtype))
  torch.mm(a, b)
  best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
  return 2 * size ** 3 / best


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=4096)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  import torch
  torch.set_num_threads(os.cpu_count())
  print(f"{args.size}x{args.size} matmul, best of {args.repeats}, {os.cpu_count()} cores")
  print(f"{'implementation':<16}{'dtype':<10}{'GFLOP/s':>10}")
  for dtype in ("float32", "bfloat16"):
    print(f"{'jax (jit)':<16}{dtype:<10}"
          f"{jax_matmul_rate(dtype, args.size, args.repeats) / 1e9:>10.1f}")
    print(f"{'pytorch':<16}{dtype:<10}"
          f"{torch_matmul_rate(dtype, args.size, args.repeats) / 1e9:>10.1f}")


if __name__ == "__main__":
  sys.exit(main())
