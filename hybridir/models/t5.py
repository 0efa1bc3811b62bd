"""The T5 / mT5 encoder (T5 1.0 and T5 v1.1 / mT5), parameter names as T5X writes them, and
the "t5" family record (transformers' MT5EncoderModel / T5EncoderModel, SentencePiece ids as is).

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

from hybridir.models import families
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
  scan_layers: bool = False  # One compiled layer scanned over (layers.encoder_layers): for TPU.
  kernels: str = "portable"  # layers.KERNELS: "cpu" for the XLA:CPU-tuned layers.
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
    layers.check_kernels("T5Config", self.kernels)

  @property
  def max_length(self) -> None:
    """No longest input: relative positions take any length."""
    return None


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
                                              kernels=cfg.kernels, name=name)(x))
      hidden = h if hidden is None else hidden * h
    hidden = layers.constrain(hidden, ("batch", "length", "mlp"))
    hidden = layers.Dropout(cfg.dropout_rate, cfg.kernels)(hidden, deterministic=deterministic)
    return layers.Dense(x.shape[-1], ("mlp", "embed"), dtype=dtype, kernels=cfg.kernels,
                        name="wo")(hidden)


class EncoderLayer(nn.Module):
  """Pre-norm transformer layer: x + attn(norm(x)), then x + mlp(norm(x))."""
  config: T5Config

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array, deterministic: bool) -> jax.Array:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    dropout = functools.partial(layers.Dropout(cfg.dropout_rate, cfg.kernels),
                                deterministic=deterministic)
    depth_scaling = cfg.head_dim ** -0.5
    default_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
    h = layers.RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_attention_layer_norm")(x)
    h = layers.SelfAttention(
        cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dtype=dtype,
        query_init=lambda *a: default_init(*a) * depth_scaling, kernels=cfg.kernels,
        name="attention")(
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
    x = layers.Dropout(cfg.dropout_rate, cfg.kernels)(x, deterministic=deterministic)
    bias = RelativePositionBias(cfg.num_heads, cfg.relative_attention_num_buckets,
                                cfg.relative_attention_max_distance, name="relpos_bias")(
                                    tokens.shape[1])
    bias = bias + layers.padding_bias(mask)
    x = layers.encoder_layers(self, EncoderLayer(cfg, parent=None), cfg.num_layers, x, bias,
                              deterministic, cfg.scan_layers)
    x = layers.RMSNorm(cfg.layer_norm_epsilon, dtype, name="encoder_norm")(x)
    return layers.Dropout(cfg.dropout_rate, cfg.kernels)(x, deterministic=deterministic)


# ---------------------------------------------------------------------------------------------
# The family record: transformers' T5 configs and tensor names, SentencePiece vocabulary.

# transformers' feed_forward_proj -> our MLP activations.
_FEED_FORWARD = {"relu": ("relu",), "gated-gelu": ("gelu", "linear"),
                 "gated-relu": ("relu", "linear")}


def config_from_hf(hf_config: dict, source: str = "config.json") -> T5Config:
  """Our config from a transformers T5 / mT5 config.json."""
  proj = hf_config.get("feed_forward_proj", "relu")
  if proj not in _FEED_FORWARD:
    raise ValueError(f"{source}: unsupported feed_forward_proj {proj!r}; "
                     f"expected one of {sorted(_FEED_FORWARD)}")
  return T5Config(
      vocab_size=hf_config["vocab_size"], emb_dim=hf_config["d_model"],
      num_layers=hf_config["num_layers"], num_heads=hf_config["num_heads"],
      head_dim=hf_config["d_kv"], mlp_dim=hf_config["d_ff"], mlp_activations=_FEED_FORWARD[proj],
      relative_attention_num_buckets=hf_config.get("relative_attention_num_buckets", 32),
      relative_attention_max_distance=hf_config.get("relative_attention_max_distance", 128),
      dropout_rate=hf_config.get("dropout_rate", 0.1),
      layer_norm_epsilon=hf_config.get("layer_norm_epsilon", 1e-6),
      pad_id=hf_config.get("pad_token_id", 0), eos_id=hf_config.get("eos_token_id", 1))


def hf_config(config: T5Config) -> dict:
  """config.json for transformers' MT5EncoderModel."""
  feed_forward = {v: k for k, v in _FEED_FORWARD.items()}
  if config.mlp_activations not in feed_forward:
    raise ValueError(f"T5Config.mlp_activations {config.mlp_activations} has no transformers "
                     f"feed_forward_proj; expected one of {sorted(feed_forward)}")
  return {
      "architectures": ["MT5EncoderModel"], "model_type": "mt5",
      "vocab_size": config.vocab_size, "d_model": config.emb_dim, "d_kv": config.head_dim,
      "d_ff": config.mlp_dim, "num_layers": config.num_layers,
      "num_decoder_layers": config.num_layers, "num_heads": config.num_heads,
      "relative_attention_num_buckets": config.relative_attention_num_buckets,
      "relative_attention_max_distance": config.relative_attention_max_distance,
      "dropout_rate": config.dropout_rate, "layer_norm_epsilon": config.layer_norm_epsilon,
      "feed_forward_proj": feed_forward[config.mlp_activations],
      "pad_token_id": config.pad_id, "eos_token_id": config.eos_id,
      "decoder_start_token_id": config.pad_id, "tie_word_embeddings": False,
      "is_encoder_decoder": True}


def hf_names(cfg: T5Config) -> dict[str, tuple[str, bool]]:
  """HF tensor name -> (our encoder param path, transpose?)."""
  names = {"shared.weight": ("token_embedder/embedding", False),
           "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight":
               ("relpos_bias/rel_embedding", True),
           "encoder.final_layer_norm.weight": ("encoder_norm/scale", False)}
  mlp = ["wi"] if len(cfg.mlp_activations) == 1 else [
      f"wi_{i}" for i in range(len(cfg.mlp_activations))]
  for i in range(cfg.num_layers):
    hf, ours = f"encoder.block.{i}.layer", f"layers_{i}"
    for a, b in (("q", "query"), ("k", "key"), ("v", "value"), ("o", "out")):
      names[f"{hf}.0.SelfAttention.{a}.weight"] = (f"{ours}/attention/{b}/kernel", True)
    names[f"{hf}.0.layer_norm.weight"] = (f"{ours}/pre_attention_layer_norm/scale", False)
    names[f"{hf}.1.layer_norm.weight"] = (f"{ours}/pre_mlp_layer_norm/scale", False)
    for w in mlp + ["wo"]:
      names[f"{hf}.1.DenseReluDense.{w}.weight"] = (f"{ours}/mlp/{w}/kernel", True)
  return names


FAMILY = families.EncoderFamily(
    name="t5", config_class=T5Config, encoder_class=T5Encoder, hf_model_types=("t5", "mt5"),
    config_from_hf=config_from_hf, hf_config=hf_config, hf_names=hf_names,
    hf_name_prefixes=("model.", ""), display_names={"mt5": "mT5"}, default_pooling="mean")
