"""Fault campaign through the real command lines, as a user runs them.

Every case starts `python -m hybridir.main` (smoke.gin, the export and corpus-evaluation run
files), `python -m hybridir.evaluate` or `python -m hybridir.data` in a subprocess, injects one
fault from outside (kill -9, SIGTERM, damaged files, a full tmpfs, bad input, a killed peer
process), and judges what the user sees: an interrupted training rerun with the same command must
end bitwise equal to an uninterrupted one (sha256 of every array of the final checkpoint), and
every other fault must end the command with exactly one `error:` line and its status (1; 143 for
SIGTERM), leaving the files as expected. Tracebacks (and `Fatal Python error`) in stderr are
counted. Prints the markdown table of RELIABILITY.md and a summary line.

  python bench/faults.py [--work_dir D] [--kill_trials 3] [--saving_trials 2] [--sigterm_trials 2]
      [--parts train,damage,disk,inputs,export,multihost]

The disk cases mount a tmpfs (root); without root they are reported as not run.
"""
import argparse
import glob
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from hybridir.training import checkpoints  # noqa: E402  pylint: disable=wrong-import-position

STEPS, PERIOD = 12, 2  # A checkpoint every 2 steps, the last 3 kept.
ROWS = []


def environment(devices: int) -> dict:
  return dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
              JAX_COMPILATION_CACHE_DIR=os.path.join(ARGS.work_dir, "jax_cache"),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


class Command:
  """One command line in a subprocess, its stderr in `log`."""

  def __init__(self, module, args, log, devices=4):
    self.log, self.started = log, time.time()
    with open(log, "w") as f:
      self.process = subprocess.Popen([sys.executable, "-m", module, *map(str, args)], cwd=REPO,
                                      env=environment(devices), stdout=subprocess.DEVNULL,
                                      stderr=f)

  def text(self) -> str:
    with open(self.log, errors="replace") as f:
      return f.read()

  def wait_for(self, predicate, timeout=900) -> bool:
    """Polls until predicate() or the process ends; whether predicate() held."""
    deadline = time.time() + timeout
    while time.time() < deadline and self.process.poll() is None:
      if predicate():
        return True
      time.sleep(0.05)
    return predicate()

  def finish(self, timeout=1800) -> int:
    try:
      self.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      self.process.kill()
      self.process.wait()
      return "hung"
    self.seconds = time.time() - self.started
    return self.process.returncode


def train(model_dir, log, *bindings, steps=STEPS, devices=4, extra=()):
  return Command("hybridir.main", [
      "--gin_file=gin_configs/runs/smoke.gin", f"--gin.MODEL_DIR='{model_dir}'",
      f"--gin.TRAIN_STEPS={steps}", f"--gin.CHECKPOINT_PERIOD={PERIOD}", "--gin.WARMUP_STEPS=0",
      f"--gin.SPM_PREFIX='{ARGS.work_dir}/vocab/spm'", "--gin.trainer.train.log_period=1",
      *bindings, *extra], log, devices)


def digest(model_dir) -> str | None:
  """sha256 of every array (params and optimizer state) of the run's last checkpoint."""
  steps = checkpoints.training_steps(model_dir) if os.path.isdir(
      os.path.join(model_dir, "checkpoints")) else []
  if not steps or steps[-1] != STEPS:
    return None
  tree = checkpoints.restore_numpy(os.path.join(model_dir, "checkpoints", str(STEPS), "state"))
  sha = hashlib.sha256()
  def walk(node, path):
    if isinstance(node, dict):
      for key in sorted(node):
        walk(node[key], f"{path}/{key}")
    elif isinstance(node, (list, tuple)):
      for index, child in enumerate(node):
        walk(child, f"{path}/{index}")
    elif node is not None:
      sha.update(path.encode() + np.asarray(node).dtype.str.encode()
                 + np.ascontiguousarray(node).tobytes())
  walk(tree, "")
  return sha.hexdigest()


