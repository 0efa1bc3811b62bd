"""Training checkpoints with orbax: periodic, async, atomic; keep the last N plus the best.

A checkpoint holds the train state (sharded arrays, restored straight into their shardings) and
the data position as JSON. Orbax writes each step under a temporary name and renames it when
complete (on gs://, which has no rename, it writes a commit_success.txt marker last instead), so a
crash mid-save never leaves a checkpoint that looks complete; such leftovers are reported and
ignored on resume.
"""
from absl import logging
import gin
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from hybridir import fs

STATE, DATA = "state", "data"


def _abstract(tree, shardings):
  """ShapeDtypeStructs carrying shardings: what orbax restores into."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


@gin.configurable
class Checkpointer:
  """Saves and restores (train state, data position) under `directory`.

  keep_last: the newest N checkpoints are kept; keep_best: also the best M by `best_metric`
  (an eval metric passed to `save`), higher is better unless best_mode='min'.
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
    self._warn_about_incomplete()
    policies = [checkpoint_managers.LatestN(keep_last)]
    if best_metric and keep_best:
      policies.append(checkpoint_managers.BestN(
          get_metric_fn=lambda metrics: metrics[best_metric], reverse=best_mode == "min",
          n=keep_best, keep_checkpoints_without_metrics=False))
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=asynchronous, cleanup_tmp_directories=True,
            create=True))

  def _warn_about_incomplete(self) -> None:
    if not fs.isdir(self.directory):
      return
    for name in fs.listdir(self.directory):
      path = fs.path(self.directory) / name
      if path.is_dir() and ocp.step.is_tmp_checkpoint(path):
        logging.warning("ignoring half-written checkpoint %s (a save did not finish)", path)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state, data_position: dict, metrics: dict | None = None,
           force: bool = False) -> bool:
    """Starts an (async) save; returns whether one was started."""
    metrics = {k: float(v) for k, v in (metrics or {}).items()} or None
    return self._manager.save(
        step, args=ocp.args.Composite(**{STATE: ocp.args.StandardSave(state),
                                         DATA: ocp.args.JsonSave(data_position)}),
        metrics=metrics, force=force)

  def restore(self, step: int, abstract_state, shardings):
    """(state with the given shardings, data position) of a step."""
    restored = self._manager.restore(step, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardRestore(_abstract(abstract_state, shardings)),
        DATA: ocp.args.JsonRestore()}))
    return restored[STATE], restored[DATA]

  def wait(self) -> None:
    """Blocks until pending async saves are committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
