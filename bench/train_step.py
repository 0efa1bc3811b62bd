"""Training-step throughput, MFU and memory: the hybridir dual-encoder step vs PyTorch.

speed: one full step (queries and passages through the shared encoder, dropout 0.1, in-batch
softmax loss at temperature 0.05, backward, global-norm clipping 1.0, optimizer update) from
`train_step.make_train_step`, jitted once (compile excluded), with AdamW and with Adafactor, each
with the layers' formulations (`--kernels`: "cpu", tuned for XLA:CPU, and "portable";
hybridir.models.layers), alternating step by step with the same step in eager PyTorch
(transformers' MT5EncoderModel / XLMRobertaModel with the same dims, mean pooling + L2 norm,
cross-entropy over q @ p.T / 0.05, torch.optim.AdamW, model.train()); bfloat16 runs the peer under torch.autocast (float32 weights),
only on a CPU with bf16 units (AVX512-BF16 or AMX; elsewhere PyTorch emulates bf16 matmuls at
~1 GFLOP/s and the peer is skipped, saying so). The header names the CPU and its vector features.
Each implementation runs in worker processes of its own, one at a time, in alternating rounds
(compile, warm-up, `--repeats` timed steps per round); peak RSS per implementation reported.
Every worker, ours and the peer's, starts with the same GLIBC_TUNABLES (`--glibc_tunables`,
default glibc's defaults).
MFU = model FLOPs / median step time / measured peak float32 matmul rate of jnp.dot.
memory: in a subprocess, a few steps of a full-vocabulary mT5-base dual encoder (Adafactor),
reporting peak RSS and parameter / optimizer-state sizes.

  python bench/train_step.py [--models mt5_small,xlmr_base] [--dtypes float32,bfloat16]
      [--kernels cpu,portable] [--optimizers adamw,adafactor] [--batch_size 32]
      [--query_length 64] [--passage_length 256] [--rounds 2] [--repeats 2]
      [--parts speed,memory] [--memory_model mt5_base] [--memory_batch_size 8]
      [--glibc_tunables glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:...]
"""
import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from hybridir import gin_utils  # noqa: E402
from hybridir.models import t5  # noqa: E402
from hybridir.training import flops  # noqa: E402
from hybridir.training import optim  # noqa: E402
from hybridir.training import train_step as step_lib  # noqa: E402
from hybridir.training import trainer  # noqa: E402
import peak_matmul  # noqa: E402

TEMPERATURE = 0.05
CLIP_NORM = 1.0


def load_model(name: str, dtype: str, kernels: str = "cpu"):
  """The gin model file's DualEncoder with ACTIVATION_DTYPE and KERNELS set (dropout as
  configured); the random streams as the trainer sets them for `kernels`."""
  model = gin_utils.macro_values([f"gin_configs/models/{name}.gin"],
                                 [f"ACTIVATION_DTYPE = '{dtype}'", f"KERNELS = '{kernels}'"],
                                 ["MODEL"])["MODEL"]
  # As trainer.train draws them (the benchmark times steps outside it).
  jax.config.update("jax_threefry_partitionable", trainer.partitionable_threefry(model))
  return model


