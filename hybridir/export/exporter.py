"""The front door to encoders: exporting a training run's checkpoint, and `load_encoder(path)`.

`export_from_training_checkpoint` writes an artifact (`artifacts`) from MODEL_DIR's checkpoint
with what the run recorded (model, vocabulary, text format, lengths). `load_encoder` reads an
artifact, a training MODEL_DIR, a Hugging Face model directory (config.json, weights, SentencePiece
model) or a T5X checkpoint plus a vocabulary, and gives an `encoder.Encoder`.
"""
import dataclasses
import json
import os

from hybridir.data import text as text_lib
from hybridir.data import vocab
from hybridir.export import artifacts
from hybridir.export import encoder as encoder_lib
from hybridir import fs
from hybridir.models import dual_encoder
from hybridir.training import checkpoints
from hybridir.training import importers
from hybridir.training import run_dir
from hybridir.training import sentence_transformers_folder as st_folder


def export_from_training_checkpoint(model_dir: str, output_dir: str,
                                    model: dual_encoder.DualEncoder | None = None,
                                    spm_path: str | None = None,
                                    step: int | None = None,
                                    text_format: text_lib.TextFormat | None = None,
                                    **export_options) -> str:
  """Exports the model params of MODEL_DIR's given training checkpoint, else the one a study
  chose (run_dir.chosen_step), else the latest.

  The manifest records the text format the checkpoint was trained with; a checkpoint from before
  formats were recorded gets `text_format`, else bare texts (`text.UNFORMATTED`), as it was trained.
  max_length and query_max_length default to the passage and query lengths it was trained
  with, so texts are cut as then. model and spm_path default to the run's own (`run_dir`:
  MODEL_DIR/encoder.json); given, they must agree with it.
  """
  model, spm_path = run_model_and_vocabulary(model_dir, model, spm_path)
  step, params = checkpoints.restore_params(
      model_dir, run_dir.chosen_step(model_dir) if step is None else step)
  trained = checkpoints.training_text_format(model_dir, step)
  lengths = checkpoints.read_checkpoint_identity(model_dir, step)[1].get("task_feature_lengths")
  for option, feature in (("max_length", "passage"), ("query_max_length", "query")):
    trained_length = lengths.get(feature) if isinstance(lengths, dict) else None
    if export_options.get(option) is None and isinstance(trained_length, int):
      export_options[option] = trained_length
  if trained is not None and text_format is not None and trained != text_format:
    raise ValueError(f"{model_dir}: step {step} was trained with {trained}, not {text_format}")
  metadata = dict(export_options.pop("extra_metadata", None) or {})
  metadata.update(training_checkpoint=fs.abspath(model_dir), step=step)
  return artifacts.export_encoder(output_dir, model, params, spm_path, extra_metadata=metadata,
                                  text_format=trained or text_format or text_lib.UNFORMATTED,
                                  **export_options)


# Encoder settings that shape no parameter: a model file may differ from the run in them.
TRAINING_ONLY_FIELDS = ("dropout_rate", "scan_layers", "dtype", "kernels")


def run_model_and_vocabulary(model_dir: str, model: dual_encoder.DualEncoder | None,
                             spm_path: str | None) -> tuple[dual_encoder.DualEncoder, str]:
  """(model, vocabulary path) of a training run: its own description's unless given; a given
  model that contradicts the description (a wrong model file) is refused, naming the fields."""
  if not run_dir.is_run(model_dir):
    if model is None or spm_path is None:
      raise ValueError(f"{model_dir}: no {run_dir.DESCRIPTION} (a run from before runs described "
                       "themselves): include the model file it was trained with and set SPM_PATH")
    return model, spm_path
  description = run_dir.read_description(model_dir)
  own = run_dir.model_from_description(description, os.path.join(model_dir, run_dir.DESCRIPTION))
  given, ran = (_flat_description(m) for m in (model or own, own))
  changed = [f"{k}={given.get(k)!r} (trained: {ran.get(k)!r})" for k in sorted(ran)
             if given.get(k) != ran.get(k) and k not in TRAINING_ONLY_FIELDS]
  if changed:
    raise ValueError(f"{model_dir} was trained with another model than the one given: "
                     + "; ".join(changed) + " (drop the model file: the run describes itself)")
  return own, spm_path or description["vocabulary"]


def _flat_description(model: dual_encoder.DualEncoder) -> dict:
  """A model's description as JSON values, the encoder config's fields beside the others."""
  description = json.loads(json.dumps(run_dir.model_description(model)))
  return {**description.pop("encoder_config"), **description}


