"""Ahead-of-time compilation for Cloud TPU slices with libtpu's compile-only devices (no TPU)."""
import dataclasses
import json

import gin
import jax
import numpy as np
import pytest

from hybridir.cloud import accelerators
from hybridir.cloud import aot

SMOKE = "gin_configs/runs/smoke.gin"
# libtpu's compile-only client cannot load executables from the session's compilation cache
# (tests/conftest.py); jax warns and compiles, as it would without the cache.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Error reading persistent compilation cache entry:UserWarning")
# The tiny smoke model at short lengths; only shapes matter (no data or vocabulary is read).
TINY = ["--gin.TASK_FEATURE_LENGTHS={'query': 8, 'passage': 16}", "--gin.BATCH_SIZE=8"]


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def run_main(capsys, *args):
  status = aot.main(["--accelerator_type", "v4-8", f"--gin_file={SMOKE}", *args])
  out, err = capsys.readouterr()
  return status, out, err


def test_accelerator_types_map_to_their_chips_hosts_and_memory():
  v4 = accelerators.get_slice("v4-32")
  assert (v4.topology, v4.chips, v4.hosts, v4.chips_per_host) == ("v4:2x2x4", 16, 4, 4)
  assert v4.family.usable_hbm_bytes == 30.75 * accelerators.GIB
  single_host = accelerators.get_slice("v5litepod-8")
  assert (single_host.topology, single_host.hosts) == ("v5e:2x4", 1)
  assert accelerators.get_slice("v5p-128").topology == "v5:4x4x4"
  assert accelerators.get_slice("v6e-256").wrap == (True, True, False)
  with pytest.raises(ValueError, match="unknown accelerator type 'v4-12'.*v4-8, v4-16"):
    accelerators.get_slice("v4-12")


@pytest.mark.slow
def test_tiny_model_compiles_for_v4_8_and_fits(capsys):
  status, out, err = run_main(capsys, *TINY)
  assert status == aot.EXIT_FITS, err
  report = json.loads(out)
  assert report["fits"] and report["mesh"] == {"data": 4, "model": 1}
  assert (report["chips"], report["hosts"], report["topology"]) == (4, 1, "v4:2x2x1")
  train = report["train_step"]
  assert train["batch_size"] == 8 and train["fits"]
  assert 0 < train["bytes"]["total"] < report["hbm_per_chip_bytes"]
  assert train["bytes"]["aliased"] > 0  # The state is donated.
  assert train["flops_per_chip"] > 0
  assert 0 < train["model_tflops_per_step"] * 1e12 < train["flops_per_chip"] * report["chips"]
  encode = report["encode_step"]
  assert encode["fits"] and encode["length"] == 512 and encode["batch_size"] % 4 == 0


@pytest.mark.slow
def test_encode_step_splits_parameters_over_the_model_axis_as_training_does(capsys):
  """A run split over 2 chips (NUM_PARTITIONS=2) is evaluated split the same way on one host, so
  a model too large to replicate (mT5-XXL) fits; replicated, each chip holds all parameters."""
  reports = {}
  for partitions in (1, 2):
    status, out, err = run_main(capsys, *TINY, f"--gin.NUM_PARTITIONS={partitions}")
    assert status == aot.EXIT_FITS, err
    reports[partitions] = json.loads(out)
  assert reports[2]["mesh"] == reports[2]["encode_step"]["mesh"] == {"data": 2, "model": 2}
  assert reports[1]["encode_step"]["mesh"] == {"data": 4, "model": 1}
  arguments = {p: r["encode_step"]["bytes"]["arguments"] for p, r in reports.items()}
  assert arguments[2] < 0.75 * arguments[1]


@pytest.mark.slow
def test_batch_that_cannot_fit_exits_3_with_the_memory_it_needed(capsys):
  status, out, err = run_main(capsys, *TINY[:1], "--gin.BATCH_SIZE=4194304")
  assert status == aot.EXIT_DOES_NOT_FIT, err
  train = json.loads(out)["train_step"]
  assert not train["fits"] and "RESOURCE_EXHAUSTED" in train["error"]
  assert train["required_bytes"] > train["hbm_bytes"]


