"""Specification of hybridir.evaluation.reports: every artefact is written,
complete and readable."""
import json
import math

import numpy as np
import pytest

from hybridir.evaluation import evaluate
from hybridir.evaluation import reports


@pytest.fixture(scope="module")
def results():
  rng = np.random.default_rng(0)
  languages = ["de", "en", "zh"]
  candidates = {lang: [f"{lang}-{i}" for i in range(10)] for lang in languages}
  candidate_emb = {lang: rng.standard_normal((10, 4)).astype(np.float32) for lang in languages}
  questions = {lang: [(f"q{i}", tuple(f"{o}-{i}" for o in languages)) for i in range(5)]
               for lang in languages}
  question_emb = {lang: rng.standard_normal((5, 4)).astype(np.float32) for lang in languages}
  return evaluate.evaluate_settings(questions, question_emb, candidates, candidate_emb,
                                    ["map", "recall_10"])


def test_write_report_writes_json_markdown_and_three_non_empty_pngs(tmp_path, results):
  paths = reports.write_report(str(tmp_path / "out"), results)
  assert json.loads(open(paths["json"]).read())["multilingual"]["average"]["map"] == pytest.approx(
      results["multilingual"]["average"]["map"])
  for kind in ("heatmap", "bars", "rank_distance"):
    with open(paths[kind], "rb") as f:
      data = f.read()
    assert data.startswith(b"\x89PNG") and len(data) > 1000, kind
  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
      ["results.json", "results.md", "results_cross_lingual.png", "results_per_language.png",
       "results_rank_distance.png"])  # No temporary files left behind.


def test_markdown_has_averages_and_a_cross_lingual_matrix_with_monolingual_diagonal(results):
  text = reports.markdown_tables(results, "map")
  assert "| monolingual |" in text and "| multilingual |" in text
  diagonal = results["monolingual"]["per_language"]["en"]["map"]
  en_row = next(line for line in text.splitlines() if line.startswith("| en |") and
                line.count("|") == 5)
  assert en_row.split("|")[3].strip() == f"{diagonal:.4f}"


def test_json_writes_nan_as_null(tmp_path):
  reports.write_json(str(tmp_path / "r.json"), {"relative": math.nan, "n": np.int64(3)})
  assert json.loads((tmp_path / "r.json").read_text()) == {"n": 3, "relative": None}


def test_a_plot_that_fails_while_saving_leaves_no_file(tmp_path, results, monkeypatch):
  def fail_halfway(figure, path, **kwargs):
    with open(path, "wb") as f:
      f.write(b"\x89PNG partial")
    raise OSError("disk full")

  monkeypatch.setattr(reports.Figure, "savefig", fail_halfway)
  with pytest.raises(OSError, match="disk full"):
    reports.plot_cross_lingual_heatmap(str(tmp_path / "h.png"), results, "map")
  assert list(tmp_path.iterdir()) == []
