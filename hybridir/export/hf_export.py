"""Export to a Hugging Face model directory that transformers loads as its family's encoder class
(MT5EncoderModel, XLMRobertaModel, BertModel): model.safetensors (transformers' names),
config.json, the vocabulary file and, where transformers is installed, the fast tokenizer
(tokenizer.json: transformers and sentence-transformers then load the folder without sentencepiece).

The tensor names are the inverse of `importers`' mapping, so `importers.load_hf` reads the export
back exactly. Only a shared-tower encoder without projection fits transformers' encoder classes;
'first_dense' pooling's dense layer is written as the model's pooler. Pooling and normalisation
are written as sentence-transformers modules (modules.json, 1_Pooling, 2_Dense, N_Normalize), which
`load_encoder` reads back.

    python -m hybridir.hf_export --encoder PATH --output DIR [--overwrite] [--evaluation JSON]

takes anything `load_encoder` takes (a training MODEL_DIR, an export) and adds what
sentence-transformers and transformers users expect: `sentence_bert_config.json` (the
`max_seq_length` the model takes, also the fast tokenizer's `model_max_length`), the
query/passage prompts, default prompt and query length, and a model card (`model_card`).
"""
import json
import os
import sys
import tempfile
from typing import Sequence

import flax
import numpy as np

from hybridir import console
from hybridir.data import vocab
from hybridir import errors
from hybridir.export import artifacts
from hybridir.export import encoder as encoder_lib
from hybridir.export import exporter
from hybridir.export import model_card
from hybridir import fs
from hybridir.models import dual_encoder
from hybridir.models import families
from hybridir.training import importers
from hybridir.training import sentence_transformers_folder as st_folder


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
  params = artifacts.checked_params(model, params, "export_hf params")
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
              overwrite: bool = False, extra_files: dict | None = None,
              max_seq_length: int | None = None) -> str:
  """Writes a transformers model directory (atomically: a temporary name, then a rename), with
  the fast tokenizer (fast_tokenizer_files); extra_files: {relative path: JSON dict or text}
  written beside the rest."""
  from safetensors.numpy import save_file
  config = hf_config(model.encoder_config)
  tensors = hf_tensors(model, params)
  vocabulary = artifacts.check_vocabulary(model.encoder_config, spm_path)
  vocabulary_file = vocab.kind_of(model.encoder_config.family, spm_path).files[0]
  with artifacts.atomic_directory(output_dir, overwrite, marker="config.json") as temporary:
    extra_files = {**fast_tokenizer_files(model.encoder_config, vocabulary, spm_path,
                                          max_seq_length), **(extra_files or {})}
    save_file(tensors, os.path.join(temporary, "model.safetensors"), metadata={"format": "pt"})
    vocab.write_vocabulary(vocabulary, spm_path, os.path.join(temporary, vocabulary_file))
    _write_json(os.path.join(temporary, "config.json"), config)
    for path, content in sentence_transformers_modules(model, tensors).items():
      os.makedirs(os.path.dirname(os.path.join(temporary, path)), exist_ok=True)
      if path.endswith(".safetensors"):
        save_file(content, os.path.join(temporary, path), metadata={"format": "pt"})
      else:
        _write_json(os.path.join(temporary, path), content)
    for path, content in extra_files.items():
      if isinstance(content, str):
        with open(os.path.join(temporary, path), "w", encoding="utf-8") as f:
          f.write(content)
      else:
        _write_json(os.path.join(temporary, path), content)
  return fs.abspath(output_dir)


def _write_json(path: str, content: dict) -> None:
  with open(path, "w") as f:
    json.dump(content, f, indent=2, sort_keys=True)


# DualEncoder pooling -> sentence-transformers' Pooling mode ('first_dense': cls, then the Dense).
POOLING_MODES = {**{ours: theirs for theirs, ours in st_folder.POOLING_MODES.items()},
                 "first_dense": "cls"}


def sentence_transformers_modules(model: dual_encoder.DualEncoder, tensors: dict) -> dict:
  """{relative path: JSON dict or tensors} of the sentence-transformers modules that give the
  model's pooling and normalisation (`sentence_transformers_folder.read` reads them back):
  Transformer, Pooling (cls, mean, max or mean_sqrt_len_tokens), for 'first_dense' a tanh Dense
  holding the pooler, and Normalize when the model normalises."""
  dim = model.encoder_config.emb_dim
  modules = [("", "sentence_transformers.base.modules.transformer.Transformer"),
             ("1_Pooling", "sentence_transformers.sentence_transformer.modules.pooling.Pooling")]
  files = {"1_Pooling/config.json": {"embedding_dimension": dim, "include_prompt": True,
                                     "pooling_mode": POOLING_MODES[model.pooling]}}
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