def load_encoder(path: str, vocabulary: str | None = None, model_config=None,
                 pooling: str | None = None, normalize: bool | None = None,
                 projection_dim: int | None = None, max_length: int | None = None,
                 batch_size: int = 32, text_format: text_lib.TextFormat | None = None,
                 num_partitions: int = 1, prompts: dict | None = None,
                 default_prompt_name: str | None = None) -> encoder_lib.Encoder:
  """Loads an exported artifact, a Hugging Face directory or a T5X checkpoint (with vocabulary).

  An artifact carries its own config, pooling, vocabulary and text format; options that
  contradict it raise, and it is verified against its manifest (ArtifactError names what is
  missing or different: keys, params/, parameter tree and shapes, dtype, count, and the
  vocabulary's sha256, also of a `vocabulary` given here). A Hugging Face folder is read as
  sentence-transformers reads it (`sentence_transformers_folder`): its modules' pooling and
  normalize, max_seq_length (and query_length), do_lower_case, prompts and default prompt; a
  setting hybridir cannot honour raises. Elsewhere pooling defaults to the family's (mean for mT5
  and XLM-R, [CLS] + dense pooler for BERT), normalize to True and text_format to bare texts
  (`text.UNFORMATTED`). An explicit max_length cuts every text (as `model.max_seq_length = n`).
  `prompts` and `default_prompt_name` win over the path's, as in SentenceTransformer(...);
  hybridir's own artifacts and runs have the prompts of their text format and the default
  'query' (see `encoder.Encoder`). num_partitions > 1 splits the parameters over that many local
  devices (Encoder.num_partitions), for a model too large to replicate on each.
  """
  local = not path.startswith("gs://")
  built = None  # The vocabulary, where a branch needs it before the model is final.
  own_prompts, default = None, "query"  # Of hybridir's artifacts and runs: the text format's.
  if fs.exists(os.path.join(path, artifacts.MANIFEST)):
    if model_config is not None:
      raise ValueError(f"{path}: an exported artifact carries its own config; drop model_config")
    model, params, manifest = artifacts.read_artifact(path, dict(
        pooling=pooling, normalize=normalize, projection_dim=projection_dim,
        text_format=text_format))
    text_format = manifest["text_format"]
    spm_path = vocabulary or os.path.join(path, manifest["vocabulary"]["file"])
    artifacts.check_vocabulary_digest(path, manifest, spm_path)
    query_max_length = manifest.get("query_max_length") if max_length is None else None
    max_length = max_length or manifest["max_length"]
  elif run_dir.is_run(path):  # A training MODEL_DIR: its chosen (a study's), else latest step.
    if model_config is not None:
      raise ValueError(f"{path}: a training run describes its own model; drop model_config")
    description = run_dir.read_description(path)
    model = run_dir.model_from_description(description, os.path.join(path, run_dir.DESCRIPTION))
    step = run_dir.chosen_step(path)
    params = artifacts.checked_params(model, checkpoints.restore_params(path, step)[1], path)
    spm_path = vocabulary or description["vocabulary"]
    text_format = text_format or description["text_format"]
    query_max_length = description.get("query_max_length") if max_length is None else None
    max_length = max_length or description["max_length"]
  else:
    query_max_length, default = None, None
    options = dict(pooling=pooling, normalize=normalize)  # None: the importer decides.
    if projection_dim:
      options["projection_dim"] = projection_dim
    if fs.exists(os.path.join(path, "config.json")):
      model, params = importers.load_hf(path, **options)
      spm_path = vocabulary or vocab.find_vocabulary_file(path, model.encoder_config.family)
      settings = st_folder.read(path)
      # transformers masks padding by its tokenizer's attention mask: pad as the tokenizer does
      # (a MiniLM-style BERT with XLM-R's tokenizer pads with 1, its config.json says 0).
      built = vocab.family_vocabulary(model.encoder_config.family, spm_path)
      if settings.do_lower_case:
        built = vocab.lowercased(built, os.path.join(path, "sentence_bert_config.json"))
      model = model.clone(encoder_config=dataclasses.replace(model.encoder_config,
                                                             pad_id=built.pad_id))
      query_max_length = settings.query_length if max_length is None else None
      # The folder's length, within the positions the model has.
      limits = [n for n in (settings.max_seq_length, model.encoder_config.max_length) if n]
      max_length = max_length or min(limits, default=512)
      own_prompts, default = dict(settings.prompts), settings.default_prompt_name
      if text_format is not None:
        own_prompts.update(query=text_format.query_prefix, document=text_format.passage_prefix)
    elif not local or os.path.exists(os.path.join(path, "checkpoint")):
      if vocabulary is None:
        raise ValueError(f"{path}: a T5X checkpoint needs vocabulary=<SentencePiece model path>")
      model, params = importers.load_t5x(path, model_config, **options)
      spm_path = vocabulary
    else:
      raise FileNotFoundError(f"{path}: neither a Hugging Face model directory (config.json), "
                              f"an exported artifact ({artifacts.MANIFEST}) nor a T5X checkpoint "
                              "(checkpoint file)")
  cfg = model.encoder_config
  text_format = text_format or text_lib.UNFORMATTED
  if own_prompts is None:
    own_prompts = {"query": text_format.query_prefix, "document": text_format.passage_prefix}
  return encoder_lib.Encoder(model, params, artifacts.check_vocabulary(cfg, spm_path, built),
                             max_length or cfg.max_length or 512, batch_size, text_format,
                             query_max_length,
                             name=os.path.basename(os.path.normpath(path)) or "encoder",
                             num_partitions=num_partitions,
                             prompts={**own_prompts, **(prompts or {})},
                             default_prompt_name=default_prompt_name or default)
