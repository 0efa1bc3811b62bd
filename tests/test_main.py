"""The gin entry point: smoke.gin trains end to end; bad or missing bindings fail before compute,
mistakes in the command line before TensorFlow and jax load."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.conftest import shared_titles


def run_main(*args, timeout=600):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  return subprocess.run([sys.executable, "-m", "hybridir.main", *args], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_run_files_train_export_and_evaluate_end_to_end(tmp_path, data_dir):
  spm_path = tmp_path / "vocab" / "spm.model"
  result = run_main("--gin_file=gin_configs/runs/smoke.gin", f"--gin.MODEL_DIR='{tmp_path}'",
                    "--gin.TRAIN_STEPS=6", "--gin.CHECKPOINT_PERIOD=3",
                    f"--gin.CORPUS_DIR='{data_dir / 'xquad-r'}'",
                    f"--gin.SPM_PREFIX='{tmp_path / 'vocab' / 'spm'}'")
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "6"]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "train"))
  assert "step 6/6" in result.stderr

  result = run_main("--gin_file=gin_configs/runs/export.gin",
                    "--gin_file=gin_configs/models/mt5_tiny.gin", "--gin.VOCAB_SIZE=3000",
                    f"--gin.MODEL_DIR='{tmp_path}'", f"--gin.EXPORT_DIR='{tmp_path / 'export'}'",
                    f"--gin.SPM_PATH='{spm_path}'")
  assert result.returncode == 0, result.stderr[-3000:]
  assert os.path.exists(tmp_path / "export" / "manifest.json")

  result = run_main("--gin_file=gin_configs/runs/eval.gin",
                    f"--gin.ENCODER_PATH='{tmp_path / 'export'}'",
                    f"--gin.EVAL_DIR='{tmp_path / 'eval'}'", f"--gin.SPM_PATH='{spm_path}'",
                    f"--gin.DATA_DIR='{data_dir}'", "--gin.EVAL_LANGUAGES=['en', 'de']",
                    # MLQA-R on two articles: its whole en/de pool (8,626 sentences) is ~9x the
                    # XQuAD-R test split's.
                    "--gin.mlqa/tasks.register_lareqa.split="
                    + shared_titles(data_dir / "mlqa-r", ["en", "de"]))
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
  assert 0 < summary["mlqa_r"]["multilingual/map"] <= 1
  assert "monolingual/map" in summary["degradation"]["mlqa_r"]
  assert (tmp_path / "eval" / "xquad_r" / "xquad_r_cross_lingual.png").stat().st_size > 1000
  # The TREC files agree with the report through an independent path:
  # `hybridir.evaluation.evaluate`'s CLI.
  folder = tmp_path / "eval" / "mlqa_r"
  cli = subprocess.run([sys.executable, "-m", "hybridir.evaluate", "--run",
                        str(folder / "multilingual.run"), "--qrels",
                        str(folder / "multilingual.qrels"), "--measures", "recall_10"],
                       capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
  assert cli.returncode == 0, cli.stderr
  recall = json.loads(cli.stdout)["all"]["recall_10"]
  per_language = json.loads((folder / "mlqa_r.json").read_text())["multilingual"]["per_language"]
  weights = {lang: m["num_q"] for lang, m in per_language.items()}
  expected = sum(per_language[l]["recall_10"] * w for l, w in weights.items()) / sum(
      weights.values())
  assert abs(recall - expected) < 1e-6


@pytest.mark.slow
def test_unknown_gin_binding_fails_before_compute_naming_it(tmp_path):
  result = run_main("--gin_file=gin_configs/runs/smoke.gin", "--gin.trainer.train.nonsense=1",
                    timeout=120)
  assert result.returncode != 0
  assert "nonsense" in result.stderr and "Saving checkpoint" not in result.stderr


@pytest.mark.slow
def test_misspelled_macro_fails_before_compute_naming_the_closest(tmp_path):
  result = run_main("--gin_file=gin_configs/runs/smoke.gin", "--gin.TRAIN_STEP=3",
                    f"--gin.MODEL_DIR='{tmp_path}'", timeout=120)
  assert result.returncode != 0
  assert "TRAIN_STEP" in result.stderr and "did you mean TRAIN_STEPS" in result.stderr
  assert not (tmp_path / "checkpoints").exists() and "Traceback" not in result.stderr


@pytest.mark.slow
def test_preempted_run_saves_then_exits_with_the_documented_status(tmp_path):
  from hybridir import errors
  run_file = tmp_path / "preempted.gin"
  run_file.write_text("from __gin__ import dynamic_registration\n"
                      "from tests import test_trainer\n"
                      "RUN = @test_trainer.preempted_run\n"
                      f"test_trainer.preempted_run.model_dir = '{tmp_path}'\n")
  result = run_main(f"--gin_file={run_file}", timeout=300)
  assert result.returncode == errors.PREEMPTED_EXIT_CODE == 143, result.stderr[-2000:]
  assert (tmp_path / "checkpoints" / "3").is_dir()


@pytest.mark.slow
def test_missing_required_setting_is_named(tmp_path):
  result = run_main("--gin_file=gin_configs/runs/train.gin",
                    "--gin_file=gin_configs/models/mt5_tiny.gin", timeout=120)
  assert result.returncode != 0
  assert "MODEL_DIR" in result.stderr or "model_dir" in result.stderr


def test_gin_flags_become_bindings():
  from hybridir import main
  argv, bindings = main.gin_flags_to_bindings(["prog", "--gin.TRAIN_STEPS=5", "--foo=1"])
  assert argv == ["prog", "--foo=1"] and bindings == ["TRAIN_STEPS = 5"]
  with pytest.raises(Exception, match="--gin.KEY=VALUE"):
    main.gin_flags_to_bindings(["prog", "--gin.TRAIN_STEPS"])


def test_input_and_output_checks_name_parameters_of_real_run_functions():
  """The checks find their functions exactly (by object, or by complete selector before anything
  is imported): a renamed function or parameter fails here, not silently unchecked."""
  import importlib
  import inspect
  from hybridir import gin_run
  from hybridir import main
  for selector, parameters in main.INPUT_PARAMETERS.items():
    module, _, name = selector.rpartition(".")
    function = getattr(importlib.import_module(module), name)
    assert set(parameters) <= set(inspect.signature(function).parameters), selector
  for function, parameters in gin_run.OUTPUT_PARAMETERS.items():
    assert set(parameters) <= set(inspect.signature(function).parameters), function


def test_the_pre_import_check_finds_what_a_run_calls_through_the_files_imports(tmp_path):
  """An export run whose file imports the module under another name is still checked."""
  from hybridir import errors
  from hybridir import gin_utils
  from hybridir import main
  run_file = tmp_path / "run.gin"
  run_file.write_text("from __gin__ import dynamic_registration\n"
                      "from hybridir.export import exporter as exporting\n"
                      "RUN = @exporting.export_from_training_checkpoint\n"
                      f"exporting.export_from_training_checkpoint.model_dir = '{tmp_path}/none'\n")
  with pytest.raises(errors.SettingError, match="export_from_training_checkpoint.model_dir: .*"
                     "no such file or folder"):
    main.check_inputs(gin_utils.read_literal([str(run_file)]))


def heavy_imports(stderr: str) -> set[str]:
  """The top-level packages among jax, flax and TensorFlow that `python -X importtime` saw load."""
  names = {line.rpartition("|")[2].strip() for line in stderr.splitlines()
           if line.startswith("import time:")}
  return {name.split(".")[0] for name in names} & {"jax", "flax", "tensorflow"}


def own_lines(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if not line.startswith("import time:")]


@pytest.mark.parametrize("args, fragment", [
    (["--gin_file=gin_configs/runs/smok.gin"], "--gin_file=gin_configs/runs/smok.gin: no such"),
    (["--gin_file=gin_configs/runs/smoke.gin", "--gin.MODEL_DIR=/tmp/x"],
     "a string takes gin's quotes inside the shell's: --gin.MODEL_DIR=\"'/tmp/x'\""),
    (["--gin_file=gin_configs/runs/smoke.gin", "--gin.TRAIN_STEP=3"], "did you mean TRAIN_STEPS"),
    (["--gin_file=gin_configs/runs/export.gin"], "MODEL_DIR, EXPORT_DIR are required"),
    (["--gin_file=gin_configs/runs/export.gin", "--gin.MODEL_DIR='/nonexistent/run'",
      "--gin.EXPORT_DIR='/nonexistent/run/export'"], "/nonexistent/run: no such file or folder"),
    (["--gin_fil=gin_configs/runs/smoke.gin"], "Unknown command line flag 'gin_fil'"),
], ids=["missing_gin_file", "unquoted_string", "misspelled_macro", "required_unbound",
        "export_without_run", "misspelled_flag"])
def test_command_line_mistakes_end_in_one_line_before_tensorflow_or_jax_load(args, fragment):
  result = subprocess.run([sys.executable, "-X", "importtime", "-m", "hybridir.main", *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1 and result.stdout == ""
  lines = own_lines(result.stderr)
  assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
  assert heavy_imports(result.stderr) == set()
