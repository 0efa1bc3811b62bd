"""The study: one run path for demo and gin runs, equal-terms scoring, intervals, the report."""
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

import hybridir
from hybridir.data import miracl
from hybridir.data import retrieval_data
from hybridir.export import artifacts
from hybridir.export import model_card
from hybridir.study import demo
from hybridir.study import study_eval
from hybridir.study import study_gather
from hybridir.study import study_report
from hybridir.study import study_results
from hybridir.study import study_run
from hybridir.study import study_stats
from hybridir.training import checkpoints
from hybridir.training import run_dir
from tests import test_quiet
from tests import test_trainer
from tests.conftest import REPO_ROOT

TINY = ("TRAIN_STEPS = 6", "BATCH_SIZE = 8", "EVAL_PERIOD = 3", "VALIDATION_STEPS = 1",
        "WARMUP_STEPS = 1", "LANGUAGES = ['en', 'de']", "SPM_VOCAB_SIZE = 1500",
        "MAX_QUESTIONS_PER_LANGUAGE = 30", "TASK_FEATURE_LENGTHS = {'query': 16, 'passage': 32}",
        "MATCHED_DRAWS = 2")
QUICK = demo.StudyConfig(models=("mT5",), strategies=("X-Y", "hybrid"), seeds=(0,),
                          bindings=TINY)


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory, data_dir):
  output_dir = tmp_path_factory.mktemp("study")
  return output_dir, demo.run_study(str(data_dir), str(output_dir), QUICK)


