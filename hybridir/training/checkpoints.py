"""Training checkpoints with orbax: periodic, async, atomic, verified; keep the last N plus the best.

A checkpoint holds the train state (sharded arrays, restored straight into their shardings) and
the data position as JSON. Orbax writes each step under a temporary name and renames it when
complete (on gs://, which has no rename, it writes a commit_success.txt marker last instead), so a
crash mid-save never leaves a checkpoint that looks complete; such leftovers are reported and
ignored on resume. Just before that commit, the sha256 of every file of the step is written to
`checksums.json` in it; restore verifies them and skips a damaged checkpoint (one warning naming
the step and the file) for the newest good one. A failed save raises `CheckpointSaveError` at the
next `check` (each step) and leaves the older checkpoints as they were. Outside the loop, a run's
checkpoints are read as numpy (`training_steps`, `restore_params`, `read_checkpoint_identity`).
"""
import hashlib
import json
import logging as logging_lib
import os
import sys
import traceback
from typing import Iterator

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from hybridir.data import text as text_lib
from hybridir import fs

STATE, DATA = "state", "data"
CHECKSUMS = "checksums.json"  # {"sha256": {relative path: hex digest}} of a step's item files.
# The gin macro (CheckpointConfig.allow_unverified) that resumes steps without checksums.
ALLOW_UNVERIFIED = "ALLOW_UNVERIFIED_CHECKPOINTS"
_CHUNK = 1 << 24


class CheckpointSaveError(RuntimeError):
  """A checkpoint could not be written (disk full, permissions, object store): training stops."""


class CheckpointShapeError(ValueError):
  """A checkpoint's arrays do not fit the model being trained (a changed model config)."""


class NoGoodCheckpointError(RuntimeError):
  """Checkpoints exist but none passes verification and restore."""


class CheckpointDamagedError(ValueError):
  """A checkpoint read outside the loop (export, loading a MODEL_DIR) fails its checksums."""


