"""Checkpoint and process faults: damaged checkpoints fall back, failed saves stop the run, a
refused run leaves its directory as it was, a resumed run logs each step once."""
import errno
import logging
import os
import re
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridir.data import text
from hybridir import errors
from hybridir import fs
from hybridir.models import families
from hybridir.training import checkpoints
from hybridir.training import run_dir
from hybridir.training import trainer
from tests import reference_models
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


def test_a_step_without_checksums_fails_verification_unless_unverified_steps_are_allowed(
    tmp_path):
  save_tiny(tmp_path, [1])
  os.remove(tmp_path / "1" / checkpoints.CHECKSUMS)
  assert f"{tmp_path / '1' / checkpoints.CHECKSUMS}: missing" in checkpoints.verify(tmp_path / "1")
  assert checkpoints.verify(tmp_path / "1", allow_unverified=True) is None
  assert checkpoints.Checkpointer(str(tmp_path)).newest_verified() is None


@pytest.mark.slow
@pytest.mark.parametrize("checksums_deleted", [False, True], ids=["flipped", "and_unlisted"])
def test_corrupt_newest_checkpoint_is_skipped_and_the_run_continues_bitwise_from_the_older(
    tmp_path, caplog, checksums_deleted):
  straight = run(tmp_path / "straight", 12)
  run(tmp_path / "resumed", 8)
  step_dir = tmp_path / "resumed" / "checkpoints" / "8"
  victim = largest_state_file(step_dir)
  flip_bytes(victim, 8)
  if checksums_deleted:  # Not resumed unverified: the damage would go unseen.
    os.remove(step_dir / checkpoints.CHECKSUMS)
    victim = step_dir / checkpoints.CHECKSUMS
  with caplog.at_level("WARNING"):
    resumed = run(tmp_path / "resumed", 12)
  warnings = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
  assert len(warnings) == 1 and "step 8" in warnings[0]
  assert os.path.relpath(victim, step_dir) in warnings[0]
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
    resumed = run(tmp_path, 10, checkpoint_cfg=trainer.CheckpointConfig(
        period=4, allow_unverified=True))
  assert "checkpoint step 8 is damaged" in caplog.text and "_METADATA" in caplog.text
  assert [h["step"] for h in resumed.history] == list(range(5, 11))


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_resumed_run_shows_each_step_once_in_tensorboard_with_the_values_it_continued_with(
    tmp_path):
  # pylint: disable=g-import-not-at-top  # TensorBoard's own loader, only here.
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.backend.event_processing import plugin_event_accumulator
  from tensorboard.util import tensor_util
  run(tmp_path, 8)
  shutil.rmtree(tmp_path / "checkpoints" / "8")  # Resumes from 4: steps 5-8 run again.
  resumed = run(tmp_path, 10, learning_rate_schedule=1e-3)  # Not in the run's identity.
  logged = plugin_event_accumulator.EventAccumulator(
      str(tmp_path / "train"), size_guidance={event_accumulator.TENSORS: 0})
  logged.Reload()
  losses = logged.Tensors("loss")
  assert [event.step for event in losses] == list(range(1, 11))
  assert [tensor_util.make_ndarray(event.tensor_proto).item() for event in losses[4:]] == [
      np.float32(h["loss"]) for h in resumed.history]


def test_a_damaged_checkpoint_is_refused_by_export_naming_the_file(tmp_path):
  run(tmp_path, 4)
  victim = largest_state_file(tmp_path / "checkpoints" / "4")
  flip_bytes(victim, 8)
  with pytest.raises(checkpoints.CheckpointDamagedError,
                     match=f"step 4 .* damaged: {re.escape(str(victim))}: sha256 "):
    checkpoints.restore_params(str(tmp_path))


def test_reading_a_checkpoints_arrays_logs_no_warning(tmp_path, caplog):
  save_tiny(tmp_path, [1])
  with caplog.at_level("WARNING"):
    restored = checkpoints.restore_numpy(str(tmp_path / "1" / checkpoints.STATE))
  assert sorted(restored) == ["b", "w"]
  assert [r.getMessage() for r in caplog.records] == []


@pytest.fixture(scope="module")
def tiny_vocabulary(tmp_path_factory, data_dir):
  texts = reference_models.xquad_texts(data_dir, ("en",), limit=100)
  return families.train_vocabulary("t5", texts, str(tmp_path_factory.mktemp("spm") / "spm"), 200)


def described(config_text: str, vocabulary: str | None = None) -> run_dir.RunDescription:
  """test_trainer's tiny run described with this config text (and vocabulary file)."""
  pairs = SyntheticPairs()
  pairs.vocabulary_path = vocabulary
  return run_dir.describe(test_trainer.tiny_model(), pairs, test_trainer.LENGTHS, 0, config_text)


