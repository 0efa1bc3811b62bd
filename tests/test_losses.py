"""The in-batch softmax loss equals a plain NumPy computation; its metrics too."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridir.training import losses


def numpy_in_batch_loss(query, passage, temperature, passage_keys=None, hard_negatives=0,
                        symmetric=False, label_smoothing=0.0):
  """Reference: one query at a time, candidates listed explicitly, float64."""
  query, passage = np.asarray(query, np.float64), np.asarray(passage, np.float64)
  batch = len(query)
  scores = query @ passage.T / float(temperature)

  def candidates(i, columns):
    if passage_keys is None:
      return list(range(columns))
    return [j for j in range(columns) if not (j < batch and j != i and passage_keys[j] == passage_keys[i])]

  def row_loss(row, i, kept):
    log_probs = row[kept] - np.log(np.sum(np.exp(row[kept])))
    target = np.full(len(kept), label_smoothing / len(kept))
    target[kept.index(i)] += 1.0 - label_smoothing
    return -np.sum(target * log_probs)

  q2p, ranks = [], []
  for i in range(batch):
    kept = candidates(i, len(passage))
    q2p.append(row_loss(scores[i], i, kept))
    ranks.append(sum(scores[i, j] >= scores[i, i] for j in kept if j != i))
  loss = np.mean(q2p)
  if symmetric:
    p2q = [row_loss(scores[:batch, :batch].T[i], i, candidates(i, batch)) for i in range(batch)]
    loss = 0.5 * (loss + np.mean(p2q))
  ranks = np.array(ranks)
  masked = batch * len(passage) - sum(len(candidates(i, len(passage))) for i in range(batch))
  return loss, {"accuracy": np.mean(ranks == 0), "mrr": np.mean(1.0 / (1 + ranks)),
                "positive_score": np.mean(np.diag(query @ passage[:batch].T)),
                "num_masked": masked}


def random_embeddings(batch=6, dim=16, hard_negatives=0, seed=0):
  rng = np.random.default_rng(seed)
  query = rng.normal(size=(batch, dim)).astype(np.float32)
  # Positives near their queries, so accuracy and MRR are neither 0 nor 1.
  positives = query + 1.2 * rng.normal(size=(batch, dim)).astype(np.float32)
  negatives = rng.normal(size=(batch * hard_negatives, dim)).astype(np.float32)
  return query, np.concatenate([positives, negatives])


def assert_matches_numpy(query, passage, **options):
  loss, metrics = losses.in_batch_softmax_loss(jnp.asarray(query), jnp.asarray(passage), **options)
  expected_loss, expected = numpy_in_batch_loss(
      query, passage, options["temperature"], options.get("passage_keys"),
      options.get("hard_negatives_per_query", 0), options.get("symmetric", False),
      options.get("label_smoothing", 0.0))
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss"], expected_loss, rtol=1e-5)
  for name, value in expected.items():
    np.testing.assert_allclose(metrics[name], value, rtol=1e-5, err_msg=name)
  return metrics


@pytest.mark.slow
def test_loss_and_metrics_match_numpy():
  query, passage = random_embeddings()
  metrics = assert_matches_numpy(query, passage, temperature=1.0)
  assert 0.0 < metrics["accuracy"] < 1.0


def test_temperature_divides_scores():
  query, passage = random_embeddings(seed=1)
  assert_matches_numpy(query, passage, temperature=0.05)
  assert_matches_numpy(query, passage, temperature=jnp.float32(0.3))


def test_passage_keys_remove_other_queries_positives_of_the_same_passage():
  query, passage = random_embeddings(seed=2)
  passage_keys = np.array([0, 0, 1, 2, 2, 2])
  metrics = assert_matches_numpy(query, passage, temperature=0.1, passage_keys=jnp.asarray(passage_keys))
  assert metrics["num_masked"] == 2 + 6  # Item 0: 2 ordered pairs; item 2: 6.


@pytest.mark.slow
def test_masked_passage_has_no_effect_on_its_masked_query():
  query, passage = random_embeddings(seed=3)
  passage_keys = jnp.array([0, 0, 1, 2, 3, 4])
  grad_of_query_0 = lambda p: jax.grad(
      lambda q: losses.in_batch_softmax_loss(q, p, temperature=0.1, passage_keys=passage_keys)[0])(
          jnp.asarray(query))[0]
  moved = passage.copy()
  moved[1] = 50.0 * query[0]  # Would dominate query 0's softmax if it were a candidate.
  np.testing.assert_allclose(grad_of_query_0(jnp.asarray(passage)),
                             grad_of_query_0(jnp.asarray(moved)), rtol=1e-6)


def test_hard_negatives_are_candidates_for_every_query_and_never_masked():
  query, passage = random_embeddings(hard_negatives=2, seed=4)
  passage_keys = jnp.array([0, 0, 1, 1, 2, 3])
  metrics = assert_matches_numpy(query, passage, temperature=0.2, passage_keys=passage_keys,
                                 hard_negatives_per_query=2)
  assert metrics["num_masked"] == 4


def test_symmetric_averages_query_to_passage_and_passage_to_query():
  query, passage = random_embeddings(hard_negatives=1, seed=5)
  metrics = assert_matches_numpy(query, passage, temperature=0.1, symmetric=True,
                                 hard_negatives_per_query=1, passage_keys=jnp.array([0, 1, 1, 2, 3, 3]))
  np.testing.assert_allclose(
      metrics["loss"],
      0.5 * (metrics["query_to_passage_loss"] + metrics["passage_to_query_loss"]), rtol=1e-6)


def test_label_smoothing_spreads_mass_over_unmasked_candidates():
  query, passage = random_embeddings(hard_negatives=1, seed=6)
  assert_matches_numpy(query, passage, temperature=0.1, label_smoothing=0.1,
                       hard_negatives_per_query=1, passage_keys=jnp.array([0, 0, 1, 2, 3, 4]))


def test_identical_queries_and_positives_rank_first():
  embeddings = jnp.eye(4)
  _, metrics = losses.in_batch_softmax_loss(embeddings, embeddings, temperature=0.1)
  assert metrics["accuracy"] == 1.0 and metrics["mrr"] == 1.0


def test_gradients_are_finite_with_every_option():
  query, passage = random_embeddings(hard_negatives=1, seed=7)
  loss_fn = lambda q, p, log_scale: losses.in_batch_softmax_loss(
      q, p, temperature=losses.temperature_from_log_scale(log_scale),
      passage_keys=jnp.array([0, 0, 0, 1, 1, 2]), hard_negatives_per_query=1, symmetric=True,
      label_smoothing=0.1)[0]
  grads = jax.grad(loss_fn, argnums=(0, 1, 2))(jnp.asarray(query), jnp.asarray(passage),
                                               jnp.float32(np.log(1 / 0.05)))
  for grad in grads:
    assert np.all(np.isfinite(grad))
  assert np.any(grads[0] != 0) and grads[2] != 0


def test_bfloat16_inputs_give_a_float32_loss():
  query, passage = random_embeddings(seed=8)
  loss, metrics = losses.in_batch_softmax_loss(jnp.asarray(query, jnp.bfloat16),
                                               jnp.asarray(passage, jnp.bfloat16), temperature=0.1)
  assert loss.dtype == jnp.float32
  assert all(value.dtype == jnp.float32 for value in metrics.values())
  expected, _ = numpy_in_batch_loss(jnp.asarray(query, jnp.bfloat16).astype(np.float32),
                                    jnp.asarray(passage, jnp.bfloat16).astype(np.float32), 0.1)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_wrong_passage_count_names_hard_negatives_per_query():
  query, passage = random_embeddings(hard_negatives=1)
  with pytest.raises(ValueError, match="hard_negatives_per_query"):
    losses.in_batch_softmax_loss(query, passage, temperature=0.1, hard_negatives_per_query=2)


def test_non_positive_temperature_is_rejected():
  query, passage = random_embeddings()
  with pytest.raises(ValueError, match="temperature"):
    losses.in_batch_softmax_loss(query, passage, temperature=0.0)


def test_temperature_from_log_scale_inverts_and_clips():
  np.testing.assert_allclose(
      losses.temperature_from_log_scale(losses.initial_log_scale(0.07)), 0.07, rtol=1e-6)
  assert losses.temperature_from_log_scale(jnp.float32(10.0)) == pytest.approx(0.01)
  assert losses.temperature_from_log_scale(jnp.float32(-3.0)) == pytest.approx(1.0)
  assert jax.grad(losses.temperature_from_log_scale)(jnp.float32(10.0)) == 0.0
