"""In-batch contrastive losses and their metrics: pure functions of embeddings, float32 math."""
import math
from typing import Optional, Union

import jax
import jax.numpy as jnp

Array = jax.Array
# Finite, so masked entries give 0 * log p = 0 (not nan) in the smoothed cross-entropy.
_MASKED_LOGIT = -1e9


def in_batch_softmax_loss(query_emb: Array,
                          passage_emb: Array,
                          *,
                          temperature: Union[float, Array],
                          passage_keys: Optional[Array] = None,
                          hard_negatives_per_query: int = 0,
                          symmetric: bool = False,
                          label_smoothing: float = 0.0) -> tuple[Array, dict[str, Array]]:
  """Softmax cross-entropy of each query over every passage in the (global) batch.

  Passage layout, with B queries and H = hard_negatives_per_query:
    rows [0, B): passage i is query i's positive;
    rows [B + i*H, B + (i+1)*H): query i's hard negatives.
  Every passage is a candidate for every query. Under jit with a batch sharded over devices the
  score matrix spans the global batch, so negatives come from all devices.

  passage_keys [B] (optional): queries whose positives share a key have the same passage (one QA
  item's translations, or several questions on one passage text), so for query i the positive of
  another query j with passage_keys[j] == passage_keys[i] is a false negative and is removed from
  query i's candidates. Hard negatives are never removed: a hard negative of item k is a
  non-answer for every query of item k.

  symmetric: also the passage -> query loss over the B positives (passage i's positive is query i,
  same mask), averaged with the query -> passage loss.
  label_smoothing: mass spread uniformly over each row's unmasked candidates.

  Returns (loss, metrics): the mean loss and float32 scalars 'loss', 'accuracy' (positive ranked
  first; ties count against it), 'mrr', 'positive_score' and 'negative_score' (mean unscaled
  similarity of positives / unmasked negatives), 'num_masked' (removed entries in the B x B(1+H)
  score matrix) and 'temperature'; with symmetric also the two directional losses.
  """
  batch_size, passage_count = _validate(query_emb, passage_emb, temperature,
                                        hard_negatives_per_query, label_smoothing)
  temperature = jnp.asarray(temperature, jnp.float32)
  similarity = jnp.matmul(query_emb.astype(jnp.float32), passage_emb.astype(jnp.float32).T,
                          precision=jax.lax.Precision.HIGHEST)
  logits = similarity / temperature
  masked = _shared_passage_mask(passage_keys, batch_size, passage_count)

  query_to_passage = _cross_entropy(logits, masked, label_smoothing)
  loss = jnp.mean(query_to_passage)
  metrics = {}
  if symmetric:
    passage_to_query = _cross_entropy(logits[:, :batch_size].T, masked[:, :batch_size].T,
                                      label_smoothing)
    metrics["query_to_passage_loss"] = jnp.mean(query_to_passage)
    metrics["passage_to_query_loss"] = jnp.mean(passage_to_query)
    loss = 0.5 * (metrics["query_to_passage_loss"] + metrics["passage_to_query_loss"])

  positive = jnp.eye(batch_size, passage_count, dtype=bool)
  negative = ~positive & ~masked
  positive_logit = jnp.diagonal(logits)[:, None]
  rank = jnp.sum(negative & (logits >= positive_logit), axis=1)
  metrics.update(
      loss=loss,
      accuracy=jnp.mean((rank == 0).astype(jnp.float32)),
      mrr=jnp.mean(1.0 / (1.0 + rank.astype(jnp.float32))),
      positive_score=jnp.mean(jnp.diagonal(similarity)),
      negative_score=jnp.sum(jnp.where(negative, similarity, 0.0)) / jnp.maximum(
          jnp.sum(negative), 1),
      num_masked=jnp.sum(masked).astype(jnp.float32),
      temperature=temperature,
  )
  return loss, metrics