def test_describing_a_run_again_the_same_way_writes_nothing(tmp_path, tiny_vocabulary,
                                                             monkeypatch):
  """So a rerun on a full disk gets past its setup to its checkpoints."""
  run_dir.write_description(str(tmp_path), described("trainer.train.seed = 0\n", tiny_vocabulary))
  assert sorted(os.listdir(tmp_path)) == [run_dir.CONFIG, run_dir.DESCRIPTION,
                                          run_dir.VOCABULARY_DIR]
  def disk_full(path, data):
    raise OSError(errno.ENOSPC, "No space left on device", str(path))
  monkeypatch.setattr(fs, "write_bytes_atomically", disk_full)
  run_dir.write_description(str(tmp_path), described("trainer.train.seed = 0\n", tiny_vocabulary))
  with pytest.raises(OSError, match="No space left"):  # What differs is written.
    run_dir.write_description(str(tmp_path), described("trainer.train.seed = 1\n"))


def test_a_run_refused_before_its_first_checkpoint_leaves_its_directory_as_it_was(tmp_path):
  existing, fresh = tmp_path / "existing", tmp_path / "fresh"
  (existing / "checkpoints" / "4").mkdir(parents=True)
  (existing / "config.gin").write_text("old")
  for model_dir in (existing, fresh):
    with pytest.raises(errors.SettingError):
      with run_dir.undone_unless_trained(str(model_dir)):
        run_dir.write_description(str(model_dir), described("new"))
        fs.write_text_atomically(str(model_dir / "vocabulary" / "spm.model"), "new")
        (model_dir / "checkpoints").mkdir(exist_ok=True)
        raise errors.SettingError("refused")
  assert sorted(os.listdir(existing)) == ["checkpoints", "config.gin"]
  assert (existing / "config.gin").read_text() == "old" and not fresh.exists()
  with pytest.raises(FloatingPointError):  # Failed after a checkpoint: what it wrote stays.
    with run_dir.undone_unless_trained(str(fresh)):
      run_dir.write_description(str(fresh), described("new"))
      (fresh / "checkpoints" / "4").mkdir(parents=True)
      raise FloatingPointError("loss is nan")
  assert (fresh / "config.gin").read_text() == "new"


def test_a_run_is_described_once_and_config_gin_and_encoder_json_agree_with_its_checkpoint(
    tmp_path, tiny_vocabulary):
  pairs = SyntheticPairs()
  pairs.vocabulary_path, pairs.family = tiny_vocabulary, "t5"
  pairs.text_format = text.TextFormat("q: ", "p: ", "sentence")
  run(tmp_path, 1, pairs, config_text="trainer.train.seed = 0\n",
      checkpoint_cfg=trainer.CheckpointConfig(period=1))
  assert (tmp_path / run_dir.CONFIG).read_text() == "trainer.train.seed = 0\n"
  identity = test_trainer.check_description_agrees_with_checkpoint(tmp_path, 1)
  assert identity["text_format"] == pairs.text_format.to_json()
  assert run_dir.read_description(str(tmp_path))["vocabulary"] == str(
      tmp_path / run_dir.VOCABULARY_DIR / "sentencepiece.model")


def test_an_input_of_another_family_than_the_model_is_refused_before_anything_is_written(
    tmp_path):
  pairs = SyntheticPairs()
  pairs.family = "xlmr"
  with pytest.raises(errors.SettingError, match=(
      "^the input 'synthetic' was registered for family 'xlmr', MODEL is of family 't5' ")):
    run(tmp_path / "run", 1, pairs, config_text="trainer.train.seed = 0\n")
  assert not (tmp_path / "run").exists()


def test_a_training_run_failing_before_its_first_checkpoint_takes_its_description_back(
    tmp_path, tiny_vocabulary):
  """The trainer writes the description once the checkpoints agree, and undoes it when the run
  fails before committing one (here a NaN loss at step 1 of a run checkpointing every 4)."""
  pairs = SyntheticPairs()
  pairs.vocabulary_path = tiny_vocabulary
  with pytest.raises(FloatingPointError, match="loss is nan"):
    run(tmp_path / "run", 4, pairs, learning_rate_schedule=float("nan"), config_text="seed = 0\n")
  assert not {run_dir.CONFIG, run_dir.DESCRIPTION, run_dir.VOCABULARY_DIR} & set(
      os.listdir(tmp_path / "run"))


def test_asyncio_logs_a_failed_save_task_without_its_traceback(tmp_path, caplog):
  """After a failed save, asyncio logs `Task exception was never retrieved` for each orbax write
  task, with its traceback: the line stays, the traceback goes (others' tracebacks stay)."""
  checkpoints.Checkpointer(str(tmp_path / "checkpoints")).close()
  records = {}
  for source in ("/site-packages/orbax/checkpoint/serialization.py", "/elsewhere/module.py"):
    try:
      exec(compile("raise ValueError()", source, "exec"))  # pylint: disable=exec-used
    except ValueError:
      with caplog.at_level("ERROR", logger="asyncio"):
        logging.getLogger("asyncio").error("Task exception was never retrieved",
                                           exc_info=sys.exc_info())
      records[source] = caplog.records[-1]
  assert [r.exc_info is None for r in records.values()] == [True, False]
