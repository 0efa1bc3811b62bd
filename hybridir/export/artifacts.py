"""The encoder artifact format: writing one (`export_encoder`) and reading it back, checked.

An artifact is a directory holding `manifest.json` (what the model is: family, encoder config,
pooling, vocabulary, text format (prefixes, passage unit), the sha256 of every file of its
parameters, ...), `params/` (orbax, float32 or bfloat16) and a copy of the vocabulary file, so it
is self-contained. It is written under a temporary name and renamed when complete; reading
verifies it against its manifest (`ArtifactError` names what is missing or different), the
parameter files to the byte once per process (again when a file's size or mtime changes).
"""
import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import shutil

from absl import logging
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from hybridir.data import text as text_lib
from hybridir.data import vocab
from hybridir import fs
from hybridir.models import dual_encoder
from hybridir.models import families
from hybridir.training import checkpoints
from hybridir.training import importers
from hybridir.training import run_dir
from hybridir import version

FORMAT, FORMAT_VERSION = "hybridir-encoder", 1
MANIFEST, PARAMS_DIR, SPM_FILE = "manifest.json", "params", "sentencepiece.model"
PARAM_DTYPES = ("float32", "bfloat16")
PARAMS_SHA256 = "params_sha256"  # {path under params/: sha256}; absent in older artifacts.
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

  `text_format` (default: `text.TextFormat()`, training's default) is recorded so
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
      "vocabulary": {"source": fs.abspath(spm_path), "file": vocabulary_file},
      "parameter_count": int(sum(x.size for x in jax.tree.leaves(params))),
      "created": {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                  "hybridir_version": version.VERSION, "jax_version": jax.__version__},
      "metadata": extra_metadata or {},
  }
  with atomic_directory(output_dir, overwrite) as temporary:
    ocp.PyTreeCheckpointer().save(os.path.join(temporary, PARAMS_DIR),
                                  args=ocp.args.PyTreeSave(params))
    manifest[PARAMS_SHA256] = checkpoints.tree_digests(os.path.join(temporary, PARAMS_DIR))
    vocab.write_vocabulary(vocabulary, spm_path, os.path.join(temporary, vocabulary_file))
    # The digest of the file as written: a WordPiece tokenizer.json is written as vocab.txt.
    manifest["vocabulary"]["sha256"] = _sha256(os.path.join(temporary, vocabulary_file))
    _write_manifest(temporary, manifest)
  return fs.abspath(output_dir)


# ---------------------------------------------------------------------------------------------
# Reading artifacts

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


def _restore_params(path: str, model: dual_encoder.DualEncoder, manifest: dict) -> dict:
  """The artifact's params, checked against the manifest's model (tree, shapes, dtype, count)."""
  params_path = os.path.join(path, PARAMS_DIR)
  if not fs.isdir(params_path):
    raise ArtifactError(f"{params_path}: missing (the artifact's parameters)")
  check_params_digests(path, manifest)
  try:
    stored = checkpoints.restore_numpy(params_path)
  except Exception as e:  # pylint: disable=broad-except  # orbax / tensorstore, any layer.
    raise ArtifactError(f"{params_path}: unreadable: {' '.join(str(e).split())}") from e
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


_VERIFIED_PARAMS = set()  # Stamps (params/, each file's size and mtime) verified in this process.


def _stamp(params_path: str, names) -> tuple | None:
  """What says a parameter file is unchanged since it was verified: its size and mtime."""
  try:
    if fs.is_remote(params_path):
      stats = [(fs.path(params_path) / name).stat() for name in names]
      return params_path, tuple((s.length, s.mtime) for s in stats)
    stats = [os.stat(os.path.join(params_path, name)) for name in names]
    return params_path, tuple((s.st_size, s.st_mtime_ns) for s in stats)
  except OSError:  # A missing file: digest_problem names it.
    return None


def check_params_digests(path: str, manifest: dict) -> None:
  """Fails (ArtifactError naming the file) unless every parameter file has the sha256 the
  manifest records; an artifact from before they were recorded loads with a warning."""
  params_path = os.path.join(path, PARAMS_DIR)
  sums = manifest.get(PARAMS_SHA256)
  if not isinstance(sums, dict):
    logging.warning("%s records no %s (exported before they were): its parameters are loaded "
                    "unverified", os.path.join(path, MANIFEST), PARAMS_SHA256)
    return
  stamp = _stamp(params_path, sorted(sums))
  if stamp is not None and stamp in _VERIFIED_PARAMS:
    return
  problem = checkpoints.digest_problem(params_path, sums)
  if problem:
    raise ArtifactError(f"{problem} (the {PARAMS_SHA256} of {os.path.join(path, MANIFEST)}): "
                        "the artifact's parameters are damaged; export it again")
  if stamp is not None:
    _VERIFIED_PARAMS.add(stamp)


def read_artifact(path: str, overrides: dict) -> tuple[dual_encoder.DualEncoder, dict, dict]:
  """(model, float32 params, manifest) of an exported artifact; `overrides` ({manifest key:
  value or None}) that differ from the manifest raise.

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
  return model, _restore_params(path, model, manifest), manifest