def counted(text: str) -> tuple[int, list[str]]:
  return (text.count("Traceback (most recent call last)") + text.count("Fatal Python error"),
          [line for line in text.splitlines() if line.startswith("error: ")])


def record(case, command, expected, status, text, outcome, measured="", line=None):
  tracebacks, lines = counted(text)
  if tracebacks and outcome != "not run":
    outcome = f"FAILURE ({tracebacks} tracebacks)"
  ROWS.append(dict(case=case, command=command, expected=expected, status=status,
                   tracebacks=tracebacks, outcome=outcome, measured=measured,
                   line=line if line is not None else (lines[0] if lines else "")))
  print(f"{case}: {outcome}", file=sys.stderr, flush=True)


def bitwise(case, command, expected, rerun: Command, model_dir, reference, measured="",
            before_ok=True):
  """A rerun must end at the reference digest (and `before_ok`: the fault went as expected)."""
  status = rerun.finish()
  found = digest(model_dir)
  outcome = ("recovered bitwise" if status == 0 and found == reference and before_ok else
             f"FAILURE (exit {status}, digest {'equal' if found == reference else 'differs'}"
             f"{'' if before_ok else ', the fault did not go as expected'})")
  warning = next((line for line in rerun.text().splitlines() if "is damaged, skipping" in line
                  or "half-written" in line), "")
  record(case, command, expected, status, rerun.text(), outcome, measured,
         line=warning[warning.find("checkpoint"):] if warning else "")


def one_line(case, command, expected, run: Command, status_wanted=1, files_ok=True, measured=""):
  status = run.finish()
  _, lines = counted(run.text())
  good = status == status_wanted and len(lines) == 1 and files_ok
  record(case, command, expected, status, run.text(),
         "one line" if good else f"FAILURE (exit {status}, {len(lines)} error lines, files "
         f"{'as expected' if files_ok else 'not as expected'})", measured)


def committed(model_dir) -> list[int]:
  folder = os.path.join(model_dir, "checkpoints")
  return sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if os.path.isdir(folder) else []


def step_logged(run: Command, step: int):
  return lambda: f"step {step}/{STEPS} " in run.text()


# --- training: kill -9, SIGTERM --------------------------------------------------------------

def training_cases(work, reference):
  smoke = "main smoke.gin"
  for trial in range(ARGS.kill_trials + ARGS.saving_trials):
    saving = trial >= ARGS.kill_trials
    model_dir = os.path.join(work, f"kill{trial}")
    run = train(model_dir, model_dir + ".log")
    target = random.randrange(3, STEPS - 1)
    run.wait_for(step_logged(run, target))
    if saving:  # Kill as soon as the next save's temporary directory appears.
      run.wait_for(lambda: glob.glob(os.path.join(model_dir, "checkpoints", "*tmp*")), 60)
    run.process.send_signal(signal.SIGKILL)
    run.finish()
    at_kill = committed(model_dir)
    rerun = train(model_dir, model_dir + ".resume.log")
    bitwise(f"kill -9 {'as a save starts' if saving else 'at a random step'} (after step "
            f"{target})", smoke, "rerun resumes from the newest committed step, bitwise",
            rerun, model_dir, reference, f"committed {at_kill[-1:] or 'none'} at the kill")
  for trial in range(ARGS.sigterm_trials):
    model_dir = os.path.join(work, f"sigterm{trial}")
    run = train(model_dir, model_dir + ".log")
    target = random.randrange(3, STEPS - 1)
    run.wait_for(step_logged(run, target))
    run.process.send_signal(signal.SIGTERM)
    status = run.finish()
    at_stop = committed(model_dir)
    rerun = train(model_dir, model_dir + ".resume.log")
    bitwise(f"SIGTERM (after step {target})", smoke, "exit 143 after saving; rerun bitwise",
            rerun, model_dir, reference, f"first exit {status}, committed at the stop "
            f"{at_stop[-1:]}", before_ok=status == 143)


