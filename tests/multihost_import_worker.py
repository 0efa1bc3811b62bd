"""One process of tests/test_multihost_import.py (not a test itself).

  python -m tests.multihost_import_worker --checkpoint=DIR --out_dir=O \
      --coordinator_address=localhost:P --process_count=2 --process_id=I

Loads a T5X checkpoint with `importers.load_t5x_sharded` over all processes' devices (parameters
split over both mesh axes) and writes `process_<i>.json`: how many elements this process read,
how many its own devices' shards hold, and any shard that differs from the unsharded import.
"""
import json
import os

from absl import app
from absl import flags
import jax
import numpy as np

from hybridir import main as hybridir_main
from hybridir.models import dual_encoder
from hybridir.training import importers
from hybridir.training import partitioning

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "T5X checkpoint directory.", required=True)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Where process_<i>.json goes.", required=True)


def main(argv):
  del argv
  hybridir_main.initialize_distributed()
  model, reference = importers.load_t5x(_CHECKPOINT.value)  # The whole tree, for comparison.
  mesh = partitioning.create_mesh(num_partitions=2)
  rules = partitioning.standard_logical_axis_rules(1, 2)
  with partitioning.axis_rules_context(rules, mesh):
    boxed = dual_encoder.abstract_params(model, 8, 8)
  shardings = partitioning.params_shardings(boxed, mesh, rules)

  elements_read = [0]
  read = importers._read

  def counting_read(leaf, index=()):
    out = read(leaf, index)
    elements_read[0] += np.size(out)
    return out

  importers._read = counting_read
  params = importers.load_t5x_sharded(_CHECKPOINT.value, model, shardings)
  importers._read = read

  own, total, split, mismatches = 0, 0, 0, []
  flat_reference = dict(jax.tree_util.tree_leaves_with_path(reference))
  for path, array in jax.tree_util.tree_leaves_with_path(params):
    name = jax.tree_util.keystr(path)
    slices = {}
    for shard in array.addressable_shards:
      slices[str(shard.index)] = shard.data.size
      if not np.array_equal(np.asarray(shard.data), flat_reference[path][shard.index]):
        mismatches.append(f"{name} {shard.index}")
    own += sum(slices.values())
    total += array.size
    split += sum(slices.values()) < array.size
  view = {"process_index": jax.process_index(), "process_count": jax.process_count(),
          "mesh": dict(mesh.shape), "elements_read": elements_read[0],
          "elements_on_own_devices": own, "elements_in_checkpoint": total,
          "params_split_across_processes": split, "params": len(jax.tree.leaves(params)),
          "mismatches": mismatches}
  os.makedirs(_OUT_DIR.value, exist_ok=True)
  with open(os.path.join(_OUT_DIR.value, f"process_{jax.process_index()}.json"), "w") as f:
    json.dump(view, f)


if __name__ == "__main__":
  app.run(main)
