"""Compiles a training run for a Cloud TPU slice ahead of time, on any machine, and says if it fits.

  python -m hybridir.aot --accelerator_type v4-32 --gin_file=gin_configs/runs/study/mt5_base.gin

builds the run's train step (trainer.sharded_train_step over trainer.state_layout) and the encode
step evaluation runs (encoder.encode_step on one host's chips, parameters split as training splits
them) from the same gin files a launch
uses, from shapes alone (no data, checkpoint or vocabulary is read), compiles both with libtpu's
compile-only devices and prints one JSON line: slice, mesh, per-chip bytes against the chip's HBM,
FLOPs per step, `fits`. Exit status 0: fits; 3: does not fit (an out-of-memory compile is a
result); 1: an error (one line on stderr). `--max_batch` also finds the largest global batch
that fits and the grad_cache_chunks that make the run's batch fit.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # Before jax: the devices are compile-only.

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from hybridir.cloud import accelerators  # noqa: E402
from hybridir import console  # noqa: E402
from hybridir.data import hybrid  # noqa: E402
from hybridir import errors  # noqa: E402
from hybridir.export import artifacts  # noqa: E402
from hybridir.export import encoder as encoder_lib  # noqa: E402
from hybridir import gin_utils  # noqa: E402
from hybridir.models import dual_encoder  # noqa: E402
from hybridir.training import flops as flops_lib  # noqa: E402
from hybridir.training import partitioning  # noqa: E402
from hybridir.training import train_step as step_lib  # noqa: E402
from hybridir.training import trainer  # noqa: E402

EXIT_FITS, EXIT_ERROR, EXIT_DOES_NOT_FIT = 0, 1, 3
PLATFORM = "tpu"
# Runs whose training is trainer.train as gin binds it (the study's run trains, then evaluates).
TRAINING_RUNS = (gin_utils.TRAINING_RUN, "hybridir.study.study_run.train_and_evaluate")
# XLA's out-of-memory messages, e.g. "the total memory required for HLO temporaries (40.00G)
# exceeds available HBM (30.75G)" or "Used 40.00G of 30.75G hbm".
_OOM_SIZES = (re.compile(r"required[^(]*\(([\d.]+)([KMGT]?)\)\s*exceeds available HBM"),
              re.compile(r"Used ([\d.]+)([KMGT]?) of [\d.]+[KMGT]? hbm"))
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class AotError(ValueError):
  """A run that cannot be compiled as configured (bad config, indivisible batch or mesh)."""


@dataclasses.dataclass
class TrainRun:
  """What a gin training run compiles: the model, shapes, optimizer, loss and sharding rules."""
  model: object
  query_length: int
  passage_length: int
  batch_size: int
  optimizer: object
  loss_config: step_lib.LossConfig
  rules: tuple
  num_partitions: int = 1  # Of the run's mesh (trainer.train.mesh = @partitioning.create_mesh()).


def train_run_from_gin(gin_files, gin_bindings=()) -> TrainRun:
  """The run the gin files describe; required paths (MODEL_DIR, CORPUS_DIR, ...) may stay unset."""
  gin_utils.parse(list(gin_files), list(gin_bindings), finalize=False)
  selector = gin_utils.run_selector()
  if selector is None:
    raise AotError("no RUN bound: include a run file (gin_configs/runs/*.gin)")
  if selector not in TRAINING_RUNS:
    as_written = (".".join(s.split(".")[-2:]) for s in TRAINING_RUNS)  # trainer.train
    raise AotError(f"RUN is {selector}; hybridir.aot compiles training runs "
                   f"(RUN = @{' or @'.join(as_written)})")
  train = gin_utils.TRAINING_RUN
  parameters = inspect.signature(trainer.train).parameters
  names = ("model", "task_feature_lengths", "optimizer_fn", "learning_rate_schedule",
           "loss_config", "logical_axis_rules")
  bound = gin_utils.bound_arguments(train, names)

  def argument(name):
    if name in bound:
      return bound[name]
    if parameters[name].default is inspect.Parameter.empty:
      raise AotError(f"trainer.train.{name} is not bound")
    return parameters[name].default

  lengths = argument("task_feature_lengths")
  schedule = gin_utils.referenced_arguments(train, "train_input", ("schedule",)).get("schedule")
  if not isinstance(schedule, hybrid.HybridSchedule):
    raise AotError("no global batch size: bind trainer.train.train_input to a configurable "
                   "with a schedule (input_pipeline.HybridInput.schedule = "
                   "@hybrid.HybridSchedule(), whose batch_size = %BATCH_SIZE)")
  optimizer = argument("optimizer_fn")(learning_rate_schedule=argument("learning_rate_schedule"))
  mesh_arguments = gin_utils.referenced_arguments(train, "mesh", ("num_partitions",))
  return TrainRun(model=argument("model"), query_length=lengths["query"],
                  passage_length=lengths["passage"], batch_size=schedule.batch_size,
                  optimizer=optimizer, loss_config=argument("loss_config"),
                  rules=argument("logical_axis_rules") or partitioning.standard_logical_axis_rules(),
                  num_partitions=mesh_arguments.get("num_partitions", 1))


def _first_line(error: Exception) -> str:
  return next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)


def _oom_bytes(message: str) -> int | None:
  for pattern in _OOM_SIZES:
    match = pattern.search(message)
    if match:
      return int(float(match.group(1)) * _UNITS[match.group(2)])
  return None


def _compile(lowered, tpu_slice: accelerators.Slice, what: str, chips: int) -> dict:
  """Compiles for `chips` of the slice; per-chip bytes, FLOPs and `fits` (out of memory is a
  result: fits False)."""
  usable = tpu_slice.family.usable_hbm_bytes
  print(f"hybridir.aot: compiling the {what} for {tpu_slice.accelerator_type} (minutes for a "
        "large model)", file=sys.stderr, flush=True)
  started = time.time()
  try:
    compiled = lowered.compile()
  except Exception as e:  # XlaRuntimeError; only RESOURCE_EXHAUSTED is a result.
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    return {"fits": False, "required_bytes": _oom_bytes(str(e)), "hbm_bytes": usable,
            "error": _first_line(e), "compile_seconds": round(time.time() - started, 1)}
  memory = compiled.memory_analysis()
  sizes = {"arguments": memory.argument_size_in_bytes, "outputs": memory.output_size_in_bytes,
           "aliased": memory.alias_size_in_bytes, "temporaries": memory.temp_size_in_bytes,
           "code": memory.generated_code_size_in_bytes}
  total = (sizes["arguments"] + sizes["outputs"] - sizes["aliased"] + sizes["temporaries"]
           + sizes["code"])
  flops = float((compiled.cost_analysis() or {}).get("flops", float("nan")))
  return {"fits": total <= usable, "bytes": dict(sizes, total=total), "hbm_bytes": usable,
          "gib_per_chip": round(total / accelerators.GIB, 2), "flops_per_chip": flops,
          "tflops_per_step": round(flops * chips / 1e12, 3),
          "compile_seconds": round(time.time() - started, 1)}


def _abstract_batch(run: TrainRun, batch_size: int, sharding) -> dict:
  """The global batch input_pipeline.HybridInput.batch gives, as shapes (all int32)."""
  tokens = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding)
  batch = {"query_tokens": tokens(batch_size, run.query_length),
           "passage_tokens": tokens(batch_size, run.passage_length),
           "pair_ids": tokens(batch_size), "passage_keys": tokens(batch_size)}
  negatives = run.loss_config.hard_negatives_per_query
  if negatives:
    batch["negative_tokens"] = tokens(batch_size, negatives, run.passage_length)
  return batch


def _with_shardings(abstract, shardings):
  """`abstract`'s shapes placed by `shardings`: a tree like it, or one sharding for every leaf."""
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, abstract)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      abstract, shardings)