def make_tokens(cfg, batch_size: int, length: int, rng) -> np.ndarray:
  """Random ids, lengths uniform in [length/2, length], EOS last, padding after (BOS for XLM-R)."""
  tokens = np.full((batch_size, length), cfg.pad_id, np.int32)
  for row, n in enumerate(rng.integers(length // 2, length + 1, batch_size)):
    tokens[row, :n] = rng.integers(3, cfg.vocab_size, n)
    if hasattr(cfg, "bos_id"):  # RoBERTa's <s> first.
      tokens[row, 0] = cfg.bos_id
    tokens[row, n - 1] = cfg.eos_id
  return tokens


def make_batch(cfg, batch_size, query_length, passage_length, seed=0):
  rng = np.random.default_rng(seed)
  return {"query_tokens": make_tokens(cfg, batch_size, query_length, rng),
          "passage_tokens": make_tokens(cfg, batch_size, passage_length, rng),
          "pair_ids": np.arange(batch_size, dtype=np.int32)}


def jax_step(model, optimizer_name, batch, learning_rate, weight_decay, grad_cache_chunks=1):
  """(jitted step, initial state, loss config): hybridir's train step as the trainer builds it."""
  optimizer = optim.create_optimizer(optimizer_name, learning_rate_schedule=learning_rate,
                                     weight_decay=weight_decay, gradient_clip_norm=CLIP_NORM)
  loss_config = step_lib.LossConfig(temperature=TEMPERATURE, grad_cache_chunks=grad_cache_chunks)
  train_step, _ = step_lib.make_train_step(model, optimizer, loss_config)
  query_length, passage_length = batch["query_tokens"].shape[1], batch["passage_tokens"].shape[1]

  def init(rng):
    params = step_lib.initial_params(
        step_lib.init_model_params(model, rng, query_length, passage_length), loss_config)
    return step_lib.TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))

  state = jax.jit(init)(jax.random.PRNGKey(0))
  return jax.jit(train_step, donate_argnums=0, compiler_options=step_lib.compiler_options()), state


def torch_peer(cfg, batch, dtype, learning_rate, weight_decay, device="cpu"):
  """A closure running one eager PyTorch training step of the same dual encoder on `device`."""
  import torch
  import transformers
  if isinstance(cfg, t5.T5Config):
    hf = transformers.MT5Config(
        vocab_size=cfg.vocab_size, d_model=cfg.emb_dim, d_kv=cfg.head_dim, d_ff=cfg.mlp_dim,
        num_layers=cfg.num_layers, num_heads=cfg.num_heads, feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=cfg.relative_attention_num_buckets,
        relative_attention_max_distance=cfg.relative_attention_max_distance,
        dropout_rate=cfg.dropout_rate, layer_norm_epsilon=cfg.layer_norm_epsilon)
    encoder = transformers.MT5EncoderModel(hf)
  else:
    hf = transformers.XLMRobertaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.emb_dim, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.mlp_dim, hidden_act="gelu",
        hidden_dropout_prob=cfg.dropout_rate,
        attention_probs_dropout_prob=cfg.attention_dropout_rate,
        max_position_embeddings=cfg.max_position_embeddings, type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.layer_norm_epsilon, pad_token_id=cfg.pad_id, bos_token_id=cfg.bos_id,
        eos_token_id=cfg.eos_id)
    encoder = transformers.XLMRobertaModel(hf, add_pooling_layer=False)
  encoder.to(device).train()
  optimizer = torch.optim.AdamW(encoder.parameters(), lr=learning_rate, weight_decay=weight_decay)
  tensors = {name: torch.tensor(batch[f"{name}_tokens"], dtype=torch.long, device=device)
             for name in ("query", "passage")}
  masks = {name: tokens != cfg.pad_id for name, tokens in tensors.items()}
  labels = torch.arange(batch["query_tokens"].shape[0], device=device)
  autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if dtype == "bfloat16" else (
      contextlib.nullcontext)

  def embed(name):
    hidden = encoder(input_ids=tensors[name], attention_mask=masks[name]).last_hidden_state
    weights = masks[name].unsqueeze(-1).float()
    pooled = (hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    return torch.nn.functional.normalize(pooled, dim=-1)

  def step():
    with autocast():
      queries, passages = embed("query"), embed("passage")
    loss = torch.nn.functional.cross_entropy(queries @ passages.T / TEMPERATURE, labels)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(encoder.parameters(), CLIP_NORM)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # Frees the gradients between steps, as JAX does.
    return loss.item()

  return step


def tree_bytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype"))


def proc_status_kib(field: str) -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  return -1


def run_speed(args, peaks):
  """Every (model, dtype) in turn; each one's worker processes exit before the next."""
  rows = []
  for name in args.models.split(","):
    for dtype in args.dtypes.split(","):
      rows += speed_config(args, peaks, name, dtype)
  return rows


def jax_runner(model, optimizer_name, batch, args):
  """A closure running one step of hybridir's jitted train step (the state lives inside)."""
  step, state = jax_step(model, optimizer_name, batch, args.learning_rate, args.weight_decay)
  jax_batch = jax.tree.map(jnp.asarray, batch)
  holder = {"state": state, "rng": jax.random.PRNGKey(1)}

  def run():
    holder["state"], metrics = step(holder["state"], jax_batch, holder["rng"])
    jax.block_until_ready((holder["state"], metrics))
    return float(metrics["loss"])

  return run


class StepWorker:
  """One implementation's training step in its own process, run one step per request.

  One implementation in memory at a time: with both frameworks' models, optimizer states and
  activations resident (in one process or two), RAM ran nearly full and both steps slowed by
  ~30% (BENCHMARKS.md).
  """

  def __init__(self, args, implementation: str, name: str, dtype: str, kernels: str = "cpu"):
    command = [sys.executable, os.path.abspath(__file__), "--step_worker", implementation,
               "--models", name, "--dtypes", dtype, "--kernels", kernels,
               "--batch_size", str(args.batch_size),
               "--query_length", str(args.query_length),
               "--passage_length", str(args.passage_length), "--threads", str(args.threads),
               "--learning_rate", str(args.learning_rate),
               "--weight_decay", str(args.weight_decay)]
    self.label = implementation
    self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    text=True, env=worker_env(args))
    self._reply("ready")

  def step(self) -> float:
    """Seconds of one step, timed inside the worker."""
    self.process.stdin.write("step\n")
    self.process.stdin.flush()
    return float(self._reply("seconds"))

  def close(self) -> int:
    """Stops the worker; returns its peak RSS in bytes."""
    self.process.stdin.close()
    peak = int(self._reply("peak_rss"))
    self.process.wait()
    return peak

  def _reply(self, keyword: str) -> str:
    for line in self.process.stdout:
      if line.startswith(keyword + " ") or line.strip() == keyword:
        return line[len(keyword):].strip()
      print(line, end="")  # Anything else the worker prints.
    raise RuntimeError(f"step worker {self.label!r} exited with status {self.process.wait()} "
                       f"before answering {keyword!r} (-9 = killed, e.g. out of memory)")


