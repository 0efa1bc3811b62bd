"""A self-describing MODEL_DIR: beside its checkpoints, a training run keeps the gin config it ran
with (`config.gin`), a copy of its vocabulary (`vocabulary/`) and `encoder.json` (the model, its
text format, passage length and vocabulary file), so export and evaluation take just MODEL_DIR.

`describe_run` is a SETUP call of `gin_configs/runs/train.gin` and `hybridir.main` writes the
config (`write_config`); `read_description` and
`model_from_description` serve `export.load_encoder(MODEL_DIR)`.
"""
import dataclasses
import json
import os

import jax

from hybridir import fs
from hybridir import text as text_lib
from hybridir import vocab
from hybridir.models import dual_encoder
from hybridir.models import families

CONFIG, DESCRIPTION, VOCABULARY_DIR = "config.gin", "encoder.json", "vocabulary"
FORMAT, FORMAT_VERSION = "hybridir-training-run", 1


def model_description(model: dual_encoder.DualEncoder) -> dict:
  """The JSON fields that rebuild a DualEncoder (as an export manifest records them)."""
  return {"family": model.encoder_config.family,
          "encoder_config": dataclasses.asdict(model.encoder_config),
          "pooling": model.pooling, "normalize": model.normalize,
          "projection_dim": model.projection_dim, "shared_towers": model.shared_towers}


def model_from_description(description: dict, where: str) -> dual_encoder.DualEncoder:
  """The DualEncoder a `model_description` (or an export manifest) describes."""
  if description.get("family") not in families.names():
    raise ValueError(f"{where}: unknown family {description.get('family')!r}; expected one of "
                     f"{list(families.names())}")
  try:
    config = families.get(description["family"]).config_class(**description["encoder_config"])
    return dual_encoder.DualEncoder(config, pooling=description["pooling"],
                                    projection_dim=description["projection_dim"],
                                    normalize=description["normalize"],
                                    shared_towers=description["shared_towers"])
  except (KeyError, TypeError) as e:
    raise ValueError(f"{where}: bad model description: {e!r}") from e


def describe_run(model_dir: str, model: dual_encoder.DualEncoder, spm_path: str,
                 task_feature_lengths: dict,
                 text_format: text_lib.TextFormat = text_lib.TextFormat()) -> str:
  """Writes MODEL_DIR/vocabulary/<file> and encoder.json (process 0 only; each file atomically);
  returns MODEL_DIR."""
  if jax.process_index() != 0:
    return model_dir
  family = model.encoder_config.family
  kind = vocab.kind_of(family, spm_path)
  copy = os.path.join(VOCABULARY_DIR, "sentencepiece.model" if spm_path.endswith(".model")
                      else kind.files[0])
  fs.makedirs(os.path.join(model_dir, VOCABULARY_DIR))
  # As an export writes it: a WordPiece vocabulary with the tokenizer_config.json of its options.
  vocab.write_vocabulary(kind.read(spm_path), spm_path, os.path.join(model_dir, copy))
  description = {"format": FORMAT, "format_version": FORMAT_VERSION,
                 **model_description(model), "text_format": text_format.to_json(),
                 "max_length": int(task_feature_lengths["passage"]),
                 "query_max_length": int(task_feature_lengths["query"]),
                 "vocabulary": {"file": copy, "source": fs.abspath(spm_path)}}
  fs.write_text_atomically(os.path.join(model_dir, DESCRIPTION),
                           json.dumps(description, indent=2, sort_keys=True))
  return model_dir


def write_config(model_dir: str, config_text: str) -> None:
  """Writes MODEL_DIR/config.gin, the configuration the run was started with (atomically)."""
  fs.makedirs(model_dir)
  fs.write_text_atomically(os.path.join(model_dir, CONFIG), config_text)


def is_run(path: str) -> bool:
  return fs.exists(os.path.join(path, DESCRIPTION))


def read_description(model_dir: str) -> dict:
  """encoder.json of a training run, checked; `text_format` as a TextFormat, `vocabulary` as
  the path of the run's vocabulary copy."""
  path = os.path.join(model_dir, DESCRIPTION)
  try:
    description = json.loads(fs.read_text(path))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON: {e}") from e
  if (description.get("format"), description.get("format_version")) != (FORMAT, FORMAT_VERSION):
    raise ValueError(f"{path}: format {description.get('format')!r} version "
                     f"{description.get('format_version')!r}; expected {FORMAT!r} "
                     f"{FORMAT_VERSION}")
  description["text_format"] = text_lib.TextFormat.from_json(description["text_format"], path)
  description["vocabulary"] = os.path.join(model_dir, description["vocabulary"]["file"])
  return description
