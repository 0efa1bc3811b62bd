"""The trainer and the train step on one GPU: correctness checks, then speed against PyTorch.

Everything else in this repository is tested on CPU, where the layers take their CPU paths
(`layers` branches on the backend); this script runs the portable paths on an accelerator.

  trainer: `trainer.train` on a tiny dual encoder and learnable synthetic pairs: the loss falls,
    the step compiles once, and a run stopped at step 20 then resumed from its checkpoint ends
    where an uninterrupted run ends (largest parameter difference printed).
  numerics: one float32 train step from the same state and batch on the GPU and on the CPU
    backend: loss and updated parameters, largest relative difference.
  speed: the dual-encoder train step (AdamW; the step bench/train_step.py times on CPU) for
    mT5-small and XLM-R base, float32 and bfloat16, against transformers' encoder in eager
    PyTorch on the same GPU (bench/train_step.torch_peer): median seconds, ratio, MFU against
    the measured bf16 / f32 matmul rate of jnp.dot.

  python bench/gpu_check.py [--parts trainer,numerics,speed] [--batch_sizes 32,256]
Prints a table and writes gpu_check.json to --out (default: the working directory).
"""
import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # PyTorch shares the GPU.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from hybridir import gin_utils  # noqa: E402
from hybridir.training import flops  # noqa: E402
from hybridir.training import optim  # noqa: E402
from hybridir.training import partitioning  # noqa: E402
from hybridir.training import trainer  # noqa: E402
import train_step as bench_step  # noqa: E402

LEARNING_RATE, WEIGHT_DECAY = 1e-4, 0.01


class LearnablePairs:
  """Batches in which each passage starts with its query's tokens, so the loss can fall."""
  name = "learnable_pairs"

  def __init__(self, batch_size: int, vocab_size: int, query_length: int, passage_length: int):
    self.batch_size, self.vocab_size = batch_size, vocab_size
    self.query_length, self.passage_length = query_length, passage_length

  def batch(self, step: int) -> dict:
    rng = np.random.default_rng([11, step])
    query = rng.integers(3, self.vocab_size, (self.batch_size, self.query_length))
    query[:, -1] = 1
    tail = rng.integers(3, self.vocab_size, (self.batch_size,
                                             self.passage_length - self.query_length))
    return {"query_tokens": query.astype(np.int32),
            "passage_tokens": np.concatenate([query, tail], 1).astype(np.int32),
            "pair_ids": (np.arange(self.batch_size) + step * self.batch_size).astype(np.int32)}


def check_trainer(results: dict) -> None:
  model = bench_step.load_model("mt5_tiny", "float32")
  lengths = {"query": 16, "passage": 32}
  pairs = LearnablePairs(32, model.encoder_config.vocab_size, 16, 32)
  options = dict(model=model, train_input=pairs, task_feature_lengths=lengths,
                 learning_rate_schedule=3e-3, checkpoint_cfg=trainer.CheckpointConfig(period=10),
                 log_period=10,
                 optimizer_fn=lambda learning_rate_schedule: optim.create_optimizer(
                     "adamw", learning_rate_schedule),
                 mesh=partitioning.create_mesh(1, devices=jax.devices()[:1]))
  with tempfile.TemporaryDirectory() as whole, tempfile.TemporaryDirectory() as split:
    full = trainer.train(train_steps=40, model_dir=whole, **options)
    trainer.train(train_steps=20, model_dir=split, **options)
    resumed = trainer.train(train_steps=40, model_dir=split, **options)
  losses = [h["loss"] for h in full.history]
  difference = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
      jax.tree.leaves(full.state.params), jax.tree.leaves(resumed.state.params)))
  results["trainer"] = {
      "first_5_loss": float(np.mean(losses[:5])), "last_5_loss": float(np.mean(losses[-5:])),
      "chance_loss": float(np.log(pairs.batch_size)), "compilations": full.compilations,
      "resumed_steps": [h["step"] for h in resumed.history][:1] + [resumed.history[-1]["step"]],
      "resume_max_param_difference": difference,
      "platform": jax.devices()[0].platform}
  print("trainer:", json.dumps(results["trainer"]), flush=True)