def worker_env(args) -> dict:
  """Every worker, either implementation's, starts with the same glibc malloc settings."""
  return dict(os.environ, GLIBC_TUNABLES=args.glibc_tunables)


def step_worker(args):
  """The worker's side of StepWorker: builds one step, then runs one per 'step' line on stdin."""
  name, dtype = args.models, args.dtypes
  model = load_model(name, dtype, args.kernels)
  batch = make_batch(model.encoder_config, args.batch_size, args.query_length,
                     args.passage_length)
  if args.step_worker == "pytorch":
    import torch
    torch.set_num_threads(args.threads)
    run = torch_peer(model.encoder_config, batch, dtype, args.learning_rate, args.weight_decay)
  else:
    run = jax_runner(model, args.step_worker, batch, args)
  print("ready", flush=True)
  for line in sys.stdin:
    if line.strip() != "step":
      raise SystemExit(f"step worker: unknown request {line!r}")
    print(f"seconds {timed(run)!r}", flush=True)
  print(f"peak_rss {proc_status_kib('VmHWM') * 1024}", flush=True)


def speed_config(args, peaks, name, dtype):
  """Times hybridir's step (each optimizer) and the peer's in rounds: in each round every
  implementation in turn starts a worker process, compiles, warms up, times `repeats` steps and
  exits, so that only one implementation is in memory at a time. Prints one table."""
  cfg = load_model(name, dtype).encoder_config
  step_flops = flops.train_step_flops(cfg, args.batch_size,
                                      (args.query_length, args.passage_length))
  implementations = {f"hybridir jit {optimizer} {kernels}": (optimizer, kernels)
                     for kernels in args.kernels.split(",")
                     for optimizer in args.optimizers.split(",")}
  peer = args.peer
  if peer and dtype == "bfloat16" and not peak_matmul.has_bf16_units(args.cpu):
    print(f"\n{name} {dtype}: PyTorch peer skipped, this CPU has no bf16 units (AVX512-BF16 or "
          "AMX): PyTorch would emulate bf16 matmuls")
    peer = False
  if peer:
    implementations["pytorch eager adamw"] = ("pytorch", "cpu")  # kernels: unused
  compile_s, timings, peak_rss = {}, {label: [] for label in implementations}, {}
  for _ in range(args.rounds):
    for label, (implementation, kernels) in implementations.items():
      worker = StepWorker(args, implementation, name, dtype, kernels)
      first = worker.step()  # Compiles; later warm-up steps settle allocations.
      compile_s.setdefault(label, first)
      for _ in range(args.warmup_steps - 1):
        worker.step()
      timings[label] += [worker.step() for _ in range(args.repeats)]
      peak_rss[label] = max(peak_rss.get(label, 0), worker.close())
  print(f"\n{name} ({flops.matmul_params(cfg) / 1e6:.1f}M matmul params, vocab {cfg.vocab_size}), "
        f"{dtype} activations, batch {args.batch_size}, query {args.query_length}, passage "
        f"{args.passage_length}, dropout {cfg.dropout_rate}, {args.rounds} alternating rounds "
        f"of {args.repeats} steps; model FLOPs/step {step_flops / 1e12:.3f} T; "
        f"GLIBC_TUNABLES={args.glibc_tunables!r}; {peak_matmul.describe_cpu(args.cpu)}")
  print(f"{'implementation':<33}{'median s':>9}{'min s':>8}{'ex/s':>7}{'GFLOP/s':>9}"
        f"{'MFU f32':>9}{'first s':>9}{'RSS GiB':>9}  every run (s)")
  medians, rows = {}, []
  for label, times in timings.items():
    median = medians[label] = float(np.median(times))
    rate = step_flops / median
    print(f"{label:<33}{median:>9.2f}{min(times):>8.2f}{args.batch_size / median:>7.2f}"
          f"{rate / 1e9:>9.1f}{rate / peaks['jax float32']:>9.1%}{compile_s[label]:>9.1f}"
          f"{peak_rss[label] / 2**30:>9.2f}  "
          + " ".join(f"{t:.2f}" for t in times), flush=True)
    rows.append({"model": name, "dtype": dtype, "implementation": label, "median_s": median,
                 "min_s": min(times), "examples_per_s": args.batch_size / median,
                 "gflops": rate / 1e9, "mfu_f32": rate / peaks["jax float32"],
                 "first_s": compile_s[label], "times": times, "peak_rss_bytes": peak_rss[label]})
  best = {label: min(times) for label, times in timings.items()}
  peer_label = "pytorch eager adamw"
  for label in medians:
    if peer and label.startswith("hybridir"):
      print(f"ratio {label} / {peer_label} (examples/s): medians "
            f"{medians[peer_label] / medians[label]:.2f}x, "
            f"best {best[peer_label] / best[label]:.2f}x", flush=True)
  for optimizer in args.optimizers.split(","):
    cpu, portable = f"hybridir jit {optimizer} cpu", f"hybridir jit {optimizer} portable"
    if cpu in medians and portable in medians:
      print(f"ratio {cpu} / {portable} kernels (examples/s): medians "
            f"{medians[portable] / medians[cpu]:.2f}x, best {best[portable] / best[cpu]:.2f}x",
            flush=True)
  return rows


def timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def memory_child(args):
  """Runs in a fresh process (no torch): a few steps; prints one JSON line with the sizes."""
  model = load_model(args.memory_model, args.memory_dtype, args.memory_kernels)
  cfg = model.encoder_config
  batch = make_batch(cfg, args.memory_batch_size, args.query_length, args.passage_length)
  jax_batch = jax.tree.map(jnp.asarray, batch)
  step, state = jax_step(model, args.memory_optimizer, batch, args.learning_rate,
                         args.weight_decay, args.memory_grad_cache_chunks)
  state = jax.block_until_ready(state)
  result = {"model": args.memory_model, "dtype": args.memory_dtype,
            "optimizer": args.memory_optimizer, "batch_size": args.memory_batch_size,
            "grad_cache_chunks": args.memory_grad_cache_chunks, "vocab_size": cfg.vocab_size,
            "num_params": sum(x.size for x in jax.tree.leaves(state.params)),
            "param_bytes": tree_bytes(state.params),
            "opt_state_bytes": tree_bytes(state.opt_state),
            "rss_after_init_bytes": proc_status_kib("VmRSS") * 1024}
  rng = jax.random.PRNGKey(1)
  compiled = step.lower(state, jax_batch, rng).compile()
  analysis = compiled.memory_analysis()
  if analysis is not None:
    result["xla_temp_bytes"] = int(analysis.temp_size_in_bytes)
  times, losses = [], []
  for _ in range(args.memory_steps):
    start = time.perf_counter()
    state, metrics = compiled(state, jax_batch, rng)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
    losses.append(float(metrics["loss"]))
  result.update(step_times_s=times, losses=losses,
                peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                vm_hwm_bytes=proc_status_kib("VmHWM") * 1024)
  print("MEMORY_RESULT " + json.dumps(result), flush=True)


