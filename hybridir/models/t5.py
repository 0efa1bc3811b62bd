"""The T5 / mT5 encoder (T5 1.0 and T5 v1.1 / mT5), parameter names as T5X writes them.

Parameters: token_embedder/embedding, relpos_bias/rel_embedding [heads, buckets] (computed once,
shared by all layers), layers_{i}/{pre_attention_layer_norm, attention/{query,key,value,out},
pre_mlp_layer_norm, mlp/{wi | wi_0, wi_1, wo}}, encoder_norm.
"""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hybridir.models import layers


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Encoder hyper-parameters, with T5X's names. Defaults: mT5-small."""
  vocab_size: int = 250112
  emb_dim: int = 512
  num_layers: int = 8
  num_heads: int = 6
  head_dim: int = 64
  mlp_dim: int = 1024
  # ("gelu", "linear"): T5 v1.1 / mT5 gated-GELU; ("relu",): T5 1.0.
  mlp_activations: tuple[str, ...] = ("gelu", "linear")
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.1
  layer_norm_epsilon: float = 1e-6
  dtype: str = "float32"  # Activation dtype; parameters are always float32.
  pad_id: int = 0
  eos_id: int = 1

  family = "t5"

  def __post_init__(self):
    for name in ("vocab_size", "emb_dim", "num_layers", "num_heads", "head_dim", "mlp_dim"):
      if getattr(self, name) <= 0:
        raise ValueError(f"T5Config.{name} must be positive, got {getattr(self, name)}")
    object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))
    for name in self.mlp_activations:
      layers.activation(name)
    if self.relative_attention_num_buckets < 4 or self.relative_attention_num_buckets % 2:
      raise ValueError("T5Config.relative_attention_num_buckets must be an even number >= 4, "
                       f"got {self.relative_attention_num_buckets}")
    jnp.dtype(self.dtype)


def relative_position_bucket(relative_position: np.ndarray, num_buckets: int,
                             max_distance: int) -> np.ndarray:
  """T5's bidirectional bucketing of (key - query) positions: exact near, log-spaced far."""
  half = num_buckets // 2
  bucket = (relative_position > 0).astype(np.int32) * half
  distance = np.abs(relative_position)
  max_exact = half // 2
  is_small = distance < max_exact
  with np.errstate(divide="ignore"):
    log_ratio = np.log(np.maximum(distance, 1) / max_exact) / np.log(max_distance / max_exact)
  large = max_exact + (log_ratio * (half - max_exact)).astype(np.int32)
  large = np.minimum(large, half - 1)
  return bucket + np.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
  """Learned per-head bias of each (query, key) bucket: [1, heads, length, length]."""
  num_heads: int
  num_buckets: int
  max_distance: int

  @nn.compact
  def __call__(self, length: int) -> jax.Array:
    table = layers.param_with_axes(self, "rel_embedding", nn.initializers.normal(stddev=1.0),
                                   (self.num_heads, self.num_buckets), ("heads", "relpos_buckets"))
    positions = np.arange(length)
    buckets = relative_position_bucket(positions[None, :] - positions[:, None], self.num_buckets,
                                       self.max_distance)
    return jnp.take(table, jnp.asarray(buckets), axis=1)[None]


class MLP(nn.Module):
  """T5's feed-forward block: one input projection per activation, multiplied together."""
  config: T5Config

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    names = ["wi"] if len(cfg.mlp_activations) == 1 else [
        f"wi_{i}" for i in range(len(cfg.mlp_activations))]
    hidden = None
    for name, act in zip(names, cfg.mlp_activations):
      h = layers.activation(act)(layers.Dense(cfg.mlp_dim, ("embed", "mlp"), dtype=dtype,
                                              name=name)(x))
      hidden = h if hidden is None else hidden * h
    hidden = layers.constrain(hidden, ("batch", "length", "mlp"))
    hidden = layers.Dropout(cfg.dropout_rate)(hidden, deterministic=deterministic)
    return layers.Dense(x.shape[-1], ("mlp", "embed"), dtype=dtype, name="wo")(hidden)


class EncoderLayer(nn.Module):
  """Pre-norm transformer layer: x + attn(norm(x)), then x + mlp(norm(x))."""
  config: T5Config

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array, deterministic: bool) -> jax.Array:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    dropout = functools.partial(layers.Dropout(cfg.dropout_rate), deterministic=deterministic)
    depth_scaling = cfg.head_dim ** -0.5
    default_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
    h = layers.RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_attention_layer_norm")(x)
    h = layers.SelfAttention(
        cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dtype=dtype,
        query_init=lambda *a: default_init(*a) * depth_scaling, name="attention")(
            h, bias, deterministic)
    x = layers.constrain(x + dropout(h), ("batch", "length", "embed"))
    h = layers.RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_mlp_layer_norm")(x)
    h = MLP(cfg, name="mlp")(h, deterministic)
    return layers.constrain(x + dropout(h), ("batch", "length", "embed"))


class T5Encoder(nn.Module):
  """tokens [batch, length] -> hidden states [batch, length, emb_dim] (after the final norm)."""
  config: T5Config

  @nn.compact
  def __call__(self, tokens: jax.Array, mask: jax.Array | None = None, *,
               deterministic: bool = True) -> jax.Array:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    if mask is None:
      mask = tokens != cfg.pad_id
    x = layers.Embed(cfg.vocab_size, cfg.emb_dim, "vocab", dtype, name="token_embedder")(tokens)
    x = layers.constrain(x, ("batch", "length", "embed"))
    x = layers.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    bias = RelativePositionBias(cfg.num_heads, cfg.relative_attention_num_buckets,
                                cfg.relative_attention_max_distance, name="relpos_bias")(
                                    tokens.shape[1])
    bias = bias + layers.padding_bias(mask)
    for i in range(cfg.num_layers):
      x = EncoderLayer(cfg, name=f"layers_{i}")(x, bias, deterministic)
    x = layers.RMSNorm(cfg.layer_norm_epsilon, dtype, name="encoder_norm")(x)
    return layers.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
