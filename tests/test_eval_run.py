"""Evaluation runs chosen by naming a SeqIO evaluation mixture: MIRACL here, on its file formats."""
import json

import pytest

import tasks
from hybridir.evaluation import eval_run
from hybridir.evaluation import evaluate
from hybridir.models import families
from tests import reference_models as ref
from tests.conftest import REPO_ROOT

MIRACL = REPO_ROOT / "tests" / "fixtures" / "miracl"


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory, data_dir):
  folder = tmp_path_factory.mktemp("encoder")
  spm_path = families.train_vocabulary("t5", ref.xquad_texts(data_dir), str(folder / "spm"),
                                       300)
  ref.write_spm(folder, spm_path, "t5")
  ref.save_random_mt5(folder, vocab_size=300)
  tasks.unregister_miracl()  # Other tests' MIRACL languages.
  for language in ("en", "sw"):
    tasks.register_miracl(language, str(MIRACL / language / "topics.tsv"),
                          str(MIRACL / language / "qrels.tsv"),
                          str(MIRACL / language / "corpus.jsonl"), "t5", spm_path)
  return folder


def test_miracl_mixture_gives_ndcg_and_recall_per_language(encoder_dir, tmp_path):
  summary = eval_run.run_evaluation(encoder_path=str(encoder_dir), mixture_name="miracl",
                                    output_dir=str(tmp_path))
  assert set(summary) == {"miracl_en", "miracl_sw"}
  for name in summary:
    assert 0.0 <= summary[name]["monolingual/ndcg_cut_10"] <= 1.0
    results = json.loads((tmp_path / name / f"{name}.json").read_text())
    (language,) = results["monolingual"]["per_language"]
    assert "recall_100" in results["monolingual"]["per_language"][language]
    # The TREC files evaluate to the report's numbers through the run-file path.
    from_files = evaluate.evaluate_files(str(tmp_path / name / "multilingual.run"),
                                         str(tmp_path / name / "multilingual.qrels"),
                                         ["ndcg_cut_10"])
    assert abs(from_files["all"]["ndcg_cut_10"]
               - results["multilingual"]["average"]["ndcg_cut_10"]) < 1e-6


def test_unknown_in_domain_dataset_is_named(encoder_dir, tmp_path):
  with pytest.raises(ValueError, match="in_domain='xquad_r' is not a dataset of 'miracl'"):
    eval_run.run_evaluation(encoder_path=str(encoder_dir), mixture_name="miracl",
                            output_dir=str(tmp_path), in_domain="xquad_r")