def _lower(step, *args, what: str, mesh):
  try:
    return step.lower(*args)
  except Exception as e:  # Indivisible shapes, bad shardings: a config error, named.
    raise AotError(f"cannot lower the {what} on mesh {dict(mesh.shape)}: {_first_line(e)}") from e


def compile_train_step(run: TrainRun, mesh, tpu_slice: accelerators.Slice, batch_size: int,
                       grad_cache_chunks: int) -> dict:
  """The train step exactly as trainer.train jits it, compiled for the slice."""
  partitioning.check_batch_splits(batch_size, mesh, tpu_slice.hosts, grad_cache_chunks)
  loss_config = dataclasses.replace(run.loss_config, grad_cache_chunks=grad_cache_chunks)
  abstract_state, state_shardings = trainer.state_layout(
      run.model, run.optimizer, run.query_length, run.passage_length, mesh, run.rules)
  step = trainer.sharded_train_step(run.model, run.optimizer, loss_config, mesh, state_shardings,
                                    platform=PLATFORM)
  replicated = partitioning.replicated(mesh)
  with partitioning.axis_rules_context(run.rules, mesh):
    lowered = _lower(step, _with_shardings(abstract_state, state_shardings),
                     _abstract_batch(run, batch_size, partitioning.batch_sharding(mesh)),
                     jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated),
                     what="train step", mesh=mesh)
  result = dict(_compile(lowered, tpu_slice, f"train step at batch {batch_size}", mesh.size),
                batch_size=batch_size, grad_cache_chunks=grad_cache_chunks)
  # Counted from the model's shapes (matmuls and attention, forward and backward): a few percent
  # below XLA's count, which adds elementwise ops, softmax, norms and the optimizer
  # (BENCHMARKS.md, "Ahead-of-time compilation").
  model_flops = flops_lib.train_step_flops(
      run.model.encoder_config, batch_size, (run.query_length, run.passage_length))
  result["model_tflops_per_step"] = float(f"{model_flops / 1e12:.4g}")
  if getattr(run.model.encoder_config, "scan_layers", False) and "flops_per_chip" in result:
    # XLA's cost analysis counts a while loop's body once: the scanned layers' FLOPs once.
    result.update(flops_per_chip=None, tflops_per_step=None,
                  flops_note="XLA counts the scanned layers once: see model_tflops_per_step "
                             "(SCAN_LAYERS=False compiles them unrolled, and XLA counts them)")
  return result


