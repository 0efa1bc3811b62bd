"""One process of the multi-host check in tests/test_multihost.py (not a test itself).

  python -m tests.multihost_worker --corpus_dir=D --spm_path=M --model_dir=R --out_dir=O \
      [--coordinator_address=localhost:P --process_count=2 --process_id=I]

Trains a tiny dual encoder on XQuAD-R en/de hybrid batches through `trainer.train`, with
`HybridInput` as a factory so each process builds its own share of the global batch. The
distributed flags are hybridir.main's, so they reach jax.distributed through
`main.initialize_distributed`. Every process writes `process_<i>.json` (its view: devices, losses,
the pair ids it fed); process 0 also writes `result.npz` (losses and final parameters, gathered
from all processes). With --restore_from, the final state's layout is used to restore that run's
latest checkpoint, written to `result.npz` under `restored`; --sigterm_at_step sends this process
SIGTERM as a preemption notice.
"""
import functools
import json
import os
import signal

from absl import app
from absl import flags
import jax
import numpy as np

import tasks
from tasks import qa
from hybridir.data import hybrid
from hybridir.data import input_pipeline
from hybridir import main as hybridir_main
from hybridir.models import dual_encoder
from hybridir.models import t5
from hybridir.training import checkpoints
from hybridir.training import optim
from hybridir.training import partitioning
from hybridir.training import train_step
from hybridir.training import trainer
from jax.experimental import multihost_utils

_CORPUS_DIR = flags.DEFINE_string("corpus_dir", None, "XQuAD-R folder.", required=True)
_SPM_PATH = flags.DEFINE_string("spm_path", None, "SentencePiece model.", required=True)
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "trainer model_dir.", required=True)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Where the results go.", required=True)
_STEPS = flags.DEFINE_integer("steps", 4, "Train steps.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Global batch size.")
_SIGTERM_AT = flags.DEFINE_integer("sigterm_at_step", None,
                                   "Send this process SIGTERM as it fetches this step's batch.")
_RESTORE_FROM = flags.DEFINE_string("restore_from", None, "A model_dir whose latest checkpoint "
                                    "to restore into this run's final layout.")

LANGUAGES = ["en", "de"]
LENGTHS = {"query": 16, "passage": 32}
CORPUS = "multihost_xquad_r"


def _flat(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _gathered(tree):
  """Host numpy copies of (possibly cross-process sharded) global arrays, on every process."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def run(argv):
  del argv
  hybridir_main.initialize_distributed()
  process = jax.process_index()
  tasks.register_parallel_qa(CORPUS, _CORPUS_DIR.value, "t5", _SPM_PATH.value,
                             languages=LANGUAGES)
  inputs = []  # The HybridInput the trainer builds for this host, kept to log its pair ids.

  def input_factory(host_index, host_count):
    schedule = hybrid.HybridSchedule(batch_size=_BATCH_SIZE.value, alpha=0.5)
    train_input = input_pipeline.HybridInput(f"{CORPUS}_hybrid", LENGTHS, schedule,
                                             host_index=host_index, host_count=host_count)
    inputs.append(train_input)
    if _SIGTERM_AT.value is None:
      return train_input
    batch, signalled = train_input.batch, []

    def batch_with_preemption(step):
      if step == _SIGTERM_AT.value and not signalled:
        signalled.append(step)
        os.kill(os.getpid(), signal.SIGTERM)
      return batch(step)

    train_input.batch = batch_with_preemption
    return train_input

  vocab_size = qa.get_hybrid_mixture(f"{CORPUS}_hybrid").vocabulary.vocab_size
  model = dual_encoder.DualEncoder(t5.T5Config(
      vocab_size=vocab_size, emb_dim=16, num_layers=1, num_heads=2, head_dim=8, mlp_dim=32,
      dropout_rate=0.0))
  result = trainer.train(
      model=model, train_input=input_factory, task_feature_lengths=LENGTHS,
      train_steps=_STEPS.value, model_dir=_MODEL_DIR.value, learning_rate_schedule=3e-3,
      optimizer_fn=functools.partial(optim.create_optimizer, "adamw"),
      loss_config=train_step.LossConfig(temperature=0.05),
      # (data 2, model 2) with 'embed' parameter axes over 'data': with two processes of two
      # devices, parameters are split across the processes, so both write checkpoint shards.
      mesh=partitioning.create_mesh(2),
      logical_axis_rules=partitioning.standard_logical_axis_rules(parameter_partitioning_dims=2),
      checkpoint_cfg=trainer.CheckpointConfig(period=2), log_period=1)

  train_input, = inputs
  state = result.state
  params = _gathered(state.params)
  view = {
      "process_index": process, "process_count": jax.process_count(),
      "local_device_count": jax.local_device_count(), "device_count": jax.device_count(),
      "pid": os.getpid(), "host_index": train_input.host_index,
      "host_count": train_input.host_count, "compilations": result.compilations,
      "losses": [h["loss"] for h in result.history],
      "steps": [h["step"] for h in result.history], "stopped_early": result.stopped_early,
      "pair_ids": [[int(i) for i in train_input.batch(step)["pair_ids"]]
                   for step in range(_STEPS.value)],
      "kinds": [train_input.batch_spec(step).kind for step in range(_STEPS.value)],
      "param_shards_on_other_processes": sum(
          not leaf.is_fully_addressable for leaf in jax.tree.leaves(state.params)),
  }
  os.makedirs(_OUT_DIR.value, exist_ok=True)
  with open(os.path.join(_OUT_DIR.value, f"process_{process}.json"), "w") as f:
    json.dump(view, f)

  arrays = {"losses": np.array(view["losses"], np.float64)}
  arrays.update({"params" + k: v for k, v in _flat(params).items()})
  if _RESTORE_FROM.value:
    checkpointer = checkpoints.Checkpointer(os.path.join(_RESTORE_FROM.value, "checkpoints"))
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    restored, data_position = checkpointer.restore(checkpointer.latest_step(), abstract, shardings)
    checkpointer.close()
    arrays["restored_step"] = np.array(data_position["step"])
    arrays.update({"restored" + k: v for k, v in _flat(_gathered(restored.params)).items()})
  if process == 0:
    path = os.path.join(_OUT_DIR.value, "result.npz")
    np.savez(path + ".tmp.npz", **arrays)
    os.replace(path + ".tmp.npz", path)


if __name__ == "__main__":
  app.run(run)
