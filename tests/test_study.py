"""The study pipeline, shortened: few steps, two languages, every table cell filled."""
import json
import os

import numpy as np
import pytest

from hybridir import reports
from hybridir import study
from hybridir import study_gather
from hybridir import study_report

QUICK = study.StudyConfig(models=("mT5", "XLM-R"), strategies=("cross-lingual", "hybrid"),
                          seeds=(0,), languages=("en", "de"), train_steps=3, batch_size=8,
                          query_length=16, passage_length=32, vocab_size=1500,
                          max_questions_per_language=40)


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory, data_dir):
  output_dir = tmp_path_factory.mktemp("study")
  return output_dir, study.run_study(str(data_dir), str(output_dir), QUICK)


def test_shortened_study_fills_every_cell_and_writes_the_report(quick_study):
  tmp_path, paths = quick_study
  with open(paths["json"]) as f:
    cells = json.load(f)["cells"]
  for model in QUICK.models:
    for strategy in QUICK.strategies:
      entry = cells[model][strategy]
      for dataset in ("xquad_r", "mlqa_r"):
        for setting in ("monolingual", "cross_lingual", "multilingual"):
          cell = entry["map"][dataset][setting]
          assert cell["n"] == 1 and 0.0 < cell["mean"] <= 1.0, (model, strategy, dataset, setting)
        assert entry["rank_distance"][dataset]["mean"] > 0
      for setting in ("monolingual", "cross_lingual", "multilingual"):
        assert entry["degradation"][setting]["absolute"]["mean"] is not None
  report = open(paths["markdown"]).read()
  assert "n/a" not in report and "Smoke scale" in report and "Degradation" in report
  assert os.path.getsize(paths["plot"]) > 1000
  runs = sorted(os.listdir(tmp_path / "runs"))
  assert runs == ["t5_cross_lingual_seed0", "t5_hybrid_seed0", "xlmr_cross_lingual_seed0",
                  "xlmr_hybrid_seed0"]


def test_in_domain_questions_are_held_out_of_training(tmp_path, data_dir):
  import tasks
  spm_path = study.train_vocabulary(str(data_dir / "xquad-r"), "t5", QUICK, str(tmp_path))
  tasks.register_parallel_qa("heldout_check", str(data_dir / "xquad-r"), "t5", spm_path,
                             ["en", "de"], split="train")
  tasks.register_lareqa("xquad_r", str(data_dir), "t5", spm_path, ["en", "de"], split="test")
  in_domain = dict(tasks.evaluation_mixture_datasets("lareqa_xquad_r"))["xquad_r"]
  study.check_held_out("heldout_check_hybrid", in_domain)  # Raises on any overlap.
  assert sum(len(q) for q in in_domain.questions.values()) > 100


def test_cells_are_means_with_sample_std_over_seeds():
  cell = study_report._cell([0.2, 0.4, None])
  assert cell["n"] == 2 and np.isclose(cell["mean"], 0.3) and np.isclose(cell["std"], 0.1414214)
  assert study_report._fmt(cell) == "30.0 ± 14.1"


def test_gather_builds_the_report_from_a_sweep_of_evaluation_folders(quick_study, tmp_path):
  study_dir, _ = quick_study
  for run in os.listdir(study_dir / "runs"):
    family, rest = run.split("_", 1)
    strategy, seed = rest.rsplit("_", 1)
    name = f"{'mt5' if family == 't5' else 'xlmr'}_tiny_{strategy.replace('_', '-')}_{seed}"
    with open(study_dir / "runs" / run / "results.json") as f:
      evaluation = json.load(f)["evaluation"]
    for dataset, results in evaluation.items():
      reports.write_json(str(tmp_path / "sweep" / name / "eval" / dataset / f"{dataset}.json"),
                         results)
  paths = study_gather.gather(str(tmp_path / "sweep"), str(tmp_path / "report"))
  report = open(paths["markdown"]).read()
  assert "| mT5 tiny | hybrid |" in report and "| XLM-R tiny | cross-lingual |" in report
  assert "Gathered from" in report and "Smoke scale" not in report


def test_gather_names_missing_runs(quick_study, tmp_path):
  (tmp_path / "mt5_base_hybrid_seed0" / "eval").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match="mt5_base_hybrid_seed0 has no xquad_r evaluation"):
    study_gather.gather(str(tmp_path), str(tmp_path / "report"))