# --- damaged checkpoints -----------------------------------------------------------------------

def _largest(step_dir):
  files = [p for p in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True)
           if os.path.isfile(p)]
  return max(files, key=os.path.getsize)


def flip(path, count=16):
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    data = f.read(count)
    f.seek(os.path.getsize(path) // 2)
    f.write(bytes(b ^ 0xFF for b in data))


DAMAGE = {
    "16 bytes flipped in the largest state file": lambda d: flip(_largest(d)),
    "largest state file truncated to half": lambda d: os.truncate(
        _largest(d), os.path.getsize(_largest(d)) // 2),
    "largest state file deleted": lambda d: os.remove(_largest(d)),
    "state/_METADATA deleted": lambda d: os.remove(os.path.join(d, "state", "_METADATA")),
    "data/metadata (data position) deleted": lambda d: os.remove(
        os.path.join(d, "data", "metadata")),
    "checksums.json deleted and 16 bytes flipped": lambda d: (
        os.remove(os.path.join(d, checkpoints.CHECKSUMS)), flip(_largest(d))),
}


def damage_cases(work, reference, base):
  """Copies of the finished reference run (steps 8, 10, 12 kept), damaged and rerun."""
  kept = committed(base)
  for index, (name, damage) in enumerate(DAMAGE.items()):
    model_dir = os.path.join(work, f"damage{index}")
    shutil.copytree(base, model_dir)
    damage(os.path.join(model_dir, "checkpoints", str(kept[-1])))
    bitwise(f"step {kept[-1]} of {kept}: {name}", "main smoke.gin",
            f"one warning naming step {kept[-1]} and the file; resume from {kept[-2]}, bitwise",
            train(model_dir, model_dir + ".log"), model_dir, reference)
  model_dir = os.path.join(work, "damage_all")
  shutil.copytree(base, model_dir)
  for step in kept:
    flip(_largest(os.path.join(model_dir, "checkpoints", str(step))))
  one_line(f"every checkpoint ({kept}) flipped", "main smoke.gin",
           "a warning each, one error line, exit 1; the checkpoints left as they were",
           train(model_dir, model_dir + ".log"), files_ok=committed(model_dir) == kept)


# --- full disk ------------------------------------------------------------------------------------

def mounted_tmpfs(path, kib) -> str | None:
  os.makedirs(path, exist_ok=True)
  done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", path],
                        capture_output=True, text=True)
  return None if done.returncode == 0 else done.stderr.strip() or "mount failed"


def disk_cases(work, reference, base):
  step_bytes = max(sum(os.path.getsize(p) for p in glob.glob(
      os.path.join(base, "checkpoints", str(s), "**", "*"), recursive=True) if os.path.isfile(p))
                   for s in committed(base))
  vocabulary = os.path.getsize(os.path.join(base, "vocabulary", "sentencepiece.model"))
  mount = os.path.join(work, "tmpfs")
  kib = (vocabulary + int(step_bytes * 2.5)) // 1024 + 64
  problem = mounted_tmpfs(mount, kib)
  if problem:
    record("disk full (tmpfs)", "main smoke.gin", "-", "-", "", "not run", problem)
    return
  try:
    model_dir = os.path.join(mount, "run")
    run = train(model_dir, os.path.join(work, "disk_full.log"))
    status = run.finish()
    kept = committed(model_dir)
    verified = [s for s in kept if checkpoints.verify(
        os.path.join(model_dir, "checkpoints", str(s))) is None]
    _, lines = counted(run.text())
    newest = f"{model_dir}/checkpoints/{verified[-1]}" if verified else "none"
    names_newest = bool(lines) and lines[0].endswith(f"Newest good checkpoint: {newest}")
    record(f"disk full while training (tmpfs of {kib} KiB, a checkpoint is {step_bytes >> 10} KiB)",
           "main smoke.gin", "one line naming the newest good checkpoint, exit 1; it verifies",
           status, run.text(), "one line" if status == 1 and len(lines) == 1 and names_newest
           and kept == verified else "FAILURE", f"kept {kept}, verified {verified}")
    one_line("rerun while the disk is still full", "main smoke.gin",
             "one line (the save again, not the setup), exit 1",
             train(model_dir, os.path.join(work, "disk_full_rerun.log")),
             files_ok=committed(model_dir) == kept)
    moved = os.path.join(work, "disk_full_moved")
    shutil.copytree(model_dir, moved, ignore=shutil.ignore_patterns("*tmp*"))
  finally:
    subprocess.run(["umount", mount], check=False)
  bitwise("run of the full disk, copied to a disk with room, rerun", "main smoke.gin",
          "resume from the newest good step, bitwise", train(moved, moved + ".log"), moved,
          reference)
  problem = mounted_tmpfs(mount, 64)
  if problem:
    return
  try:
    model_dir = os.path.join(mount, "run")
    one_line("disk full at setup (tmpfs of 64 KiB)", "main smoke.gin",
             "one line naming the vocabulary copy, exit 1; nothing left",
             train(model_dir, os.path.join(work, "setup_full.log")),
             files_ok=not os.path.exists(model_dir))
  finally:
    subprocess.run(["umount", mount], check=False)


# --- bad settings and inputs ------------------------------------------------------------------

def input_cases(work):
  model_dir = os.path.join(work, "indivisible")
  one_line("BATCH_SIZE 12 on 8 data-parallel devices", "main smoke.gin",
           "one line before any state, exit 1; nothing written",
           train(model_dir, model_dir + ".log", "--gin.BATCH_SIZE=12", devices=8),
           files_ok=not os.path.exists(model_dir))
  corpus = os.path.join(work, "latin1_corpus")
  os.makedirs(corpus, exist_ok=True)
  with open(os.path.join(corpus, "en.jsonl"), "wb") as f:
    for i in range(3):
      f.write(json.dumps({"id": f"q{i}", "lang": "en", "question": "Why?",
                          "passage": "Because."}).encode().replace(
                              b"Why", b"Caf\xe9" if i == 2 else b"Why") + b"\n")
  model_dir = os.path.join(work, "latin1_run")
  one_line("training corpus JSONL with a Latin-1 byte on line 3", "main smoke.gin",
           "one line naming the file, line and column, exit 1; nothing written",
           train(model_dir, model_dir + ".log", f"--gin.CORPUS_DIR='{corpus}'",
                 "--gin.LANGUAGES=['en']"), files_ok=not os.path.exists(model_dir))


# --- export and evaluation ---------------------------------------------------------------------

def export_cases(work, reference_dir):
  export = os.path.join(work, "export")
  run = Command("hybridir.main", ["--gin_file=gin_configs/runs/export.gin",
                                  f"--gin.MODEL_DIR='{reference_dir}'",
                                  f"--gin.EXPORT_DIR='{export}'"], export + ".log")
  status = run.finish()
  warnings = run.text().count("Metadata file does not exist")
  record("export of the reference run", "main export.gin", "exit 0, no orbax warning", status,
         run.text(), "ok" if status == 0 and not warnings else "FAILURE",
         f"{warnings} orbax warnings")
  beir = os.path.join(work, "beir")
  Command("hybridir.data.describe", ["beir", "--dataset", "xquad_r", "--languages", "en", "de",
                            "--output", beir], beir + ".log").finish()
  files = ["--corpus", f"{beir}/corpus.jsonl", "--queries", f"{beir}/queries.jsonl",
           "--qrels", f"{beir}/qrels.tsv"]
  run = Command("hybridir.evaluation.evaluate",
                ["--encoder", export, "--output_dir", f"{work}/eval_good", *files],
                f"{work}/eval_good.log")
  status = run.finish()
  scores = (json.load(open(f"{work}/eval_good/metrics.json")) if status == 0 else {})
  record("evaluation of the export", "evaluate --encoder", "exit 0", status, run.text(),
         "ok" if status == 0 else "FAILURE", f"map {scores.get('all', {}).get('map', '-')}")
  damaged = os.path.join(work, "export_flipped")
  shutil.copytree(export, damaged)
  params = [p for p in glob.glob(f"{damaged}/params/**/*", recursive=True) if os.path.isfile(p)]
  flip(max(params, key=os.path.getsize))
  one_line("export with 16 bytes flipped in a parameter file", "evaluate --encoder",
           "one line naming the file, exit 1; no report", Command(
               "hybridir.evaluation.evaluate",
               ["--encoder", damaged, "--output_dir", f"{work}/eval_bad", *files],
               f"{work}/eval_bad.log"),
           files_ok=not os.path.exists(f"{work}/eval_bad"))
  miracl = os.path.join(REPO, "tests", "fixtures", "miracl", "en")
  shards = os.path.join(work, "shards")
  os.makedirs(shards, exist_ok=True)
  with open(f"{miracl}/corpus.jsonl", "rb") as f:
    lines = f.read().splitlines(keepends=True)
  import gzip  # pylint: disable=g-import-not-at-top
  with open(f"{shards}/docs-0.jsonl.gz", "wb") as f:
    f.write(gzip.compress(b"".join(lines[:6])))
  data = bytearray(gzip.compress(b"".join(lines[6:])))
  data[len(data) // 2:len(data) // 2 + 8] = bytes(b ^ 0xFF for b in data[
      len(data) // 2:len(data) // 2 + 8])
  with open(f"{shards}/docs-1.jsonl.gz", "wb") as f:
    f.write(bytes(data))
  for name, encoder, corpus in (("corrupt .gz corpus shard", export, f"{shards}/docs-*.jsonl.gz"),
                                ("flipped export", damaged, f"{miracl}/corpus.jsonl")):
    output = os.path.join(work, f"corpus_eval_{name.split()[0]}")
    one_line(f"corpus evaluation: {name}", "main eval_corpus.gin",
             "one line naming the file, exit 1", Command("hybridir.main", [
                 "--gin_file=gin_configs/runs/eval_corpus.gin", f"--gin.MODEL_DIR='{output}'",
                 f"--gin.ENCODER_PATH='{encoder}'", f"--gin.TOPICS='{miracl}/topics.tsv'",
                 f"--gin.QRELS='{miracl}/qrels.tsv'", f"--gin.CORPUS='{corpus}'",
                 "--gin.LANGUAGE='en'", "--gin.ALLOW_SUBSET=True"], output + ".log"),
             files_ok=not os.path.exists(os.path.join(output, "results.json")))


# --- two processes --------------------------------------------------------------------------------

def multihost_cases(work):
  def launch(model_dir, tag):
    with socket.socket() as s:
      s.bind(("localhost", 0))
      port = s.getsockname()[1]
    return [train(model_dir, f"{model_dir}.{tag}{i}.log", devices=2, extra=[
        f"--coordinator_address=localhost:{port}", "--process_count=2", f"--process_id={i}",
        f"--heartbeat_timeout_seconds={ARGS.heartbeat}"]) for i in range(2)]
  reference_dir = os.path.join(work, "mh_reference")
  statuses = [r.finish() for r in launch(reference_dir, "p")]
  reference = digest(reference_dir) if statuses == [0, 0] else "reference failed"
  model_dir = os.path.join(work, "mh_killed")
  runs = launch(model_dir, "p")
  target = random.randrange(3, STEPS - 1)
  runs[0].wait_for(step_logged(runs[0], target))
  runs[1].process.send_signal(signal.SIGKILL)
  killed = time.time()
  status = runs[0].finish(timeout=600)
  seconds = time.time() - killed
  runs[1].finish()
  _, lines = counted(runs[0].text())
  record(f"kill -9 of process 1 of 2 (after step {target})", "main smoke.gin x2",
         f"the survivor ends in one line naming process 1, exit 1, within the heartbeat timeout "
         f"({ARGS.heartbeat} s) and a little", status, runs[0].text(),
         "one line" if status == 1 and len(lines) == 1 and "process 1 of 2" in lines[0]
         and seconds < ARGS.heartbeat + 30 else "FAILURE", f"after {seconds:.0f} s")
  reruns = launch(model_dir, "resume")
  statuses = [r.finish() for r in reruns]
  found = digest(model_dir)
  record("both processes rerun", "main smoke.gin x2", "resume bitwise (2-process reference)",
         statuses, "".join(r.text() for r in reruns),
         "recovered bitwise" if statuses == [0, 0] and found == reference else "FAILURE")


def table() -> str:
  lines = ["| case | command | expected | exit | tracebacks | outcome | measured | line |",
           "|---|---|---|---|---|---|---|---|"]
  for r in ROWS:
    line = r["line"].replace("|", "/").replace(ARGS.work_dir, "$WORK")
    measured = r["measured"].replace(ARGS.work_dir, "$WORK")
    lines.append(f"| {r['case']} | {r['command']} | {r['expected']} | {r['status']} | "
                 f"{r['tracebacks']} | {r['outcome']} | {measured} | "
                 f"{'`' + line + '`' if line else '-'} |")
  return "\n".join(lines)


def summary() -> str:
  run = [r for r in ROWS if r["outcome"] != "not run"]
  count = lambda outcome: sum(r["outcome"] == outcome for r in run)
  failures = sum(r["outcome"].startswith("FAILURE") for r in run)
  return (f"{len(run)} cases: {count('recovered bitwise')} recovered bitwise, "
          f"{count('one line')} one line, {count('ok')} ok, {failures} failures, "
          f"{sum(r['tracebacks'] for r in run)} tracebacks"
          + (f" ({len(ROWS) - len(run)} not run)" if len(ROWS) > len(run) else ""))


def main():
  os.makedirs(ARGS.work_dir, exist_ok=True)
  random.seed(ARGS.seed)
  parts = ARGS.parts.split(",")
  started = time.time()
  reference_dir = os.path.join(ARGS.work_dir, "reference")
  status = train(reference_dir, reference_dir + ".log").finish()
  reference = digest(reference_dir)
  if status or not reference:
    sys.exit(f"the uninterrupted reference run failed (exit {status}): {reference_dir}.log")
  if "train" in parts:
    training_cases(ARGS.work_dir, reference)
  if "damage" in parts:
    damage_cases(ARGS.work_dir, reference, reference_dir)
  if "disk" in parts:
    disk_cases(ARGS.work_dir, reference, reference_dir)
  if "inputs" in parts:
    input_cases(ARGS.work_dir)
  if "export" in parts:
    export_cases(ARGS.work_dir, reference_dir)
  if "multihost" in parts:
    multihost_cases(ARGS.work_dir)
  print(table())
  print(f"\n{summary()}; reference digest {reference[:12]}..., {STEPS} steps, a checkpoint "
        f"every {PERIOD}; {time.time() - started:.0f} s in all; work dir {ARGS.work_dir}")


def parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--work_dir", default=None)
  parser.add_argument("--kill_trials", type=int, default=3)
  parser.add_argument("--saving_trials", type=int, default=2)
  parser.add_argument("--sigterm_trials", type=int, default=2)
  parser.add_argument("--heartbeat", type=int, default=10, help="--heartbeat_timeout_seconds")
  parser.add_argument("--parts", default="train,damage,disk,inputs,export,multihost")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  args.work_dir = os.path.abspath(args.work_dir or tempfile.mkdtemp(prefix="faults-"))
  return args


ARGS = parse(sys.argv[1:])

if __name__ == "__main__":
  main()