def run_memory(args):
  command = [sys.executable, os.path.abspath(__file__), "--memory_child",
             "--memory_model", args.memory_model, "--memory_dtype", args.memory_dtype,
             "--memory_optimizer", args.memory_optimizer, "--memory_kernels", args.memory_kernels,
             "--memory_batch_size", str(args.memory_batch_size),
             "--memory_steps", str(args.memory_steps),
             "--memory_grad_cache_chunks", str(args.memory_grad_cache_chunks),
             "--query_length", str(args.query_length),
             "--passage_length", str(args.passage_length)]
  with open("/proc/meminfo") as f:
    total = int(f.readline().split()[1]) * 1024
  start = time.perf_counter()
  process = subprocess.run(command, capture_output=True, text=True, env=worker_env(args))
  wall = time.perf_counter() - start
  lines = [line for line in process.stdout.splitlines() if line.startswith("MEMORY_RESULT ")]
  print(f"\nmemory: {args.memory_model} dual encoder, {args.memory_dtype} activations, "
        f"{args.memory_kernels} kernels, "
        f"{args.memory_optimizer}, batch {args.memory_batch_size}, query {args.query_length}, "
        f"passage {args.passage_length}, grad_cache_chunks {args.memory_grad_cache_chunks}, "
        f"{args.memory_steps} steps in a subprocess ({wall:.0f} s wall)")
  if process.returncode or not lines:
    print(f"DID NOT COMPLETE: exit status {process.returncode} (-9 = killed, e.g. out of memory)")
    print(process.stderr[-2000:])
    return None
  result = json.loads(lines[0][len("MEMORY_RESULT "):])
  gib = lambda n: f"{n / 2**30:.2f} GiB"
  print(f"parameters: {result['num_params'] / 1e6:.1f}M, {gib(result['param_bytes'])}; "
        f"optimizer state {result['opt_state_bytes'] / 2**20:.1f} MiB; XLA temporaries of the step "
        f"{gib(result.get('xla_temp_bytes', 0))}")
  # VmHWM is the child's own peak; ru_maxrss also counts the parent's peak, inherited at fork.
  print(f"RSS after init {gib(result['rss_after_init_bytes'])}; peak RSS (VmHWM) "
        f"{gib(result['vm_hwm_bytes'])} (ru_maxrss {gib(result['peak_rss_bytes'])}), of "
        f"{gib(total)} RAM: {'fits' if result['vm_hwm_bytes'] < total else 'does NOT fit'}")
  print("step times (s): " + " ".join(f"{t:.1f}" for t in result["step_times_s"])
        + "; losses: " + " ".join(f"{x:.3f}" for x in result["losses"]))
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--parts", default="speed,memory", help="comma list of speed, memory")
  parser.add_argument("--models", default="mt5_small,xlmr_base", help="gin_configs/models names")
  parser.add_argument("--dtypes", default="float32,bfloat16", help="ACTIVATION_DTYPE values")
  parser.add_argument("--optimizers", default="adamw,adafactor", help="for hybridir's step")
  parser.add_argument("--kernels", default="cpu,portable",
                      help="KERNELS values for hybridir's step (hybridir.models.layers)")
  parser.add_argument("--peer", type=int, default=1, help="0: skip the PyTorch peer")
  parser.add_argument("--glibc_tunables", default="",
                      help="GLIBC_TUNABLES of every worker, ours and the peer's (default: "
                           "glibc's defaults; BENCHMARKS.md, 'Page faults')")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--query_length", type=int, default=64)
  parser.add_argument("--passage_length", type=int, default=256)
  parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (speed)")
  parser.add_argument("--repeats", type=int, default=2, help="timed steps per round (speed)")
  parser.add_argument("--warmup_steps", type=int, default=2, help=">= 1; the first compiles")
  parser.add_argument("--learning_rate", type=float, default=1e-4)
  parser.add_argument("--weight_decay", type=float, default=0.01)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--matmul_size", type=int, default=4096)
  parser.add_argument("--matmul_repeats", type=int, default=5)
  parser.add_argument("--memory_model", default="mt5_base")
  parser.add_argument("--memory_dtype", default="float32")
  parser.add_argument("--memory_optimizer", default="adafactor")
  parser.add_argument("--memory_kernels", default="cpu")
  parser.add_argument("--memory_batch_size", type=int, default=8)
  parser.add_argument("--memory_steps", type=int, default=3)
  parser.add_argument("--memory_grad_cache_chunks", type=int, default=1)
  parser.add_argument("--memory_child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--step_worker", help=argparse.SUPPRESS)
  args = parser.parse_args()
  args.cpu = peak_matmul.cpu_features()
  if args.memory_child:
    return memory_child(args)
  if args.step_worker:
    return step_worker(args)
  if args.warmup_steps < 1:
    raise SystemExit(f"--warmup_steps must be >= 1, got {args.warmup_steps}")
  parts = set(args.parts.split(","))
  if not parts <= {"speed", "memory"}:
    raise SystemExit(f"--parts must be a comma list of speed, memory; got {args.parts!r}")
  print(f"jax {jax.__version__} ({jax.default_backend()}), {os.cpu_count()} cores, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
  print(peak_matmul.describe_cpu(args.cpu))
  if "speed" in parts:
    import torch
    torch.set_num_threads(args.threads)
    peaks = {}
    for dtype in ("float32", "bfloat16"):
      peaks[f"jax {dtype}"] = peak_matmul.jax_matmul_rate(dtype, args.matmul_size,
                                                          args.matmul_repeats)
      if args.peer and (dtype == "float32" or peak_matmul.has_bf16_units(args.cpu)):
        peaks[f"pytorch {dtype}"] = peak_matmul.torch_matmul_rate(dtype, args.matmul_size,
                                                                  args.matmul_repeats)
    print(f"peak matmul ({args.matmul_size}^2, best of {args.matmul_repeats}), GFLOP/s: "
          + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in peaks.items()))
    run_speed(args, peaks)
  if "memory" in parts:
    run_memory(args)
  print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
  sys.exit(main())
