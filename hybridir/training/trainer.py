"""The training loop, T5X-style: sharded state born on the mesh, one compiled step, orbax
checkpoints with the data position, TensorBoard summaries, evaluation hook, progress with ETA."""
import contextlib
import dataclasses
import math
import os
import signal
import time
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np

from hybridir import errors
from hybridir.models import dual_encoder
from hybridir.training import checkpoints
from hybridir.training import optim
from hybridir.training import partitioning
from hybridir.training import run_dir
from hybridir.training import summaries
from hybridir.training import train_step as step_lib


class RunChangedError(errors.SettingError):
  """Resuming a checkpoint with settings that change what the run trains on or what it trains."""


def _require(ok: bool, field: str, expected: str, found) -> None:
  """A config field's check: SettingError `{field} must be {expected}, found {found!r}`."""
  if not ok:
    raise errors.SettingError(f"{field} must be {expected}, found {found!r}")


def _is_count(value, least: int) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= least


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """Saving and restoring, as T5X's checkpoint_cfg. A save every `period` steps (and at the last)
  through `checkpointer_fn` (which may keep the best by `best_metric`, higher is better unless
  `best_mode` is 'min'); resuming a checkpoint of other run settings only if `allow_changed_run`;
  resuming one without checksums (written before they existed) only if `allow_unverified`;
  a fresh run starts from `init_params(model, param shardings)` (e.g. importers.pretrained(path)),
  or a random initialisation when None."""
  period: int = 100
  checkpointer_fn: Callable = checkpoints.Checkpointer
  best_metric: str | None = None
  best_mode: str = "max"
  allow_changed_run: bool = False
  init_params: Callable | None = None
  allow_unverified: bool = False

  def __post_init__(self):
    _require(_is_count(self.period, 1), "CheckpointConfig.period", "a positive integer",
             self.period)
    _require(callable(self.checkpointer_fn), "CheckpointConfig.checkpointer_fn",
             "callable (e.g. checkpoints.Checkpointer)", self.checkpointer_fn)
    _require(self.best_metric is None or (isinstance(self.best_metric, str) and self.best_metric),
             "CheckpointConfig.best_metric", "a metric name (e.g. 'eval/loss') or None",
             self.best_metric)
    _require(self.best_mode in ("max", "min"), "CheckpointConfig.best_mode", "'max' or 'min'",
             self.best_mode)
    for name in ("allow_changed_run", "allow_unverified"):
      _require(isinstance(getattr(self, name), bool), f"CheckpointConfig.{name}", "True or False",
               getattr(self, name))
    _require(self.init_params is None or callable(self.init_params),
             "CheckpointConfig.init_params", "callable (e.g. importers.pretrained(path)) or None",
             self.init_params)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """The held-out check while training: mean in-batch metrics over `steps` batches of `input` (an
  object with .batch(i), or a factory of one such as gin's @HybridInput) every `period` steps;
  none when `period` is 0 or `input` None."""
  input: Any = None
  period: int = 0
  steps: int = 4

  def __post_init__(self):
    _require(self.input is None or hasattr(self.input, "batch") or callable(self.input),
             "EvalConfig.input", "None, an object with .batch(step) or a factory of one (e.g. "
             "@input_pipeline.HybridInput)", self.input)
    _require(_is_count(self.period, 0), "EvalConfig.period",
             "a non-negative integer (0: no evaluation)", self.period)
    _require(_is_count(self.steps, 1), "EvalConfig.steps", "a positive integer", self.steps)


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


