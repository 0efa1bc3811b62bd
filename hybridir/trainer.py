"""The training loop, T5X-style: sharded state born on the mesh, one compiled step, orbax
checkpoints with the data position, TensorBoard summaries, evaluation hook, progress with ETA."""
import contextlib
import dataclasses
import json
import math
import os
import signal
import time
from typing import Any, Callable

from absl import logging
import gin
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np

from hybridir import checkpoints
from hybridir import fs
from hybridir import importers
from hybridir import optim
from hybridir import partitioning
from hybridir import summaries
from hybridir import train_step as step_lib
from hybridir.models import dual_encoder


class RunChangedError(ValueError):
  """Resuming a checkpoint with settings that change what the run trains on or what it trains."""


@dataclasses.dataclass
class TrainResult:
  state: step_lib.TrainState
  history: list[dict]  # Host-side metrics of every step run in this call.
  eval_history: list[dict]
  compilations: int  # Times the train step was traced: 1 in a healthy run.
  stopped_early: bool  # By SIGTERM (preemption): the state at that step was saved.


class _Preemption:
  """Turns SIGTERM (how Cloud TPU announces a preemption) into a flag the loop checks."""

  def __init__(self):
    self.requested = False

  def __enter__(self):
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint and stopping")
    self.requested = True

  def __exit__(self, *exc):
    signal.signal(signal.SIGTERM, self._previous)

  def agreed(self) -> bool:
    """Whether any process got SIGTERM. Hosts may get it a step apart, yet must all save and stop
    at the same step (a save is collective), so they pool their flags at the same point."""
    if jax.process_count() == 1:
      return self.requested
    return bool(np.any(multihost_utils.process_allgather(np.asarray(self.requested))))


def _to_host(metrics) -> dict:
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


def _imported_params(model: dual_encoder.DualEncoder, path: str, shardings) -> dict:
  """Parameters from a Hugging Face directory or T5X checkpoint, checked against `model` (raises
  listing every mismatch). A T5X checkpoint is read as a pod reads it: each host its shards."""
  if fs.exists(os.path.join(path, "config.json")):
    return importers.load_hf(path, target=model)[1]
  return importers.load_t5x_sharded(path, model, shardings)