@pytest.mark.slow
def test_demo_and_a_gin_run_give_identical_numbers_and_the_gin_run_keeps_its_export(
    quick_study, data_dir, tmp_path):
  output_dir, _ = quick_study
  spm_path = str(output_dir / "vocab" / "t5.model")
  bindings = demo.cell_bindings(str(data_dir), str(tmp_path / "run"), spm_path, "t5", 0.5, 0,
                                 TINY)
  command = [sys.executable, "-m", "hybridir.main",
             "--gin_file=gin_configs/runs/study/demo_mt5.gin"]  # The export kept at run/export.
  command += [f"--gin.{b.split(' = ', 1)[0]}={b.split(' = ', 1)[1]}" for b in bindings]
  result = subprocess.run(command, cwd=REPO_ROOT, env=test_quiet.user_env(), capture_output=True,
                          text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  assert test_quiet.library_lines(result.stderr) == [], result.stderr[-3000:]  # No orbax, CUDA.
  with open(tmp_path / "run" / study_run.RESULTS_FILE) as f:
    gin_run = json.load(f)
  with open(output_dir / "runs" / "t5_hybrid_seed0" / study_run.RESULTS_FILE) as f:
    demo_run = json.load(f)
  assert gin_run["train"]["history"] == demo_run["train"]["history"]
  assert gin_run["evaluation"] == demo_run["evaluation"]
  kept = artifacts.read_manifest(str(tmp_path / "run" / "export"))["metadata"]
  assert kept["step"] == gin_run["train"]["chosen_step"]


@pytest.mark.slow
def test_a_real_runs_results_file_is_the_schemas_json_and_reads_back_equal(quick_study, tmp_path):
  output_dir, _ = quick_study
  path = output_dir / "runs" / "t5_hybrid_seed0" / study_run.RESULTS_FILE
  read = study_results.read(str(path))
  assert read.to_json() == json.loads(path.read_text())  # Written through the schema, whole.
  assert read.format_version == study_results.FORMAT_VERSION
  assert set(read.evaluation.datasets) == {study_run.IN_DOMAIN, "mlqa_r"}
  copy = str(tmp_path / study_run.RESULTS_FILE)
  study_results.write(copy, read)
  assert study_results.read(copy) == read


@pytest.mark.slow
def test_quick_study_writes_a_report_that_opens_with_the_computed_answer(quick_study):
  _, paths = quick_study
  report = open(paths["markdown"]).read()
  first_paragraph = report.split("\n\n")[1]
  assert first_paragraph.startswith("**The answer, computed.**")
  assert "Training against chance" in report and "size-matched pools" in report
  # The demo trains on XQuAD-R: the report says its XQuAD-R is in-domain, MLQA-R out of domain.
  assert ("XQuAD-R is not out of domain here: the runs train on its training articles, so its "
          "held-out articles are the in-domain set (by construction)") in report
  assert "**Out of domain**, zero-shot: MLQA-R in de, en (" in report
  assert os.path.getsize(paths["loss_plot"]) > 1000
  with open(paths["json"]) as f:
    training = json.load(f)["training"]
  assert set(training) == {"mT5/X-Y/0", "mT5/hybrid/0"}
  assert all(t["chance_loss"] == pytest.approx(math.log(8)) for t in training.values())


@pytest.mark.slow
def test_arms_that_stay_at_chance_are_flagged_and_left_out_of_the_answer(quick_study):
  output_dir, _ = quick_study
  results = {}
  for strategy, slug in (("X-Y", "cross"), ("hybrid", "hybrid")):
    result = study_results.read(str(output_dir / "runs" / f"t5_{slug}_seed0" /
                                    study_run.RESULTS_FILE))
    loss, accuracy = (1.0, 0.9) if strategy == "hybrid" else (math.log(8), 1 / 8)
    history = tuple(dataclasses.replace(h, loss=loss, accuracy=accuracy)
                    for h in result.train.history)
    results["mT5", strategy, 0] = dataclasses.replace(
        result, train=dataclasses.replace(result.train, history=history))
  training = {k: study_report.training_summary(r) for k, r in results.items()}
  assert [t["learned"] for t in training.values()] == [False, True]
  table = study_report.effects(results, {k: t["learned"] for k, t in training.items()})
  assert table == {}
  paragraph = study_report.answer_paragraph(table, training)
  assert "mT5 X-Y" in paragraph and "did not learn" in paragraph and "No effect" in paragraph


@pytest.mark.slow
def test_in_domain_questions_are_held_out_of_training_and_validation(quick_study):
  import tasks
  datasets = study_run.study_datasets()
  assert [name for name, _ in datasets] == ["in_domain", "mlqa_r"]  # XQuAD-R trains: in-domain.
  in_domain = dict(datasets)[study_run.IN_DOMAIN]
  record = tasks.get_hybrid_mixture("study_hybrid")
  assert record.splits == ("train", "validation", "test")  # The demo's in-domain set: its test.
  assert ({q.question_id for items in in_domain.questions.values() for q in items}
          == set(record.corpora["test"].pair_ids()))
  study_run.check_held_out("study_hybrid", in_domain)
  leaked = record.corpora["train"].pair_ids()[0]  # A training pair, not one of the test split.
  some_language = next(iter(in_domain.questions))
  question = in_domain.questions[some_language][0]
  poisoned = retrieval_data.RetrievalDataset("x", {some_language: [
      retrieval_data.Question(leaked, some_language, question.text, question.relevant)]},
      in_domain.candidates)
  with pytest.raises(RuntimeError, match="in-domain test questions are also training"):
    study_run.check_held_out("study_hybrid", poisoned)


@pytest.mark.slow
def test_gather_builds_the_same_report_from_a_sweep_of_run_folders(quick_study, tmp_path):
  output_dir, _ = quick_study
  for run in os.listdir(output_dir / "runs"):
    family, rest = run.split("_", 1)
    target = tmp_path / "sweep" / f"{'mt5' if family == 't5' else 'xlmr'}_tiny_{rest}"
    target.mkdir(parents=True)
    shutil.copy(output_dir / "runs" / run / study_run.RESULTS_FILE, target)
  paths = study_gather.gather(str(tmp_path / "sweep"), str(tmp_path / "report"))
  report = open(paths["markdown"]).read()
  assert "| mT5 tiny | hybrid |" in report and "| mT5 tiny | X-Y |" in report
  assert "Gathered from" in report and "Smoke scale" not in report


@pytest.mark.slow
def test_gather_over_gcs_runs_matches_a_local_gather(quick_study, gcs_bucket, tmp_path):
  from hybridir import fs
  output_dir, _ = quick_study
  sweeps = {"gcs": f"{gcs_bucket}/sweep", "local": str(tmp_path / "sweep")}
  for root in sweeps.values():
    for run in os.listdir(output_dir / "runs"):
      family, rest = run.split("_", 1)
      fs.copy_file(str(output_dir / "runs" / run / study_run.RESULTS_FILE),
                   f"{root}/{'mt5' if family == 't5' else 'xlmr'}_tiny_{rest}/"
                   f"{study_run.RESULTS_FILE}")
  reports = {where: study_gather.gather(root, f"{root}-report") for where, root in sweeps.items()}
  gcs_report = fs.read_text(reports["gcs"]["markdown"])
  assert reports["gcs"]["markdown"] == f"{gcs_bucket}/sweep-report/study.md"
  assert "| mT5 tiny | hybrid |" in gcs_report and "| mT5 tiny | X-Y |" in gcs_report
  strip = lambda text, root: text.replace(root, "ROOT").split("\n", 3)[3]  # After the header.
  assert strip(gcs_report, sweeps["gcs"]) == strip(
      fs.read_text(reports["local"]["markdown"]), sweeps["local"])
  assert fs.isfile(reports["gcs"]["loss_plot"])


def _sweep_with_miracl(quick_study, root, languages) -> dict:
  """The quick study's runs as a sweep, each with a MIRACL stage's results.json per language
  (nDCG@10 0.40 + i/100 for the i-th language, +0.05 for hybrid; Recall@100 0.8)."""
  output_dir, _ = quick_study
  for run in os.listdir(output_dir / "runs"):
    _, rest = run.split("_", 1)
    target = root / f"mt5_tiny_{rest}"
    target.mkdir(parents=True)
    shutil.copy(output_dir / "runs" / run / study_run.RESULTS_FILE, target)
    (target / "miracl" / "logs").mkdir(parents=True)  # The launch's logs are no language.
    for i, language in enumerate(languages):
      write_miracl_stage(target / "miracl" / language, 0.40 + i / 100 + (
          0.05 if rest.startswith("hybrid") else 0.0))


def write_miracl_stage(folder, ndcg, num_queries=12):
  """A MIRACL stage's files for one language: results.json, and run.trec and qrels.trec in which
  the first `round(ndcg * n)` of n queries rank their one relevant passage first (nDCG@10 1) and
  the others miss it (0)."""
  folder.mkdir(parents=True)
  hits = round(ndcg * num_queries)
  folder.joinpath("results.json").write_text(json.dumps(
      {"ndcg_cut_10": ndcg, "recall_100": 0.8, "map": 0.3, "num_q": num_queries}))
  folder.joinpath("qrels.trec").write_text("".join(f"q{q} 0 d{q} 1\n" for q in range(num_queries)))
  folder.joinpath("run.trec").write_text("".join(
      f"q{q} Q0 {'d' if q < hits else 'x'}{q} 1 1.0 t\n" for q in range(num_queries)))


@pytest.mark.slow
def test_gather_reports_the_miracl_stage_per_language_with_the_mean(quick_study, tmp_path):
  _sweep_with_miracl(quick_study, tmp_path / "sweep", miracl.STUDY_LANGUAGES)
  report = open(study_gather.gather(str(tmp_path / "sweep"),
                                    str(tmp_path / "report"))["markdown"]).read()
  ndcg = report.split("## MIRACL dev nDCG@10")[1].split("## MIRACL dev Recall@100")[0]
  header = "| model | batches | " + " | ".join(sorted(miracl.STUDY_LANGUAGES)) + " | mean |"
  assert header in ndcg and "one more than the paper's 15, which it does not name" in ndcg
  rows = {line.split(" | ")[1]: line for line in ndcg.splitlines()
          if line.startswith("| mT5 tiny |")}
  assert rows["X-Y"].startswith("| mT5 tiny | X-Y | 40.0 ± 0.0 | 41.0 ± 0.0 |")  # ar, bn.
  assert rows["X-Y"].endswith("| 55.0 ± 0.0 | 47.5 ± 0.0 |")  # zh, then the mean.
  assert rows["hybrid"].endswith("| 60.0 ± 0.0 | 52.5 ± 0.0 |")
  recall = report.split("## MIRACL dev Recall@100")[1]
  assert "| mT5 tiny | hybrid |" + " 80.0 ± 0.0 |" * 17 in recall


@pytest.mark.slow
def test_gather_names_the_runs_whose_miracl_stage_is_incomplete(quick_study, tmp_path):
  _sweep_with_miracl(quick_study, tmp_path, ("sw", "te"))
  (tmp_path / "mt5_tiny_cross_seed0" / "miracl" / "te" / "results.json").unlink()
  with pytest.raises(FileNotFoundError, match=r"mt5_tiny_cross_seed0/miracl/te/results\.json: "
                     "MIRACL te has no results"):
    study_gather.gather(str(tmp_path), str(tmp_path / "report"))
  shutil.rmtree(tmp_path / "mt5_tiny_cross_seed0" / "miracl" / "te")
  with pytest.raises(FileNotFoundError, match="MIRACL stage is incomplete, missing mT5 tiny X-Y "
                     "seed 0: te"):
    study_gather.gather(str(tmp_path), str(tmp_path / "report"))


def test_gather_names_missing_results(tmp_path):
  (tmp_path / "mt5_base_hybrid_seed0").mkdir()
  with pytest.raises(FileNotFoundError, match="mt5_base_hybrid_seed0 has no results"):
    study_gather.gather(str(tmp_path), str(tmp_path / "report"))


def _random_encoding(dataset, rng):
  def unit(n):
    v = rng.normal(size=(n, 16))
    return v / np.linalg.norm(v, axis=1, keepdims=True)
  return dict(questions={l: [(q.question_id, q.relevant) for q in items]
                         for l, items in dataset.questions.items()},
              question_emb={l: unit(len(items)) for l, items in dataset.questions.items()},
              candidates={l: [c.candidate_id for c in items]
                          for l, items in dataset.candidates.items()},
              candidate_emb={l: unit(len(items)) for l, items in dataset.candidates.items()})


@pytest.mark.slow
def test_matched_pools_make_a_random_encoders_in_and_out_of_domain_scores_equal(data_dir):
  import tasks
  languages = ["de", "en", "es"]
  split = tasks.evaluation._split_titles(str(data_dir), "xquad_r", "test")
  inside = retrieval_data.load_lareqa(data_dir, "xquad_r", languages, split)
  outside = retrieval_data.load_lareqa(data_dir, "mlqa_r", languages)
  outside = study_run.limit_questions(outside, 400)
  rng = np.random.default_rng(0)
  encoded = {"in": _random_encoding(inside, rng), "out": _random_encoding(outside, rng)}
  full = {k: study_eval.full_pool_chance(v) for k, v in encoded.items()}
  assert (full["in"]["monolingual"] - full["out"]["monolingual"]) / full["in"]["monolingual"] > 0.8
  size = study_eval.matched_pool_size(encoded)
  scores = {k: study_eval.score_dataset(v, size, draws=2) for k, v in encoded.items()}
  for setting in study_eval.SETTINGS:
    values = {k: [v for group in s["per_query_above_chance"][setting].values()
                  for v in group.values()] for k, s in scores.items()}
    noise = math.sqrt(sum(np.var(v) / len(v) for v in values.values()))
    difference = np.mean(values["in"]) - np.mean(values["out"])
    assert abs(difference) < 3 * noise, (setting, difference, noise)


def test_expected_random_ndcg_matches_a_simulation():
  rng = np.random.default_rng(0)
  discounts = 1.0 / np.log2(np.arange(2, 12))
  for pool_size, relevant in ((1, 1), (5, 2), (40, 1), (200, 12)):
    ranks = np.argsort(rng.random((20000, pool_size)), axis=1)[:, :relevant] + 1  # 1-based.
    gains = np.where(ranks <= 10, 1.0 / np.log2(ranks + 1), 0.0).sum(axis=1)
    simulated = np.mean(gains / discounts[:min(relevant, 10)].sum())
    exact = study_stats.expected_random_ndcg(pool_size, relevant)
    assert exact == pytest.approx(simulated, rel=0.03, abs=1e-4)


def test_expected_random_average_precision_matches_a_simulation():
  rng = np.random.default_rng(0)
  for pool_size, relevant in ((1, 1), (10, 1), (50, 3), (200, 7)):
    ranks = np.sort(np.argsort(rng.random((20000, pool_size)), axis=1)[:, :relevant] + 1, axis=1)
    simulated = np.mean(np.sum(np.arange(1, relevant + 1) / ranks, axis=1) / relevant)
    exact = study_stats.expected_random_average_precision(pool_size, relevant)
    assert exact == pytest.approx(simulated, rel=0.02)


@pytest.mark.slow
def test_study_cli_starts_with_its_flags_and_mains(tmp_path):
  result = subprocess.run([sys.executable, "-m", "hybridir.study", "--helpfull"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
  assert "Traceback" not in result.stderr, result.stderr[-2000:]  # absl's help exits 1.
  assert "--data_dir" in result.stdout and "--gin_file" in result.stdout
  assert "--models" in result.stdout


@pytest.mark.slow
def test_a_study_run_describes_itself_and_keeps_the_chosen_checkpoints_export(quick_study,
                                                                             tmp_path):
  output_dir, _ = quick_study
  run = output_dir / "runs" / "t5_hybrid_seed0"
  assert {"checkpoints", "config.gin", "encoder.json", "vocabulary", "export"} <= set(
      os.listdir(run))
  # One run description (the trainer's): config.gin, encoder.json and the checkpoints agree.
  identity = test_trainer.check_description_agrees_with_checkpoint(
      run, checkpoints.training_steps(str(run))[-1])
  config = model_card.config_macros(str(run / run_dir.CONFIG))
  assert (config["ALPHA"], config["FAMILY"]) == (0.5, "t5")
  assert (config["SEED"], config["TASK_FEATURE_LENGTHS"], config["MIXTURE_OR_TASK_NAME"],
          config["BATCH_SIZE"]) == (identity["seed"], identity["task_feature_lengths"],
                                    identity["input"]["input"], identity["input"]["batch_size"])
  with open(run / study_run.RESULTS_FILE) as f:
    chosen = json.load(f)["train"]["chosen_step"]
  assert artifacts.read_manifest(str(run / "export"))["metadata"]["step"] == chosen
  texts = ["Why is the sky blue?", "Warum ist der Himmel blau?"]
  # The run folder loads the chosen checkpoint (run_dir.chosen_step), not the latest.
  assert run_dir.chosen_step(str(run)) == chosen
  from_run, kept = (hybridir.load_encoder(str(path)) for path in (run, run / "export"))
  np.testing.assert_allclose(from_run.encode(texts), kept.encode(texts), atol=1e-6)
  result = subprocess.run([sys.executable, "-m", "hybridir.hf_export", "--encoder",
                           str(run), "--output", str(tmp_path / "hf")],
                          cwd=REPO_ROOT, env=test_quiet.user_env(), capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0 and test_quiet.library_lines(result.stderr) == [], result.stderr
  card = (tmp_path / "hf" / "README.md").read_text()
  assert f"step {chosen}" in card and "## Evaluation" in card
  assert "| in_domain |" in card and "| mlqa_r |" in card  # XQuAD-R is the training corpus.


@pytest.mark.slow
def test_the_study_command_prints_a_line_per_run_the_answer_and_a_closing_line(quick_study,
                                                                              data_dir):
  output_dir, _ = quick_study  # Its runs are done: the command keeps them and reports again.
  result = subprocess.run(
      [sys.executable, "-m", "hybridir.study", f"--data_dir={data_dir}",
       f"--output_dir={output_dir}", "--models=mT5", "--strategies=X-Y,hybrid", "--seeds=0",
       *(f"--gin_bindings={binding}" for binding in TINY)],
      cwd=REPO_ROOT, env=test_quiet.user_env(), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert test_quiet.library_lines(result.stderr) == [], lines
  runs = [line.split("] ", 1)[1] for line in lines if "demo.py" in line and "] run " in line]
  assert [line.split(":")[0] for line in runs] == [
      "run 1/2 t5_cross_seed0 (mT5, X-Y, seed 0)", "run 2/2 t5_hybrid_seed0 (mT5, hybrid, seed 0)"]
  assert all(line.endswith("; done earlier, kept") and "multilingual mAP in_domain" in line
             for line in runs)
  assert lines[-2].startswith("The answer, computed.")
  assert "(2 of the 2 runs kept from an earlier invocation)" in (output_dir / "study.md").read_text()
  assert lines[-1] == (f"wrote the report {output_dir}/study.md (plots and per-run results beside "
                       f"it); next: cat {output_dir}/study.md")


def test_the_sweep_comes_from_flags_and_bindings_apply_to_every_run():
  from absl import app
  flags = lambda **kw: types.SimpleNamespace(**{**dict(
      models=None, strategies=None, seeds=None, gin_file=[], gin_bindings=[]), **kw})
  assert demo.config_from_flags(flags()) == demo.StudyConfig()
  config = demo.config_from_flags(flags(models=["XLM-R"], strategies=["hybrid"], seeds=["4"],
                                         gin_bindings=["TRAIN_STEPS = 3"]))
  assert config == demo.StudyConfig(("XLM-R",), ("hybrid",), (4,), ("TRAIN_STEPS = 3",))
  with pytest.raises(app.UsageError, match="unknown 'mt5'"):
    demo.config_from_flags(flags(models=["mt5"]))
  with pytest.raises(app.UsageError, match="--seeds must be integers"):
    demo.config_from_flags(flags(seeds=["one"]))
  with pytest.raises(app.UsageError, match="--gin_bindings"):
    demo.config_from_flags(flags(gin_file=["x.gin"]))


@pytest.mark.slow
def test_a_tiny_labse_demo_run_trains_a_wordpiece_bert_and_evaluates_it(tmp_path, data_dir):
  config = demo.StudyConfig(models=("LaBSE",), strategies=("hybrid",), seeds=(0,),
                             bindings=TINY)
  paths = demo.run_study(str(data_dir), str(tmp_path), config)
  result = study_results.read(str(tmp_path / "runs" / "bert_hybrid_seed0" /
                                  study_run.RESULTS_FILE))
  assert result.settings.family == "bert" and result.settings.alpha == 0.5
  assert (tmp_path / "vocab" / "bert.txt").exists()  # WordPiece, trained on the train articles.
  assert len(result.train.history) == 6
  assert os.path.exists(paths["markdown"])
  assert study_gather.model_name("bert") == "LaBSE"
