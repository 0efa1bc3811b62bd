"""Specification of hybridir.evaluation.metrics: equal to pytrec_eval, and rank distance by hand."""
import math

import numpy as np
import pytest
import pytrec_eval

from hybridir.evaluation import metrics

MEASURES = ("map", "recip_rank", "recall_1", "recall_5", "recall_10", "recall_100", "ndcg_cut_1",
            "ndcg_cut_5", "ndcg_cut_10", "ndcg_cut_100", "P_1", "P_5", "P_10", "success_1",
            "success_10")


def _random_run_and_qrels(seed, num_queries=40, num_docs=60):
  """Scores drawn from few values (many ties), graded relevance -1..3, some unjudged queries."""
  rng = np.random.default_rng(seed)
  run, qrels = {}, {}
  for q in range(num_queries):
    qid = f"q{q}"
    retrieved = rng.choice(num_docs, size=rng.integers(1, num_docs), replace=False)
    run[qid] = {f"d{d}": float(rng.integers(0, 6)) / 2 for d in retrieved}
    if q % 10 == 9:
      continue  # Unjudged: trec_eval skips it.
    judged = rng.choice(num_docs, size=rng.integers(1, 20), replace=False)
    qrels[qid] = {f"d{d}": int(rng.choice([-1, 0, 0, 1, 2, 3])) for d in judged}
  qrels["q_only_in_qrels"] = {"d1": 1}
  return run, qrels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluate_run_equals_pytrec_eval_with_ties_and_graded_relevance(seed):
  run, qrels = _random_run_and_qrels(seed)
  expected = pytrec_eval.RelevanceEvaluator(qrels, set(MEASURES)).evaluate(run)
  found = metrics.evaluate_run(run, qrels, MEASURES)
  assert found.keys() == expected.keys()
  for qid in expected:
    for name in MEASURES:
      assert found[qid][name] == pytest.approx(expected[qid][name], abs=1e-6), (qid, name)


def test_recip_rank_cut_equals_pytrec_eval_recip_rank_on_the_top_k():
  run, qrels = _random_run_and_qrels(3)
  top10 = {qid: {d: scores[d] for d in metrics.trec_order(scores)[:10]}
           for qid, scores in run.items()}
  expected = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
  found = metrics.evaluate_run(run, qrels, ["recip_rank_cut_10"])
  for qid in expected:
    assert found[qid]["recip_rank_cut_10"] == pytest.approx(expected[qid]["recip_rank"], abs=1e-6)


def test_aggregate_is_the_mean_over_queries():
  run, qrels = _random_run_and_qrels(4)
  per_query = metrics.evaluate_run(run, qrels, ["map", "ndcg_cut_10"])
  mean = metrics.aggregate(per_query)
  assert mean["map"] == pytest.approx(np.mean([v["map"] for v in per_query.values()]))
  assert metrics.aggregate({}) == {}


def test_ties_are_broken_by_docid_descending():
  assert metrics.trec_order({"a": 1.0, "c": 1.0, "b": 1.0, "z": 0.5}) == ["c", "b", "a", "z"]
  assert metrics.evaluate_run({"q": {"a": 1.0, "b": 1.0}}, {"q": {"a": 1}}, ["recip_rank"]) == {
      "q": {"recip_rank": 0.5}}


def measures_of(ranking, relevance, measures):
  return metrics.measures_from_ranks(*metrics.relevant_ranks(ranking, relevance), measures)


def test_average_precision_counts_unretrieved_relevant_as_zero():
  # Relevant at ranks 1 and 3, a third never retrieved: (1/1 + 2/3) / 3.
  found = measures_of(["r1", "x", "r2", "y"], {"r1": 1, "r2": 1, "r3": 1, "x": 0}, ["map"])
  assert found["map"] == pytest.approx((1 + 2 / 3) / 3)


def test_judged_query_without_relevant_documents_scores_zero():
  assert metrics.evaluate_run({"q": {"a": 1.0}}, {"q": {"a": 0}}, ["map", "ndcg_cut_10"]) == {
      "q": {"map": 0.0, "ndcg_cut_10": 0.0}}


