"""A study run's results file: one schema, written and read back equal, refused in one line when
a field is missing or the format is another."""
import glob
import json
import os
import subprocess
import sys

import gin
import numpy as np
import pytest

from hybridir import gin_utils
from hybridir.study import study_gather
from hybridir.study import study_results
from hybridir.study import study_run
from tests import test_quiet
from tests.conftest import REPO_ROOT
from tests.test_study_full_scale import synthetic_result

STUDY_RUN_FILES = sorted(p for p in glob.glob(str(REPO_ROOT / "gin_configs/runs/study/*.gin"))
                         # The MIRACL stage trains none; base.gin is every run file's base (no model).
                         if os.path.basename(p) not in ("miracl.gin", "base.gin"))


def _result(seed=0) -> dict:
  return synthetic_result(np.random.default_rng(seed), "xlmr", 0.5, seed, 0.7, 0.1)


def _sweep(root, edit):
  """A sweep of one model's three arms, one seed, the hybrid arm's results passed through `edit`;
  returns that arm's results path."""
  for slug in ("mono", "cross", "hybrid"):
    run = root / f"xlmr_base_{slug}_seed0"
    run.mkdir(parents=True)
    (run / study_run.RESULTS_FILE).write_text(json.dumps(
        edit(_result()) if slug == "hybrid" else _result()))
  return root / "xlmr_base_hybrid_seed0" / study_run.RESULTS_FILE


def test_results_written_read_back_equal_with_their_format_version(tmp_path):
  results = study_results.from_json(_result(), "synthetic")
  path = str(tmp_path / study_run.RESULTS_FILE)
  study_results.write(path, results)
  assert study_results.read(path) == results
  assert json.loads((tmp_path / study_run.RESULTS_FILE).read_text())["format_version"] == (
      study_results.FORMAT_VERSION)
  # Read by attribute: the report's cells.
  read = study_results.read(path)
  assert read.evaluation.comparisons["mlqa_r"].out_of_domain.summary["monolingual"]["map"] == (
      pytest.approx(0.6))
  assert read.evaluation.datasets["mlqa_r"].average("multilingual", "recall_10") == (
      pytest.approx(0.7))
  assert read.train.history[-1].step == 900 and read.settings.batch_size == 100


def test_a_file_from_before_the_format_version_reads_as_version_1(tmp_path):
  written = _result()
  assert "format_version" not in written  # The layout study_run wrote before the field.
  assert study_results.from_json(written, "old.json").format_version == 1


def test_the_gather_command_refuses_a_results_file_missing_a_field_naming_file_and_field(
    tmp_path):
  def without_draws(result):
    del result["evaluation"]["matched_draws"]
    return result
  path = _sweep(tmp_path / "runs", without_draws)
  command = [sys.executable, "-m", "hybridir.study_gather", f"--runs_root={tmp_path / 'runs'}",
             f"--output_dir={tmp_path / 'report'}"]
  result = subprocess.run(command, cwd=REPO_ROOT, env=test_quiet.user_env(), capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: {path}: no field 'evaluation.matched_draws' (study results format "
      f"{study_results.FORMAT_VERSION})")
  assert not (tmp_path / "report" / "study.md").exists()


def test_the_gather_refuses_another_format_version_naming_the_file(tmp_path):
  path = _sweep(tmp_path / "runs", lambda result: {**result, "format_version": 99})
  with pytest.raises(study_results.ResultsError,
                     match=f"{path}: study results format 99, this hybridir reads format "
                           f"{study_results.FORMAT_VERSION}"):
    study_gather.gather(str(tmp_path / "runs"), str(tmp_path / "report"))


def test_a_value_of_another_shape_is_refused_naming_its_field():
  result = _result()
  result["train"]["history"][2]["loss"] = "low"
  with pytest.raises(study_results.ResultsError,
                     match=r"^r.json: 'train.history\[2\].loss' should be float, found str 'low'"):
    study_results.from_json(result, "r.json")


@pytest.mark.parametrize("path", STUDY_RUN_FILES, ids=os.path.basename)
def test_every_study_run_file_binds_the_settings_the_results_record(path):
  """study_run checks the settings before training: every study file must pass that check."""
  gin.clear_config()
  required = ["INIT_CHECKPOINT = '/tmp/checkpoint'"] * os.path.basename(path).startswith(
      "pretrained_")  # As the demo binds it (study.cell_bindings).
  gin_utils.parse([path], ["MODEL_DIR = '/tmp/x'", "CORPUS_DIR = '/tmp/corpus'", *required],
                  finalize=False)
  bound = gin_utils.bound_arguments("hybridir.study.study_run.train_and_evaluate", ["settings"])
  settings = {name: value.scoped_configurable_fn()
              if isinstance(value, gin.config.ConfigurableReference) else value
              for name, value in bound["settings"].items()}
  gin.clear_config()
  assert study_results.settings_from(settings, path).family == settings["family"]
  with pytest.raises(study_results.ResultsError, match="no field 'settings.batch_size'"):
    study_results.settings_from({k: v for k, v in settings.items() if k != "batch_size"}, path)
