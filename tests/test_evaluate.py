"""Specification of hybridir.evaluation.evaluate: the three settings, TREC files and the
CLI, degradation."""
import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import pytrec_eval

from hybridir.evaluation import evaluate
from hybridir.evaluation import trec

MEASURES = ("map", "recip_rank", "recall_2", "ndcg_cut_3", "P_1")


def _two_language_case():
  """Axes 0-1: meaning; axes 2-3: language (en, de). Each language's own candidates get +1."""
  questions = {"en": [("q1", ("e1", "d1")), ("q2", ("e2", "d2"))],
               "de": [("q1", ("e1", "d1")), ("q2", ("e2", "d2"))]}
  question_emb = {"en": np.array([[1, 0, 1, 0], [0, 1, 1, 0]], np.float32),
                  "de": np.array([[1, 0, 0, 1], [0, 1, 0, 1]], np.float32)}
  candidates = {"en": ["e1", "e2", "e3"], "de": ["d1", "d2", "d3"]}
  candidate_emb = {"en": np.array([[1, 0, 1, 0], [0, 1, 1, 0], [0, 0, 1, 0]], np.float32),
                   "de": np.array([[1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 0, 1]], np.float32)}
  return questions, question_emb, candidates, candidate_emb


def test_settings_on_a_language_biased_toy_case_give_the_hand_computed_values():
  results = evaluate.evaluate_settings(*_two_language_case(), measures=["map", "recip_rank"])
  assert results["monolingual"]["per_language"]["en"] == {"num_q": 2, "map": 1.0, "recip_rank": 1.0}
  assert results["cross_lingual"]["per_pair"]["en"]["de"]["map"] == 1.0
  assert set(results["cross_lingual"]["per_pair"]["en"]) == {"de"}  # No X -> X pair.
  # English q1 over the mixed pool: e1 = 2; e2, e3, d1 = 1 (ties: docid descending, e3 > e2 > d1);
  # d1 at rank 4 -> AP = (1/1 + 2/4) / 2 = 0.75, rank distance |1 - 4| = 3. Same for q2 (d2 at 4).
  english = results["multilingual"]["per_language"]["en"]
  assert english["map"] == pytest.approx(0.75)
  assert english["rank_distance"] == pytest.approx(3.0)
  # German q1: d1 = 2; d2, d3, e1 = 1, but now the tie order 'e1' > 'd3' > 'd2' puts e1 at rank 2.
  german = results["multilingual"]["per_language"]["de"]
  assert (german["map"], german["rank_distance"]) == (1.0, 1.0)
  # A random ranking of 2 relevant among 6: E[max - min] = (2 - 1)(6 + 1) / (2 + 1) = 7/3.
  assert results["multilingual"]["average"] == pytest.approx({
      "map": 0.875, "recip_rank": 1.0, "rank_distance": 2.0, "rank_distance_random": 7 / 3})


def test_cross_lingual_skips_queries_without_a_relevant_candidate_in_the_pool():
  questions, question_emb, candidates, candidate_emb = _two_language_case()
  questions["en"] = [("q1", ("e1", "d1")), ("q2", ("e2",))]  # q2 has no German answer.
  results = evaluate.evaluate_settings(questions, question_emb, candidates, candidate_emb, ["map"])
  assert results["cross_lingual"]["per_pair"]["en"]["de"]["num_q"] == 1
  assert results["monolingual"]["per_language"]["en"]["num_q"] == 2


def _pytrec_eval_mean(question_emb, questions, pool_ids, pool_emb):
  """Reference: full score matrix -> run dict -> pytrec_eval, relevance restricted to the pool."""
  scores = question_emb @ pool_emb.T
  run = {qid: dict(zip(pool_ids, map(float, row))) for (qid, _), row in zip(questions, scores)}
  qrels = {qid: {d: 1 for d in relevant if d in pool_ids} for qid, relevant in questions}
  qrels = {qid: judged for qid, judged in qrels.items() if judged}
  per_query = pytrec_eval.RelevanceEvaluator(qrels, set(MEASURES)).evaluate(run)
  return {name: np.mean([v[name] for v in per_query.values()]) for name in MEASURES}


def test_every_setting_equals_pytrec_eval_on_the_full_score_matrix():
  rng = np.random.default_rng(0)
  languages = ["ar", "en", "zh"]
  candidates = {lang: [f"{lang}-{i}" for i in range(30)] for lang in languages}
  candidate_emb = {lang: rng.integers(-2, 3, (30, 6)).astype(np.float32) for lang in languages}
  relevant = [tuple(f"{other}-{i}" for other in languages if (i + len(other)) % 4)
              for i in range(12)]
  questions = {lang: [(f"q{i}", relevant[i]) for i in range(12)] for lang in languages}
  question_emb = {lang: rng.integers(-2, 3, (12, 6)).astype(np.float32) for lang in languages}
  results = evaluate.evaluate_settings(questions, question_emb, candidates, candidate_emb, MEASURES)
  pool_ids = [d for lang in languages for d in candidates[lang]]
  pool_emb = np.concatenate([candidate_emb[lang] for lang in languages])
  for x in languages:
    cases = [(results["monolingual"]["per_language"][x], candidates[x], candidate_emb[x]),
             (results["multilingual"]["per_language"][x], pool_ids, pool_emb)]
    cases += [(results["cross_lingual"]["per_pair"][x][y], candidates[y], candidate_emb[y])
              for y in languages if y != x]
    for found, ids, emb in cases:
      expected = _pytrec_eval_mean(question_emb[x], questions[x], ids, emb)
      for name in MEASURES:
        assert found[name] == pytest.approx(expected[name], abs=1e-6), (x, name)