def train(*, model: dual_encoder.DualEncoder, train_input: Any, task_feature_lengths: dict,
          train_steps: int, model_dir: str, learning_rate_schedule: Callable | float,
          optimizer_fn: Callable = optim.create_optimizer,
          loss_config: step_lib.LossConfig = step_lib.LossConfig(), seed: int = 0,
          mesh=None, logical_axis_rules=None, checkpoint_cfg: CheckpointConfig = CheckpointConfig(),
          eval_cfg: EvalConfig = EvalConfig(), log_period: int = 10,
          config_text: str | None = None) -> TrainResult:
  """Trains `model` on batches from `train_input.batch(step)` for `train_steps` steps.

  Resumes from the latest checkpoint under `model_dir/checkpoints` (the data stream is a pure
  function of (seed, step), so the step restores the data position too). The run is described
  once (`run_dir.describe`, with the gin `config_text` when given): its checkpoint identity is
  stored with each checkpoint, and resuming with another is refused unless
  `checkpoint_cfg.allow_changed_run`; once the checkpoints agree, the description is written to
  MODEL_DIR (config.gin, vocabulary/, encoder.json), and put back as it was when the run fails
  before its first checkpoint. A fresh run starts from `checkpoint_cfg.init_params`, or a random
  initialisation.
  """
  for name, config, kind in (("checkpoint_cfg", checkpoint_cfg, CheckpointConfig),
                             ("eval_cfg", eval_cfg, EvalConfig)):
    if not isinstance(config, kind):
      raise TypeError(f"train's {name} must be a trainer.{kind.__name__}, found "
                      f"{type(config).__name__}")
  if train_steps < 1:
    raise errors.SettingError(f"train_steps must be >= 1, got {train_steps}")
  missing = {"query", "passage"} - set(task_feature_lengths)
  if missing:
    raise errors.SettingError(f"task_feature_lengths lacks {sorted(missing)}: "
                              f"{task_feature_lengths}")
  # "cpu" kernels: the cheapest dropout bits on XLA:CPU (BENCHMARKS.md, "Layouts for XLA:CPU");
  # otherwise JAX's default. For this run only: the process's setting is left as it was.
  with (jax.threefry_partitionable(partitionable_threefry(model)),
        run_dir.undone_unless_trained(model_dir)):
    train_input = _host_input(train_input)
    eval_input = _host_input(eval_cfg.input) if eval_cfg.input is not None else None
    _check_family(train_input, model)
    _check_vocabulary_fits(train_input, model)
    mesh = mesh or partitioning.create_mesh()
    # Before any state or checkpoint directory exists: the batch must split over the mesh.
    partitioning.check_batch_splits(getattr(train_input, "batch_size", None), mesh,
                                    jax.process_count(), loss_config.grad_cache_chunks)
    rules = logical_axis_rules or partitioning.standard_logical_axis_rules()
    lengths = task_feature_lengths["query"], task_feature_lengths["passage"]
    optimizer = optimizer_fn(learning_rate_schedule=learning_rate_schedule)
    abstract_state, state_shardings = state_layout(model, optimizer, *lengths, mesh, rules)

    description = run_dir.describe(model, train_input, task_feature_lengths, seed, config_text)
    identity = description.checkpoint_identity()
    checkpointer = checkpoint_cfg.checkpointer_fn(
        os.path.join(model_dir, "checkpoints"), best_metric=checkpoint_cfg.best_metric,
        best_mode=checkpoint_cfg.best_mode)
    start_step, state = restore_or_initialize(
        checkpointer, abstract_state, state_shardings, identity, checkpoint_cfg.allow_changed_run,
        initialize=lambda: _initial_state(model, optimizer, loss_config, seed,
                                          checkpoint_cfg.init_params, lengths, state_shardings),
        allow_unverified=checkpoint_cfg.allow_unverified)
    if start_step:
      logging.info("resumed from %s at step %d", model_dir, start_step)
    run_dir.write_description(model_dir, description)

    compilations = [0]
    def counted(train_step):
      def counted_step(state, batch, rng):
        compilations[0] += 1
        return train_step(state, batch, rng)
      return counted_step

    p_train_step = sharded_train_step(model, optimizer, loss_config, mesh, state_shardings,
                                      wrap=counted)
    evaluator = None if eval_input is None else _Evaluator(
        model, loss_config, mesh, state_shardings.params, eval_input, eval_cfg.steps, model_dir,
        start_step)
    log = _TrainLog(model_dir, train_input, learning_rate_schedule, start_step, train_steps,
                    log_period, checkpointer)
    dropout_rng = jax.random.PRNGKey(seed + 1)
    stopped_early = False
    with (partitioning.axis_rules_context(rules, mesh), _Preemption() as preemption,
          _closing(checkpointer)):
      for step in range(start_step, train_steps):
        host_batch = train_input.batch(step)
        tokens = sum(int(np.sum(host_batch[k] != model.encoder_config.pad_id))
                     for k in ("query_tokens", "passage_tokens")) * jax.process_count()
        batch = partitioning.host_local_to_global(host_batch, mesh)
        tick = time.time()
        state, metrics = p_train_step(state, batch, dropout_rng)
        log.flush()  # The step before's metrics, fetched while this step runs.
        jax.block_until_ready(metrics)
        done_step = step + 1
        log.add(done_step, metrics, time.time() - tick, tokens)
        eval_metrics = None
        if evaluator and eval_cfg.period and done_step % eval_cfg.period == 0:
          log.flush()
          eval_metrics = evaluator.run(state.params, done_step)
        checkpointer.check()  # A failed background save stops the run here, not at the next save.
        preempted = preemption.agreed()
        if done_step % checkpoint_cfg.period == 0 or done_step == train_steps or preempted:
          log.flush()
          checkpointer.save(done_step, state, {"step": done_step, "seed": seed,
                                               "input": str(getattr(train_input, "name", "")),
                                               "identity": identity},
                            eval_metrics, force=True)
        if preempted:
          stopped_early = True
          break
      log.flush()
    return TrainResult(state, log.history, evaluator.history if evaluator else [], compilations[0],
                       stopped_early)


