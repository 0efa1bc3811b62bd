"""Measured peak matmul rate (FLOP/s) of this machine: one large square matmul, jitted, best of N.

The denominator of model-FLOPs utilisation (bench/train_step.py). Reports the CPU's model and
vector features (`cpu_features`) and JAX (XLA:CPU) and, as a reference for what the hardware can
do, PyTorch, in float32 and bfloat16; PyTorch's bfloat16 only on a CPU with bf16 units
(`has_bf16_units`: elsewhere it is emulated at ~1 GFLOP/s, minutes per probe). `--forms` also
times the dense layer's forward and backward matmuls ([tokens, in] @ [in, out]) in the forms
XLA:CPU may see them: bf16 or float32 results, transposed operands folded into the dot (what
autodiff gives) or materialised first (`hybridir.models.layers._transposed`).

  python bench/peak_matmul.py [--size 4096] [--repeats 5] [--forms 4096,768,3072]
"""
import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from hybridir.models import layers  # noqa: E402


# /proc/cpuinfo flags that decide the matmul rates: 256-/512-bit vectors and bf16 units.
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_features(path: str = "/proc/cpuinfo") -> dict:
  """{'model': the first processor's model name, 'flags': those of CPU_FLAGS it has}."""
  model, flags = "unknown", set()
  try:
    with open(path) as f:
      for line in f:
        name, _, value = line.partition(":")
        if name.strip() == "model name" and model == "unknown":
          model = value.strip()
        elif name.strip() == "flags":
          flags = set(value.split())
          break
  except OSError:
    pass
  return {"model": model, "flags": [flag for flag in CPU_FLAGS if flag in flags]}


def has_bf16_units(features: dict) -> bool:
  """Whether bfloat16 matmuls run natively (AVX512-BF16 or AMX), not emulated."""
  return bool({"avx512_bf16", "amx_bf16"} & set(features["flags"]))


def describe_cpu(features: dict) -> str:
  return (f"CPU: {features['model']}, {os.cpu_count()} cores, flags "
          f"{' '.join(features['flags']) or 'none of ' + ' '.join(CPU_FLAGS)}")


def jax_matmul_rate(dtype: str = "float32", size: int = 4096, repeats: int = 5) -> float:
  """FLOP/s of a jitted [size, size] @ [size, size] with `dtype` operands accumulated in float32
  (as hybridir's layers multiply; a bf16-output dot runs at half the rate on XLA:CPU): best of
  `repeats`, after warm-up."""
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.standard_normal((size, size), np.float32), dtype)
  b = jnp.asarray(rng.standard_normal((size, size), np.float32), dtype)
  matmul = lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32)
  return 2 * size ** 3 / _best_jitted_time(matmul, a, b, repeats)


def torch_matmul_rate(dtype: str = "float32", size: int = 4096, repeats: int = 5) -> float:
  """FLOP/s of torch.mm in `dtype` with torch's current thread count (best of `repeats`)."""
  import torch
  a = torch.randn(size, size).to(getattr(torch, dtype))
  b = torch.randn(size, size).to(getattr(torch, dtype))
  torch.mm(a, b)
  best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
  return 2 * size ** 3 / best


def dense_forms(tokens: int, features_in: int, features_out: int, repeats: int = 5) -> dict:
  """GFLOP/s of each form of a dense layer's three matmuls, jitted, best of `repeats`."""
  rng = np.random.default_rng(0)
  bf16, f32 = jnp.bfloat16, jnp.float32
  x = jnp.asarray(rng.standard_normal((tokens, features_in)), bf16)
  w = jnp.asarray(rng.standard_normal((features_in, features_out)), bf16)
  g = jnp.asarray(rng.standard_normal((tokens, features_out)), bf16)
  acc = dict(preferred_element_type=f32)
  forms = {
      "forward x @ w, float32": (lambda x, w: x.astype(f32) @ w.astype(f32), x, w),
      "forward x @ w, bf16 result": (lambda x, w: x @ w, x, w),
      "forward x @ w, bf16 -> f32 accumulation": (lambda x, w: jnp.dot(x, w, **acc), x, w),
      "grad x: g @ w.T folded, bf16 -> f32": (lambda g, w: jnp.dot(g, w.T, **acc), g, w),
      "grad x: g @ w.T materialised, bf16 -> f32":
          (lambda g, w: jnp.dot(g, layers._transposed(w), **acc), g, w),
      "grad w: x.T @ g folded, bf16 -> f32": (lambda x, g: jnp.dot(x.T, g, **acc), x, g),
      "grad w: x.T @ g materialised, bf16 -> f32":
          (lambda x, g: jnp.dot(layers._transposed(x), g, **acc), x, g),
  }
  flops = 2 * tokens * features_in * features_out
  return {label: flops / _best_jitted_time(fn, a, b, repeats)
          for label, (fn, a, b) in forms.items()}


def _best_jitted_time(fn, a, b, repeats: int) -> float:
  """Seconds of jit(fn)(a, b): best of `repeats`, after a compiling warm-up call."""
  compiled = jax.jit(fn)
  compiled(a, b).block_until_ready()
  return min(_timed(lambda: compiled(a, b).block_until_ready()) for _ in range(repeats))


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=4096)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--forms", default="", help="tokens,in,out: time the dense-layer forms")
  args = parser.parse_args()
  import torch
  torch.set_num_threads(os.cpu_count())
  features = cpu_features()
  print(describe_cpu(features))
  print(f"{args.size}x{args.size} matmul, best of {args.repeats}, {os.cpu_count()} cores")
  print(f"{'implementation':<16}{'dtype':<10}{'GFLOP/s':>10}")
  for dtype in ("float32", "bfloat16"):
    print(f"{'jax (jit)':<16}{dtype:<10}"
          f"{jax_matmul_rate(dtype, args.size, args.repeats) / 1e9:>10.1f}")
    if dtype == "bfloat16" and not has_bf16_units(features):
      print("pytorch bfloat16: skipped, this CPU has no bf16 units (PyTorch would emulate it)")
      continue
    print(f"{'pytorch':<16}{dtype:<10}"
          f"{torch_matmul_rate(dtype, args.size, args.repeats) / 1e9:>10.1f}")
  if args.forms:
    tokens, features_in, features_out = (int(n) for n in args.forms.split(","))
    print(f"\ndense layer [{tokens}, {features_in}] @ [{features_in}, {features_out}], jax (jit), "
          f"best of {args.repeats}")
    for label, rate in dense_forms(tokens, features_in, features_out, args.repeats).items():
      print(f"{label:<46}{rate / 1e9:>10.1f} GFLOP/s")


if __name__ == "__main__":
  sys.exit(main())