@gin.configurable
def train(*, model: dual_encoder.DualEncoder, train_input: Any, task_feature_lengths: dict,
          train_steps: int, model_dir: str, learning_rate_schedule: Callable | float,
          optimizer_fn: Callable = optim.create_optimizer,
          loss_config: step_lib.LossConfig = step_lib.LossConfig(), seed: int = 0,
          mesh=None, logical_axis_rules=None, init_checkpoint: str | None = None,
          checkpoint_period: int = 100, checkpointer_fn: Callable = checkpoints.Checkpointer,
          eval_input: Any = None, eval_period: int = 0, eval_steps: int = 4,
          best_metric: str | None = None, log_period: int = 10,
          allow_changed_run: bool = False) -> TrainResult:
  """Trains `model` on batches from `train_input.batch(step)` for `train_steps` steps.

  Resumes from the latest checkpoint under `model_dir/checkpoints` (the data stream is a pure
  function of (seed, step), so the step restores the data position too). The settings that define
  the run (`run_identity`) are stored with each checkpoint; resuming with others is refused unless
  `allow_changed_run`.
  """
  if train_steps < 1:
    raise ValueError(f"train_steps must be >= 1, got {train_steps}")
  missing = {"query", "passage"} - set(task_feature_lengths)
  if missing:
    raise ValueError(f"task_feature_lengths lacks {sorted(missing)}: {task_feature_lengths}")
  # "cpu" kernels: the cheapest dropout bits on XLA:CPU (BENCHMARKS.md, "Layouts for XLA:CPU");
  # otherwise JAX's default, set either way so that a run's random streams follow its config.
  jax.config.update("jax_threefry_partitionable",
                    getattr(model.encoder_config, "kernels", "portable") != "cpu")
  train_input = _host_input(train_input)
  eval_input = _host_input(eval_input) if eval_input is not None else None
  _check_vocabulary_fits(train_input, model)
  mesh = mesh or partitioning.create_mesh()
  rules = logical_axis_rules or partitioning.standard_logical_axis_rules()
  query_length, passage_length = task_feature_lengths["query"], task_feature_lengths["passage"]
  optimizer = optimizer_fn(learning_rate_schedule=learning_rate_schedule)
  schedule = (learning_rate_schedule if callable(learning_rate_schedule)
              else lambda step: learning_rate_schedule)

  abstract_state, state_shardings = state_layout(model, optimizer, query_length, passage_length,
                                                mesh, rules)
  abstract_params, param_shardings = abstract_state.params, state_shardings.params
  replicated = partitioning.replicated(mesh)

  identity = run_identity(model, train_input, task_feature_lengths, seed)
  checkpointer = checkpointer_fn(os.path.join(model_dir, "checkpoints"), best_metric=best_metric)
  restored = checkpointer.restore_newest_good(
      abstract_state, state_shardings, check_position=lambda step, position: _check_run_identity(
          position.get("identity"), identity, allow_changed_run, checkpointer.step_dir(step)))
  if restored is not None:
    start_step, state, _ = restored
    logging.info("resumed from %s at step %d", model_dir, start_step)
  else:
    start_step = 0
    state = _initial_state(model, optimizer, loss_config, seed, init_checkpoint, query_length,
                           passage_length, abstract_params, param_shardings, state_shardings,
                           mesh, rules)

  compilations = [0]
  def counted(train_step):
    def counted_step(state, batch, rng):
      compilations[0] += 1
      return train_step(state, batch, rng)
    return counted_step

  p_train_step = sharded_train_step(model, optimizer, loss_config, mesh, state_shardings,
                                    wrap=counted)
  batch_sharding = partitioning.batch_sharding(mesh)
  p_eval_step = jax.jit(step_lib.make_eval_step(model, loss_config),
                        in_shardings=(param_shardings, batch_sharding), out_shardings=replicated,
                        compiler_options=step_lib.compiler_options())
  dropout_rng = jax.random.PRNGKey(seed + 1)
  writer = summaries.SummaryWriter(os.path.join(model_dir, "train"))
  eval_writer = summaries.SummaryWriter(
      os.path.join(model_dir, "eval") if eval_input is not None else None)

  def data_position(step):
    return {"step": step, "seed": seed, "input": str(getattr(train_input, "name", "")),
            "identity": identity}

  def run_eval(params, step):
    results = [_to_host(p_eval_step(params, partitioning.host_local_to_global(
        eval_input.batch(i), mesh))) for i in range(eval_steps)]
    metrics = {f"eval/{k}": float(np.mean([r[k] for r in results])) for k in results[0]}
    eval_writer.write(step, metrics)
    logging.info("eval at step %d: %s", step, _format(metrics))
    return metrics

  history, eval_history = [], []
  pending = None  # (step, metrics on device, seconds, tokens) of the step before.
  started = time.time()
  stopped_early = False

  def finish(pending_step):
    """Fetches a step's metrics, stops on NaN/Inf, logs and writes them."""
    step, metrics, seconds, tokens = pending_step
    metrics = _to_host(metrics)
    if not math.isfinite(metrics["loss"]):
      checkpointer.wait()
      good = checkpointer.newest_verified()
      raise FloatingPointError(
          f"loss is {metrics['loss']} at step {step}; stopping. Last good checkpoint: "
          + (checkpointer.step_dir(good) if good is not None else "none"))
    examples = train_input.batch_size if hasattr(train_input, "batch_size") else float("nan")
    metrics.update(learning_rate=float(schedule(step - 1)), seconds_per_step=seconds,
                   examples_per_second=examples / seconds, tokens_per_second=tokens / seconds)
    history.append(dict(metrics, step=step))
    writer.write(step, metrics)
    if jax.process_index() == 0 and (step % log_period == 0 or step == train_steps):
      done = step - start_step
      eta = (time.time() - started) / done * (train_steps - step)
      logging.info("step %d/%d %s eta %s", step, train_steps, _format(metrics), _eta(eta))

  with (partitioning.axis_rules_context(rules, mesh), _Preemption() as preemption,
        _closing(checkpointer)):
    for step in range(start_step, train_steps):
      host_batch = train_input.batch(step)
      tokens = sum(int(np.sum(host_batch[k] != model.encoder_config.pad_id))
                   for k in ("query_tokens", "passage_tokens")) * jax.process_count()
      batch = partitioning.host_local_to_global(host_batch, mesh)
      tick = time.time()
      state, metrics = p_train_step(state, batch, dropout_rng)
      if pending:
        finish(pending)
      jax.block_until_ready(metrics)
      pending = (step + 1, metrics, time.time() - tick, tokens)
      done_step = step + 1
      eval_metrics = None
      if eval_input is not None and eval_period and done_step % eval_period == 0:
        finish(pending)
        pending = None
        eval_metrics = run_eval(state.params, done_step)
        eval_history.append(dict(eval_metrics, step=done_step))
      checkpointer.check()  # A failed background save stops the run here, not at the next save.
      preempted = preemption.agreed()
      if done_step % checkpoint_period == 0 or done_step == train_steps or preempted:
        if pending:
          finish(pending)
          pending = None
        checkpointer.save(done_step, state, data_position(done_step), eval_metrics,
                          force=True)
      if preempted:
        stopped_early = True
        break
    if pending:
      finish(pending)
  return TrainResult(state, history, eval_history, compilations[0], stopped_early)


