"""Fault campaign for training checkpoints: kill -9, SIGTERM, damaged checkpoints, disk full.

Each trial trains a small dual encoder (synthetic batches, `trainer.train` with its real
Checkpointer) in a worker subprocess, injects one fault from outside, reruns the same command and
compares the final train state (params and optimizer state, sha256 of every array) with an
uninterrupted run's. Prints a markdown table (fault, trials, expected, measured, bitwise-equal
resumes, fallbacks, the error or warning line) for RELIABILITY.md.

  python bench/faults.py [--kill_trials 12] [--sigterm_trials 3] [--steps 40] [--work_dir D]
      [--parts kill,saving,sigterm,damage,disk_full,multihost]

disk_full mounts a tmpfs (needs root; reported as not run otherwise). multihost runs two
jax.distributed CPU processes and kills one.
"""
import argparse
import glob
import hashlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup_jax(devices: int) -> None:
  """CPU devices and a compilation cache shared by all workers (set before jax starts)."""
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(),
                                                                  "faults-jax-cache"))
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def worker(args) -> None:
  """One training run; prints `batch k` as it fetches each batch and `final <sha256>` at the end."""
  _setup_jax(args.devices)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from hybridir import checkpoints, optim, partitioning, trainer  # pylint: disable=g-import-not-at-top
  from hybridir.main import PREEMPTED_EXIT_CODE  # pylint: disable=g-import-not-at-top
  from hybridir.models import dual_encoder, t5  # pylint: disable=g-import-not-at-top
  if args.process_count > 1:
    jax.distributed.initialize(args.coordinator, args.process_count, args.process_id)

  class Pairs:
    """This host's share of deterministic global batches; a passage starts with its query."""
    batch_size, name = 32, "synthetic"

    def __init__(self, host_index=0, host_count=1):
      self.rows = slice(host_index * self.batch_size // host_count,
                        (host_index + 1) * self.batch_size // host_count)

    def batch(self, step):
      print(f"batch {step}", flush=True)
      time.sleep(args.step_seconds)  # Spreads the run over time, so kills land at varied points.
      rng = np.random.default_rng([7, step])
      query = rng.integers(3, 512, (self.batch_size, 8)).astype(np.int32)
      query[:, -1] = 1
      passage = np.concatenate([query, rng.integers(3, 512, (self.batch_size, 8))], 1)
      return {k: v[self.rows] for k, v in dict(
          query_tokens=query, passage_tokens=passage.astype(np.int32),
          pair_ids=np.arange(self.batch_size, dtype=np.int32) + 1000 * step).items()}

  model = dual_encoder.DualEncoder(t5.T5Config(
      vocab_size=512, emb_dim=64, num_layers=2, num_heads=4, head_dim=16, mlp_dim=128,
      dropout_rate=0.1))
  try:
    result = trainer.train(
        model=model, train_input=Pairs, task_feature_lengths={"query": 8, "passage": 16},
        train_steps=args.steps, model_dir=args.model_dir, learning_rate_schedule=1e-3,
        optimizer_fn=lambda learning_rate_schedule: optim.create_optimizer(
            "adamw", learning_rate_schedule),
        checkpoint_cfg=trainer.CheckpointConfig(period=args.period),
        mesh=partitioning.create_mesh(2), log_period=1000)
  except (checkpoints.CheckpointSaveError, checkpoints.NoGoodCheckpointError,
          checkpoints.CheckpointShapeError, FloatingPointError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  if result.stopped_early:
    sys.exit(PREEMPTED_EXIT_CODE)
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(result.state):
    digest.update(np.asarray(multihost_utils.process_allgather(leaf, tiled=True)).tobytes())
  print(f"final {digest.hexdigest()}", flush=True)


class _Forked:
  """The part of Popen's interface Run uses, for a worker forked from this (already importing)
  process: imports cost most of a tiny run's CPU time, and this machine has little to spare."""

  def __init__(self, worker_args, log):
    read, write = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    self.pid = os.fork()
    if self.pid == 0:  # The worker: stdout to the pipe, stderr to the log.
      os.close(read)
      os.dup2(write, 1)
      os.dup2(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
      code = 1
      try:
        worker(worker_args)
        code = 0
      except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
      except BaseException:  # pylint: disable=broad-except
        import traceback  # pylint: disable=g-import-not-at-top
        traceback.print_exc()
      finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # pylint: disable=protected-access
    os.close(write)
    self.stdout = os.fdopen(read, "r")
    self.returncode = None

  def send_signal(self, signum):
    if self.returncode is None:
      os.kill(self.pid, signum)

  def kill(self):
    self.send_signal(signal.SIGKILL)

  def poll(self):
    if self.returncode is None:
      pid, status = os.waitpid(self.pid, os.WNOHANG)
      if pid:
        self.returncode = os.waitstatus_to_exitcode(status)
    return self.returncode

  def communicate(self, timeout=None):
    del timeout
    out = self.stdout.read()
    if self.returncode is None:
      self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
    return out, None


class Run:
  """A worker (forked, or a subprocess for multi-process runs) whose stdout is followed."""

  def __init__(self, model_dir, steps, log, extra=()):
    self.log = log
    flags = ["--worker", "--model_dir", model_dir, "--steps", str(steps), *ARGS_FOR_WORKER, *extra]
    if not extra:
      self.process = _Forked(parse(flags), log)
    else:
      env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
      self.process = subprocess.Popen([sys.executable, os.path.abspath(__file__), *flags],
                                      stdout=subprocess.PIPE, stderr=open(log, "w"), text=True,
                                      env=env, cwd=REPO)
    self.batches = []

  def wait_for_batch(self, step) -> bool:
    for line in self.process.stdout:
      if line.startswith("batch "):
        self.batches.append(int(line.split()[1]))
        if self.batches[-1] >= step:
          return True
    return False

  def finish(self, timeout=900):
    out, _ = self.process.communicate(timeout=timeout)
    for line in out.splitlines():
      if line.startswith("batch "):
        self.batches.append(int(line.split()[1]))
    final = re.findall(r"^final (\w+)$", out, re.M)
    return self.process.returncode, final[0] if final else None

  def stderr(self) -> str:
    with open(self.log) as f:
      return f.read()


def one_line(log_text: str, pattern: str) -> str:
  lines = [l for l in log_text.splitlines() if re.search(pattern, l)]
  return lines[0].strip()[:300] if lines else ""


def committed(model_dir) -> list[int]:
  directory = os.path.join(model_dir, "checkpoints")
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(
      directory) else []


def resume(model_dir, steps, log, reference, extra=()):
  """Reruns to the end; (rc, bitwise equal?, start step, first fallback warning, error line)."""
  run = Run(model_dir, steps, log, extra)
  rc, final = run.finish()
  text = run.stderr()
  return dict(rc=rc, equal=final == reference, start=run.batches[0] if run.batches else None,
              fallback=one_line(text, r"is damaged, skipping it"),
              error=one_line(text, r"^error: "),
              tracebacks=text.count("Traceback (most recent call last)"))


def kill_trials(work, steps, reference, trials, while_saving):
  rows = []
  for trial in range(trials):
    model_dir = os.path.join(work, f"{'saving' if while_saving else 'kill'}{trial}")
    run = Run(model_dir, steps, model_dir + ".log")
    target = random.randrange(2, steps - 1)
    run.wait_for_batch(target)
    if while_saving:  # Kill as soon as the next save's temporary directory appears.
      deadline = time.time() + 30
      while not glob.glob(os.path.join(model_dir, "checkpoints", "*.orbax-checkpoint-tmp*")):
        if time.time() > deadline or run.process.poll() is not None:
          break
        time.sleep(0.0005)
      saving = bool(glob.glob(os.path.join(model_dir, "checkpoints", "*.orbax-checkpoint-tmp*")))
    else:
      time.sleep(random.uniform(0, ARGS.step_seconds * 2))
      saving = bool(glob.glob(os.path.join(model_dir, "checkpoints", "*.orbax-checkpoint-tmp*")))
    run.process.send_signal(signal.SIGKILL)
    run.finish()
    at_kill = committed(model_dir)
    outcome = resume(model_dir, steps, model_dir + ".resume.log", reference)
    rows.append(dict(outcome, killed_after=run.batches[-1], saving=saving, at_kill=at_kill))
  return rows


def sigterm_trials(work, steps, reference, trials):
  rows = []
  for trial in range(trials):
    model_dir = os.path.join(work, f"sigterm{trial}")
    run = Run(model_dir, steps, model_dir + ".log")
    run.wait_for_batch(random.randrange(2, steps - 1))
    run.process.send_signal(signal.SIGTERM)
    rc, _ = run.finish()
    outcome = resume(model_dir, steps, model_dir + ".resume.log", reference)
    rows.append(dict(outcome, first_rc=rc, at_stop=committed(model_dir)))
  return rows


def _largest(step_dir):
  files = [p for p in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True)
           if os.path.isfile(p)]
  return max(files, key=os.path.getsize)


def _flip(path):
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    data = f.read(16)
    f.seek(os.path.getsize(path) // 2)
    f.write(bytes(b ^ 0xFF for b in data))


DAMAGE = {
    "16 bytes flipped in the largest state file": lambda d: _flip(_largest(d)),
    "largest state file truncated to half": lambda d: os.truncate(
        _largest(d), os.path.getsize(_largest(d)) // 2),
    "largest state file deleted": lambda d: os.remove(_largest(d)),
    "state/_METADATA deleted": lambda d: os.remove(os.path.join(d, "state", "_METADATA")),
    "data/metadata (data position) deleted": lambda d: os.remove(
        os.path.join(d, "data", "metadata")),
    "whole state/ directory deleted": lambda d: shutil.rmtree(os.path.join(d, "state")),
    "checksums.json deleted and 16 bytes flipped": lambda d: (
        os.remove(os.path.join(d, "checksums.json")), _flip(_largest(d))),
}


def damage_trials(work, steps, reference):
  """From a run stopped at `steps // 2`, damages its newest checkpoint one way per trial."""
  base = os.path.join(work, "damage_base")
  half = steps // 2
  Run(base, half, base + ".log").finish()
  rows = []
  for index, (name, damage) in enumerate(list(DAMAGE.items()) + [
      ("every checkpoint's largest state file flipped", None)]):
    model_dir = os.path.join(work, f"damage{index}")
    shutil.copytree(base, model_dir)
    steps_there = committed(model_dir)
    for step in (steps_there if damage is None else steps_there[-1:]):
      (damage or DAMAGE["16 bytes flipped in the largest state file"])(
          os.path.join(model_dir, "checkpoints", str(step)))
    outcome = resume(model_dir, steps, model_dir + ".resume.log", reference)
    rows.append(dict(outcome, damage=name, newest=steps_there[-1]))
  return rows


def disk_full_trial(work, steps, reference):
  """Trains on a tmpfs with room for about 2.5 checkpoints (and the summaries)."""
  probe = os.path.join(work, "damage_base", "checkpoints")
  step_bytes = max(sum(os.path.getsize(p) for p in glob.glob(
      os.path.join(probe, str(s), "**", "*"), recursive=True) if os.path.isfile(p))
                   for s in committed(os.path.dirname(probe)))
  mount = os.path.join(work, "tmpfs")
  os.makedirs(mount, exist_ok=True)
  size_kib = int(step_bytes * 2.5 / 1024) + 64
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", mount],
                           capture_output=True, text=True)
  if mounted.returncode:
    return dict(skipped=f"tmpfs mount failed ({mounted.stderr.strip()}); not run")
  try:
    model_dir = os.path.join(mount, "run")
    run = Run(model_dir, steps, os.path.join(work, "disk_full.log"))
    rc, _ = run.finish()
    text = run.stderr()
    kept = committed(model_dir)
    from hybridir import checkpoints  # pylint: disable=g-import-not-at-top
    verified = [s for s in kept
                if checkpoints.verify(os.path.join(model_dir, "checkpoints", str(s))) is None]
    moved = os.path.join(work, "disk_full_run")
    shutil.copytree(model_dir, moved)
  finally:
    subprocess.run(["umount", mount], check=False)
  outcome = resume(moved, steps, moved + ".resume.log", reference)
  return dict(rc=rc, error=one_line(text, r"^error: "), kept=kept, verified=verified,
              last_batch=run.batches[-1] if run.batches else None, size_kib=size_kib,
              step_bytes=step_bytes, tracebacks=text.count("Traceback (most recent call last)"),
              resume=outcome)


def multihost_trial(work, steps):
  """Two jax.distributed CPU processes; process 1 is killed (-9) mid-run; then both rerun."""
  def launch(model_dir, tag):
    with socket.socket() as s:
      s.bind(("localhost", 0))
      port = s.getsockname()[1]
    return [Run(model_dir, steps, f"{model_dir}.{tag}{i}.log", [
        "--devices", "2", "--process_count", "2", "--process_id", str(i),
        "--coordinator", f"localhost:{port}"]) for i in range(2)]
  reference_runs = launch(os.path.join(work, "mh_reference"), "p")
  reference = [r.finish() for r in reference_runs][0][1]
  model_dir = os.path.join(work, "mh_killed")
  runs = launch(model_dir, "p")
  target = random.randrange(2, steps - 1)
  runs[1].wait_for_batch(target)
  runs[1].process.send_signal(signal.SIGKILL)
  killed_at = time.time()
  try:
    survivor_rc = runs[0].finish(timeout=600)[0]
  except subprocess.TimeoutExpired:
    runs[0].process.kill()
    survivor_rc = "hung (killed after 600 s)"
  survivor_seconds = time.time() - killed_at
  runs[1].finish()
  at_kill = committed(model_dir)
  reruns = launch(model_dir, "resume")
  results = [r.finish() for r in reruns]
  return dict(target=target, survivor_rc=survivor_rc, survivor_seconds=survivor_seconds,
              survivor_line=one_line(runs[0].stderr(), r"^error: |Error|error"),
              at_kill=at_kill, rcs=[r[0] for r in results], equal=results[0][1] == reference,
              start=reruns[0].batches[0] if reruns[0].batches else None, reference=reference)


def table(rows_by_part, steps) -> str:
  lines = ["| fault | trials | expected | measured | bitwise-equal resumes | fallbacks taken | "
           "error or warning line (one example) |", "|---|---|---|---|---|---|---|"]
  def add(fault, trials, expected, measured, equal, fallbacks, line):
    lines.append(f"| {fault} | {trials} | {expected} | {measured} | {equal} | {fallbacks} | "
                 f"`{line.replace('|', '/')}` |" if line else
                 f"| {fault} | {trials} | {expected} | {measured} | {equal} | {fallbacks} | - |")
  for part, rows in rows_by_part.items():
    if part in ("kill", "saving"):
      equal = sum(r["equal"] and r["rc"] == 0 for r in rows)
      fallbacks = [r for r in rows if r["fallback"]]
      measured = "; ".join(f"killed after batch {r['killed_after']}"
                           + (" mid-save" if r["saving"] else "")
                           + f", committed {r['at_kill'][-1:] or 'none'}, resumed at {r['start']}"
                           for r in rows)
      add("kill -9 " + ("as a save starts" if part == "saving" else "at a random moment"),
          len(rows), "resume from the newest committed step, bitwise equal end state",
          measured, f"{equal}/{len(rows)}", len(fallbacks),
          fallbacks[0]["fallback"] if fallbacks else "")
    elif part == "sigterm":
      equal = sum(r["equal"] and r["rc"] == 0 for r in rows)
      add("SIGTERM at a random step", len(rows), "exit 143 after saving that step; resume bitwise",
          "; ".join(f"exit {r['first_rc']}, committed {r['at_stop'][-1:]}, resumed at {r['start']}"
                    for r in rows), f"{equal}/{len(rows)}", 0, "")
    elif part == "damage":
      for r in rows:
        expected = ("load unverified (no checksums): silent damage, the known limit"
                    if "checksums.json deleted" in r["damage"] else
                    "one error line, exit 1" if "every" in r["damage"] else
                    f"one warning naming step {r['newest']} and the file; fall back; bitwise")
        measured = (f"exit {r['rc']}, resumed at {r['start']}, {r['tracebacks']} tracebacks")
        add(f"step {r['newest']}: {r['damage']}", 1, expected, measured,
            "1/1" if r["equal"] and r["rc"] == 0 else "0/1", int(bool(r["fallback"])),
            r["fallback"] or r["error"])
    elif part == "disk_full":
      if "skipped" in rows:
        add("disk full (tmpfs)", 0, "-", rows["skipped"], "-", "-", "")
        continue
      r = rows
      add(f"disk full (tmpfs of {r['size_kib']} KiB, a checkpoint is {r['step_bytes'] // 1024} "
          "KiB)", 1, "stop at once, one error line, older checkpoints kept and verified; resume "
          "elsewhere bitwise", f"exit {r['rc']} after batch {r['last_batch']}, kept {r['kept']}, "
          f"verified {r['verified']}, {r['tracebacks']} tracebacks; resumed at "
          f"{r['resume']['start']}", "1/1" if r["resume"]["equal"] else "0/1", 0, r["error"])
    elif part == "multihost":
      r = rows
      add("kill -9 of process 1 of 2 (jax.distributed, CPU)", 1,
          "the survivor stops (not hangs); both rerun resume bitwise",
          f"killed after batch {r['target']}; survivor exit {r['survivor_rc']} after "
          f"{r['survivor_seconds']:.0f} s; committed {r['at_kill'][-1:]}; reruns exit {r['rcs']}, "
          f"resumed at {r['start']}", "1/1" if r["equal"] else "0/1", 0, r["survivor_line"])
  return "\n".join(lines)


class _Progress(dict):
  """The results so far, their table rewritten to `path` after each part (a long campaign)."""

  def __init__(self, path):
    super().__init__()
    self.path = path

  def __setitem__(self, key, value):
    super().__setitem__(key, value)
    with open(self.path, "w") as f:
      f.write(table(self, ARGS.steps) + "\n")


def main():
  _setup_jax(ARGS.devices)
  # Imported once here, before any jax backend starts, so forked workers start at once.
  from hybridir import checkpoints, optim, partitioning, trainer  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from hybridir.models import dual_encoder, t5  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  work = ARGS.work_dir or tempfile.mkdtemp(prefix="faults-")
  os.makedirs(work, exist_ok=True)
  random.seed(ARGS.seed)
  parts = ARGS.parts.split(",")
  started = time.time()
  reference_run = Run(os.path.join(work, "reference"), ARGS.steps,
                      os.path.join(work, "reference.log"))
  rc, reference = reference_run.finish()
  if rc or not reference:
    sys.exit(f"the uninterrupted reference run failed (exit {rc}): see {reference_run.log}")
  results = _Progress(os.path.join(work, "table.md"))
  if "kill" in parts:
    results["kill"] = kill_trials(work, ARGS.steps, reference, ARGS.kill_trials, False)
  if "saving" in parts:
    results["saving"] = kill_trials(work, ARGS.steps, reference, ARGS.saving_trials, True)
  if "sigterm" in parts:
    results["sigterm"] = sigterm_trials(work, ARGS.steps, reference, ARGS.sigterm_trials)
  if "damage" in parts or "disk_full" in parts:
    results["damage"] = damage_trials(work, ARGS.steps, reference)
  if "disk_full" in parts:
    results["disk_full"] = disk_full_trial(work, ARGS.steps, reference)
  if "multihost" in parts:
    results["multihost"] = multihost_trial(work, ARGS.steps)
  print(table(results, ARGS.steps))
  print(f"\nreference end state sha256 {reference}", end="")
  print(f"\n{ARGS.steps} steps a run, checkpoint every {ARGS.period}; work dir {work}; "
        f"{time.time() - started:.0f} s in all")


def parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--worker", action="store_true", help="(internal) run one training")
  parser.add_argument("--model_dir")
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--period", type=int, default=4)
  parser.add_argument("--step_seconds", type=float, default=0.05)
  parser.add_argument("--devices", type=int, default=4)
  parser.add_argument("--process_count", type=int, default=1)
  parser.add_argument("--process_id", type=int, default=0)
  parser.add_argument("--coordinator")
  parser.add_argument("--kill_trials", type=int, default=8)
  parser.add_argument("--saving_trials", type=int, default=4)
  parser.add_argument("--sigterm_trials", type=int, default=3)
  parser.add_argument("--parts", default="kill,saving,sigterm,damage,disk_full,multihost")
  parser.add_argument("--work_dir")
  parser.add_argument("--seed", type=int, default=0)
  return parser.parse_args(argv)


ARGS = parse(sys.argv[1:])
ARGS_FOR_WORKER = ["--period", str(ARGS.period), "--step_seconds", str(ARGS.step_seconds)]

if __name__ == "__main__":
  if ARGS.worker:
    worker(ARGS)
  else:
    main()
