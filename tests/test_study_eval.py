"""Distractor-matched pools: the same number of same-paragraph distractors in and out of domain."""
import math

import numpy as np

from hybridir.data import retrieval_data
from hybridir.study import study_eval
from hybridir.study import study_run
from tests.test_study import _random_encoding

LANGUAGES = ["de", "en"]


def _unit(v):
  return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _simulated_encoding(num_paragraphs: int, rng, relevant_noise=0.8, distractor_noise=1.0,
                        question_noise=0.5, dim=64) -> dict:
  """An encoder as good on one dataset as on another: each paragraph (3-7 sentences, one question
  answered by its first) has a topic; the question, its answer and, a little further, the other
  sentences of its paragraph lie near that topic in every language; other paragraphs are random."""
  questions, question_emb = {x: [] for x in LANGUAGES}, {x: [] for x in LANGUAGES}
  candidates, candidate_emb = {y: [] for y in LANGUAGES}, {y: [] for y in LANGUAGES}
  for p in range(num_paragraphs):
    topic = _unit(rng.normal(size=dim))
    sentences = int(rng.integers(3, 8))
    for y in LANGUAGES:
      for s in range(sentences):
        noise = relevant_noise if s == 0 else distractor_noise
        candidates[y].append(f"{y}:{p}:{s}")
        candidate_emb[y].append(_unit(topic + noise * _unit(rng.normal(size=dim))))
      questions[y].append((f"q{p}", tuple(f"{x}:{p}:0" for x in LANGUAGES)))
      question_emb[y].append(_unit(topic + question_noise * _unit(rng.normal(size=dim))))
  return dict(questions=questions, candidates=candidates,
              question_emb={x: np.array(v) for x, v in question_emb.items()},
              candidate_emb={y: np.array(v) for y, v in candidate_emb.items()})


def _degradation(scores: dict, setting: str) -> tuple[float, float]:
  """In minus out mean AP above chance over queries, and its standard error."""
  values = {name: [v for group in s["per_query_above_chance"][setting].values()
                   for v in group.values()] for name, s in scores.items()}
  noise = math.sqrt(sum(np.var(v) / len(v) for v in values.values()))
  return float(np.mean(values["in"]) - np.mean(values["out"])), noise


def test_distractor_matched_pools_keep_relevant_rows_and_k_same_paragraph_ones_per_block():
  paragraphs = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 3, 4, 4, 4, 4, 5, 5, 6, 6])  # Two blocks of 9.
  blocks = [(0, 9), (9, 18)]
  draw = study_eval._distractor_matched(blocks, pool_size=5, distractors=2, paragraphs=paragraphs)(
      np.array([[0, 10], [6, 6]]), np.array([[True, True], [True, False]]), len(paragraphs))
  rng = np.random.default_rng(0)
  for _ in range(20):
    kept = draw(rng)
    assert kept.shape == (2, 10)
    for row, relevant in zip(kept, ([0, 10], [6])):
      assert set(relevant) <= set(row)
      for start, end in blocks:
        in_block = row[(row >= start) & (row < end)]
        assert len(set(in_block)) == 5
        same = {int(r) for r in in_block if r not in relevant
                and paragraphs[r] in paragraphs[[x for x in relevant if start <= x < end]]}
        holds_relevant = any(start <= x < end for x in relevant)
        assert len(same) == (2 if holds_relevant else 0)


def test_random_encoders_degradation_on_distractor_matched_pools_is_zero(data_dir):
  import tasks
  languages = ["de", "en", "es"]
  split = tasks.evaluation._split_titles(str(data_dir), "xquad_r", "test")
  inside = retrieval_data.load_lareqa(data_dir, "xquad_r", languages, split)
  outside = study_run.limit_questions(retrieval_data.load_lareqa(data_dir, "mlqa_r", languages),
                                      400)
  rng = np.random.default_rng(0)
  encoded = {"in": _random_encoding(inside, rng), "out": _random_encoding(outside, rng)}
  scores = study_eval.score_distractor_matched(encoded, draws=2)
  assert scores["in"]["distractors"] == scores["out"]["distractors"] >= 1
  assert scores["in"]["pool_size"] <= study_eval.matched_pool_size(encoded)
  for setting in study_eval.SETTINGS:
    difference, noise = _degradation(scores, setting)
    assert abs(difference) < 3 * noise, (setting, difference, noise)


def test_an_encoder_as_good_out_of_domain_shows_no_degradation_only_on_distractor_matched_pools():
  rng = np.random.default_rng(0)
  # The same encoder and paragraphs in both, but a pool ten times larger out of domain: size
  # matching keeps every same-paragraph distractor in domain and a tenth of them out of domain.
  encoded = {"in": _simulated_encoding(50, rng), "out": _simulated_encoding(500, rng)}
  size_matched = {name: study_eval.score_dataset(inputs, study_eval.matched_pool_size(encoded),
                                                 draws=2) for name, inputs in encoded.items()}
  distractor_matched = study_eval.score_distractor_matched(encoded, draws=2)
  assert distractor_matched["out"]["distractors"] == 3
  assert 0 < distractor_matched["out"]["left_out"]["monolingual"] < 500
  for setting in study_eval.SETTINGS:
    difference, noise = _degradation(size_matched, setting)
    assert difference < -3 * noise, (setting, difference, noise)
    difference, noise = _degradation(distractor_matched, setting)
    assert abs(difference) < 3 * noise, (setting, difference, noise)