@contextlib.contextmanager
def _closing(checkpointer):
  """Closes the checkpointer (committing pending saves) also when training raises, so no save
  thread outlives the run; an error of the close then does not hide the first one."""
  try:
    yield
  except BaseException:
    try:
      checkpointer.close()
    except checkpoints.CheckpointSaveError as e:
      logging.error("%s", e)
    raise
  checkpointer.close()


def run_identity(model, train_input, task_feature_lengths: dict, seed: int) -> dict:
  """The settings that define a run's model and data stream, as plain JSON values. The encoder's
  `kernels` is not one: it changes how the model is computed, not what, so a run may resume
  with the other formulation (and checkpoints written before the field existed resume)."""
  describe = getattr(train_input, "identity", None)
  encoder = {k: v for k, v in dataclasses.asdict(model.encoder_config).items() if k != "kernels"}
  identity = {"seed": seed, "task_feature_lengths": dict(task_feature_lengths),
              "model": encoder,
              "input": describe() if callable(describe) else {
                  "input": str(getattr(train_input, "name", "")),
                  "batch_size": getattr(train_input, "batch_size", None)}}
  if getattr(train_input, "text_format", None) is not None:  # What an export must apply.
    identity["text_format"] = train_input.text_format.to_json()
  return json.loads(json.dumps(identity, default=str))


def _flatten(tree: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _check_run_identity(stored: dict | None, current: dict, allow_changed_run: bool,
                        checkpoint: str) -> None:
  """Refuses to resume a run whose data stream or model would mean something else."""
  if stored is None:
    logging.warning("%s records no run settings (written by an older version): resuming unchecked",
                    checkpoint)
    return
  old, new = _flatten(stored), _flatten(current)
  changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
             if old.get(k) != new.get(k)]
  if not changed:
    return
  message = f"{checkpoint} was written by a run with other settings: " + "; ".join(changed)
  if not allow_changed_run:
    raise RunChangedError(message + " (use a new MODEL_DIR, or set ALLOW_CHANGED_RUN = True to "
                          "resume anyway)")
  logging.warning("%s; resuming as ALLOW_CHANGED_RUN says", message)