def partitionable_threefry(model: dual_encoder.DualEncoder) -> bool:
  """Whether a run of `model` draws its random bits with the partitionable threefry (JAX's
  default), not the one XLA:CPU computes fastest (its "cpu" kernels)."""
  return getattr(model.encoder_config, "kernels", "portable") != "cpu"


def restore_or_initialize(checkpointer, abstract_state, state_shardings, identity: dict,
                          allow_changed_run: bool, initialize: Callable,
                          allow_unverified: bool = False):
  """(step, state): the newest good checkpoint's (one without checksums only if
  `allow_unverified`), refused if written with another `identity` (unless `allow_changed_run`),
  else (0, initialize())."""
  def check_position(step, position):
    _check_checkpoint_identity(position.get("identity"), identity, allow_changed_run,
                               checkpointer.step_dir(step))
  restored = checkpointer.restore_newest_good(abstract_state, state_shardings,
                                              check_position=check_position,
                                              allow_unverified=allow_unverified)
  if restored is None:
    return 0, initialize()
  step, state, _ = restored
  return step, state


class _Evaluator:
  """The held-out check: mean in-batch metrics over `steps` batches of `eval_input`, written to
  MODEL_DIR/eval and kept in `history`."""

  def __init__(self, model, loss_config, mesh, param_shardings, eval_input, steps: int,
               model_dir: str, start_step: int):
    self.mesh, self.eval_input, self.steps, self.history = mesh, eval_input, steps, []
    self.step_fn = jax.jit(step_lib.make_eval_step(model, loss_config),
                           in_shardings=(param_shardings, partitioning.batch_sharding(mesh)),
                           out_shardings=partitioning.replicated(mesh),
                           compiler_options=step_lib.compiler_options())
    self.writer = summaries.SummaryWriter(os.path.join(model_dir, "eval"),
                                          purge_step=start_step + 1)

  def run(self, params, step: int) -> dict:
    results = [_to_host(self.step_fn(params, partitioning.host_local_to_global(
        self.eval_input.batch(i), self.mesh))) for i in range(self.steps)]
    metrics = {f"eval/{k}": float(np.mean([r[k] for r in results])) for k in results[0]}
    self.writer.write(step, metrics)
    logging.info("eval at step %d: %s", step, _format(metrics))
    self.history.append(dict(metrics, step=step))
    return metrics


