"""Export to a Hugging Face model directory that transformers loads as its family's encoder class
(MT5EncoderModel, XLMRobertaModel, BertModel): model.safetensors (transformers' names),
config.json, the vocabulary file.

The tensor names are the inverse of `importers`' mapping, so `importers.load_hf` reads the export
back exactly. Only a shared-tower encoder without projection fits transformers' encoder classes;
'first_dense' pooling's dense layer is written as the model's pooler. Pooling and normalisation
are written as sentence-transformers modules (modules.json, 1_Pooling, 2_Dense, N_Normalize), which
`load_encoder` reads back.
"""
import json
import os

import flax
import numpy as np

from hybridir import export
from hybridir import fs
from hybridir import importers
from hybridir import vocab
from hybridir.models import dual_encoder
from hybridir.models import families


def hf_config(config: dual_encoder.EncoderConfig) -> dict:
  """config.json for transformers' encoder class of the config's family."""
  return families.of_config(config).hf_config(config)


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
  ours = flax.traverse_util.flatten_dict(params, sep="/")
  # The importer's name table (HF name -> our path, transposed?) read backwards.
  names = {name: ("encoder/" + path, transpose)
           for name, (path, transpose) in families.of_config(cfg).hf_names(cfg).items()}
  if model.pooling == "first_dense":
    names.update(importers.HF_POOLER_NAMES)
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
  vocabulary = export.check_vocabulary(model.encoder_config, spm_path)
  vocabulary_file = vocab.kind_of(model.encoder_config.family, spm_path).files[0]
  with export.atomic_directory(output_dir, overwrite, marker="config.json") as temporary:
    save_file(tensors, os.path.join(temporary, "model.safetensors"), metadata={"format": "pt"})
    vocab.write_vocabulary(vocabulary, spm_path, os.path.join(temporary, vocabulary_file))
    _write_json(os.path.join(temporary, "config.json"), config)
    for path, content in sentence_transformers_modules(model, tensors).items():
      os.makedirs(os.path.dirname(os.path.join(temporary, path)), exist_ok=True)
      if path.endswith(".safetensors"):
        save_file(content, os.path.join(temporary, path), metadata={"format": "pt"})
      else:
        _write_json(os.path.join(temporary, path), content)
  return fs.abspath(output_dir)


def _write_json(path: str, content: dict) -> None:
  with open(path, "w") as f:
    json.dump(content, f, indent=2, sort_keys=True)


def sentence_transformers_modules(model: dual_encoder.DualEncoder, tensors: dict) -> dict:
  """{relative path: JSON dict or tensors} of the sentence-transformers modules that give the
  model's pooling and normalisation (`importers.sentence_transformers_head` reads them back):
  Transformer, Pooling (cls or mean), for 'first_dense' a tanh Dense holding the pooler, and
  Normalize when the model normalises."""
  dim = model.encoder_config.emb_dim
  modules = [("", "sentence_transformers.base.modules.transformer.Transformer"),
             ("1_Pooling", "sentence_transformers.sentence_transformer.modules.pooling.Pooling")]
  files = {"1_Pooling/config.json": {"embedding_dimension": dim, "include_prompt": True,
                                     "pooling_mode": "mean" if model.pooling == "mean" else "cls"}}
  if model.pooling == "first_dense":
    modules.append(("2_Dense", "sentence_transformers.base.modules.dense.Dense"))
    files["2_Dense/config.json"] = {
        "in_features": dim, "out_features": dim, "bias": True,
        "activation_function": "torch.nn.modules.activation.Tanh",
        "module_input_name": "sentence_embedding", "module_output_name": "sentence_embedding"}
    files["2_Dense/model.safetensors"] = {"linear.weight": tensors["pooler.dense.weight"],
                                          "linear.bias": tensors["pooler.dense.bias"]}
  if model.normalize:
    path = f"{len(modules)}_Normalize"
    modules.append((path, "sentence_transformers.base.modules.normalize.Normalize"))
    files[f"{path}/config.json"] = {}
  files["modules.json"] = [{"idx": i, "name": str(i), "path": path, "type": kind}
                           for i, (path, kind) in enumerate(modules)]
  return files
