"""The BERT encoder (LaBSE, mBERT, multilingual MiniLM-style models) and the "bert" family record.

BERT is XLM-R's post-layer-norm transformer (the same `xlmr.EncoderLayer`) with positions
0, 1, 2, ... whatever the padding, token types (all 0 for one text), layer norm epsilon 1e-12 and a
WordPiece vocabulary: texts are [CLS] ... [SEP]. Multilingual MiniLM-style models
(paraphrase-multilingual-MiniLM-L12-v2) use XLM-R's SentencePiece tokenizer instead: <s> ... </s>,
padding id 1 (`pad_id` follows the tokenizer: in BERT it only decides the attention mask). The
sentence embedding is, by default, [CLS] through the dense tanh pooler ('first_dense' pooling), as
LaBSE's; mBERT- and MiniLM-style models mean-pool.

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
from hybridir.models import xlmr


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Encoder hyper-parameters. Defaults: LaBSE (Feng et al. 2022), BERT base with 501,153 ids."""
  vocab_size: int = 501153
  emb_dim: int = 768
  num_layers: int = 12
  num_heads: int = 12
  head_dim: int = 64
  mlp_dim: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  layer_norm_epsilon: float = 1e-12
  mlp_activation: str = "gelu_exact"
  initializer_range: float = 0.02  # Stddev of every weight's normal initialiser (HF's name).
  dtype: str = "float32"  # Activation dtype; parameters are always float32.
  scan_layers: bool = False  # One compiled layer scanned over (layers.encoder_layers): for TPU.
  kernels: str = "portable"  # layers.KERNELS: "cpu" for the XLA:CPU-tuned layers.
  pad_id: int = 0

  family = "bert"

  def __post_init__(self):
    for name in ("vocab_size", "emb_dim", "num_layers", "num_heads", "head_dim", "mlp_dim",
                 "max_position_embeddings", "type_vocab_size"):
      if getattr(self, name) <= 0:
        raise ValueError(f"BertConfig.{name} must be positive, got {getattr(self, name)}")
    layers.activation(self.mlp_activation)
    jnp.dtype(self.dtype)
    layers.check_kernels("BertConfig", self.kernels)

  @property
  def max_length(self) -> int:
    """Longest input: one position per token."""
    return self.max_position_embeddings


class BertEncoder(nn.Module):
  """tokens [batch, length] -> hidden states [batch, length, emb_dim] (last layer's output)."""
  config: BertConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, mask: jax.Array | None = None,
               token_types: jax.Array | None = None, *, deterministic: bool = True) -> jax.Array:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    if tokens.shape[1] > cfg.max_length:
      raise ValueError(f"input length {tokens.shape[1]} exceeds BERT's maximum {cfg.max_length}")
    if mask is None:
      mask = tokens != cfg.pad_id
    if token_types is None:
      token_types = jnp.zeros_like(tokens)
    init = nn.initializers.normal(stddev=cfg.initializer_range)
    embed = functools.partial(layers.Embed, features=cfg.emb_dim, dtype=dtype, embedding_init=init)
    x = embed(cfg.vocab_size, table_axis="vocab", name="token_embedder")(tokens)
    x = x + embed(cfg.max_position_embeddings, table_axis="abspos", name="position_embedder")(
        jnp.arange(tokens.shape[1])[None, :])
    x = x + embed(cfg.type_vocab_size, table_axis="token_types", name="token_type_embedder")(
        token_types)
    x = layers.LayerNorm(cfg.layer_norm_epsilon, dtype, name="embedding_norm")(x)
    x = layers.constrain(x, ("batch", "length", "embed"))
    x = layers.Dropout(cfg.dropout_rate, cfg.kernels)(x, deterministic=deterministic)
    bias = layers.padding_bias(mask)
    x = layers.encoder_layers(self, xlmr.EncoderLayer(cfg, parent=None), cfg.num_layers, x, bias,
                              deterministic, cfg.scan_layers)
    return x


# ---------------------------------------------------------------------------------------------
# The family record: transformers' BertModel (its tensor names are RoBERTa's), WordPiece.

def config_from_hf(hf_config: dict, source: str = "config.json") -> BertConfig:
  """Our config from a transformers BERT config.json."""
  positions = hf_config.get("position_embedding_type", "absolute")
  if positions != "absolute":
    raise ValueError(f"{source}: unsupported position_embedding_type {positions!r}; "
                     "expected 'absolute'")
  hidden, heads = hf_config["hidden_size"], hf_config["num_attention_heads"]
  return BertConfig(
      vocab_size=hf_config["vocab_size"], emb_dim=hidden,
      num_layers=hf_config["num_hidden_layers"], num_heads=heads, head_dim=hidden // heads,
      mlp_dim=hf_config["intermediate_size"],
      max_position_embeddings=hf_config.get("max_position_embeddings", 512),
      type_vocab_size=hf_config.get("type_vocab_size", 2),
      dropout_rate=hf_config.get("hidden_dropout_prob", 0.1),
      attention_dropout_rate=hf_config.get("attention_probs_dropout_prob", 0.1),
      layer_norm_epsilon=hf_config.get("layer_norm_eps", 1e-12),
      mlp_activation=xlmr.hf_activation(hf_config, source),
      initializer_range=hf_config.get("initializer_range", 0.02),
      pad_id=hf_config.get("pad_token_id", 0))


def hf_config(config: BertConfig) -> dict:
  """config.json for transformers' BertModel."""
  return {"architectures": ["BertModel"], "model_type": "bert", **xlmr.hf_common_config(config)}


FAMILY = families.EncoderFamily(
    name="bert", config_class=BertConfig, encoder_class=BertEncoder, hf_model_types=("bert",),
    config_from_hf=config_from_hf, hf_config=hf_config, hf_names=xlmr.hf_names,
    hf_name_prefixes=("bert.", "model.", ""),
    display_names={"labse": "LaBSE", "mbert": "mBERT", "minilm": "MiniLM", "bert": "BERT"},
    default_pooling="first_dense")