def _default(fn, name: str):
  return inspect.signature(fn).parameters[name].default


def compile_encode_step(run: TrainRun, devices, tpu_slice: accelerators.Slice,
                        num_partitions: int = 1) -> dict:
  """Evaluation's encode step (float32 params, split over num_partitions of one host's chips as
  study_run evaluates, else replicated) at its default batch and the export's default
  max_length, compiled for the slice."""
  from hybridir.evaluation import eval_run  # Only for its default batch size.
  mesh = partitioning.create_mesh(num_partitions=num_partitions, devices=devices)
  data = partitioning.data_parallel_size(mesh)
  batch_size = -(-_default(eval_run.run_evaluation, "batch_size") // data) * data
  length = _default(artifacts.export_encoder, "max_length")
  config = run.model.encoder_config
  if config.max_length:  # Learned positions (XLM-R, BERT) cap the length.
    length = min(length, config.max_length)
  with partitioning.axis_rules_context(encoder_lib.ENCODE_AXIS_RULES, mesh):
    params = step_lib.strip_boxes(dual_encoder.abstract_params(run.model, length, length))
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32), params)
    shardings = encoder_lib.encode_param_shardings(run.model, mesh)  # One, when replicated.
    tokens = jax.ShapeDtypeStruct((batch_size, length), jnp.int32,
                                  sharding=partitioning.batch_sharding(mesh))
    lowered = _lower(encoder_lib.encode_step(run.model, mesh, shardings),
                     _with_shardings(params, shardings), tokens, "passage",
                     what="encode step", mesh=mesh)
  return dict(_compile(lowered, tpu_slice, "encode step", mesh.size), batch_size=batch_size,
              length=length, mesh=dict(mesh.shape))