# transformers' tokenizer options that give hybridir's ids (mT5 exports carry no sentinel ids).
_TOKENIZER_OPTIONS = {"t5": {"extra_ids": 0}}


def vocabulary_file(encoder: encoder_lib.Encoder) -> str:
  """The vocabulary file an Encoder tokenises with."""
  vocabulary = encoder.vocabulary
  return getattr(vocabulary, "vocab_file", None) or vocabulary.sentencepiece_model_file


def fast_tokenizer_files(config: dual_encoder.EncoderConfig, vocabulary, source: str,
                         max_seq_length: int | None = None) -> dict[str, str]:
  """{tokenizer.json, tokenizer_config.json: text} of transformers' fast tokenizer for the
  vocabulary (read from the file `source`), with model_max_length when given; {} when
  transformers is not installed. With tokenizer.json, transformers (and sentence-transformers)
  load the export without sentencepiece."""
  try:
    import transformers  # pylint: disable=import-outside-toplevel
  except ImportError:
    return {}
  family = families.of_config(config)
  options = dict(_TOKENIZER_OPTIONS.get(family.name, {}))
  if max_seq_length:
    options["model_max_length"] = max_seq_length
  with tempfile.TemporaryDirectory() as folder:
    # The vocabulary file (and the tokenizer_config.json its kind needs) as export_hf writes it.
    vocab.write_vocabulary(vocabulary, source, os.path.join(
        folder, vocab.kind_of(family.name, source).files[0]))
    _write_json(os.path.join(folder, "config.json"), hf_config(config))
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, **options)
    output = os.path.join(folder, "out")
    tokenizer.save_pretrained(output)
    return {name: open(os.path.join(output, name), encoding="utf-8").read()
            for name in ("tokenizer.json", "tokenizer_config.json")
            if os.path.exists(os.path.join(output, name))}


def sentence_transformers_settings(encoder: encoder_lib.Encoder, max_seq_length: int) -> dict:
  """sentence_bert_config.json and config_sentence_transformers.json that make
  SentenceTransformer(folder).encode(...) mean what the encoder's encode(...) means: its lengths
  (query_length: encode_query's cut), prompts and default prompt."""
  transformer = {"max_seq_length": max_seq_length, "do_lower_case": False}
  if encoder.query_max_length and encoder.query_max_length != max_seq_length:
    transformer["query_length"] = encoder.query_max_length
  return {"sentence_bert_config.json": transformer,
          "config_sentence_transformers.json": {
              "prompts": dict(encoder.prompts), "default_prompt_name": encoder.default_prompt_name,
              "similarity_fn_name": "cosine" if encoder.model.normalize else "dot"}}


def main(argv: Sequence[str] | None = None) -> int:
  parser = console.ArgumentParser(prog="python -m hybridir.hf_export",
                                  description=__doc__.split("\n")[0])
  parser.add_argument("--encoder", required=True, help="anything load_encoder takes")
  parser.add_argument("--output", required=True, help="the Hugging Face folder to write")
  parser.add_argument("--overwrite", action="store_true")
  parser.add_argument("--evaluation", help="an evaluation summary.json for the model card's "
                      "table (default: the training run's study_results.json, if any)")
  args = parser.parse_args(argv)
  console.check_input_files(parser, args, ("encoder", "evaluation"))
  try:
    encoder = exporter.load_encoder(args.encoder)
    cfg = encoder.model.encoder_config
    max_seq_length = min(encoder.max_length, cfg.max_length or encoder.max_length)
    run = model_card.training_run(args.encoder)
    card = model_card.model_card(encoder, hf_config(cfg), fs.abspath(args.output), max_seq_length,
                                 run, model_card.evaluation_rows(run, args.evaluation))
    extra = {**sentence_transformers_settings(encoder, max_seq_length), "README.md": card}
    path = export_hf(args.output, encoder.model, encoder.params, vocabulary_file(encoder),
                     overwrite=args.overwrite, extra_files=extra, max_seq_length=max_seq_length)
  except (OSError, ValueError) as error:
    print(errors.one_line(error), file=sys.stderr)
    return 1
  console.finish(f"the Hugging Face folder {path}",
                 f"python -c \"from sentence_transformers import SentenceTransformer; "
                 f"print(SentenceTransformer('{path}').encode('hello').shape)\"")
  return 0


if __name__ == "__main__":
  sys.exit(main())
