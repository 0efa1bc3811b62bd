"""Checkpoint and process faults: damaged checkpoints fall back, failed saves stop the run."""
import errno
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridir import checkpoints
from hybridir import trainer
from tests import test_trainer
from tests.test_trainer import SyntheticPairs, run


def largest_state_file(step_dir):
  """The largest file of a checkpoint step's state: an array chunk."""
  found = [os.path.join(r, n) for r, _, names in os.walk(os.path.join(step_dir, "state"))
           for n in names]
  return max(found, key=os.path.getsize)


def flip_bytes(path, offset=0, count=16):
  with open(path, "r+b") as f:
    f.seek(offset)
    data = bytearray(f.read(count))
    f.seek(offset)
    f.write(bytes(b ^ 0xFF for b in data))


def save_tiny(directory, steps):
  checkpointer = checkpoints.Checkpointer(str(directory))
  state = {"w": jnp.arange(12.0).reshape(3, 4), "b": jnp.ones(5)}
  for step in steps:
    checkpointer.save(step, state, {"step": step}, force=True)
  checkpointer.close()
  return state


def test_each_checkpoint_records_checksums_that_verify(tmp_path):
  save_tiny(tmp_path, [1])
  step_dir = tmp_path / "1"
  listed = (step_dir / checkpoints.CHECKSUMS).read_text()
  assert "state/" in listed and "data/" in listed
  assert checkpoints.verify(step_dir) is None


@pytest.mark.parametrize("damage, expected", [
    (lambda path: flip_bytes(path, 4), "sha256 .* differs"),
    (lambda path: open(path, "r+b").truncate(3), "sha256 .* differs"),
    (os.remove, "missing")])
def test_verify_names_the_damaged_file(tmp_path, damage, expected):
  save_tiny(tmp_path, [1])
  victim = largest_state_file(tmp_path / "1")
  damage(victim)
  problem = checkpoints.verify(tmp_path / "1")
  assert os.path.relpath(victim, tmp_path / "1") in problem
  assert re.search(expected, problem)


def test_newest_verified_skips_a_damaged_newer_step(tmp_path):
  save_tiny(tmp_path, [1, 2])
  assert checkpoints.Checkpointer(str(tmp_path)).newest_verified() == 2
  os.remove(tmp_path / "2" / "data" / "metadata")
  assert checkpoints.Checkpointer(str(tmp_path)).newest_verified() == 1


@pytest.mark.slow
def test_corrupt_newest_checkpoint_is_skipped_and_the_run_continues_bitwise_from_the_older(
    tmp_path, caplog):
  straight = run(tmp_path / "straight", 12)
  run(tmp_path / "resumed", 8)
  victim = largest_state_file(tmp_path / "resumed" / "checkpoints" / "8")
  flip_bytes(victim, 8)
  with caplog.at_level("WARNING"):
    resumed = run(tmp_path / "resumed", 12)
  warnings = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
  assert len(warnings) == 1 and "step 8" in warnings[0]
  assert os.path.relpath(victim, tmp_path / "resumed" / "checkpoints" / "8") in warnings[0]
  assert [h["step"] for h in resumed.history] == list(range(5, 13))
  for a, b in zip(jax.tree.leaves(straight.state), jax.tree.leaves(resumed.state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_checkpoint_whose_restore_fails_is_skipped_too(tmp_path, caplog):
  run(tmp_path, 8)
  step_dir = tmp_path / "checkpoints" / "8"
  os.remove(step_dir / checkpoints.CHECKSUMS)  # As if written before checksums existed.
  os.remove(step_dir / "state" / "_METADATA")
  with caplog.at_level("WARNING"):
    resumed = run(tmp_path, 10)
  assert "checkpoint step 8 is damaged" in caplog.text and "_METADATA" in caplog.text
  assert [h["step"] for h in resumed.history] == list(range(5, 11))


def test_restoring_into_a_model_of_other_shape_names_the_parameter_and_both_shapes(tmp_path):
  run(tmp_path, 4)
  wider = test_trainer.dual_encoder.DualEncoder(test_trainer.t5.T5Config(
      vocab_size=64, emb_dim=24, num_layers=2, num_heads=2, head_dim=8, mlp_dim=32))
  with pytest.raises(checkpoints.CheckpointShapeError,
                     match=r"token_embedder/embedding: checkpoint \(64, 16\), model \(64, 24\)"):
    run(tmp_path, 6, model=wider,
        checkpoint_cfg=trainer.CheckpointConfig(period=4, allow_changed_run=True))


def test_failed_save_stops_training_at_once_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch):
  write = checkpoints.write_checksums
  def disk_full_at_step_8(step_dir):
    if os.path.basename(str(step_dir)).startswith("8"):
      raise OSError(errno.ENOSPC, "No space left on device", str(step_dir))
    write(step_dir)
  monkeypatch.setattr(checkpoints, "write_checksums", disk_full_at_step_8)
  fetched = []
  with pytest.raises(checkpoints.CheckpointSaveError,
                     match=r"step 8 .*No space left on device.*Newest good checkpoint: .*/4\b"):
    run(tmp_path, 16, SyntheticPairs(on_batch=fetched.append))
  assert max(fetched) <= 11  # Stopped by step 12's save at the latest (the poll's timing is
  # load-dependent: the failure shows once orbax's save thread has ended).
  assert checkpoints.Checkpointer(str(tmp_path / "checkpoints")).all_steps() == [4]
  assert checkpoints.verify(tmp_path / "checkpoints" / "4") is None


@pytest.mark.slow
def test_nan_stop_names_the_newest_verified_checkpoint(tmp_path, monkeypatch):
  schedule = lambda step: jnp.where(step >= 9, jnp.inf, 1e-3)
  verify = checkpoints.verify
  monkeypatch.setattr(checkpoints, "verify", lambda step_dir: (
      "damaged" if str(step_dir).endswith("/8") else verify(step_dir)))
  with pytest.raises(FloatingPointError,
                     match=r"at step 11; .*Last good checkpoint: .*/checkpoints/4\b"):
    run(tmp_path, 12, learning_rate_schedule=schedule)


def test_checkpointer_drops_only_the_closed_event_loop_tracebacks_of_a_failed_save(
    tmp_path, monkeypatch):
  printed = []
  monkeypatch.setattr("sys.excepthook", lambda kind, value, tb: printed.append(value))
  checkpoints.Checkpointer(str(tmp_path / "checkpoints")).close()
  for error in (RuntimeError("Event loop is closed"), RuntimeError("other"), OSError("disk")):
    sys.excepthook(type(error), error, None)
  assert [str(e) for e in printed] == ["other", "disk"]