class _TrainLog:
  """Each step's metrics, fetched one step late (the host does not wait for the device), checked
  for NaN/Inf, completed with rates, written to MODEL_DIR/train and logged with an ETA."""

  def __init__(self, model_dir: str, train_input, learning_rate_schedule, start_step: int,
               train_steps: int, log_period: int, checkpointer):
    self.schedule = (learning_rate_schedule if callable(learning_rate_schedule)
                     else lambda step: learning_rate_schedule)
    self.batch_size = getattr(train_input, "batch_size", float("nan"))
    self.start_step, self.train_steps, self.log_period = start_step, train_steps, log_period
    self.checkpointer, self.history, self.pending = checkpointer, [], None
    self.writer = summaries.SummaryWriter(os.path.join(model_dir, "train"),
                                          purge_step=start_step + 1)
    self.started = time.time()

  def add(self, step: int, metrics, seconds: float, tokens: int) -> None:
    """A finished step's metrics, still on device."""
    self.pending = (step, metrics, seconds, tokens)

  def flush(self) -> None:
    """Fetches, checks, writes and logs the pending step's metrics, if any."""
    if self.pending is None:
      return
    step, metrics, seconds, tokens = self.pending
    self.pending = None
    metrics = _to_host(metrics)
    if not math.isfinite(metrics["loss"]):
      self.checkpointer.wait()
      good = self.checkpointer.newest_verified()
      raise FloatingPointError(
          f"loss is {metrics['loss']} at step {step}; stopping. Last good checkpoint: "
          + (self.checkpointer.step_dir(good) if good is not None else "none"))
    metrics.update(learning_rate=float(self.schedule(step - 1)), seconds_per_step=seconds,
                   examples_per_second=self.batch_size / seconds,
                   tokens_per_second=tokens / seconds)
    self.history.append(dict(metrics, step=step))
    self.writer.write(step, metrics)
    if jax.process_index() == 0 and (step % self.log_period == 0 or step == self.train_steps):
      eta = (time.time() - self.started) / (step - self.start_step) * (self.train_steps - step)
      logging.info("step %d/%d %s eta %s", step, self.train_steps, _format(metrics), _eta(eta))


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


def _flatten(tree: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _check_checkpoint_identity(stored: dict | None, current: dict, allow_changed_run: bool,
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
    boxed = dual_encoder.abstract_params(model, query_length, passage_length)
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


def _check_family(train_input, model) -> None:
  """Refuses an input whose corpus was registered for another encoder family than the model's."""
  family, model_family = getattr(train_input, "family", None), model.encoder_config.family
  if family is not None and family != model_family:
    raise errors.SettingError(
        f"the input {getattr(train_input, 'name', 'train_input')!r} was registered for family "
        f"{family!r}, MODEL is of family {model_family!r} (FAMILY is the model file's: a binding "
        "of it, or of a registration's family, must agree)")


def _check_vocabulary_fits(train_input, model) -> None:
  """Token ids past the embedding would train on garbage (NaN on CPU): refuse before compiling."""
  vocabulary = getattr(train_input, "vocabulary", None)
  embedding_rows = model.encoder_config.vocab_size
  if vocabulary is not None and vocabulary.vocab_size > embedding_rows:
    raise errors.SettingError(
        f"the input's vocabulary ({getattr(train_input, 'name', 'train_input')}) has "
        f"{vocabulary.vocab_size} ids but the model's embedding has {embedding_rows} rows: set "
        "VOCAB_SIZE (the model file) to at least the vocabulary size")


def _host_input(source):
  """An object with .batch(step), or a factory (e.g. gin's @HybridInput) building this host's."""
  if hasattr(source, "batch") and not isinstance(source, type):
    return source
  return source(host_index=jax.process_index(), host_count=jax.process_count())


def _initial_state(model, optimizer, loss_config, seed, init_params, lengths, state_shardings):
  """A fresh state born sharded: from `init_params` (imported weights) or a jitted random init."""
  if init_params is not None:
    model_params = init_params(model, state_shardings.params["model"])
    params = jax.device_put(step_lib.initial_params(model_params, loss_config),
                            state_shardings.params)
    opt_state = jax.jit(optimizer.init, out_shardings=state_shardings.opt_state)(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), state_shardings.step)
    logging.info("initialised from %s", init_params)
    return step_lib.TrainState(step, params, opt_state)

  def init(rng):
    params = step_lib.initial_params(step_lib.init_model_params(model, rng, *lengths), loss_config)
    return step_lib.TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))

  return jax.jit(init, out_shardings=state_shardings)(jax.random.PRNGKey(seed))


def _format(metrics: dict) -> str:
  keys = ("loss", "accuracy", "mrr", "learning_rate", "grad_norm", "examples_per_second",
          "eval/loss", "eval/mrr", "eval/accuracy")
  return " ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics)


def _eta(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