def test_unknown_relevant_candidate_is_named():
  questions, question_emb, candidates, candidate_emb = _two_language_case()
  questions["de"] = [("q1", ("x9",)), ("q2", ("d2",))]
  with pytest.raises(ValueError, match=r"question 'q1' \(de\): relevant ids \['x9'\]"):
    evaluate.evaluate_settings(questions, question_emb, candidates, candidate_emb)


@pytest.fixture
def trec_files(tmp_path):
  rng = np.random.default_rng(5)
  run = {f"q{q}": {f"d{d}": float(rng.integers(0, 4)) for d in range(15)} for q in range(6)}
  qrels = {f"q{q}": {f"d{d}": int(rng.integers(0, 3)) for d in range(0, 20, 3)} for q in range(5)}
  trec.write_run(str(tmp_path / "run.trec"), run, tag="toy")
  trec.write_qrels(str(tmp_path / "qrels.trec"), qrels)
  return tmp_path, run, qrels


def test_trec_files_round_trip(trec_files):
  tmp_path, run, qrels = trec_files
  assert trec.read_run(str(tmp_path / "run.trec")) == run
  assert trec.read_qrels(str(tmp_path / "qrels.trec")) == qrels
  assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # No temporaries left.


def test_cli_prints_pytrec_eval_numbers(trec_files, capsys):
  tmp_path, run, qrels = trec_files
  argv = ["--run", str(tmp_path / "run.trec"), "--qrels", str(tmp_path / "qrels.trec"),
          "--measures", ",".join(MEASURES), "--per_query"]
  assert evaluate.main(argv) == 0
  output = json.loads(capsys.readouterr().out)
  expected = pytrec_eval.RelevanceEvaluator(qrels, set(MEASURES)).evaluate(run)
  assert output["all"]["num_q"] == len(expected) == 5
  for name in MEASURES:
    assert output["all"][name] == pytest.approx(np.mean([v[name] for v in expected.values()]))
    for qid in expected:
      assert output["per_query"][qid][name] == pytest.approx(expected[qid][name], abs=1e-6)


def test_cli_runs_as_a_module(trec_files):
  tmp_path, _, _ = trec_files
  completed = subprocess.run(
      [sys.executable, "-m", "hybridir.evaluate", "--run", str(tmp_path / "run.trec"), "--qrels",
       str(tmp_path / "qrels.trec"), "--measures", "map"],
      capture_output=True, text=True, check=True)
  assert set(json.loads(completed.stdout)["all"]) == {"num_q", "map"}


def write_languages(path, languages):
  path.write_text("".join(f"{docid}\t{language}\n" for docid, language in languages.items()),
                  encoding="utf-8")
  return str(path)


def test_cli_rank_distance_is_max_minus_min_averaged_per_query_language(tmp_path, capsys):
  # Pool e1 e2 d1 d2 (en, de); en-q1 ranks e1 d2 e2 d1 (relevant e1, d1: 4 - 1 = 3), en-q2 ranks
  # e2 d2 e1 d1 (relevant e2, d2: 1), de-q1 ranks d1 e1 ... (1): en 2.0, de 1.0, macro 1.5.
  orders = {"en-q1": ["e1", "d2", "e2", "d1"], "en-q2": ["e2", "d2", "e1", "d1"],
            "de-q1": ["d1", "e1", "d2", "e2"]}
  run = {qid: {docid: 4.0 - rank for rank, docid in enumerate(order)}
         for qid, order in orders.items()}
  qrels = {"en-q1": {"e1": 1, "d1": 1}, "en-q2": {"e2": 1, "d2": 1, "e1": 0},
           "de-q1": {"e1": 1, "d1": 1}}
  trec.write_run(str(tmp_path / "run"), run, tag="toy")
  trec.write_qrels(str(tmp_path / "qrels"), qrels)
  languages = {"e1": "en", "e2": "en", "d1": "de", "d2": "de", "en-q1": "en", "en-q2": "en",
               "de-q1": "de"}
  argv = ["--run", str(tmp_path / "run"), "--qrels", str(tmp_path / "qrels"), "--measures", "map",
          "--languages", write_languages(tmp_path / "langs.tsv", languages)]
  assert evaluate.main(argv) == 0
  found = json.loads(capsys.readouterr().out)["rank_distance"]
  assert found["per_query_language"] == {"de": {"mean": 1.0, "random": 5 / 3, "num_q": 1},
                                         "en": {"mean": 2.0, "random": 5 / 3, "num_q": 2}}
  assert (found["mean"], found["random"], found["num_q"]) == (1.5, pytest.approx(5 / 3), 3)


