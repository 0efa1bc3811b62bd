"""The sharded trainer: mesh equivalence, GradCache, compile-once, resume, NaN stop, preemption."""
import hashlib
import json
import os
import re
import signal

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from hybridir.data import text
from hybridir.models import dual_encoder
from hybridir.models import t5
from hybridir.training import checkpoints
from hybridir.training import optim
from hybridir.training import partitioning
from hybridir.training import run_dir
from hybridir.training import train_step as step_lib
from hybridir.training import trainer

LENGTHS = {"query": 8, "passage": 16}


class SyntheticPairs:
  """Deterministic token batches in which a passage starts with its query (learnable)."""
  batch_size = 16
  name = "synthetic"

  def __init__(self, on_batch=None):
    self.on_batch = on_batch

  def batch(self, step):
    if self.on_batch:
      self.on_batch(step)
    rng = np.random.default_rng([7, step])
    query = rng.integers(3, 64, (self.batch_size, LENGTHS["query"])).astype(np.int32)
    query[:, -1] = 1
    passage = np.concatenate([query, rng.integers(3, 64, (self.batch_size, 8))], 1)
    return dict(query_tokens=query, passage_tokens=passage.astype(np.int32),
                pair_ids=np.arange(self.batch_size, dtype=np.int32) + 1000 * step)


def tiny_model(dropout_rate=0.0, kernels="portable"):
  return dual_encoder.DualEncoder(t5.T5Config(
      vocab_size=64, emb_dim=16, num_layers=2, num_heads=2, head_dim=8, mlp_dim=32,
      dropout_rate=dropout_rate, kernels=kernels))


def adamw(learning_rate_schedule):
  return optim.create_optimizer("adamw", learning_rate_schedule)


def run(model_dir, steps, train_input=None, **kwargs):
  options = dict(model=tiny_model(), train_input=train_input or SyntheticPairs(),
                 task_feature_lengths=LENGTHS, train_steps=steps, model_dir=str(model_dir),
                 learning_rate_schedule=3e-3, optimizer_fn=adamw,
                 checkpoint_cfg=trainer.CheckpointConfig(period=4),
                 mesh=partitioning.create_mesh(2), log_period=100)
  options.update(kwargs)
  return trainer.train(**options)


def preempted_run(model_dir):
  """A run that gets SIGTERM as it fetches step 3's batch (test_main runs it through main)."""
  def preempt(step):
    if step == 2:
      os.kill(os.getpid(), signal.SIGTERM)
  return run(model_dir, 12, SyntheticPairs(on_batch=preempt))


def grads_on_mesh(mesh, loss_config, batch):
  model = tiny_model()
  params = step_lib.initial_params(
      step_lib.init_model_params(model, jax.random.PRNGKey(0), 8, 16), loss_config)
  _, grads_fn = step_lib.make_train_step(model, adamw(1e-3), loss_config)
  rules = partitioning.standard_logical_axis_rules()
  with partitioning.axis_rules_context(rules, mesh):
    batch = partitioning.host_local_to_global(batch, mesh)
    (loss, _), grads = jax.jit(grads_fn)(params, batch, jax.random.PRNGKey(1))
  return float(loss), jax.device_get(grads)


def assert_trees_close(a, b, tolerance=1e-5):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    scale = max(float(np.abs(y).max()), 1e-6)
    assert np.abs(x - y).max() / scale < tolerance, jax.tree_util.keystr(path)


@pytest.mark.slow
def test_loss_and_grads_on_data4_model2_mesh_equal_single_device():
  batch = SyntheticPairs().batch(0)
  config = step_lib.LossConfig()
  loss_mesh, grads_mesh = grads_on_mesh(partitioning.create_mesh(2), config, batch)
  single = partitioning.create_mesh(1, devices=jax.devices()[:1])
  loss_one, grads_one = grads_on_mesh(single, config, batch)
  assert abs(loss_mesh - loss_one) < 1e-5
  assert_trees_close(grads_mesh, grads_one)


