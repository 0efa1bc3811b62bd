"""The XLM-R (RoBERTa) encoder: post-layer-norm, learned absolute positions, exact GELU, biases.

Parameters: token_embedder, position_embedder, token_type_embedder, embedding_norm,
layers_{i}/{attention/{query,key,value,out}, attention_norm, wi, wo, mlp_norm}.
"""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from hybridir.models import layers


@dataclasses.dataclass(frozen=True)
class XLMRConfig:
  """Encoder hyper-parameters. Defaults: XLM-R base."""
  vocab_size: int = 250002
  emb_dim: int = 768
  num_layers: int = 12
  num_heads: int = 12
  head_dim: int = 64
  mlp_dim: int = 3072
  max_position_embeddings: int = 514
  type_vocab_size: int = 1
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  layer_norm_epsilon: float = 1e-5
  mlp_activation: str = "gelu_exact"
  initializer_range: float = 0.02  # Stddev of every weight's normal initialiser (HF's name).
  dtype: str = "float32"  # Activation dtype; parameters are always float32.
  bos_id: int = 0
  pad_id: int = 1
  eos_id: int = 2

  family = "xlmr"

  def __post_init__(self):
    for name in ("vocab_size", "emb_dim", "num_layers", "num_heads", "head_dim", "mlp_dim",
                 "max_position_embeddings", "type_vocab_size"):
      if getattr(self, name) <= 0:
        raise ValueError(f"XLMRConfig.{name} must be positive, got {getattr(self, name)}")
    layers.activation(self.mlp_activation)
    jnp.dtype(self.dtype)

  @property
  def max_length(self) -> int:
    """Longest input: positions start after the padding index (fairseq's convention)."""
    return self.max_position_embeddings - self.pad_id - 1


def position_ids(mask: jax.Array, pad_id: int) -> jax.Array:
  """RoBERTa's positions: pad_id + 1, pad_id + 2, ... for real tokens, pad_id for padding."""
  mask = mask.astype(jnp.int32)
  return jnp.cumsum(mask, axis=1) * mask + pad_id


class EncoderLayer(nn.Module):
  """Post-norm transformer layer: norm(x + attn(x)), then norm(x + mlp(x))."""
  config: XLMRConfig

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array, deterministic: bool) -> jax.Array:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    dropout = functools.partial(layers.Dropout(cfg.dropout_rate), deterministic=deterministic)
    init = nn.initializers.normal(stddev=cfg.initializer_range)
    dense = functools.partial(layers.Dense, use_bias=True, dtype=dtype, kernel_init=init)
    h = layers.SelfAttention(cfg.num_heads, cfg.head_dim, cfg.attention_dropout_rate,
                             use_bias=True, scale_logits=True, dtype=dtype, kernel_init=init,
                             name="attention")(x, bias, deterministic)
    x = layers.LayerNorm(cfg.layer_norm_epsilon, dtype, name="attention_norm")(x + dropout(h))
    x = layers.constrain(x, ("batch", "length", "embed"))
    h = layers.activation(cfg.mlp_activation)(dense(cfg.mlp_dim, ("embed", "mlp"), name="wi")(x))
    h = layers.constrain(h, ("batch", "length", "mlp"))
    h = dense(cfg.emb_dim, ("mlp", "embed"), name="wo")(h)
    x = layers.LayerNorm(cfg.layer_norm_epsilon, dtype, name="mlp_norm")(x + dropout(h))
    return layers.constrain(x, ("batch", "length", "embed"))


class XLMREncoder(nn.Module):
  """tokens [batch, length] -> hidden states [batch, length, emb_dim] (last layer's output)."""
  config: XLMRConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, mask: jax.Array | None = None, *,
               deterministic: bool = True) -> jax.Array:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    if tokens.shape[1] > cfg.max_length:
      raise ValueError(f"input length {tokens.shape[1]} exceeds XLM-R's maximum {cfg.max_length}")
    if mask is None:
      mask = tokens != cfg.pad_id
    init = nn.initializers.normal(stddev=cfg.initializer_range)
    embed = functools.partial(layers.Embed, features=cfg.emb_dim, dtype=dtype, embedding_init=init)
    x = embed(cfg.vocab_size, table_axis="vocab", name="token_embedder")(tokens)
    x = x + embed(cfg.max_position_embeddings, table_axis="abspos", name="position_embedder")(
        position_ids(mask, cfg.pad_id))
    x = x + embed(cfg.type_vocab_size, table_axis="token_types", name="token_type_embedder")(
        jnp.zeros_like(tokens))
    x = layers.LayerNorm(cfg.layer_norm_epsilon, dtype, name="embedding_norm")(x)
    x = layers.constrain(x, ("batch", "length", "embed"))
    x = layers.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    bias = layers.padding_bias(mask)
    for i in range(cfg.num_layers):
      x = EncoderLayer(cfg, name=f"layers_{i}")(x, bias, deterministic)
    return x
