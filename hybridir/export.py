"""Encoders ready for use: exported artifacts, `load_encoder(path)` and `Encoder.encode(texts)`.

An exported artifact is a directory holding `manifest.json` (what the model is: family, encoder
config, pooling, vocabulary, text format (prefixes, passage unit), ...), `params/` (orbax, float32
or bfloat16) and a copy of the SentencePiece model, so it is self-contained. `load_encoder` also
reads a Hugging Face model directory (config.json, weights, SentencePiece model) or a T5X
checkpoint plus a vocabulary.
Artifacts are written under a temporary name and renamed when complete.
"""
import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import shutil

import flax
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from hybridir import fs
from hybridir import importers
from hybridir import run_dir
from hybridir.encoder import (ENCODE_AXIS_RULES, Encoder, encode_param_shardings,  # noqa: F401
                              encode_step)  # (export.*)
from hybridir import text as text_lib
from hybridir import vocab
from hybridir.models import dual_encoder
from hybridir.models import families

FORMAT, FORMAT_VERSION = "hybridir-encoder", 1
MANIFEST, PARAMS_DIR, SPM_FILE = "manifest.json", "params", "sentencepiece.model"
PARAM_DTYPES = ("float32", "bfloat16")
# What a manifest must hold beyond its format and family (text_format may be absent: older).
MANIFEST_KEYS = ("encoder_config", "pooling", "normalize", "projection_dim", "shared_towers",
                 "param_dtype", "max_length", "vocabulary", "parameter_count")


class ArtifactError(ValueError):
  """An exported artifact is incomplete or differs from its manifest; the message says what."""


# ---------------------------------------------------------------------------------------------
# Writing artifacts

@contextlib.contextmanager
def atomic_directory(output_dir: str, overwrite: bool = False, marker: str = MANIFEST):
  """Yields a local directory that becomes output_dir only on success (see fs.atomic_directory:
  on gs:// the files are uploaded with `marker` last, and readers trust only marked ones)."""
  check_writable(output_dir, overwrite)
  with fs.atomic_directory(output_dir, marker) as temporary:
    yield temporary
    check_writable(output_dir, overwrite)


def copy_artifact(artifact_dir: str, output_dir: str) -> str:
  """Copies a local artifact to output_dir (local or gs://), replacing it atomically, manifest
  last; returns output_dir."""
  with atomic_directory(output_dir, overwrite=True) as temporary:
    shutil.copytree(artifact_dir, temporary, dirs_exist_ok=True)
  return output_dir


def check_writable(output_dir: str, overwrite: bool) -> None:
  """Fails unless an artifact can be written to output_dir (not a file, empty unless overwrite,
  writable: fs.check_writable)."""
  fs.check_writable(output_dir, "output_dir")
  if fs.exists(output_dir) and not fs.isdir(output_dir):
    raise FileExistsError(f"{output_dir} exists and is not a directory")
  if fs.isdir(output_dir) and fs.listdir(output_dir) and not overwrite:
    raise FileExistsError(f"{output_dir} exists and is not empty; pass overwrite=True to "
                          "replace it")


def check_vocabulary(config: dual_encoder.EncoderConfig, spm_path: str, vocabulary=None):
  """The family's vocabulary of a vocabulary file (built unless given), checked to fit the model's
  embedding and to pad with the model's pad_id (which decides the attention mask)."""
  if vocabulary is None:
    if not fs.isfile(spm_path):
      raise FileNotFoundError(f"{spm_path}: vocabulary file not found")
    vocabulary = vocab.family_vocabulary(families.of_config(config).name, spm_path)
  if vocabulary.vocab_size > config.vocab_size:
    raise ValueError(f"{spm_path}: vocabulary has {vocabulary.vocab_size} ids but the model's "
                     f"embedding has {config.vocab_size}")
  if vocabulary.pad_id != config.pad_id:
    raise ValueError(f"{spm_path}: the vocabulary pads with id {vocabulary.pad_id} but the "
                     f"model's {type(config).__name__}.pad_id is {config.pad_id}")
  return vocabulary