@pytest.mark.slow
def test_grad_cache_over_4_chunks_equals_unchunked_step():
  batch = SyntheticPairs().batch(3)
  mesh = partitioning.create_mesh(2)
  loss_plain, grads_plain = grads_on_mesh(mesh, step_lib.LossConfig(temperature="learned"), batch)
  loss_cached, grads_cached = grads_on_mesh(
      mesh, step_lib.LossConfig(temperature="learned", grad_cache_chunks=4), batch)
  assert abs(loss_plain - loss_cached) < 1e-5
  assert_trees_close(grads_cached, grads_plain)


def test_loss_masks_examples_sharing_a_passage_key_else_the_same_pair_id():
  model = tiny_model()
  batch = SyntheticPairs().batch(0)
  keys = np.arange(16, dtype=np.int32)
  keys[1] = keys[2] = keys[3] = 0  # Four examples on one passage: 4 * 3 masked entries.

  def num_masked(loss_config, batch):
    params = step_lib.initial_params(
        step_lib.init_model_params(model, jax.random.PRNGKey(0), 8, 16), loss_config)
    return float(jax.jit(step_lib.make_eval_step(model, loss_config))(params, batch)["num_masked"])

  assert num_masked(step_lib.LossConfig(), dict(batch, passage_keys=keys)) == 12
  assert num_masked(step_lib.LossConfig(), batch) == 0  # Without keys: distinct pair ids.
  assert num_masked(step_lib.LossConfig(mask_shared_passages=False),
                    dict(batch, passage_keys=keys)) == 0


@pytest.mark.slow
def test_training_compiles_once_shards_params_by_rules_and_lowers_the_loss(tmp_path):
  result = run(tmp_path, 24, learning_rate_schedule=1e-2)
  assert result.compilations == 1
  embedding = result.state.params["model"]["encoder"]["token_embedder"]["embedding"]
  assert embedding.sharding.spec == PartitionSpec("model", None)
  mlp = result.state.params["model"]["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
  assert mlp.sharding.spec == PartitionSpec(None, "model")
  losses = [h["loss"] for h in result.history]
  assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4])