def _validate(query_emb, passage_emb, temperature, hard_negatives_per_query, label_smoothing):
  """Checks shapes and options before anything is traced; returns (B, number of passages)."""
  if query_emb.ndim != 2 or passage_emb.ndim != 2:
    raise ValueError(f"query_emb and passage_emb must be 2-D [batch, dim], got shapes "
                     f"{query_emb.shape} and {passage_emb.shape}")
  if query_emb.shape[1] != passage_emb.shape[1]:
    raise ValueError(f"query_emb dim {query_emb.shape[1]} != passage_emb dim "
                     f"{passage_emb.shape[1]}")
  if not isinstance(hard_negatives_per_query, int) or hard_negatives_per_query < 0:
    raise ValueError(f"hard_negatives_per_query must be an int >= 0, got "
                     f"{hard_negatives_per_query!r}")
  batch_size, passage_count = query_emb.shape[0], passage_emb.shape[0]
  expected = batch_size * (1 + hard_negatives_per_query)
  if passage_count != expected:
    raise ValueError(f"passage_emb has {passage_count} rows; expected batch * (1 + "
                     f"hard_negatives_per_query) = {batch_size} * {1 + hard_negatives_per_query}"
                     f" = {expected}")
  if isinstance(temperature, (int, float)) and not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature!r}")
  if jnp.ndim(temperature) != 0:
    raise ValueError(f"temperature must be a scalar, got shape {jnp.shape(temperature)}")
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
  return batch_size, passage_count


def _shared_passage_mask(passage_keys: Optional[Array], batch_size: int,
                         passage_count: int) -> Array:
  """[B, P] bool: True where passage j is another query's positive with query i's passage key."""
  if passage_keys is None:
    return jnp.zeros((batch_size, passage_count), bool)
  if jnp.shape(passage_keys) != (batch_size,):
    raise ValueError(f"passage_keys must have shape ({batch_size},), got "
                     f"{jnp.shape(passage_keys)}")
  same_item = passage_keys[:, None] == passage_keys[None, :]
  in_batch = same_item & ~jnp.eye(batch_size, dtype=bool)
  return jnp.pad(in_batch, ((0, 0), (0, passage_count - batch_size)))


def _cross_entropy(logits: Array, masked: Array, label_smoothing: float) -> Array:
  """Per-row softmax cross-entropy, target column = row index, masked columns removed."""
  rows, columns = logits.shape
  log_probs = jax.nn.log_softmax(jnp.where(masked, _MASKED_LOGIT, logits), axis=-1)
  targets = jnp.eye(rows, columns, dtype=jnp.float32)
  if label_smoothing:
    valid = (~masked).astype(jnp.float32)
    uniform = valid / jnp.sum(valid, axis=-1, keepdims=True)
    targets = (1.0 - label_smoothing) * targets + label_smoothing * uniform
  return -jnp.sum(targets * log_probs, axis=-1)


def temperature_from_log_scale(log_scale: Array, min_temperature: float = 0.01,
                               max_temperature: float = 1.0) -> Array:
  """CLIP-style learned temperature: exp(-log_scale), clipped to [min_temperature, max_temperature].

  log_scale is the log of the inverse temperature (CLIP's logit scale); clipping it stops the
  gradient outside the range, as CLIP's clamp at a logit scale of 100 (min_temperature 0.01) does.
  """
  if not 0 < min_temperature <= max_temperature:
    raise ValueError(f"need 0 < min_temperature <= max_temperature, got {min_temperature} and "
                     f"{max_temperature}")
  clipped = jnp.clip(jnp.asarray(log_scale, jnp.float32), -math.log(max_temperature),
                     -math.log(min_temperature))
  return jnp.exp(-clipped)


def initial_log_scale(temperature: float = 0.07) -> float:
  """The log_scale whose temperature is `temperature` (CLIP initialises at 0.07)."""
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature!r}")
  return -math.log(temperature)
