"""The XLM-R (RoBERTa) encoder: post-layer-norm, learned absolute positions, exact GELU, biases;
and the "xlmr" family record (transformers' XLMRobertaModel, fairseq's SentencePiece ids).

Parameters: token_embedder, position_embedder, token_type_embedder, embedding_norm,
layers_{i}/{attention/{query,key,value,out}, attention_norm, wi, wo, mlp_norm}.
"""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from hybridir.models import families
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
  scan_layers: bool = False  # One compiled layer scanned over (layers.encoder_layers): for TPU.
  kernels: str = "portable"  # layers.KERNELS: "cpu" for the XLA:CPU-tuned layers.
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
    layers.check_kernels("XLMRConfig", self.kernels)

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
    dropout = functools.partial(layers.Dropout(cfg.dropout_rate, cfg.kernels),
                                deterministic=deterministic)
    init = nn.initializers.normal(stddev=cfg.initializer_range)
    dense = functools.partial(layers.Dense, use_bias=True, dtype=dtype, kernel_init=init,
                              kernels=cfg.kernels)
    h = layers.SelfAttention(cfg.num_heads, cfg.head_dim, cfg.attention_dropout_rate,
                             use_bias=True, scale_logits=True, dtype=dtype, kernel_init=init,
                             kernels=cfg.kernels, name="attention")(x, bias, deterministic)
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
    x = layers.Dropout(cfg.dropout_rate, cfg.kernels)(x, deterministic=deterministic)
    bias = layers.padding_bias(mask)
    x = layers.encoder_layers(self, EncoderLayer(cfg, parent=None), cfg.num_layers, x, bias,
                              deterministic, cfg.scan_layers)
    return x


# ---------------------------------------------------------------------------------------------
# The family record: transformers' XLM-R configs and tensor names, fairseq's vocabulary.

# transformers' hidden_act -> our activation name.
HF_ACTIVATIONS = {"gelu": "gelu_exact", "gelu_new": "gelu", "relu": "relu"}


def config_from_hf(hf_config: dict, source: str = "config.json") -> XLMRConfig:
  """Our config from a transformers XLM-R / RoBERTa config.json."""
  hidden, heads = hf_config["hidden_size"], hf_config["num_attention_heads"]
  return XLMRConfig(
      vocab_size=hf_config["vocab_size"], emb_dim=hidden,
      num_layers=hf_config["num_hidden_layers"], num_heads=heads, head_dim=hidden // heads,
      mlp_dim=hf_config["intermediate_size"],
      max_position_embeddings=hf_config["max_position_embeddings"],
      type_vocab_size=hf_config.get("type_vocab_size", 1),
      dropout_rate=hf_config.get("hidden_dropout_prob", 0.1),
      attention_dropout_rate=hf_config.get("attention_probs_dropout_prob", 0.1),
      layer_norm_epsilon=hf_config.get("layer_norm_eps", 1e-5),
      mlp_activation=hf_activation(hf_config, source),
      initializer_range=hf_config.get("initializer_range", 0.02),
      bos_id=hf_config.get("bos_token_id", 0), pad_id=hf_config.get("pad_token_id", 1),
      eos_id=hf_config.get("eos_token_id", 2))


def hf_activation(hf_config: dict, source: str) -> str:
  """Our name of a BERT-style config.json's hidden_act."""
  act = hf_config.get("hidden_act", "gelu")
  if act not in HF_ACTIVATIONS:
    raise ValueError(f"{source}: unsupported hidden_act {act!r}; "
                     f"expected one of {sorted(HF_ACTIVATIONS)}")
  return HF_ACTIVATIONS[act]


def hf_common_config(config) -> dict:
  """The config.json fields BERT and RoBERTa share (both encoders use EncoderLayer)."""
  if config.num_heads * config.head_dim != config.emb_dim:
    raise ValueError(f"{type(config).__name__} num_heads * head_dim = "
                     f"{config.num_heads * config.head_dim} must equal emb_dim {config.emb_dim} "
                     "for transformers")
  activations = {v: k for k, v in HF_ACTIVATIONS.items()}
  if config.mlp_activation not in activations:
    raise ValueError(f"{type(config).__name__}.mlp_activation {config.mlp_activation!r} has no "
                     f"transformers hidden_act; expected one of {sorted(activations)}")
  return {
      "vocab_size": config.vocab_size, "hidden_size": config.emb_dim,
      "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
      "intermediate_size": config.mlp_dim,
      "max_position_embeddings": config.max_position_embeddings,
      "type_vocab_size": config.type_vocab_size, "hidden_dropout_prob": config.dropout_rate,
      "attention_probs_dropout_prob": config.attention_dropout_rate,
      "layer_norm_eps": config.layer_norm_epsilon,
      "hidden_act": activations[config.mlp_activation],
      "initializer_range": config.initializer_range,
      "position_embedding_type": "absolute", "pad_token_id": config.pad_id}


def hf_config(config: XLMRConfig) -> dict:
  """config.json for transformers' XLMRobertaModel."""
  return {"architectures": ["XLMRobertaModel"], "model_type": "xlm-roberta",
          **hf_common_config(config), "bos_token_id": config.bos_id, "eos_token_id": config.eos_id}


def hf_names(cfg) -> dict[str, tuple[str, bool]]:
  """HF tensor name -> (our encoder param path, transpose?); BERT's names are the same."""
  names = {"embeddings.word_embeddings.weight": ("token_embedder/embedding", False),
           "embeddings.position_embeddings.weight": ("position_embedder/embedding", False),
           "embeddings.token_type_embeddings.weight": ("token_type_embedder/embedding", False),
           "embeddings.LayerNorm.weight": ("embedding_norm/scale", False),
           "embeddings.LayerNorm.bias": ("embedding_norm/bias", False)}
  for i in range(cfg.num_layers):
    hf, ours = f"encoder.layer.{i}", f"layers_{i}"
    pairs = [("attention.self.query", "attention/query"), ("attention.self.key", "attention/key"),
             ("attention.self.value", "attention/value"), ("attention.output.dense", "attention/out"),
             ("intermediate.dense", "wi"), ("output.dense", "wo")]
    for a, b in pairs:
      names[f"{hf}.{a}.weight"] = (f"{ours}/{b}/kernel", True)
      names[f"{hf}.{a}.bias"] = (f"{ours}/{b}/bias", False)
    for a, b in (("attention.output.LayerNorm", "attention_norm"), ("output.LayerNorm", "mlp_norm")):
      names[f"{hf}.{a}.weight"] = (f"{ours}/{b}/scale", False)
      names[f"{hf}.{a}.bias"] = (f"{ours}/{b}/bias", False)
  return names


FAMILY = families.EncoderFamily(
    name="xlmr", config_class=XLMRConfig, encoder_class=XLMREncoder,
    hf_model_types=("xlm-roberta", "roberta"), config_from_hf=config_from_hf,
    hf_config=hf_config, hf_names=hf_names, hf_name_prefixes=("roberta.", "model.", ""),
    display_names={"xlmr": "XLM-R"}, default_pooling="mean")
