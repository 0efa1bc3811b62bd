"""Export to a Hugging Face model directory that transformers loads as MT5EncoderModel or
XLMRobertaModel: model.safetensors (transformers' names), config.json, the SentencePiece file.

The tensor names are the inverse of `importers`' mapping, so `importers.load_hf` reads the export
back exactly. Only a shared-tower encoder without projection fits transformers' encoder classes;
pooling and normalisation are not part of the export (transformers returns hidden states).
"""
import json
import os

import flax
import numpy as np

from hybridir import export
from hybridir import fs
from hybridir import importers
from hybridir.models import dual_encoder
from hybridir.models import t5
from hybridir.models import xlmr

# Our MLP activations -> transformers' T5 feed_forward_proj; our XLM-R activation -> hidden_act.
_T5_FEED_FORWARD = {("relu",): "relu", ("gelu", "linear"): "gated-gelu",
                    ("relu", "linear"): "gated-relu"}
_XLMR_ACTIVATIONS = {"gelu_exact": "gelu", "gelu": "gelu_new", "relu": "relu"}
SPM_FILES = {"t5": "spiece.model", "xlmr": "sentencepiece.bpe.model"}


def hf_config(config: dual_encoder.EncoderConfig) -> dict:
  """config.json for transformers' MT5EncoderModel or XLMRobertaModel."""
  if isinstance(config, t5.T5Config):
    if config.mlp_activations not in _T5_FEED_FORWARD:
      raise ValueError(f"T5Config.mlp_activations {config.mlp_activations} has no transformers "
                       f"feed_forward_proj; expected one of {sorted(_T5_FEED_FORWARD)}")
    return {
        "architectures": ["MT5EncoderModel"], "model_type": "mt5",
        "vocab_size": config.vocab_size, "d_model": config.emb_dim, "d_kv": config.head_dim,
        "d_ff": config.mlp_dim, "num_layers": config.num_layers,
        "num_decoder_layers": config.num_layers, "num_heads": config.num_heads,
        "relative_attention_num_buckets": config.relative_attention_num_buckets,
        "relative_attention_max_distance": config.relative_attention_max_distance,
        "dropout_rate": config.dropout_rate, "layer_norm_epsilon": config.layer_norm_epsilon,
        "feed_forward_proj": _T5_FEED_FORWARD[config.mlp_activations],
        "pad_token_id": config.pad_id, "eos_token_id": config.eos_id,
        "decoder_start_token_id": config.pad_id, "tie_word_embeddings": False,
        "is_encoder_decoder": True}
  if isinstance(config, xlmr.XLMRConfig):
    if config.num_heads * config.head_dim != config.emb_dim:
      raise ValueError(f"XLMRConfig num_heads * head_dim = {config.num_heads * config.head_dim} "
                       f"must equal emb_dim {config.emb_dim} for transformers' XLM-R")
    if config.mlp_activation not in _XLMR_ACTIVATIONS:
      raise ValueError(f"XLMRConfig.mlp_activation {config.mlp_activation!r} has no transformers "
                       f"hidden_act; expected one of {sorted(_XLMR_ACTIVATIONS)}")
    return {
        "architectures": ["XLMRobertaModel"], "model_type": "xlm-roberta",
        "vocab_size": config.vocab_size, "hidden_size": config.emb_dim,
        "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
        "intermediate_size": config.mlp_dim,
        "max_position_embeddings": config.max_position_embeddings,
        "type_vocab_size": config.type_vocab_size, "hidden_dropout_prob": config.dropout_rate,
        "attention_probs_dropout_prob": config.attention_dropout_rate,
        "layer_norm_eps": config.layer_norm_epsilon,
        "hidden_act": _XLMR_ACTIVATIONS[config.mlp_activation],
        "position_embedding_type": "absolute", "bos_token_id": config.bos_id,
        "pad_token_id": config.pad_id, "eos_token_id": config.eos_id}
  raise TypeError(f"unsupported encoder config {type(config).__name__}")


def hf_tensors(model: dual_encoder.DualEncoder, params) -> dict[str, np.ndarray]:
  """The encoder's parameters under transformers' names (float32, contiguous)."""
  if not model.shared_towers:
    raise ValueError("export_hf needs shared towers: transformers' encoder classes hold one "
                     "encoder, this DualEncoder has a query and a passage tower")
  if model.projection_dim:
    raise ValueError(f"export_hf cannot hold the projection layer (projection_dim="
                     f"{model.projection_dim}): transformers' encoder classes have none")
  cfg = model.encoder_config
  params = export.checked_params(model, params, "export_hf params")
  ours = flax.traverse_util.flatten_dict(params["encoder"], sep="/")
  # The importer's name table (HF name -> our path, transposed?) read backwards.
  names = (importers.hf_t5_names(cfg) if cfg.family == "t5"  # pylint: disable=protected-access
           else importers.hf_xlmr_names(cfg))  # pylint: disable=protected-access
  unmapped = sorted(set(ours) - {path for path, _ in names.values()})
  if unmapped:
    raise ValueError(f"export_hf: no transformers name for params {unmapped}")
  return {name: np.ascontiguousarray(ours[path].T if transpose else ours[path], np.float32)
          for name, (path, transpose) in names.items()}


def export_hf(output_dir: str, model: dual_encoder.DualEncoder, params, spm_path: str,
              overwrite: bool = False) -> str:
  """Writes a transformers model directory (atomically: a temporary name, then a rename)."""
  from safetensors.numpy import save_file
  config = hf_config(model.encoder_config)
  tensors = hf_tensors(model, params)
  family = model.encoder_config.family
  export.check_vocabulary(model.encoder_config, spm_path)
  with export.atomic_directory(output_dir, overwrite, marker="config.json") as temporary:
    save_file(tensors, os.path.join(temporary, "model.safetensors"), metadata={"format": "pt"})
    fs.copy_file(spm_path, os.path.join(temporary, SPM_FILES[family]))
    with open(os.path.join(temporary, "config.json"), "w") as f:
      json.dump(config, f, indent=2, sort_keys=True)
  return fs.abspath(output_dir)
