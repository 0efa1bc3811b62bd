"""The dual encoder: a text encoder, pooling, optional projection and L2 normalisation.

With shared towers (the default) queries and passages go through one encoder, whose parameters
live under `encoder`; with separate towers under `query_encoder` and `passage_encoder`.
Pooling: 'mean' over real tokens, 'max' (each feature's maximum over them), 'mean_sqrt_length'
(their sum over the square root of their number), 'first' (the first token: BERT's [CLS], XLM-R's
<s>), or 'first_dense' (the first token through BERT's dense tanh pooler, params under `pooler`);
sentence-transformers' Pooling modes mean, max, mean_sqrt_len_tokens and cls.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hybridir.models import families
from hybridir.models import layers

EncoderConfig = Any  # The config of any family (hybridir.models.families).
POOLINGS = ("mean", "max", "mean_sqrt_length", "first", "first_dense")


def encoder_module(config: EncoderConfig, name: str | None = None) -> nn.Module:
  """The Flax encoder of a config's family."""
  return families.of_config(config).encoder_class(config, name=name)


def pool(hidden: jax.Array, mask: jax.Array, pooling: str) -> jax.Array:
  """[batch, length, features] -> [batch, features], in float32; padding never counts."""
  hidden = hidden.astype(jnp.float32)
  if pooling in ("mean", "mean_sqrt_length"):
    weights = mask.astype(jnp.float32)[..., None]
    count = jnp.maximum(jnp.sum(weights, axis=1), 1.0)
    return jnp.sum(hidden * weights, axis=1) / (count if pooling == "mean" else jnp.sqrt(count))
  if pooling == "max":
    pooled = jnp.max(jnp.where(mask[..., None], hidden, -jnp.inf), axis=1)
    return jnp.where(jnp.any(mask, axis=1)[:, None], pooled, 0.0)  # A row of padding: zeros.
  if pooling in ("first", "first_dense"):
    return hidden[:, 0]
  raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")


def l2_normalize(x: jax.Array, epsilon: float = 1e-12) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), epsilon))


class DualEncoder(nn.Module):
  """Embeds queries and passages into one space: encode -> pool -> (project) -> (normalise)."""
  encoder_config: EncoderConfig
  pooling: str = "mean"
  projection_dim: int | None = None
  normalize: bool = True
  shared_towers: bool = True

  def setup(self):
    if self.pooling not in POOLINGS:
      raise ValueError(f"DualEncoder.pooling must be one of {POOLINGS}, got {self.pooling!r}")
    if self.shared_towers:
      self.encoder = encoder_module(self.encoder_config)
    else:
      self.query_encoder = encoder_module(self.encoder_config)
      self.passage_encoder = encoder_module(self.encoder_config)
    if self.pooling == "first_dense":
      self.pooler = layers.Dense(self.encoder_config.emb_dim, ("embed", "projection"),
                                 use_bias=True)
    if self.projection_dim:
      self.projection_layer = layers.Dense(self.projection_dim, ("embed", "projection"))

  def encode(self, tokens: jax.Array, tower: str = "query", *,
             deterministic: bool = True) -> jax.Array:
    """tokens [batch, length] -> embeddings [batch, dim] (float32)."""
    if self.shared_towers:
      encoder = self.encoder
    elif tower in ("query", "passage"):
      encoder = self.query_encoder if tower == "query" else self.passage_encoder
    else:
      raise ValueError(f"tower must be 'query' or 'passage', got {tower!r}")
    mask = tokens != self.encoder_config.pad_id
    hidden = encoder(tokens, mask, deterministic=deterministic)
    embeddings = pool(hidden, mask, self.pooling)
    if self.pooling == "first_dense":
      embeddings = jnp.tanh(self.pooler(embeddings))
    if self.projection_dim:
      embeddings = self.projection_layer(embeddings)
    if self.normalize:
      embeddings = l2_normalize(embeddings)
    return layers.constrain(embeddings, ("batch", "embed"))

  def __call__(self, query_tokens: jax.Array, passage_tokens: jax.Array, *,
               deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
    return (self.encode(query_tokens, "query", deterministic=deterministic),
            self.encode(passage_tokens, "passage", deterministic=deterministic))


def abstract_params(model: DualEncoder, query_length: int, passage_length: int):
  """The model's parameter shapes, boxed with their logical axis names (jax.eval_shape of init:
  nothing is computed); training and evaluation shard parameters from them."""
  return jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.ones((1, query_length), jnp.int32),
      jnp.ones((1, passage_length), jnp.int32)))["params"]