def check_numerics(results: dict) -> None:
  # No dropout: the CPU layers draw their dropout bits another way.
  model = gin_utils.macro_values(["gin_configs/models/mt5_small.gin"], ["DROPOUT_RATE = 0.0"],
                                 ["MODEL"])["MODEL"]
  batch = bench_step.make_batch(model.encoder_config, 16, 32, 64)
  outcome = {}
  for platform in ("gpu", "cpu"):
    device = jax.devices("cpu" if platform == "cpu" else None)[0]
    with jax.default_device(device):
      step, state = bench_step.jax_step(model, "adamw", batch, LEARNING_RATE, WEIGHT_DECAY)
      state, metrics = step(state, jax.tree.map(jnp.asarray, batch), jax.random.PRNGKey(1))
      outcome[platform] = (float(metrics["loss"]), jax.device_get(state.params))
  (gpu_loss, gpu_params), (cpu_loss, cpu_params) = outcome["gpu"], outcome["cpu"]
  relative = max(float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-12))
                 for a, b in zip(jax.tree.leaves(gpu_params), jax.tree.leaves(cpu_params)))
  results["numerics"] = {"model": "mt5_small, dropout 0, batch 16, query 32, passage 64",
                         "gpu_loss": gpu_loss, "cpu_loss": cpu_loss,
                         "max_relative_param_difference": relative}
  print("numerics:", json.dumps(results["numerics"]), flush=True)


def median_seconds(run, warmup: int, repeats: int) -> tuple[float, float]:
  first = time.perf_counter()
  run()
  compile_s = time.perf_counter() - first
  for _ in range(warmup):
    run()
  times = []
  for _ in range(repeats):
    tick = time.perf_counter()
    run()
    times.append(time.perf_counter() - tick)
  return float(np.median(times)), compile_s


def check_speed(results: dict, batch_sizes: list[int], repeats: int, models: list[str],
                dtypes: list[str]) -> None:
  import peak_matmul
  import torch
  peaks = {dtype: peak_matmul.jax_matmul_rate(dtype, 8192, 5) for dtype in ("float32", "bfloat16")}
  results["peak_matmul_tflops"] = {k: v / 1e12 for k, v in peaks.items()}
  print("jnp.dot peak TFLOP/s:", json.dumps(results["peak_matmul_tflops"]), flush=True)
  rows = []
  for name in models:
    for dtype in dtypes:
      for batch_size in batch_sizes:
        model = bench_step.load_model(name, dtype)
        cfg = model.encoder_config
        batch = bench_step.make_batch(cfg, batch_size, 64, 256)
        step_flops = flops.train_step_flops(cfg, batch_size, (64, 256))
        step, state = bench_step.jax_step(model, "adamw", batch, LEARNING_RATE, WEIGHT_DECAY)
        jax_batch = jax.tree.map(jnp.asarray, batch)
        holder = {"state": state}

        def run_jax():
          holder["state"], metrics = step(holder["state"], jax_batch, jax.random.PRNGKey(1))
          jax.block_until_ready(metrics)

        ours, ours_compile = median_seconds(run_jax, 3, repeats)
        del holder["state"], state, step
        peer_step = bench_step.torch_peer(cfg, batch, dtype, LEARNING_RATE, WEIGHT_DECAY,
                                          device="cuda")
        peer, _ = median_seconds(peer_step, 3, repeats)
        del peer_step
        torch.cuda.empty_cache()
        row = {"model": name, "dtype": dtype, "batch": batch_size, "ours_s": ours,
               "pytorch_s": peer, "speedup": peer / ours, "compile_s": ours_compile,
               "tflops_per_step": step_flops / 1e12,
               "mfu": step_flops / ours / peaks["bfloat16" if dtype == "bfloat16" else "float32"]}
        rows.append(row)
        print("speed:", json.dumps(row), flush=True)
  results["speed"] = rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--parts", default="trainer,numerics,speed")
  parser.add_argument("--batch_sizes", default="32,256")
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--models", default="mt5_small,xlmr_base")
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--out", default=".")
  args = parser.parse_args()
  results = {"jax": jax.__version__, "devices": [str(d) for d in jax.devices()]}
  print(json.dumps(results), flush=True)
  parts = args.parts.split(",")
  if "trainer" in parts:
    check_trainer(results)
  if "numerics" in parts:
    check_numerics(results)
  if "speed" in parts:
    check_speed(results, [int(b) for b in args.batch_sizes.split(",")], args.repeats,
                args.models.split(","), args.dtypes.split(","))
  with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
    json.dump(results, f, indent=1)
  if "speed" in results:
    print(f"\n{'model':<10}{'dtype':<10}{'batch':>6}{'ours s':>9}{'torch s':>9}{'speedup':>8}"
          f"{'MFU':>7}")
    for r in results["speed"]:
      print(f"{r['model']:<10}{r['dtype']:<10}{r['batch']:>6}{r['ours_s']:>9.4f}"
            f"{r['pytorch_s']:>9.4f}{r['speedup']:>8.2f}{r['mfu']:>7.1%}")


if __name__ == "__main__":
  main()