def test_resumed_run_equals_uninterrupted_run_bitwise(tmp_path):
  straight = run(tmp_path / "straight", 8)
  run(tmp_path / "resumed", 4)
  resumed = run(tmp_path / "resumed", 8)
  assert [h["step"] for h in resumed.history] == [5, 6, 7, 8]
  for a, b in zip(jax.tree.leaves(straight.state), jax.tree.leaves(resumed.state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_half_written_checkpoint_is_ignored_with_a_warning(tmp_path, caplog):
  run(tmp_path, 4)
  partial = tmp_path / "checkpoints" / "8.orbax-checkpoint-tmp-1234"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "_METADATA").write_text("{")
  with caplog.at_level("WARNING"):
    result = run(tmp_path, 6)
  assert "ignoring half-written checkpoint" in caplog.text and "8.orbax-checkpoint-tmp" in caplog.text
  assert [h["step"] for h in result.history] == [5, 6]


@pytest.mark.slow
def test_nan_loss_stops_naming_the_step_and_last_good_checkpoint(tmp_path):
  schedule = lambda step: jnp.where(step >= 5, jnp.inf, 1e-3)
  with pytest.raises(FloatingPointError, match=r"at step 7; .*Last good checkpoint: .*/checkpoints/4"):
    run(tmp_path, 12, learning_rate_schedule=schedule)


def test_sigterm_saves_the_current_step_and_rerun_resumes(tmp_path):
  def preempt(step):
    if step == 5:
      os.kill(os.getpid(), signal.SIGTERM)
  stopped = run(tmp_path, 12, SyntheticPairs(on_batch=preempt))
  assert stopped.stopped_early and stopped.history[-1]["step"] == 6
  assert 6 in [int(p) for p in os.listdir(tmp_path / "checkpoints") if p.isdigit()]
  resumed = run(tmp_path, 8)
  assert [h["step"] for h in resumed.history] == [7, 8]


def test_resuming_with_other_run_settings_is_refused_unless_allowed(tmp_path):
  run(tmp_path, 4)
  with pytest.raises(trainer.RunChangedError, match=r"seed: 0 -> 3.*ALLOW_CHANGED_RUN"):
    run(tmp_path, 6, seed=3)
  resumed = run(tmp_path, 6, seed=3,
                checkpoint_cfg=trainer.CheckpointConfig(period=4, allow_changed_run=True))
  assert [h["step"] for h in resumed.history] == [5, 6]


@pytest.mark.slow
def test_a_run_resumes_with_the_other_kernels_and_its_random_streams_follow_them(tmp_path):
  """`kernels` changes how the model is computed, not what: no part of the run's identity. The
  "cpu" kernels use the non-partitionable threefry (the cheap one on XLA:CPU), others JAX's
  default."""
  assert not trainer.partitionable_threefry(tiny_model(0.1, "cpu"))
  assert trainer.partitionable_threefry(tiny_model(0.1, "portable"))
  process_setting = jax.config.jax_threefry_partitionable
  run(tmp_path, 4, model=tiny_model(0.1, "cpu"))
  assert jax.config.jax_threefry_partitionable == process_setting  # Set for the run only.
  resumed = run(tmp_path, 6, model=tiny_model(0.1, "portable"))
  assert [h["step"] for h in resumed.history] == [5, 6]
  assert "kernels" not in checkpoints.read_checkpoint_identity(str(tmp_path), 6)[1]["model"]


@pytest.mark.parametrize("make, message", [
    (lambda: trainer.CheckpointConfig(period=0),
     "CheckpointConfig.period must be a positive integer, found 0"),
    (lambda: trainer.CheckpointConfig(best_mode="lowest"),
     "CheckpointConfig.best_mode must be 'max' or 'min', found 'lowest'"),
    (lambda: trainer.CheckpointConfig(init_params="/tmp/mt5"),
     "CheckpointConfig.init_params must be callable (e.g. importers.pretrained(path)) or None, "
     "found '/tmp/mt5'"),
    (lambda: trainer.EvalConfig(SyntheticPairs(), period=-1),
     "EvalConfig.period must be a non-negative integer (0: no evaluation), found -1"),
    (lambda: trainer.EvalConfig(SyntheticPairs(), period=2, steps=0),
     "EvalConfig.steps must be a positive integer, found 0")])
def test_a_bad_checkpoint_or_eval_setting_fails_in_one_line_naming_the_field(make, message):
  with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
    make()


def test_train_refuses_a_checkpoint_cfg_that_is_no_checkpoint_config(tmp_path):
  with pytest.raises(TypeError,
                     match="checkpoint_cfg must be a trainer.CheckpointConfig, found dict"):
    run(tmp_path, 2, checkpoint_cfg={"period": 4})
  assert not (tmp_path / "checkpoints").exists()


def test_vocabulary_larger_than_the_embedding_fails_before_training(tmp_path):
  import types
  pairs = SyntheticPairs()
  pairs.vocabulary = types.SimpleNamespace(vocab_size=100)  # tiny_model embeds 64 ids.
  with pytest.raises(ValueError, match="vocabulary .* 100 ids .* embedding has 64 rows"):
    run(tmp_path, 2, pairs)
  assert not (tmp_path / "checkpoints").exists()


def test_init_from_imported_checkpoint_with_wrong_shapes_names_them(tmp_path, data_dir):
  from hybridir.training import importers
  with pytest.raises(importers.CheckpointMismatchError, match="token_embedder/embedding"):
    run(tmp_path, 2, checkpoint_cfg=trainer.CheckpointConfig(init_params=importers.pretrained(str(
        data_dir / "t5x-tiny-checkpoint/test_de_t5_tiny.checkpoint_1000"))))


def test_keeps_the_last_checkpoint_plus_the_best_by_eval_metric(tmp_path):
  import functools
  keep = functools.partial(checkpoints.Checkpointer, keep_last=1, keep_best=1, best_mode="max")
  result = run(tmp_path, 8, checkpoint_cfg=trainer.CheckpointConfig(
                   period=2, checkpointer_fn=keep, best_metric="eval/loss"),
               eval_cfg=trainer.EvalConfig(SyntheticPairs(), period=2, steps=1))
  losses = {h["step"]: h["eval/loss"] for h in result.eval_history}
  assert sorted(losses) == [2, 4, 6, 8]
  kept = sorted(int(p) for p in os.listdir(tmp_path / "checkpoints") if p.isdigit())
  assert kept == sorted({max(losses, key=losses.get), 8})


@pytest.mark.slow
def test_init_from_hugging_face_checkpoint_starts_from_its_weights(tmp_path):
  from hybridir.training import importers
  from tests import reference_models
  reference_models.save_random_mt5(
      tmp_path / "hf", vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_heads=2,
      relative_attention_num_buckets=32, relative_attention_max_distance=128)
  _, imported = importers.load_hf(str(tmp_path / "hf"))
  result = run(tmp_path / "run", 1, learning_rate_schedule=0.0,
               checkpoint_cfg=trainer.CheckpointConfig(
                   init_params=importers.pretrained(str(tmp_path / "hf"))))
  trained = jax.device_get(result.state.params["model"])
  for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(imported)):
    np.testing.assert_array_equal(a, b)