def _abstract(tree, shardings):
  """ShapeDtypeStructs carrying shardings: what orbax restores into."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def _sha256(path) -> str:
  digest = hashlib.sha256()
  with fs.open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


def _files_under(directory, prefix: str) -> Iterator[str]:
  """Paths, `prefix/`-relative, of the files under `directory`, at any depth."""
  for child in fs.path(directory).iterdir():
    name = f"{prefix}/{child.name}" if prefix else child.name
    if child.is_dir():
      yield from _files_under(child, name)
    else:
      yield name


def _item_files(step_dir) -> list[str]:
  """Paths (relative to the step) of the files in its item directories: what the arrays and the
  data position are read from (orbax's own step metadata at the top is left to orbax)."""
  root = fs.path(step_dir)
  return sorted(name for item in (STATE, DATA) if (root / item).is_dir()
                for name in _files_under(root / item, item))


def tree_digests(directory) -> dict[str, str]:
  """{relative path: sha256} of every file under `directory` (an export's params/)."""
  return {name: _sha256(fs.path(directory) / name) for name in sorted(_files_under(directory, ""))}


def digest_problem(directory, sums: dict[str, str]) -> str | None:
  """None if every file of `sums` ({relative path: sha256}) is under `directory` with that
  sha256, else what is wrong with the first that is not, naming it."""
  for name, expected in sums.items():
    path = fs.path(directory) / name
    if not path.exists():
      return f"{path}: missing"
    found = _sha256(path)
    if found != expected:
      return f"{path}: sha256 {found[:12]}... differs from the recorded {expected[:12]}..."
  return None


def write_checksums(step_dir) -> None:
  """Records the sha256 of every item file of a step in `step_dir/checksums.json`."""
  sums = {name: _sha256(fs.path(step_dir) / name) for name in _item_files(step_dir)}
  fs.write_text_atomically(str(fs.path(step_dir) / CHECKSUMS),
                           json.dumps({"sha256": sums}, indent=1, sort_keys=True))


def verify(step_dir, allow_unverified: bool = False) -> str | None:
  """None if every file listed in the step's checksums is there with its recorded sha256, else
  what is wrong, naming the file. A step without checksums fails (every step this version writes
  has them: it lost them) unless `allow_unverified` (a step written before checksums existed)."""
  listing = fs.path(step_dir) / CHECKSUMS
  if not listing.exists():
    return None if allow_unverified else (
        f"{listing}: missing, so the step cannot be verified (a step written before checksums "
        f"existed resumes only with {ALLOW_UNVERIFIED} = True)")
  try:
    sums = json.loads(listing.read_text())["sha256"]
  except (ValueError, KeyError, TypeError) as e:
    return f"{listing}: unreadable checksum list ({e})"
  return digest_problem(step_dir, sums)


def check_shapes(metadata, abstract_state, step_dir) -> None:
  """Raises naming every array whose shape in the checkpoint differs from the model's."""
  stored = ocp.tree.to_flat_dict(metadata)
  wanted = ocp.tree.to_flat_dict(ocp.tree.serialize_tree(abstract_state, keep_empty_nodes=True))
  problems = []
  for key, target in sorted(wanted.items(), key=lambda item: item[0][0] != "params"):
    shape = getattr(stored.get(key), "shape", None)
    if key not in stored:
      problems.append(f"{'/'.join(key)}: not in the checkpoint")
    elif shape is not None and tuple(shape) != tuple(target.shape):
      problems.append(f"{'/'.join(key)}: checkpoint {tuple(shape)}, model {tuple(target.shape)}")
  if problems:  # Every parameter named; the optimizer state's arrays mirror them.
    shown = [p for p in problems if p.startswith("params/")] or problems[:6]
    raise CheckpointShapeError(
        f"{step_dir} does not fit the model ({len(problems)} arrays differ): "
        + "; ".join(shown) + ("; ..." if len(problems) > len(shown) else ""))


class _OrbaxTracebacks(logging_lib.Filter):
  """Keeps orbax's (and asyncio's `Task exception was never retrieved`) log line about a failed
  background save but not its traceback: the failure reaches the caller as one
  CheckpointSaveError, and hundreds of traceback lines would bury it."""

  def filter(self, record):
    if record.exc_info and ("orbax" in record.pathname or any(
        "orbax" in frame.filename for frame in traceback.extract_tb(record.exc_info[2]))):
      record.exc_info, record.exc_text = None, None
    return True


def _is_closed_loop_error(error: BaseException) -> bool:
  return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


def _quiet_closed_loop_errors() -> None:
  """After a failed save, tensorstore's write callbacks still schedule onto orbax's closed asyncio
  loop, and each prints a `RuntimeError: Event loop is closed` traceback (dozens on a full disk,
  through sys.unraisablehook, or sys.excepthook) that says nothing the CheckpointSaveError does
  not; drop those, print every other error."""
  if not getattr(sys.excepthook, "hybridir_quiet", False):
    previous_excepthook = sys.excepthook

    def excepthook(kind, value, trace):
      if not _is_closed_loop_error(value):
        previous_excepthook(kind, value, trace)

    excepthook.hybridir_quiet = True
    sys.excepthook = excepthook
  if not getattr(sys.unraisablehook, "hybridir_quiet", False):
    previous_unraisablehook = sys.unraisablehook

    def unraisablehook(unraisable):
      if not _is_closed_loop_error(unraisable.exc_value):
        previous_unraisablehook(unraisable)

    unraisablehook.hybridir_quiet = True
    sys.unraisablehook = unraisablehook


def _first_line(error: BaseException) -> str:
  """The error's type and first line, whole (a longer message repeats it in detail)."""
  lines = str(error).strip().splitlines()
  return f"{type(error).__name__}: {lines[0] if lines else ''}"


class Checkpointer:
  """Saves and restores (train state, data position) under `directory`.

  keep_last: the newest N checkpoints are kept; keep_best: also the best M by `best_metric`
  (an eval metric passed to `save`), higher is better unless best_mode='min'. asynchronous=False
  waits for each save to be committed (orbax's async machinery still writes it, with checksums).
  """

  def __init__(self, directory: str, keep_last: int = 3, keep_best: int = 1,
               best_metric: str | None = None, best_mode: str = "max",
               asynchronous: bool = True):
    if keep_last < 1:
      raise ValueError(f"Checkpointer.keep_last must be >= 1, got {keep_last}")
    if best_mode not in ("max", "min"):
      raise ValueError(f"Checkpointer.best_mode must be 'max' or 'min', got {best_mode!r}")
    # Orbax wants absolute paths; gs:// and other URLs pass through.
    self.directory = fs.abspath(directory)
    self.asynchronous = asynchronous
    tracked = best_metric if keep_best else None  # The metric kept checkpoints are chosen by.
    self._best_metric, self._best_mode = tracked, best_mode
    self._saving_step = None
    self._warn_about_incomplete()
    for logger in (logging_lib.getLogger("absl"), logging_lib.getLogger("asyncio")):
      if not any(isinstance(f, _OrbaxTracebacks) for f in logger.filters):
        logger.addFilter(_OrbaxTracebacks())
    _quiet_closed_loop_errors()
    policies = [checkpoint_managers.LatestN(keep_last)]
    if tracked:
      policies.append(checkpoint_managers.BestN(
          get_metric_fn=lambda metrics: metrics[tracked], reverse=best_mode == "min",
          n=keep_best, keep_checkpoints_without_metrics=False))
    self._manager = ocp.CheckpointManager(
        self.directory,
        item_handlers={STATE: ocp.StandardCheckpointHandler(), DATA: ocp.JsonCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(
            preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
            # best_fn makes orbax write each step's metrics beside it (<step>/metrics), so the
            # best step stays known, and kept, after a restart.
            best_fn=(lambda metrics: metrics[tracked]) if tracked else None,
            best_mode=best_mode,
            enable_async_checkpointing=True, cleanup_tmp_directories=True, create=True,
            async_options=ocp.AsyncOptions(post_finalization_callback=self._before_commit)))

  def _warn_about_incomplete(self) -> None:
    if not fs.isdir(self.directory):
      return
    for name in fs.listdir(self.directory):
      path = fs.path(self.directory) / name
      if path.is_dir() and ocp.step.is_tmp_checkpoint(path):
        logging.warning("ignoring half-written checkpoint %s (a save did not finish)", path)

  def _before_commit(self) -> None:
    """Runs on the primary process once every file of the step is written, before the commit
    (rename or marker) that makes the step count: so a committed step always has its checksums."""
    step = self._saving_step
    names = [n for n in fs.listdir(self.directory)
             if n == str(step) or n.startswith(f"{step}.orbax-checkpoint-tmp")]
    staged = [n for n in names if n != str(step)] or names  # Local: the tmp dir; gs://: the step.
    if len(staged) != 1:
      raise CheckpointSaveError(f"{self.directory}: cannot find the directory of step {step} "
                                f"being saved among {names}")
    write_checksums(fs.path(self.directory) / staged[0])

  def step_dir(self, step: int) -> str:
    return str(fs.path(self.directory) / str(step))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def metrics(self, step: int) -> dict:
    """The metrics step was saved with ({} if none, or no best_metric was set)."""
    return dict(self._manager.metrics(step) or {})

  def best_step(self) -> int | None:
    """The kept step with the best best_metric (best_mode; ties: the earliest), from the metrics
    saved beside each step, so also a step saved before a restart; None if no step has it."""
    if not self._best_metric:
      return None
    sign = 1 if self._best_mode == "min" else -1
    scored = [(sign * metrics[self._best_metric], step) for step in self.all_steps()
              if self._best_metric in (metrics := self.metrics(step))]
    return min(scored)[1] if scored else None

  def save(self, step: int, state, data_position: dict, metrics: dict | None = None,
           force: bool = False) -> bool:
    """Starts an (async) save; returns whether one was started. Raises CheckpointSaveError if
    this save or the one before failed."""
    metrics = {k: float(v) for k, v in (metrics or {}).items()} or None
    self.wait()  # Surfaces a failure of the previous save before anything else is written.
    self._saving_step = step
    try:
      started = self._manager.save(
          step, args=ocp.args.Composite(**{STATE: ocp.args.StandardSave(state),
                                           DATA: ocp.args.JsonSave(data_position)}),
          metrics=metrics, force=force)
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from None
    if not self.asynchronous:
      self.wait()
    return started

  def _save_error(self, step: int | None, error: BaseException) -> CheckpointSaveError:
    good = self.newest_verified(exclude=step)
    return CheckpointSaveError(
        f"saving checkpoint step {step} under {self.directory} failed: {_first_line(error)}; "
        f"training stopped. Newest good checkpoint: "
        + (self.step_dir(good) if good is not None else "none"))

  def check(self) -> None:
    """Raises CheckpointSaveError if a background save has failed; cheap while one is running."""
    if self._saving_step is not None and not self._manager.is_saving_in_progress():
      self.wait()

  def wait(self) -> None:
    """Blocks until pending async saves are committed; raises CheckpointSaveError if one failed."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      step, self._saving_step = self._saving_step, None
      raise self._save_error(step, e) from None
    self._saving_step = None

  def newest_verified(self, exclude: int | None = None) -> int | None:
    """The newest committed step whose files match their checksums."""
    for step in sorted(self._manager.all_steps(), reverse=True):
      if step != exclude and verify(self.step_dir(step)) is None:
        return step
    return None

  def restore(self, step: int, abstract_state, shardings):
    """(state with the given shardings, data position) of a step, unverified."""
    restored = self._manager.restore(step, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardRestore(_abstract(abstract_state, shardings)),
        DATA: ocp.args.JsonRestore()}))
    return restored[STATE], restored[DATA]

  def restore_newest_good(self, abstract_state, shardings, check_position=lambda step, d: None,
                          allow_unverified: bool = False):
    """(step, state, data position) of the newest checkpoint that verifies and restores, or None
    when there is none. Damaged newer ones are skipped with a warning and deleted, so the run
    rewrites them. `check_position(step, position)` may refuse a checkpoint by raising, as do
    arrays of other shapes than `abstract_state`'s (CheckpointShapeError): neither is damage.
    A step without checksums is damaged unless `allow_unverified` (see `verify`)."""
    steps = self.all_steps()
    damaged = []
    for step in reversed(steps):
      problem = _agreed(verify(self.step_dir(step), allow_unverified))
      if problem is None:
        try:
          position = self._manager.restore(step, args=ocp.args.Composite(
              **{DATA: ocp.args.JsonRestore()}))[DATA]
          metadata = self._manager.item_metadata(step)[STATE]
          if metadata is None:
            raise FileNotFoundError(f"{STATE}/_METADATA: no array metadata to restore from")
        except Exception as e:  # pylint: disable=broad-except
          problem = _agreed(f"{self.step_dir(step)}: {_first_line(e)}")
      if problem is None:
        check_shapes(metadata, abstract_state, self.step_dir(step))
        check_position(step, position)
        try:
          state = self._manager.restore(step, args=ocp.args.Composite(**{
              STATE: ocp.args.StandardRestore(_abstract(abstract_state, shardings))}))[STATE]
        except Exception as e:  # pylint: disable=broad-except
          problem = f"{self.step_dir(step)}: {_first_line(e)}"
        problem = _agreed(problem)
      if problem is None:
        for bad in damaged:
          self._manager.delete(bad)
        return step, state, position
      logging.warning("checkpoint step %d is damaged, skipping it: %s", step, problem)
      damaged.append(step)
    if steps:
      raise NoGoodCheckpointError(
          f"{self.directory}: none of the checkpoints {steps} verifies and restores (see the "
          "warnings above); they are left as they were: move them away to start afresh")
    return None

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self._manager.close()


def _agreed(problem: str | None) -> str | None:
  """A problem seen by any process is everyone's (the restore that follows is collective)."""
  if jax.process_count() == 1:
    return problem
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  flags = multihost_utils.process_allgather(np.asarray(problem is not None))
  if problem is None and np.any(flags):
    return f"failed on process {int(np.argmax(flags))}"
  return problem


# ---------------------------------------------------------------------------------------------
# Reading a training run's checkpoints (MODEL_DIR/checkpoints), outside the loop: export, loading

def restore_numpy(path: str, subtree: str | None = None) -> dict:
  """An orbax pytree (or one top-level entry of it) as numpy arrays, whatever devices saved it."""
  path = fs.abspath(path)  # orbax reads no item metadata through a relative path.
  checkpointer = ocp.PyTreeCheckpointer()
  # The item's own metadata: a training step's state/ has no step metadata file of its own, and
  # asking the checkpointer for it logs a warning on every export.
  tree = ocp.PyTreeCheckpointHandler().metadata(fs.path(path)).tree
  if subtree is not None:
    if subtree not in tree:
      raise KeyError(f"{path}: no {subtree!r} in the checkpoint (found {sorted(tree)})")
    tree = {subtree: tree[subtree]}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
      item=tree, restore_args=restore_args, partial_restore=subtree is not None))
  return restored if subtree is None else restored[subtree]