def checked_params(model: dual_encoder.DualEncoder, params, source: str) -> dict:
  """Params (numpy or jax, boxed or not) as float32 numpy, checked against the model's shapes."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(nn.unbox(params)), sep="/")
  return importers.assemble_params(model, flat, [], source)


def _sha256(path: str) -> str:
  return hashlib.sha256(fs.read_bytes(path)).hexdigest()


def _write_manifest(directory: str, manifest: dict) -> None:
  with open(os.path.join(directory, MANIFEST), "w") as f:
    json.dump(manifest, f, indent=2, sort_keys=True)


def export_encoder(output_dir: str, model: dual_encoder.DualEncoder, params, spm_path: str,
                   dtype: str = "float32", max_length: int = 512,
                   extra_metadata: dict | None = None, overwrite: bool = False,
                   text_format: text_lib.TextFormat | None = None,
                   query_max_length: int | None = None) -> str:
  """Writes an encoder-only artifact (manifest, orbax params, SentencePiece copy); returns it.

  max_length cuts passages (and queries unless query_max_length is given), as training did.

  `text_format` (default: the gin-configured `text.TextFormat()`, as training's) is recorded so
  that a loaded encoder applies the prefixes and passage unit it was trained with.
  """
  cfg = model.encoder_config
  if dtype not in PARAM_DTYPES:
    raise ValueError(f"export_encoder dtype must be one of {PARAM_DTYPES}, got {dtype!r}")
  longest = cfg.max_length
  if not isinstance(max_length, int) or max_length < 2 or (longest and max_length > longest):
    raise ValueError(f"export_encoder max_length must be an int in [2, {longest or 'inf'}], "
                     f"got {max_length!r}")
  if query_max_length is not None and (not isinstance(query_max_length, int) or
                                       query_max_length < 2 or
                                       (longest and query_max_length > longest)):
    raise ValueError("export_encoder query_max_length must be None or an int in "
                     f"[2, {longest or 'inf'}], got {query_max_length!r}")
  json.dumps(extra_metadata)  # Fails early (TypeError) when not JSON-serialisable.
  check_writable(fs.abspath(output_dir), overwrite)
  vocabulary = check_vocabulary(cfg, spm_path)
  params = checked_params(model, params, "export_encoder params")
  params = jax.tree.map(lambda x: x.astype(jnp.dtype(dtype)), params)
  # A SentencePiece model keeps the name it always had; other kinds take their kind's (vocab.txt).
  vocabulary_file = (SPM_FILE if spm_path.endswith(".model")
                     else vocab.kind_of(cfg.family, spm_path).files[0])
  manifest = {
      "format": FORMAT, "format_version": FORMAT_VERSION, "family": cfg.family,
      "encoder_config": dataclasses.asdict(cfg), "pooling": model.pooling,
      "normalize": model.normalize, "projection_dim": model.projection_dim,
      "shared_towers": model.shared_towers, "param_dtype": dtype, "max_length": max_length,
      "query_max_length": query_max_length,
      "text_format": (text_format or text_lib.TextFormat()).to_json(),
      "vocabulary": {"source": fs.abspath(spm_path), "file": vocabulary_file,
                     "sha256": _sha256(spm_path)},
      "parameter_count": int(sum(x.size for x in jax.tree.leaves(params))),
      "created": {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                  "hybridir_version": _version(), "jax_version": jax.__version__},
      "metadata": extra_metadata or {},
  }
  with atomic_directory(output_dir, overwrite) as temporary:
    ocp.PyTreeCheckpointer().save(os.path.join(temporary, PARAMS_DIR),
                                  args=ocp.args.PyTreeSave(params))
    vocab.write_vocabulary(vocabulary, spm_path, os.path.join(temporary, vocabulary_file))
    _write_manifest(temporary, manifest)
  return fs.abspath(output_dir)


def _version() -> str:
  import hybridir  # The package's own version; imported here to keep the import graph one-way.
  return hybridir.__version__


def _restore_numpy(path: str, subtree: str | None = None) -> dict:
  """An orbax pytree (or one top-level entry of it) as numpy arrays, whatever devices saved it."""
  path = fs.abspath(path)  # orbax reads no item metadata through a relative path.
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  if subtree is not None:
    if subtree not in tree:
      raise KeyError(f"{path}: no {subtree!r} in the checkpoint (found {sorted(tree)})")
    tree = {subtree: tree[subtree]}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
      item=tree, restore_args=restore_args, partial_restore=subtree is not None))
  return restored if subtree is None else restored[subtree]


def training_checkpoint_steps(model_dir: str) -> list[int]:
  """Complete checkpoint steps under MODEL_DIR/checkpoints (half-written ones have other names)."""
  directory = os.path.join(model_dir, "checkpoints")
  if not fs.isdir(directory):
    raise FileNotFoundError(f"{directory}: no checkpoints directory (is {model_dir} a MODEL_DIR?)")
  return sorted(step for step in ocp.step.checkpoint_steps(fs.path(directory))  # Finalized only.
                if fs.isdir(os.path.join(directory, str(step), "state")))


def restore_training_params(model_dir: str, step: int | None = None) -> tuple[int, dict]:
  """(step, DualEncoder params) of a training checkpoint: the latest one unless step is given."""
  steps = training_checkpoint_steps(model_dir)
  if not steps:
    raise FileNotFoundError(f"{model_dir}/checkpoints: no complete checkpoint")
  step = steps[-1] if step is None else step
  if step not in steps:
    raise FileNotFoundError(f"{model_dir}/checkpoints: no checkpoint for step {step}; "
                            f"found steps {steps}")
  path = os.path.join(model_dir, "checkpoints", str(step), "state")
  params = _restore_numpy(path, "params")
  if "model" not in params:
    raise KeyError(f"{path}: params hold {sorted(params)}, expected 'model'")
  return step, params["model"]


def _run_identity(model_dir: str, step: int) -> tuple[str, dict]:
  """(path, JSON) of the run identity a training checkpoint stores ({} if none)."""
  path = os.path.join(model_dir, "checkpoints", str(step), "data")
  if not fs.isdir(path):
    return path, {}
  position = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(path)
  identity = position.get("identity") if isinstance(position, dict) else None
  return path, identity if isinstance(identity, dict) else {}


def training_text_format(model_dir: str, step: int) -> text_lib.TextFormat | None:
  """The text format a training checkpoint's run identity records (None: it records none)."""
  path, identity = _run_identity(model_dir, step)
  if "text_format" not in identity:
    return None
  return text_lib.TextFormat.from_json(identity["text_format"], path)


@gin.configurable
def export_from_training_checkpoint(model_dir: str, output_dir: str,
                                    model: dual_encoder.DualEncoder | None = None,
                                    spm_path: str | None = None,
                                    step: int | None = None,
                                    text_format: text_lib.TextFormat | None = None,
                                    **export_options) -> str:
  """Exports the model params of MODEL_DIR's latest (or given) training checkpoint.

  The manifest records the text format the checkpoint was trained with; a checkpoint from before
  formats were recorded gets `text_format`, else bare texts (`text.UNFORMATTED`), as it was trained.
  max_length and query_max_length default to the passage and query lengths it was trained
  with, so texts are cut as then. model and spm_path default to the run's own (`run_dir`:
  MODEL_DIR/encoder.json); given, they must agree with it.
  """
  model, spm_path = run_model_and_vocabulary(model_dir, model, spm_path)
  step, params = restore_training_params(model_dir, step)
  trained = training_text_format(model_dir, step)
  lengths = _run_identity(model_dir, step)[1].get("task_feature_lengths")
  for option, feature in (("max_length", "passage"), ("query_max_length", "query")):
    trained_length = lengths.get(feature) if isinstance(lengths, dict) else None
    if export_options.get(option) is None and isinstance(trained_length, int):
      export_options[option] = trained_length
  if trained is not None and text_format is not None and trained != text_format:
    raise ValueError(f"{model_dir}: step {step} was trained with {trained}, not {text_format}")
  metadata = dict(export_options.pop("extra_metadata", None) or {})
  metadata.update(training_checkpoint=fs.abspath(model_dir), step=step)
  return export_encoder(output_dir, model, params, spm_path, extra_metadata=metadata,
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


# ---------------------------------------------------------------------------------------------
# Loading

def read_manifest(path: str) -> dict:
  """The artifact's manifest, checked to be complete (ArtifactError names what is missing)."""
  manifest_path = os.path.join(path, MANIFEST)
  try:
    with fs.open(manifest_path) as f:
      manifest = json.load(f)
  except json.JSONDecodeError as e:
    raise ArtifactError(f"{manifest_path}: not valid JSON: {e}") from e
  if not isinstance(manifest, dict):
    raise ArtifactError(f"{manifest_path}: not a JSON object")
  if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
    raise ArtifactError(f"{manifest_path}: format {manifest.get('format')!r} version "
                        f"{manifest.get('format_version')!r}; expected {FORMAT!r} "
                        f"{FORMAT_VERSION}")
  if manifest.get("family") not in families.names():
    raise ArtifactError(f"{manifest_path}: unknown family {manifest.get('family')!r}; "
                        f"expected one of {list(families.names())}")
  vocabulary = manifest.get("vocabulary") if isinstance(manifest.get("vocabulary"), dict) else {}
  missing = [key for key in MANIFEST_KEYS if key not in manifest] + [
      f"vocabulary.{key}" for key in ("file", "sha256") if not isinstance(vocabulary.get(key), str)]
  if missing:
    raise ArtifactError(f"{manifest_path}: missing {', '.join(missing)}")
  return manifest


def check_vocabulary_digest(path: str, manifest: dict, vocabulary_path: str) -> None:
  """Fails unless the vocabulary file is the one the artifact was exported with (its sha256)."""
  if not fs.isfile(vocabulary_path):
    raise ArtifactError(f"{vocabulary_path}: vocabulary file missing (the artifact's manifest "
                        f"names {manifest['vocabulary']['file']})")
  expected, found = manifest["vocabulary"]["sha256"], _sha256(vocabulary_path)
  if found != expected:
    raise ArtifactError(f"{vocabulary_path}: sha256 {found[:12]}... differs from the manifest's "
                        f"{expected[:12]}... of {path}: not the vocabulary the encoder was "
                        "trained with")


def _restore_artifact_params(path: str, model: dual_encoder.DualEncoder, manifest: dict) -> dict:
  """The artifact's params, checked against the manifest's model (tree, shapes, dtype, count)."""
  params_path = os.path.join(path, PARAMS_DIR)
  if not fs.isdir(params_path):
    raise ArtifactError(f"{params_path}: missing (the artifact's parameters)")
  try:
    stored = _restore_numpy(params_path)
  except Exception as e:  # pylint: disable=broad-except  # orbax / tensorstore, any layer.
    raise ArtifactError(f"{params_path}: unreadable: {' '.join(str(e).split())[:300]}") from e
  dtypes = sorted({str(x.dtype) for x in jax.tree.leaves(stored)})
  if dtypes != [manifest["param_dtype"]]:
    raise ArtifactError(f"{params_path}: parameters are {', '.join(dtypes)}; the manifest "
                        f"says {manifest['param_dtype']}")
  try:
    params = checked_params(model, stored, params_path)
  except importers.CheckpointMismatchError as e:
    problems = [line.strip() for line in str(e).splitlines()[1:]]
    raise ArtifactError(f"{params_path}: does not fit the manifest's model ({len(problems)} "
                        f"problems): {'; '.join(problems[:3])}{'; ...' * (len(problems) > 3)}"
                        ) from None
  count = int(sum(x.size for x in jax.tree.leaves(params)))
  if count != manifest["parameter_count"]:
    raise ArtifactError(f"{params_path}: {count} parameters; the manifest says "
                        f"{manifest['parameter_count']}")
  return params


def _load_artifact(path: str, overrides: dict) -> tuple[dual_encoder.DualEncoder, dict, dict]:
  """(model, float32 params, manifest) of an exported artifact.

  An artifact from before text formats were recorded encodes bare texts, as it did then.
  """
  manifest = read_manifest(path)
  manifest["text_format"] = (text_lib.UNFORMATTED if "text_format" not in manifest else
                             text_lib.TextFormat.from_json(manifest["text_format"],
                                                           os.path.join(path, MANIFEST)))
  for name, value in overrides.items():
    if value is not None and value != manifest[name]:
      raise ValueError(f"{path}: the artifact was exported with {name}={manifest[name]!r}, "
                       f"not {value!r}")
  try:
    model = run_dir.model_from_description(manifest, os.path.join(path, MANIFEST))
  except ValueError as e:
    raise ArtifactError(str(e)) from None
  return model, _restore_artifact_params(path, model, manifest), manifest


def load_encoder(path: str, vocabulary: str | None = None, model_config=None,
                 pooling: str | None = None, normalize: bool | None = None,
                 projection_dim: int | None = None, max_length: int | None = None,
                 batch_size: int = 32, text_format: text_lib.TextFormat | None = None,
                 num_partitions: int = 1) -> Encoder:
  """Loads an exported artifact, a Hugging Face directory or a T5X checkpoint (with vocabulary).

  An artifact carries its own config, pooling, vocabulary and text format; options that
  contradict it raise, and it is verified against its manifest (ArtifactError names what is
  missing or different: keys, params/, parameter tree and shapes, dtype, count, and the
  vocabulary's sha256, also of a `vocabulary` given here). A sentence-transformers folder's
  modules decide pooling and normalize the same way; elsewhere pooling defaults to the family's
  (mean for mT5 and XLM-R, [CLS] + dense pooler for BERT), normalize to True and text_format to
  bare texts (`text.UNFORMATTED`). num_partitions > 1 splits the parameters over that many local
  devices (Encoder.num_partitions), for a model too large to replicate on each.
  """
  local = not path.startswith("gs://")
  built = None  # The vocabulary, where a branch needs it before the model is final.
  if fs.exists(os.path.join(path, MANIFEST)):
    if model_config is not None:
      raise ValueError(f"{path}: an exported artifact carries its own config; drop model_config")
    model, params, manifest = _load_artifact(path, dict(
        pooling=pooling, normalize=normalize, projection_dim=projection_dim,
        text_format=text_format))
    text_format = manifest["text_format"]
    spm_path = vocabulary or os.path.join(path, manifest["vocabulary"]["file"])
    check_vocabulary_digest(path, manifest, spm_path)
    query_max_length = manifest.get("query_max_length") if max_length is None else None
    max_length = max_length or manifest["max_length"]
  elif run_dir.is_run(path):  # A training MODEL_DIR: its latest checkpoint.
    if model_config is not None:
      raise ValueError(f"{path}: a training run describes its own model; drop model_config")
    description = run_dir.read_description(path)
    model = run_dir.model_from_description(description, os.path.join(path, run_dir.DESCRIPTION))
    params = checked_params(model, restore_training_params(path)[1], path)
    spm_path = vocabulary or description["vocabulary"]
    text_format = text_format or description["text_format"]
    query_max_length = description.get("query_max_length") if max_length is None else None
    max_length = max_length or description["max_length"]
  else:
    query_max_length = None
    options = dict(pooling=pooling, normalize=normalize)  # None: the importer decides.
    if projection_dim:
      options["projection_dim"] = projection_dim
    if fs.exists(os.path.join(path, "config.json")):
      model, params = importers.load_hf(path, **options)
      spm_path = vocabulary or vocab.find_vocabulary_file(path, model.encoder_config.family)
      # transformers masks padding by its tokenizer's attention mask: pad as the tokenizer does
      # (a MiniLM-style BERT with XLM-R's tokenizer pads with 1, its config.json says 0).
      built = vocab.family_vocabulary(model.encoder_config.family, spm_path)
      model = model.clone(encoder_config=dataclasses.replace(model.encoder_config,
                                                             pad_id=built.pad_id))
    elif not local or os.path.exists(os.path.join(path, "checkpoint")):
      if vocabulary is None:
        raise ValueError(f"{path}: a T5X checkpoint needs vocabulary=<SentencePiece model path>")
      model, params = importers.load_t5x(path, model_config, **options)
      spm_path = vocabulary
    else:
      raise FileNotFoundError(f"{path}: neither a Hugging Face model directory (config.json), "
                              f"an exported artifact ({MANIFEST}) nor a T5X checkpoint "
                              "(checkpoint file)")
  cfg = model.encoder_config
  return Encoder(model, params, check_vocabulary(cfg, spm_path, built),
                 max_length or cfg.max_length or 512, batch_size,
                 text_format or text_lib.UNFORMATTED, query_max_length,
                 name=os.path.basename(os.path.normpath(path)) or "encoder",
                 num_partitions=num_partitions)