def state_layout(model: dual_encoder.DualEncoder, optimizer, query_length: int,
                 passage_length: int, mesh, rules) -> tuple[step_lib.TrainState, ...]:
  """(abstract state, state shardings): the train state's shapes and NamedShardings, unallocated."""
  replicated = partitioning.replicated(mesh)
  with partitioning.axis_rules_context(rules, mesh):
    boxed = step_lib.abstract_model_variables(model, query_length, passage_length)
    param_shardings = {"model": partitioning.params_shardings(boxed, mesh, rules),
                       "log_scale": replicated}
    abstract_params = {"model": step_lib.strip_boxes(boxed),
                       "log_scale": jax.ShapeDtypeStruct((), jnp.float32)}
    state_shardings = step_lib.TrainState(
        step=replicated, params=param_shardings,
        opt_state=optim.optimizer_state_shardings(optimizer, abstract_params, param_shardings,
                                                  mesh))
    abstract_state = jax.eval_shape(lambda p: step_lib.TrainState(
        jnp.zeros((), jnp.int32), p, optimizer.init(p)), abstract_params)
  return abstract_state, state_shardings


def sharded_train_step(model: dual_encoder.DualEncoder, optimizer, loss_config, mesh,
                       state_shardings, wrap: Callable = lambda step: step,
                       platform: str | None = None):
  """The jitted (state, global batch, rng) -> (state, metrics) step, state donated; `platform`
  picks the compiler options (default: this process's backend)."""
  train_step, _ = step_lib.make_train_step(
      model, optimizer, loss_config,
      constrain_batch=lambda x: jax.lax.with_sharding_constraint(
          x, partitioning.batch_sharding(mesh)))
  replicated = partitioning.replicated(mesh)
  return jax.jit(wrap(train_step),
                 in_shardings=(state_shardings, partitioning.batch_sharding(mesh), replicated),
                 out_shardings=(state_shardings, replicated), donate_argnums=0,
                 compiler_options=step_lib.compiler_options(platform))


def _check_vocabulary_fits(train_input, model) -> None:
  """Token ids past the embedding would train on garbage (NaN on CPU): refuse before compiling."""
  vocabulary = getattr(train_input, "vocabulary", None)
  embedding_rows = model.encoder_config.vocab_size
  if vocabulary is not None and vocabulary.vocab_size > embedding_rows:
    raise ValueError(f"the input's vocabulary ({getattr(train_input, 'name', 'train_input')}) has "
                     f"{vocabulary.vocab_size} ids but the model's embedding has {embedding_rows} "
                     "rows: set VOCAB_SIZE (the model file) to at least the vocabulary size")


def _host_input(source):
  """An object with .batch(step), or a factory (e.g. gin's @HybridInput) building this host's."""
  if hasattr(source, "batch") and not isinstance(source, type):
    return source
  return source(host_index=jax.process_index(), host_count=jax.process_count())


def _initial_state(model, optimizer, loss_config, seed, init_checkpoint, query_length,
                   passage_length, abstract_params, param_shardings, state_shardings, mesh, rules):
  """A fresh state born sharded: from scratch (jitted init) or from an imported checkpoint."""
  if init_checkpoint:
    model_params = _imported_params(model, init_checkpoint, param_shardings["model"])
    params = jax.device_put(step_lib.initial_params(model_params, loss_config), param_shardings)
    opt_state = jax.jit(optimizer.init, out_shardings=state_shardings.opt_state)(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), state_shardings.step)
    logging.info("initialised from %s", init_checkpoint)
    return step_lib.TrainState(step, params, opt_state)

  def init(rng):
    params = step_lib.initial_params(
        step_lib.init_model_params(model, rng, query_length, passage_length), loss_config)
    return step_lib.TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))

  return jax.jit(init, out_shardings=state_shardings)(jax.random.PRNGKey(seed))


def _format(metrics: dict) -> str:
  keys = ("loss", "accuracy", "mrr", "learning_rate", "grad_norm", "examples_per_second",
          "eval/loss", "eval/mrr", "eval/accuracy")
  return " ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics)


def _eta(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
