"""Encoders ready for use: `load_encoder(path)` and `Encoder.encode(texts) -> [N, D]`.

`path` is a Hugging Face model directory (config.json, weights, SentencePiece model) or a T5X
checkpoint directory (local or gs://) plus a SentencePiece vocabulary.
"""
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from hybridir import importers
from hybridir import vocab as vocab_lib
from hybridir.models import dual_encoder

# SentencePiece files as the Hugging Face hub names them, by encoder family.
HF_SPM_FILES = {"t5": ("spiece.model",), "xlmr": ("sentencepiece.bpe.model", "spiece.model")}
MIN_BUCKET = 16


@dataclasses.dataclass
class Encoder:
  """A dual encoder with its parameters and vocabulary; encodes texts in fixed-shape batches."""
  model: dual_encoder.DualEncoder
  params: dict
  vocabulary: object
  max_length: int = 512
  batch_size: int = 32

  def __post_init__(self):
    self.family = self.model.encoder_config.family
    self._encode = jax.jit(
        lambda params, tokens, tower: self.model.apply(
            {"params": params}, tokens, tower, method=dual_encoder.DualEncoder.encode),
        static_argnums=2)

  @property
  def dimension(self) -> int:
    cfg = self.model.encoder_config
    return self.model.projection_dim or cfg.emb_dim

  def tokenize(self, texts: list[str]) -> list[list[int]]:
    return [vocab_lib.tokenize(self.vocabulary, self.family, t, self.max_length) for t in texts]

  def encode(self, texts: list[str], tower: str = "query") -> np.ndarray:
    """Embeds texts ([N, D] float32). Batches are sorted by length and padded to a bucket
    (a power of two up to max_length), so only a few shapes are ever compiled."""
    if isinstance(texts, str):
      raise TypeError("encode takes a list of texts, not a single string")
    ids = self.tokenize(list(texts))
    order = np.argsort([len(x) for x in ids], kind="stable")
    out = np.zeros((len(ids), self.dimension), np.float32)
    pad = self.model.encoder_config.pad_id
    for start in range(0, len(ids), self.batch_size):
      chunk = order[start:start + self.batch_size]
      longest = max(len(ids[i]) for i in chunk)
      length = min(self.max_length, max(MIN_BUCKET, 1 << (longest - 1).bit_length()))
      tokens = np.full((self.batch_size, length), pad, np.int32)
      for row, i in enumerate(chunk):
        tokens[row, :len(ids[i])] = ids[i]
      embeddings = self._encode(self.params, jnp.asarray(tokens), tower)
      out[chunk] = np.asarray(embeddings)[:len(chunk)]
    return out


def _find_spm(model_dir: str, family: str) -> str:
  for name in HF_SPM_FILES[family]:
    if os.path.exists(os.path.join(model_dir, name)):
      return os.path.join(model_dir, name)
  raise FileNotFoundError(
      f"{model_dir}: no SentencePiece model ({' or '.join(HF_SPM_FILES[family])}); hybridir "
      "tokenises with SentencePiece: copy the model's file there or pass vocabulary=PATH")


def load_encoder(path: str, vocabulary: str | None = None, model_config=None,
                 pooling: str = "mean", normalize: bool = True, projection_dim: int | None = None,
                 max_length: int | None = None, batch_size: int = 32) -> Encoder:
  """Loads an encoder from a Hugging Face directory or a T5X checkpoint (with `vocabulary`)."""
  options = dict(pooling=pooling, normalize=normalize)
  if projection_dim:
    options["projection_dim"] = projection_dim
  if not path.startswith("gs://") and os.path.exists(os.path.join(path, "config.json")):
    model, params = importers.load_hf(path, **options)
    spm_path = vocabulary or _find_spm(path, model.encoder_config.family)
  elif path.startswith("gs://") or os.path.exists(os.path.join(path, "checkpoint")):
    if vocabulary is None:
      raise ValueError(f"{path}: a T5X checkpoint needs vocabulary=<SentencePiece model path>")
    model, params = importers.load_t5x(path, model_config, **options)
    spm_path = vocabulary
  else:
    raise FileNotFoundError(f"{path}: neither a Hugging Face model directory (config.json) nor "
                            "a T5X checkpoint (checkpoint file)")
  cfg = model.encoder_config
  vocabulary = vocab_lib.get_vocabulary(cfg.family, spm_path)
  if vocabulary.vocab_size > cfg.vocab_size:
    raise ValueError(f"{spm_path}: vocabulary has {vocabulary.vocab_size} ids but the model's "
                     f"embedding has {cfg.vocab_size}")
  default_length = cfg.max_length if cfg.family == "xlmr" else 512
  return Encoder(model, jax.tree.map(jnp.asarray, params), vocabulary,
                 max_length or default_length, batch_size)