def test_checkpoint_records_the_inputs_text_format_and_passage_length_for_export(tmp_path):
  class FormattedPairs(SyntheticPairs):
    text_format = text.TextFormat("q: ", "p: ", "sentence")

  run(tmp_path, 1, FormattedPairs(), checkpoint_cfg=trainer.CheckpointConfig(period=1))
  assert checkpoints.training_text_format(str(tmp_path), 1) == FormattedPairs.text_format
  identity = checkpoints.read_checkpoint_identity(str(tmp_path), 1)[1]
  assert identity["task_feature_lengths"]["passage"] == LENGTHS["passage"]


def check_description_agrees_with_checkpoint(model_dir, step: int) -> dict:
  """MODEL_DIR's encoder.json and vocabulary copy say what checkpoint `step`'s identity says (one
  run description, two views); returns that identity."""
  identity = checkpoints.read_checkpoint_identity(str(model_dir), step)[1]
  with open(os.path.join(model_dir, run_dir.DESCRIPTION)) as f:
    description = json.load(f)
  assert {k: v for k, v in description["encoder_config"].items() if k != "kernels"} == (
      identity["model"])
  assert description["text_format"] == identity["text_format"]
  assert {"query": description["query_max_length"], "passage": description["max_length"]} == (
      identity["task_feature_lengths"])
  with open(os.path.join(model_dir, description["vocabulary"]["file"]), "rb") as f:
    assert hashlib.sha256(f.read()).hexdigest() == description["vocabulary"]["sha256"]
  return identity


def test_the_best_checkpoint_survives_a_restart_and_is_found_from_disk(tmp_path):
  """Orbax forgets the metrics of steps saved before a restart unless they are written beside
  them: then the resumed run would delete the best checkpoint and early stopping pick another."""
  import functools
  keep = functools.partial(checkpoints.Checkpointer, keep_last=1, keep_best=1, best_mode="max")
  options = dict(checkpoint_cfg=trainer.CheckpointConfig(
                     period=2, checkpointer_fn=keep, best_metric="eval/loss"),
                 eval_cfg=trainer.EvalConfig(SyntheticPairs(), period=2, steps=1))
  first = run(tmp_path, 4, **options)
  second = run(tmp_path, 8, **options)  # Resumes from step 4.
  losses = {h["step"]: h["eval/loss"] for h in first.eval_history + second.eval_history}
  assert sorted(losses) == [2, 4, 6, 8]
  best = max(losses, key=losses.get)  # best_mode="max": the loss is highest early, before 4.
  assert best < 4
  kept = sorted(int(p) for p in os.listdir(tmp_path / "checkpoints") if p.isdigit())
  assert kept == [best, 8]
  reopened = keep(str(tmp_path / "checkpoints"), best_metric="eval/loss")
  try:
    assert reopened.best_step() == best  # What study_run.best_step exports.
  finally:
    reopened.close()
