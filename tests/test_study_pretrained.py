"""The pretrained study: a real pretrained encoder (all-MiniLM-L6-v2) fine-tuned by the study's
run, its zero-shot row, the objective check against it, and evaluation pools sampled to a budget."""
import dataclasses
import json
import os

import pytest

from hybridir.data import retrieval_data
from hybridir.study import demo
from hybridir.study import study_results
from hybridir.study import study_run
from hybridir.study import study_tables

# One checkpoint, at step 2: warmup's first step has learning rate 0, so a step-1 checkpoint would
# be the pretrained model itself, and the English validation loss may well choose it.
TINY = ("TRAIN_STEPS = 2", "WARMUP_STEPS = 1", "BATCH_SIZE = 8", "EVAL_PERIOD = 2",
        "VALIDATION_STEPS = 1", "LANGUAGES = ['en', 'de']",
        "TASK_FEATURE_LENGTHS = {'query': 16, 'passage': 32}", "MATCHED_DRAWS = 2",
        "MAX_QUESTIONS_PER_LANGUAGE = 12", "MAX_CANDIDATES_PER_LANGUAGE = 40",
        "OBJECTIVE_STEPS = 1")


@pytest.fixture(scope="module")
def pretrained_study(tmp_path_factory, data_dir, minilm_dir):
  """A tiny sweep from the real checkpoint: its zero-shot row and one hybrid seed."""
  output_dir = tmp_path_factory.mktemp("pretrained_study")
  config = demo.StudyConfig(models=("MiniLM",), strategies=("hybrid",), seeds=(0,),
                             bindings=TINY)
  previous = os.environ.get("HYBRIDIR_MODEL_CACHE")
  os.environ["HYBRIDIR_MODEL_CACHE"] = os.path.dirname(minilm_dir)  # The unpacked copy.
  try:
    paths = demo.run_study(str(data_dir), str(output_dir), config)
  finally:
    if previous is None:
      os.environ.pop("HYBRIDIR_MODEL_CACHE")
    else:
      os.environ["HYBRIDIR_MODEL_CACHE"] = previous
  results = {("MiniLM", strategy, 0): study_results.read(str(
      output_dir / "runs" / f"minilm_{slug}_seed0" / study_run.RESULTS_FILE))
      for strategy, slug in (("zero-shot", "zeroshot"), ("hybrid", "hybrid"))}
  return paths, results


def test_a_pretrained_model_sweeps_its_zero_shot_row_first():
  config = demo.StudyConfig(models=("MiniLM", "mT5"), strategies=("X-Y", "hybrid"), seeds=(0, 1))
  assert demo.cells(config)[:3] == [("MiniLM", "zero-shot", 0), ("MiniLM", "X-Y", 0),
                                     ("MiniLM", "X-Y", 1)]
  assert ("mT5", "zero-shot", 0) not in demo.cells(config)  # Trained from scratch: none.
  assert demo.run_name("MiniLM", "zero-shot", 0) == "minilm_zeroshot_seed0"


@pytest.mark.slow
def test_zero_shot_row_is_the_untrained_checkpoint_and_fine_tuning_starts_from_it(
    pretrained_study, minilm_dir):
  _, results = pretrained_study
  zero_shot, hybrid = results["MiniLM", "zero-shot", 0], results["MiniLM", "hybrid", 0]
  assert zero_shot.train.zero_shot and not zero_shot.train.history
  assert zero_shot.settings.init_checkpoint == hybrid.settings.init_checkpoint
  assert os.path.samefile(hybrid.settings.init_checkpoint, minilm_dir)
  # The objective check: both losses on the same held-out batch of the arm's own kind.
  objective = hybrid.train.objective
  assert objective.steps == 1 and objective.split == "test"
  assert objective.pretrained != objective.fine_tuned
  # Both runs were evaluated on the same sampled pools.
  assert list(zero_shot.evaluation.comparisons) == ["mlqa_r"]
  for side in ("in_domain", "out_of_domain"):
    cells = [getattr(r.evaluation.comparisons["mlqa_r"], side).per_query_above_chance
             for r in (zero_shot, hybrid)]
    assert {s: set(g) for s, g in cells[0].items()} == {s: set(g) for s, g in cells[1].items()}
  assert zero_shot.evaluation.matched_pool_size == hybrid.evaluation.matched_pool_size


@pytest.mark.slow
def test_pretrained_report_shows_the_zero_shot_row_and_the_objective_check(pretrained_study):
  paths, results = pretrained_study
  report = open(paths["markdown"]).read()
  assert report.startswith("# Hybrid batches against X-X-mono and X-Y: out-of-domain "
                           "degradation, MiniLM\n")
  # In every score table: full pools (in-domain, MLQA-R), size-matched pools, degradation on
  # them and on distractor-matched pools, bias.
  assert report.count("| MiniLM | zero-shot |") == 6
  assert "## Degradation on distractor-matched pools" in report
  comparison = results["MiniLM", "hybrid", 0].evaluation.comparisons["mlqa_r"]
  matched = [getattr(comparison.distractor_matched, side)
             for side in ("in_domain", "out_of_domain")]
  assert all(m.per_query_above_chance["monolingual"] for m in matched)
  # The same k and pool size on both sides (k is 0 here: 40 sampled candidates per language
  # leave few sentences of a relevant one's paragraph).
  assert len({(m.distractors, m.pool_size) for m in matched}) == 1
  assert "all-MiniLM-L6-v2" in report and "to fit the budget" in report
  assert "## Fine-tuning against the pretrained model" in report
  with open(paths["json"]) as f:
    written = json.load(f)
  assert set(written["training"]) == {"MiniLM/hybrid/0"}  # The zero-shot row trains nothing.
  assert set(written["objective"]) == {"MiniLM/hybrid/0"}
  # An arm whose fine-tuned loss is not below the pretrained one in every seed is named.
  hybrid = results["MiniLM", "hybrid", 0]
  objective = hybrid.train.objective
  worse_objective = dataclasses.replace(objective, fine_tuned=objective.pretrained + 0.1)
  worse = {**results, ("MiniLM", "hybrid", 0): dataclasses.replace(
      hybrid, train=dataclasses.replace(hybrid.train, objective=worse_objective))}
  rows = study_tables.objective_rows(worse)
  assert rows[0][-1] == "**no**"
  assert "MiniLM hybrid did not" in study_tables.objective_sentence(rows)


def test_sampled_pools_keep_every_relevant_candidate_and_are_the_same_draw_each_time(data_dir):
  dataset = retrieval_data.load_lareqa(retrieval_data.lareqa_folder(data_dir, "mlqa_r"),
                                       "mlqa_r", languages=["en", "de"])
  questions = study_run.limit_questions(dataset, 25)
  sampled = study_run.limit_candidates(questions, 100)
  relevant = {c for items in questions.questions.values() for q in items for c in q.relevant}
  for language, items in sampled.candidates.items():
    ids = [c.candidate_id for c in items]
    assert len(ids) == max(100, len(relevant & {c.candidate_id for c in
                                                dataset.candidates[language]}))
    assert relevant & {c.candidate_id for c in dataset.candidates[language]} <= set(ids)
    order = [c.candidate_id for c in dataset.candidates[language]]
    assert ids == [c for c in order if c in set(ids)]  # The dataset's order is kept.
  again = study_run.limit_candidates(questions, 100)
  assert again.candidates == sampled.candidates
  assert study_run.limit_candidates(questions, None) is questions