def test_cli_rank_distance_of_a_random_run_is_near_its_random_value(tmp_path, capsys):
  rng = np.random.default_rng(1)
  languages = ["ar", "de", "en", "zh"]
  pool = [f"{lang}-{i}" for lang in languages for i in range(25)]
  run = {f"q{q}": dict(zip(pool, rng.random(len(pool)).tolist())) for q in range(400)}
  qrels = {f"q{q}": {f"{lang}-{q % 25}": 1 for lang in languages} for q in range(400)}
  trec.write_run(str(tmp_path / "run"), run, tag="random")
  trec.write_qrels(str(tmp_path / "qrels"), qrels)
  argv = ["--run", str(tmp_path / "run"), "--qrels", str(tmp_path / "qrels"), "--measures", "map",
          "--languages", write_languages(tmp_path / "langs.tsv", {d: d[:2] for d in pool})]
  assert evaluate.main(argv) == 0
  found = json.loads(capsys.readouterr().out)["rank_distance"]
  assert found["random"] == pytest.approx(3 * 101 / 5)  # (k - 1)(N + 1) / (k + 1), k 4, N 100.
  assert list(found["per_query_language"]) == ["all"] and found["num_q"] == 400
  assert found["mean"] == pytest.approx(found["random"], rel=0.05)


def test_rank_distance_needs_every_relevant_candidate_and_its_language(tmp_path):
  run = {"q": {"e1": 2.0, "d1": 1.0}}
  with pytest.raises(ValueError, match=r"query 'q': relevant candidates \['f1'\] are not in its"):
    evaluate.rank_distance_of_run(run, {"q": {"e1": 1, "f1": 1}}, {"e1": "en", "f1": "fr"})
  with pytest.raises(ValueError, match=r"query 'q': relevant candidate 'd1' has no language"):
    evaluate.rank_distance_of_run(run, {"q": {"e1": 1, "d1": 1}}, {"e1": "en"})


def test_languages_file_with_a_bad_line_names_the_file_and_line(tmp_path):
  (tmp_path / "langs.tsv").write_text("e1\ten\ne1 de\n", encoding="utf-8")
  with pytest.raises(ValueError, match=r"langs\.tsv:2: expected 2 fields 'id<TAB>language'"):
    trec.read_languages(str(tmp_path / "langs.tsv"))


def test_bad_run_line_names_the_file_and_line(trec_files, capsys):
  tmp_path, _, _ = trec_files
  lines = (tmp_path / "run.trec").read_text().splitlines()
  lines[2] = "q0 Q0 d3 3 0.5"  # The tag is missing.
  (tmp_path / "run.trec").write_text("\n".join(lines))
  argv = ["--run", str(tmp_path / "run.trec"), "--qrels", str(tmp_path / "qrels.trec")]
  assert evaluate.main(argv) == 1
  error = capsys.readouterr().err
  assert (f"{tmp_path / 'run.trec'}:3: expected 6 fields 'qid Q0 docid rank score tag', found 5"
          in error)


def test_bad_score_and_relevance_values_name_the_line(tmp_path):
  (tmp_path / "run").write_text("q1 Q0 d1 1 high tag\n")
  with pytest.raises(ValueError, match=r"run:1: score 'high' is not a valid float"):
    trec.read_run(str(tmp_path / "run"))
  (tmp_path / "qrels").write_text("q1 0 d1 1\n\nq1 0 d1 2\n")
  with pytest.raises(ValueError, match=r"qrels:3: document 'd1' judged twice .* line 1"):
    trec.read_qrels(str(tmp_path / "qrels"))


def test_a_document_repeated_in_a_run_or_judged_twice_names_both_lines(tmp_path):
  (tmp_path / "run").write_text("q1 Q0 d1 1 0.9 tag\nq1 Q0 d2 2 0.8 tag\nq1 Q0 d1 3 0.7 tag\n")
  with pytest.raises(ValueError, match=re.escape(
      f"{tmp_path / 'run'}:3: document 'd1' repeated for query 'q1' (first on line 1)")):
    trec.read_run(str(tmp_path / "run"))
  (tmp_path / "qrels").write_text("q1 0 d1 1\nq2 0 d1 1\nq2 0 d1 0\n")
  with pytest.raises(ValueError, match=re.escape(
      f"{tmp_path / 'qrels'}:3: document 'd1' judged twice for query 'q2' (first on line 2)")):
    trec.read_qrels(str(tmp_path / "qrels"))


def test_degradation_reports_absolute_and_relative_drops():
  result = evaluate.degradation({"map": 0.8, "recall_10": 0.0}, {"map": 0.6, "recall_10": 0.0})
  assert result["map"] == pytest.approx(
      {"in_domain": 0.8, "out_of_domain": 0.6, "absolute": 0.2, "relative": 0.25})
  assert math.isnan(result["recall_10"]["relative"])
  with pytest.raises(ValueError, match=r"only in-domain \['map'\]"):
    evaluate.degradation({"map": 0.8}, {})
