"""The Cloud TPU workflow with everything in Cloud Storage, on a local GCS emulator: the smoke run
with CORPUS_DIR, SPM_PREFIX and MODEL_DIR on gs://, killed and resumed; export from that MODEL_DIR
to gs://; evaluation reading and writing gs://; the study gather over gs:// runs."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from hybridir.export import artifacts
from hybridir import fs
from hybridir.training import checkpoints
from tests.conftest import REPO_ROOT
from tests.conftest import shared_titles

# Every test reads one chain of hybridir.main processes (train, kill, resume, export, evaluate).
pytestmark = pytest.mark.slow

TRAIN_LANGUAGES = ("en", "de", "es", "zh")  # smoke.gin's LANGUAGES.
EVAL_LANGUAGES = ("en", "de")


def _main_command(*args) -> list[str]:
  return [sys.executable, "-m", "hybridir.main", *args]


def _env() -> dict:
  # STORAGE_EMULATOR_HOST (set by the gcs_bucket fixture) is inherited; nothing else is set.
  return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")


def run_main(*args, timeout=600) -> subprocess.CompletedProcess:
  return subprocess.run(_main_command(*args), cwd=REPO_ROOT, env=_env(), capture_output=True,
                        text=True, timeout=timeout)


@pytest.fixture(scope="module")
def gcs_data(gcs_bucket, data_dir) -> str:
  """The languages of XQuAD-R and MLQA-R that the runs read, uploaded to the emulator."""
  root = f"{gcs_bucket}/data"
  for folder, languages in (("xquad-r", TRAIN_LANGUAGES), ("mlqa-r", EVAL_LANGUAGES)):
    for language in languages:
      fs.copy_file(data_dir / folder / f"{language}.json", f"{root}/{folder}/{language}.json")
  return root


@pytest.fixture(scope="module")
def run(gcs_bucket, gcs_data, tmp_path_factory) -> dict:
  """A smoke run on gs:// killed (SIGKILL) once it has a checkpoint, then resumed for 2 steps."""
  model_dir, spm_prefix = f"{gcs_bucket}/run/model", f"{gcs_bucket}/run/vocab/spm"
  settings = ["--gin_file=gin_configs/runs/smoke.gin", f"--gin.MODEL_DIR='{model_dir}'",
              f"--gin.CORPUS_DIR='{gcs_data}/xquad-r'", f"--gin.SPM_PREFIX='{spm_prefix}'",
              "--gin.CHECKPOINT_PERIOD=2", "--gin.WARMUP_STEPS=1"]
  log = tmp_path_factory.mktemp("killed") / "stderr.log"
  with open(log, "w") as stderr:
    killed = subprocess.Popen(_main_command(*settings, "--gin.TRAIN_STEPS=100000"),
                              cwd=REPO_ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=stderr)
  try:
    deadline = time.monotonic() + 600
    while not (fs.isdir(f"{model_dir}/checkpoints")
               and checkpoints.training_steps(model_dir)):
      assert killed.poll() is None, log.read_text()[-3000:]
      assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
      time.sleep(0.2)
  finally:
    killed.send_signal(signal.SIGKILL)
    killed.wait()
  steps_at_kill = checkpoints.training_steps(model_dir)
  last = steps_at_kill[-1]
  # Resumed with the vocabulary the first run trained (SentencePiece training is not bitwise
  # repeatable, and a run refuses to resume with another vocabulary).
  resumed = run_main(*settings, f"--gin.TRAIN_STEPS={last + 2}",
                     f"--gin.SPM_PATH='{spm_prefix}.model'")
  return {"model_dir": model_dir, "spm_path": f"{spm_prefix}.model", "killed": killed,
          "steps_at_kill": steps_at_kill, "resumed": resumed}


@pytest.fixture(scope="module")
def exported(run, gcs_bucket) -> tuple[str, subprocess.CompletedProcess]:
  export_dir = f"{gcs_bucket}/run/export"
  result = run_main("--gin_file=gin_configs/runs/export.gin",
                    "--gin_file=gin_configs/models/mt5_tiny.gin", "--gin.VOCAB_SIZE=3000",
                    f"--gin.MODEL_DIR='{run['model_dir']}'", f"--gin.EXPORT_DIR='{export_dir}'",
                    f"--gin.SPM_PATH='{run['spm_path']}'")
  return export_dir, result


@pytest.fixture(scope="module")
def evaluated(exported, run, gcs_data, gcs_bucket,
              data_dir) -> tuple[str, subprocess.CompletedProcess]:
  """Both datasets in the languages uploaded, on two articles each (to keep the test short)."""
  export_dir, _ = exported
  eval_dir = f"{gcs_bucket}/run/eval"
  languages = "[" + ", ".join(f"'{x}'" for x in EVAL_LANGUAGES) + "]"
  result = run_main("--gin_file=gin_configs/runs/eval.gin", f"--gin.ENCODER_PATH='{export_dir}'",
                    f"--gin.EVAL_DIR='{eval_dir}'", f"--gin.SPM_PATH='{run['spm_path']}'",
                    f"--gin.DATA_DIR='{gcs_data}'", f"--gin.EVAL_LANGUAGES={languages}",
                    f"--gin.IN_DOMAIN_SPLIT={shared_titles(data_dir / 'xquad-r', EVAL_LANGUAGES)}",
                    "--gin.mlqa/tasks.register_lareqa.split="
                    + shared_titles(data_dir / "mlqa-r", EVAL_LANGUAGES))
  return eval_dir, result


def test_smoke_run_on_gcs_resumes_after_a_kill_from_its_last_complete_checkpoint(run):
  assert run["killed"].returncode == -signal.SIGKILL
  resumed = run["resumed"]
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  last = run["steps_at_kill"][-1]
  assert f"resumed from {run['model_dir']} at step {last}" in resumed.stderr
  assert f"step {last + 2}/{last + 2}" in resumed.stderr
  assert checkpoints.training_steps(run["model_dir"])[-1] == last + 2
  assert fs.isfile(run["spm_path"])
  events = fs.listdir(f"{run['model_dir']}/train")
  assert len(events) >= 2 and all(e.startswith("events.out.tfevents.") for e in events)


def test_export_reads_a_gcs_model_dir_and_writes_gcs(exported, run):
  export_dir, result = exported
  assert result.returncode == 0, result.stderr[-3000:]
  manifest = artifacts.read_manifest(export_dir)
  assert manifest["metadata"] == {"training_checkpoint": run["model_dir"],
                                  "step": run["steps_at_kill"][-1] + 2}
  assert manifest["vocabulary"]["source"] == run["spm_path"]
  assert fs.read_bytes(f"{export_dir}/{artifacts.SPM_FILE}") == fs.read_bytes(run["spm_path"])


def test_evaluation_reads_and_writes_gcs(evaluated):
  eval_dir, result = evaluated
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads(fs.read_text(f"{eval_dir}/summary.json"))
  assert 0 < summary["mlqa_r"]["multilingual/map"] <= 1
  assert 0 < summary["xquad_r"]["multilingual/map"] <= 1
  assert len(fs.read_bytes(f"{eval_dir}/xquad_r/xquad_r_cross_lingual.png")) > 1000
  assert fs.read_text(f"{eval_dir}/mlqa_r/multilingual.run").count(" Q0 ") > 10