def training_steps(model_dir: str) -> list[int]:
  """Complete checkpoint steps under MODEL_DIR/checkpoints (half-written ones have other names)."""
  directory = os.path.join(model_dir, "checkpoints")
  if not fs.isdir(directory):
    raise FileNotFoundError(f"{directory}: no checkpoints directory (is {model_dir} a MODEL_DIR?)")
  return sorted(step for step in ocp.step.checkpoint_steps(fs.path(directory))  # Finalized only.
                if fs.isdir(os.path.join(directory, str(step), STATE)))


def restore_params(model_dir: str, step: int | None = None) -> tuple[int, dict]:
  """(step, DualEncoder params) of a training checkpoint: the latest one unless step is given."""
  steps = training_steps(model_dir)
  if not steps:
    raise FileNotFoundError(f"{model_dir}/checkpoints: no complete checkpoint")
  step = steps[-1] if step is None else step
  if step not in steps:
    raise FileNotFoundError(f"{model_dir}/checkpoints: no checkpoint for step {step}; "
                            f"found steps {steps}")
  step_dir = os.path.join(model_dir, "checkpoints", str(step))
  if fs.exists(os.path.join(step_dir, CHECKSUMS)):
    problem = verify(step_dir)
    if problem:
      raise CheckpointDamagedError(f"checkpoint step {step} of {model_dir} is damaged: {problem}"
                                   f" (steps there: {steps})")
  else:
    logging.warning("%s has no %s (written before checksums existed?): read unverified",
                    step_dir, CHECKSUMS)
  path = os.path.join(step_dir, STATE)
  params = restore_numpy(path, "params")
  if "model" not in params:
    raise KeyError(f"{path}: params hold {sorted(params)}, expected 'model'")
  return step, params["model"]


def read_checkpoint_identity(model_dir: str, step: int) -> tuple[str, dict]:
  """(path, JSON) of the identity a training checkpoint stores (run_dir.RunDescription.
  checkpoint_identity; {} if none)."""
  path = os.path.join(model_dir, "checkpoints", str(step), DATA)
  if not fs.isdir(path):
    return path, {}
  position = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(path)
  identity = position.get("identity") if isinstance(position, dict) else None
  return path, identity if isinstance(identity, dict) else {}


def training_text_format(model_dir: str, step: int) -> text_lib.TextFormat | None:
  """The text format a training checkpoint's identity records (None: it records none)."""
  path, identity = read_checkpoint_identity(model_dir, step)
  if "text_format" not in identity:
    return None
  return text_lib.TextFormat.from_json(identity["text_format"], path)