def test_indivisible_batch_is_named_before_compiling(capsys):
  status, out, err = run_main(capsys, *TINY[:1], "--gin.BATCH_SIZE=10")
  assert status == aot.EXIT_ERROR and not out
  assert err.strip() == ("hybridir.aot: error: BATCH_SIZE=10 does not split evenly: it "
                         "must be a multiple of 4 (mesh {'data': 4, 'model': 1}: 4 data-parallel "
                         "devices, 1 hosts, LossConfig.grad_cache_chunks=1)")


def test_mesh_that_does_not_divide_the_slice_is_named(capsys):
  status, out, err = run_main(capsys, *TINY, "--gin.NUM_PARTITIONS=3")
  assert status == aot.EXIT_ERROR and not out
  assert err.startswith("hybridir.aot: error: v4-8 (4 chips): num_partitions=3 must divide")
  assert len(err.strip().splitlines()) == 1


def test_non_training_run_is_refused(capsys):
  status = aot.main(["--accelerator_type", "v4-8", "--gin_file=gin_configs/runs/eval.gin"])
  _, err = capsys.readouterr()
  assert status == aot.EXIT_ERROR
  assert ("RUN is hybridir.evaluation.eval_run.run_evaluation; hybridir.aot compiles "
          "training runs" in err)
  assert "(RUN = @trainer.train or @study_run.train_and_evaluate)" in err  # As run files name them.


def test_study_run_file_builds_its_training_run():
  run = aot.train_run_from_gin(["gin_configs/runs/study/mt5_base.gin"])
  assert (run.batch_size, run.query_length, run.passage_length) == (100, 64, 256)
  assert (run.model.encoder_config.emb_dim, run.model.encoder_config.dtype) == (768, "bfloat16")


def linear_memory(fixed, per_example, usable, calls):
  """A stand-in for compiling: bytes grow linearly with the batch; OOM reports what it needed."""
  def probe(batch):
    calls.append(batch)
    total = fixed + per_example * batch
    if total <= usable:
      return {"fits": True, "bytes": {"total": total}}
    return {"fits": False, "required_bytes": total}
  return probe


@pytest.mark.parametrize("start", [8, 1024, 100000])
def test_largest_batch_search_finds_the_last_multiple_that_fits_in_few_probes(start):
  calls = []
  probe = linear_memory(fixed=1000, per_example=7, usable=10000, calls=calls)
  assert aot.search_largest_batch(probe, start, step=16, usable_bytes=10000) == 1280
  assert len(set(calls)) <= 5  # A line through two probes lands on the answer.


def test_largest_batch_search_says_none_when_even_one_step_does_not_fit():
  probe = linear_memory(fixed=20000, per_example=1, usable=10000, calls=[])
  assert aot.search_largest_batch(probe, 64, step=8, usable_bytes=10000) is None


def test_largest_batch_compiles_each_batch_once(monkeypatch):
  calls = []
  probe = linear_memory(fixed=1000, per_example=7, usable=10000, calls=calls)
  compile_step = lambda run, mesh, tpu_slice, batch, chunks: dict(probe(batch), batch_size=batch)
  monkeypatch.setattr(aot, "compile_train_step", compile_step)
  tpu_slice = dataclasses.replace(accelerators.get_slice("v4-8"), family=dataclasses.replace(
      accelerators.get_slice("v4-8").family, usable_hbm_bytes=10000))
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]).reshape(4, 1), ("data", "model"))
  first = compile_step(None, mesh, tpu_slice, 96, 1)
  search = aot.largest_batch(None, mesh, tpu_slice, first, granularity=16)
  assert search["max_batch"] == 1280
  assert len(calls) == len(set(calls)) == search["compiles"]
