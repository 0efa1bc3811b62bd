"""Two processes under jax.distributed (CPU, coordinator on localhost) train like one process.

Each process of tests/multihost_worker.py gets two CPU devices and half of every global batch; the
reference is one process with all four devices and the whole batch, same mesh and same rules.
To keep to one two-process run (each costs a start and a compile per process on shared cores),
that run is also the preemption check: process 1 alone gets SIGTERM as it fetches the batch of
step 3 of 5, so both must stop after step 3; the reference trains those 3 steps.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from hybridir.data import spm
from hybridir.training import checkpoints
from tests.conftest import REPO_ROOT

# Every test reads one run of two jax.distributed processes and its one-process reference.
pytestmark = pytest.mark.slow

TIMEOUT_SECONDS = 300  # Per phase; a healthy phase takes well under a minute.
STEPS = 3  # Steps trained before the preemption stops the two-process run.
PLANNED_STEPS = 5


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def tail(path, characters=3000) -> str:
  with open(path, errors="replace") as f:
    return f.read()[-characters:]


def run_processes(args_per_process, devices_per_process, log_dir, timeout=TIMEOUT_SECONDS,
                  worker="tests.multihost_worker"):
  """Runs the worker once per argument list, concurrently; kills all if one fails or hangs."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
  env.pop("JAX_COORDINATOR_ADDRESS", None)
  os.makedirs(log_dir, exist_ok=True)
  procs, logs = [], []
  for i, args in enumerate(args_per_process):
    logs.append(os.path.join(log_dir, f"process_{i}.log"))
    with open(logs[-1], "w") as log:
      procs.append(subprocess.Popen([sys.executable, "-m", worker, *args],
                                    cwd=REPO_ROOT, env=env, stdout=log,
                                    stderr=subprocess.STDOUT))
  deadline = time.monotonic() + timeout
  failure = None
  try:
    while failure is None and any(p.poll() is None for p in procs):
      if time.monotonic() > deadline:
        failure = f"timed out after {timeout} s"
      elif any(p.poll() not in (None, 0) for p in procs):
        failure = "a process failed"
      else:
        try:
          next(p for p in procs if p.poll() is None).wait(timeout=0.5)
        except subprocess.TimeoutExpired:
          pass
    if failure is None and any(p.returncode for p in procs):
      failure = "a process failed"
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  if failure:
    pytest.fail(failure + "\n" + "\n".join(
        f"--- process {i} (exit {p.returncode}), {log}:\n{tail(log)}"
        for i, (p, log) in enumerate(zip(procs, logs))))


def load_views(out_dir, count):
  views = []
  for i in range(count):
    with open(os.path.join(out_dir, f"process_{i}.json")) as f:
      views.append(json.load(f))
  return views


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
  """(multi-host folder, single-process folder): both trained STEPS steps on the same batches."""
  root = tmp_path_factory.mktemp("multihost")
  spm_path = spm.train(str(data_dir / "xquad-r"), "t5", 1000, str(root / "spm"),
                       languages=["en", "de"])
  common = [f"--corpus_dir={data_dir / 'xquad-r'}", f"--spm_path={spm_path}"]
  multi, single = root / "two_processes", root / "one_process"
  address = f"localhost:{free_port()}"
  run_processes([common + [f"--model_dir={multi / 'model'}", f"--out_dir={multi / 'out'}",
                           f"--steps={PLANNED_STEPS}", f"--coordinator_address={address}",
                           "--process_count=2", f"--process_id={i}"]
                 + ([f"--sigterm_at_step={STEPS - 1}"] if i == 1 else []) for i in range(2)],
                devices_per_process=2, log_dir=multi / "logs")
  run_processes([common + [f"--model_dir={single / 'model'}", f"--out_dir={single / 'out'}",
                           f"--steps={STEPS}", f"--restore_from={multi / 'model'}"]],
                devices_per_process=4, log_dir=single / "logs")
  return multi, single


def test_flags_reach_jax_distributed_and_each_process_has_half_the_devices(runs):
  multi, _ = runs
  views = load_views(multi / "out", 2)
  assert [(v["process_index"], v["process_count"]) for v in views] == [(0, 2), (1, 2)]
  assert [(v["local_device_count"], v["device_count"]) for v in views] == [(2, 4), (2, 4)]
  assert [(v["host_index"], v["host_count"]) for v in views] == [(0, 2), (1, 2)]
  # The parameters live on both processes' devices ('embed' axes split over the data axis).
  assert all(v["param_shards_on_other_processes"] > 0 for v in views)


def test_sigterm_on_one_process_stops_both_at_the_same_step_with_a_checkpoint(runs):
  multi, _ = runs
  views = load_views(multi / "out", 2)
  assert [(v["stopped_early"], v["steps"]) for v in views] == [(True, [1, 2, 3])] * 2
  assert sorted(os.listdir(multi / "model" / "checkpoints")) == ["2", "3"]


