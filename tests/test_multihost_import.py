"""A T5X checkpoint loads as a pod loads it: each process reads only its own devices' shards."""
import json

import pytest

from tests.test_multihost import free_port
from tests.test_multihost import run_processes

# Two jax.distributed processes.
pytestmark = pytest.mark.slow

T5X_DIR = "t5x-tiny-checkpoint/test_de_t5_tiny.checkpoint_1000"


def test_each_process_reads_only_the_shards_of_its_devices_and_they_match_the_checkpoint(
    tmp_path, data_dir):
  address = f"localhost:{free_port()}"
  run_processes([[f"--checkpoint={data_dir / T5X_DIR}", f"--out_dir={tmp_path / 'out'}",
                  f"--coordinator_address={address}", "--process_count=2", f"--process_id={i}"]
                 for i in range(2)], devices_per_process=4, log_dir=tmp_path / "logs",
                worker="tests.multihost_import_worker")
  views = [json.loads((tmp_path / "out" / f"process_{i}.json").read_text()) for i in range(2)]
  for i, view in enumerate(views):
    assert (view["process_index"], view["process_count"]) == (i, 2)
    assert view["mesh"] == {"data": 4, "model": 2}
    assert view["mismatches"] == []
    # Every element read belongs to a shard on this process's devices, each read once...
    assert view["elements_read"] == view["elements_on_own_devices"]
    # ...and most parameters (the embedding among them) are split with the other process.
    assert view["params_split_across_processes"] >= view["params"] // 2
    assert view["elements_read"] < 0.6 * view["elements_in_checkpoint"]