def largest_batch(run: TrainRun, mesh, tpu_slice, first: dict, granularity: int = 0) -> dict:
  """The largest global batch that fits without GradCache, to within `granularity` examples."""
  unit = math.lcm(partitioning.data_parallel_size(mesh), tpu_slice.hosts)
  step = max(unit, -(-granularity // unit) * unit) if granularity else unit
  probes = {first["batch_size"]: first}

  def probe(batch: int) -> dict:  # Each batch compiled once (minutes each).
    if batch not in probes:
      probes[batch] = compile_train_step(run, mesh, tpu_slice, batch, 1)
    return probes[batch]

  largest = search_largest_batch(probe, first["batch_size"], step,
                                 tpu_slice.family.usable_hbm_bytes)
  return {"max_batch": largest, "unit": step, "compiles": len(probes)}


def search_largest_batch(probe, start: int, step: int, usable_bytes: int) -> int | None:
  """The largest multiple of `step` for which probe(batch)["fits"], None if not even `step`.

  Memory grows about linearly with the batch, and each probe is a compile of minutes, so every
  next probe is where a line through two probes' bytes reaches `usable_bytes` (doubling or
  halving until there are two), kept inside the bracket [largest that fits, smallest that does
  not]; the search ends when the bracket is one step wide. For a linear model: 3-4 probes.
  """
  needed = lambda r: r["bytes"]["total"] if r["fits"] else r.get("required_bytes")
  down = lambda batch: max(step, batch // step * step)
  lo = hi = None
  points = []  # (batch, bytes) of the probes that report their bytes, newest last.
  batch = down(start)
  while hi is None or lo is None or hi - lo > step:
    result = probe(batch)
    if result["fits"]:
      lo = batch
    elif batch == step:
      return None
    else:
      hi = batch
    if needed(result):
      points.append((batch, needed(result)))
    guess = None
    if len(points) >= 2:
      (b1, m1), (b2, m2) = sorted(points[-2:])
      if m2 > m1 and b2 > b1:
        guess = down(int(b1 + (usable_bytes - m1) * (b2 - b1) / (m2 - m1)))
    if guess is None:  # Double up to a failure, halve down to a fit.
      guess = batch * 2 if hi is None else down(batch // 2)
    if hi is None:
      guess = min(max(guess, lo + step), 8 * lo)
    elif lo is None:
      guess = min(guess, hi - step)
    else:
      guess = min(max(guess, lo + step), hi - step)
    batch = guess
  return lo


def suggest_grad_cache_chunks(run, mesh, tpu_slice, batch_size: int, max_batch: int | None,
                              attempts: int = 3):
  """The fewest GradCache chunks that make `batch_size` fit, checked by compiling: from as many
  as keep each chunk within the largest plain batch that fits, at most `attempts` compiles."""
  if not max_batch:  # Not even the smallest batch fits: chunking cannot help.
    return {"grad_cache_chunks": None}
  unit = math.lcm(partitioning.data_parallel_size(mesh), tpu_slice.hosts)
  candidates = [c for c in range(max(2, -(-batch_size // max_batch)), batch_size // unit + 1)
                if batch_size % (c * unit) == 0]
  for chunks in candidates[:attempts]:
    result = compile_train_step(run, mesh, tpu_slice, batch_size, chunks)
    if result["fits"]:
      return {"grad_cache_chunks": chunks, "train_step": result}
  return {"grad_cache_chunks": None, "tried": candidates[:attempts]}


def check(accelerator_type: str, gin_files, gin_bindings=(), max_batch: bool = False,
          granularity: int = 0) -> dict:
  """Compiles the run's train and encode steps for the slice; the JSON report as a dict."""
  tpu_slice = accelerators.get_slice(accelerator_type)
  run = train_run_from_gin(gin_files, gin_bindings)
  devices = accelerators.compile_only_devices(tpu_slice)
  try:
    mesh = partitioning.create_mesh(run.num_partitions, devices=devices)
  except ValueError as e:
    raise AotError(f"{accelerator_type} ({tpu_slice.chips} chips): {e}") from None
  chunks = run.loss_config.grad_cache_chunks
  train = compile_train_step(run, mesh, tpu_slice, run.batch_size, chunks)
  from hybridir.study import study_run  # Evaluation splits parameters as the study's runs do.
  encode = compile_encode_step(
      run, devices[:tpu_slice.chips_per_host], tpu_slice,
      study_run.evaluation_partitions(partitioning.model_parallel_size(mesh),
                                      tpu_slice.chips_per_host))
  report = {"accelerator_type": accelerator_type, "topology": tpu_slice.topology,
            "chips": tpu_slice.chips, "hosts": tpu_slice.hosts,
            "hbm_per_chip_bytes": tpu_slice.family.usable_hbm_bytes,
            "mesh": dict(mesh.shape), "model": type(run.model.encoder_config).__name__,
            "train_step": train, "encode_step": encode,
            "fits": train["fits"] and encode["fits"]}
  if max_batch:
    plain = train if chunks == 1 else compile_train_step(run, mesh, tpu_slice, run.batch_size, 1)
    search = largest_batch(run, mesh, tpu_slice, plain, granularity)
    report["max_batch"] = search["max_batch"]
    report["max_batch_search"] = {k: search[k] for k in ("unit", "compiles")}
    if not plain["fits"]:
      report["suggestion"] = suggest_grad_cache_chunks(run, mesh, tpu_slice, run.batch_size,
                                                       search["max_batch"])
    else:
      report["suggestion"] = {"grad_cache_chunks": 1}
  return report


HELP_EPILOG = f"""\
gin bindings also as --gin.KEY=VALUE (as python -m hybridir.main takes them); a string takes
gin's quotes inside the shell's: --gin.CORPUS_DIR="'gs://BUCKET/xquad-r'".

prints one JSON line on stdout: accelerator_type, topology, chips, hosts, hbm_per_chip_bytes,
mesh, model, and for train_step and encode_step each: bytes per chip (arguments, outputs,
aliased, temporaries, code, total), gib_per_chip, hbm_bytes, flops_per_chip, tflops_per_step,
compile_seconds and fits (or, out of memory: required_bytes and XLA's error); then fits (both
fit). With --max_batch also max_batch, max_batch_search and a grad_cache_chunks suggestion.

exit status:
  {EXIT_FITS}  the run fits the slice
  {EXIT_DOES_NOT_FIT}  it does not fit (out of memory at compile time is a result, not an error)
  {EXIT_ERROR}  an error, as one line `error: ...` on stderr: a bad option, gin file or binding, a
     batch or mesh the slice cannot split, libtpu missing (pip install -e '.[aot]')

example:
  python -m hybridir.aot --accelerator_type v4-32 \\
      --gin_file=gin_configs/runs/study/mt5_base.gin --gin.BATCH_SIZE=256 --max_batch
"""


def parse_args(argv):
  parser = console.ArgumentParser(prog="python -m hybridir.aot", description=__doc__.split(
      "\n")[0], epilog=HELP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--accelerator_type", required=True,
                      help="as gcloud names it: " + ", ".join(accelerators.accelerator_types()))
  parser.add_argument("--gin_file", action="append", default=[], required=True,
                      help="a gin file of a training run (RUN = @trainer.train or the study's "
                      "run); repeatable, parsed in order, as hybridir.main parses them")
  parser.add_argument("--gin_bindings", action="append", default=[],
                      help="a gin binding ('TRAIN_STEPS = 10'), after the files; repeatable")
  parser.add_argument("--max_batch", action="store_true",
                      help="also find the largest global batch that fits (several compiles)")
  parser.add_argument("--batch_granularity", type=int, default=0,
                      help="--max_batch to within this many examples (default: exact)")
  gin_flags = [a for a in argv if a.startswith("--gin.")]
  args = parser.parse_args([a for a in argv if not a.startswith("--gin.")])
  for flag in gin_flags:  # T5X-style --gin.KEY=VALUE, as hybridir.main takes them.
    key, sep, value = flag[len("--gin."):].partition("=")
    if not sep:
      parser.error(f"{flag}: gin flags take the form --gin.KEY=VALUE")
    args.gin_bindings.append(f"{key} = {value}")
  return args


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    report = check(args.accelerator_type, args.gin_file, args.gin_bindings, args.max_batch,
                   args.batch_granularity)
  except (AotError, ValueError, RuntimeError, gin_utils.UnknownMacroError, IOError) as e:
    print(f"hybridir.aot: {errors.one_line(e)}", file=sys.stderr)
    return EXIT_ERROR
  print(json.dumps(report, sort_keys=True))
  return EXIT_FITS if report["fits"] else EXIT_DOES_NOT_FIT


if __name__ == "__main__":
  sys.exit(main())