def test_processes_feed_disjoint_halves_of_the_single_process_global_batch(runs):
  multi, single = runs
  first, second = load_views(multi / "out", 2)
  reference, = load_views(single / "out", 1)
  assert first["kinds"][:STEPS] == second["kinds"][:STEPS] == reference["kinds"]
  for step in range(STEPS):
    assert first["pair_ids"][step] + second["pair_ids"][step] == reference["pair_ids"][step]
    assert not set(first["pair_ids"][step]) & set(second["pair_ids"][step])


def test_two_process_losses_and_final_params_equal_single_process_run(runs):
  multi, single = runs
  two, one = np.load(multi / "out" / "result.npz"), np.load(single / "out" / "result.npz")
  views = load_views(multi / "out", 2)
  assert views[0]["losses"] == views[1]["losses"]  # Every process sees the global loss.
  assert len(two["losses"]) == STEPS
  np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5, atol=0)
  names = sorted(k for k in one.files if k.startswith("params"))
  assert names == sorted(k for k in two.files if k.startswith("params")) and len(names) > 10
  for name in names:
    np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_both_processes_write_one_complete_checkpoint_that_restores_on_one_process(runs):
  multi, single = runs
  checkpoints = multi / "model" / "checkpoints"
  state = checkpoints / str(STEPS) / "state"
  assert (state / "commit_success.txt").exists()
  assert sorted(p for p in os.listdir(state) if p.startswith("ocdbt.process_")) == [
      "ocdbt.process_0", "ocdbt.process_1"]
  one, two = np.load(single / "out" / "result.npz"), np.load(multi / "out" / "result.npz")
  assert int(one["restored_step"]) == STEPS
  for name in (k for k in two.files if k.startswith("params")):
    np.testing.assert_array_equal(one["restored" + name[len("params"):]], two[name],
                                  err_msg=name)


def test_only_process_0_writes_summaries(runs):
  multi, _ = runs
  first, _ = load_views(multi / "out", 2)
  events = [f for f in os.listdir(multi / "model" / "train") if "tfevents" in f]
  # TensorFlow names event files events.out.tfevents.<time>.<host>.<pid>.<n>.v2.
  assert len(events) == 1 and events[0].split(".")[-3] == str(first["pid"]), events


@pytest.mark.slow
def test_a_killed_process_ends_the_other_in_one_line_naming_it_with_the_checkpoint_intact(
    tmp_path, data_dir):
  """`python -m hybridir.main` as two processes; process 1 is killed (-9) after step 3: process 0
  ends within the heartbeat timeout (5 s) and a little, status 1, one line, no abort."""
  spm_path = spm.train(str(data_dir / "xquad-r"), "t5", 1000, str(tmp_path / "spm"),
                       languages=["en", "de"])
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  address, model_dir = f"localhost:{free_port()}", tmp_path / "model"
  logs = [tmp_path / f"process_{i}.log" for i in range(2)]
  procs = [subprocess.Popen(
      [sys.executable, "-m", "hybridir.main", "--gin_file=gin_configs/runs/smoke.gin",
       f"--gin.MODEL_DIR='{model_dir}'", f"--gin.SPM_PATH='{spm_path}'", "--gin.TRAIN_STEPS=100",
       "--gin.CHECKPOINT_PERIOD=2", "--gin.trainer.train.log_period=1",
       f"--coordinator_address={address}", "--process_count=2", f"--process_id={i}",
       "--heartbeat_timeout_seconds=5"], cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
      stderr=open(log, "w")) for i, log in enumerate(logs)]
  try:
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while "step 3/100" not in logs[0].read_text():
      assert time.monotonic() < deadline and all(p.poll() is None for p in procs), tail(logs[0])
      time.sleep(0.1)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    status = procs[0].wait(timeout=60)
    seconds = time.monotonic() - killed
  finally:
    for p in procs:
      p.kill()
      p.wait()
  stderr = logs[0].read_text()
  lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
  assert status == 1 and len(lines) == 1 and seconds < 30, (status, seconds, tail(logs[0]))
  assert "Traceback" not in stderr and "Fatal Python error" not in stderr
  assert lines[0].startswith("error: process 1 of 2 stopped (no heartbeat for 5 s); process 0 "
                             "stops too. Last committed checkpoint"), lines[0]
  last = checkpoints.training_steps(str(model_dir))[-1]
  assert lines[0].endswith(f"{model_dir}/checkpoints/{last}; rerun every process to resume "
                           "from it") and last >= 2
  assert checkpoints.verify(model_dir / "checkpoints" / str(last)) is None