def test_measures_from_ranks_agree_with_hand_values():
  found = measures_of(["a", "b", "c", "d"], {"b": 2, "d": 1},
                      ["recall_2", "P_4", "recip_rank", "recip_rank_cut_1", "ndcg_cut_4"])
  assert (found["recall_2"], found["P_4"]) == (0.5, 0.5)
  assert (found["recip_rank"], found["recip_rank_cut_1"]) == (0.5, 0.0)
  ideal = 2 + 1 / math.log2(3)
  assert found["ndcg_cut_4"] == pytest.approx((2 / math.log2(3) + 1 / math.log2(5)) / ideal)


def test_unknown_measure_is_rejected_with_its_name():
  with pytest.raises(ValueError, match="ndcg_10"):
    metrics.evaluate_run({}, {}, ["ndcg_10"])


LANGUAGE = {"en1": "en", "de1": "de", "fr1": "fr", "es1": "es", "en_x": "en", "en_y": "en",
            "de_x": "de"}


def distances(ranks_by_query, pool_size=10):
  """`{qid: maximum rank distance}` of `rank_distances`, without the random values."""
  return {qid: distance
          for qid, (distance, _) in metrics.rank_distances(ranks_by_query, LANGUAGE,
                                                           pool_size).items()}


def test_rank_distance_of_adjacent_relevant_candidates_is_their_count_minus_one():
  assert distances({"q": {"en1": 1, "de1": 2, "fr1": 3}}) == {"q": 2}


def test_rank_distance_is_lowest_minus_highest_relevant_rank():
  # English first (rank 1), then German (4), then French (6): 6 - 1.
  assert distances({"q": {"en1": 1, "de1": 4, "fr1": 6}}) == {"q": 5}


def test_rank_distance_is_the_maximum_not_the_mean_over_pairs():
  # a: relevant at 1, 2, 3, 10 -> max - min 9 (mean over pairs 28/6 = 4.7);
  # b: relevant at 1, 2, 8, 9  -> max - min 8 (mean over pairs 30/6 = 5.0): b is less biased.
  assert distances({"a": {"en1": 1, "de1": 2, "fr1": 3, "es1": 10},
                    "b": {"en1": 1, "de1": 2, "fr1": 8, "es1": 9}}) == {"a": 9, "b": 8}


def test_rank_distance_leaves_out_queries_with_one_language():
  # q1: 3 - 1 = 2; q2: 2 - 1 = 1; q3's relevant candidates are all English: left out.
  assert distances({"q1": {"en1": 1, "en_x": 2, "de1": 3}, "q2": {"de1": 1, "en1": 2},
                    "q3": {"en1": 1, "en_x": 2}}) == {"q1": 2, "q2": 1}


def test_random_ranking_rank_distance_matches_a_seeded_simulation():
  rng = np.random.default_rng(0)
  pool_size, num_relevant, draws = 60, 11, 20_000
  ranks = np.array([rng.choice(pool_size, num_relevant, replace=False) for _ in range(draws)])
  simulated = ranks.max(axis=1) - ranks.min(axis=1)
  expected = metrics.expected_random_rank_distance(pool_size, num_relevant)
  assert expected == pytest.approx(10 * 61 / 12)
  assert abs(simulated.mean() - expected) < 4 * simulated.std() / np.sqrt(draws)


def test_rank_distances_give_each_query_its_random_value():
  distances = metrics.rank_distances({"q": {"en1": 3, "de1": 7}, "r": {"en1": 1, "en_x": 2}},
                                     LANGUAGE, {"q": 10, "r": 10})
  assert distances == {"q": (4.0, pytest.approx(11 / 3))}


def test_rank_distances_need_every_relevant_candidates_language():
  with pytest.raises(ValueError, match="relevant candidate 'it1' has no language"):
    metrics.rank_distances({"q": {"en1": 1, "it1": 2}}, LANGUAGE, 10)
