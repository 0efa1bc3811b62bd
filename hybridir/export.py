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

import flax
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from hybridir import fs
from hybridir import importers
from hybridir import partitioning
from hybridir import text as text_lib
from hybridir.models import dual_encoder
from hybridir.models import families

MIN_BUCKET = 16
FORMAT, FORMAT_VERSION = "hybridir-encoder", 1
MANIFEST, PARAMS_DIR, SPM_FILE = "manifest.json", "params", "sentencepiece.model"
PARAM_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass
class Encoder:
  """A dual encoder with its parameters and vocabulary; encodes texts in fixed-shape batches.

  The forward pass splits each batch over all local devices (parameters replicated), so
  batch_size is rounded up to a multiple of the local device count. Texts become tokens through
  `text.tokenize` with `text_format` (prefixes, passage unit), as in training.
  """
  model: dual_encoder.DualEncoder
  params: dict
  vocabulary: object
  max_length: int = 512
  batch_size: int = 32
  text_format: text_lib.TextFormat = dataclasses.field(default_factory=text_lib.TextFormat)
  query_max_length: int | None = None  # Queries' cut, as in training (None: max_length).

  def __post_init__(self):
    self.family = self.model.encoder_config.family
    self.mesh = partitioning.create_mesh(num_partitions=1, devices=jax.local_devices())
    num_devices = self.mesh.devices.size
    self.batch_size = -(-self.batch_size // num_devices) * num_devices
    self._rules = ENCODE_AXIS_RULES
    self.params = jax.device_put(jax.tree.map(jnp.asarray, self.params),
                                 partitioning.replicated(self.mesh))
    self._encode = encode_step(self.model, self.mesh)

  @property
  def dimension(self) -> int:
    return self.model.projection_dim or self.model.encoder_config.emb_dim

  def tokenize(self, texts: list[str], tower: str = "query",
               contexts: list[str] | None = None) -> list[list[int]]:
    """Ids of each text with its tower's prefix (and, for passages, its context)."""
    contexts = [""] * len(texts) if contexts is None else list(contexts)
    if len(contexts) != len(texts):
      raise ValueError(f"encode: {len(texts)} texts but {len(contexts)} contexts")
    return [text_lib.tokenize(self.vocabulary, tower, text, context, self.length(tower),
                              self.text_format) for text, context in zip(texts, contexts)]

  def length(self, tower: str) -> int:
    """The longest input of a tower: query_max_length for queries when set, else max_length."""
    return self.query_max_length if tower == "query" and self.query_max_length else (
        self.max_length)

  def bucket(self, num_tokens: int, tower: str = "passage") -> int:
    """The padded length of a batch whose longest text has num_tokens: a power of two."""
    return min(self.length(tower), max(MIN_BUCKET, 1 << (num_tokens - 1).bit_length()))

  def encode(self, texts: list[str], tower: str = "query",
             contexts: list[str] | None = None) -> np.ndarray:
    """Embeds texts ([N, D] float32): queries, or passages (`contexts`: each one's paragraph).

    `tower` also selects the prefix. Batches are sorted by length and padded to a bucket
    (a power of two up to max_length), so only a few shapes are ever compiled."""
    if isinstance(texts, str):
      raise TypeError("encode takes a list of texts, not a single string")
    return self.encode_ids(self.tokenize(list(texts), tower, contexts), tower)

  def encode_ids(self, ids: list[list[int]], tower: str = "query") -> np.ndarray:
    """Embeds token id lists ([N, D] float32), as `encode` does once texts are tokenised."""
    order = np.argsort([len(x) for x in ids], kind="stable")
    out = np.zeros((len(ids), self.dimension), np.float32)
    pad = self.model.encoder_config.pad_id
    for start in range(0, len(ids), self.batch_size):
      chunk = order[start:start + self.batch_size]
      longest = max(len(ids[i]) for i in chunk)
      tokens = np.full((self.batch_size, self.bucket(longest, tower)), pad, np.int32)
      for row, i in enumerate(chunk):
        tokens[row, :len(ids[i])] = ids[i]
      with partitioning.axis_rules_context(self._rules, self.mesh):
        # Placed first: under jax.distributed, jit refuses numpy input with a batch sharding.
        tokens = jax.device_put(tokens, partitioning.batch_sharding(self.mesh))
        embeddings = self._encode(self.params, tokens, tower)
      out[chunk] = np.asarray(embeddings)[:len(chunk)]
    return out


ENCODE_AXIS_RULES = partitioning.standard_logical_axis_rules(1, 1)


def encode_step(model: dual_encoder.DualEncoder, mesh: jax.sharding.Mesh):
  """The jitted (params, tokens, tower) -> embeddings of evaluation: params replicated, the batch
  split over the mesh; trace it inside axis_rules_context(ENCODE_AXIS_RULES, mesh)."""
  replicated = partitioning.replicated(mesh)
  batch = partitioning.batch_sharding(mesh)
  return jax.jit(
      lambda params, tokens, tower: model.apply(
          {"params": params}, tokens, tower, method=dual_encoder.DualEncoder.encode),
      in_shardings=(replicated, batch), out_shardings=batch, static_argnums=2)


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


def check_writable(output_dir: str, overwrite: bool) -> None:
  if fs.exists(output_dir) and not fs.isdir(output_dir):
    raise FileExistsError(f"{output_dir} exists and is not a directory")
  if fs.isdir(output_dir) and fs.listdir(output_dir) and not overwrite:
    raise FileExistsError(f"{output_dir} exists and is not empty; pass overwrite=True to "
                          "replace it")


def check_vocabulary(config: dual_encoder.EncoderConfig, spm_path: str):
  """The family's vocabulary of a SentencePiece file, checked to fit the model's embedding."""
  if not fs.isfile(spm_path):
    raise FileNotFoundError(f"{spm_path}: SentencePiece model not found")
  vocabulary = families.of_config(config).make_vocabulary(spm_path)
  if vocabulary.vocab_size > config.vocab_size:
    raise ValueError(f"{spm_path}: vocabulary has {vocabulary.vocab_size} ids but the model's "
                     f"embedding has {config.vocab_size}")
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
  check_vocabulary(cfg, spm_path)
  params = checked_params(model, params, "export_encoder params")
  params = jax.tree.map(lambda x: x.astype(jnp.dtype(dtype)), params)
  # A SentencePiece model keeps the name it always had; other kinds take the family's (vocab.txt).
  vocabulary_file = (SPM_FILE if spm_path.endswith(".model")
                     else families.of_config(cfg).vocabulary_files[0])
  manifest = {
      "format": FORMAT, "format_version": FORMAT_VERSION, "family": cfg.family,
      "encoder_config": dataclasses.asdict(cfg), "pooling": model.pooling,
      "normalize": model.normalize, "projection_dim": model.projection_dim,
      "shared_towers": model.shared_towers, "param_dtype": dtype, "max_length": max_length,
      "query_max_length": query_max_length, "text_format": (text_format or text_lib.TextFormat()).to_json(),
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
    fs.copy_file(spm_path, os.path.join(temporary, vocabulary_file))
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
                                    model: dual_encoder.DualEncoder, spm_path: str,
                                    step: int | None = None,
                                    text_format: text_lib.TextFormat | None = None,
                                    **export_options) -> str:
  """Exports the model params of MODEL_DIR's latest (or given) training checkpoint.

  The manifest records the text format the checkpoint was trained with; a checkpoint from before
  formats were recorded gets `text_format`, else bare texts (`text.UNFORMATTED`), as it was trained.
  max_length and query_max_length default to the passage and query lengths it was trained
  with, so texts are cut as then.
  """
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


# ---------------------------------------------------------------------------------------------
# Loading

def read_manifest(path: str) -> dict:
  manifest_path = os.path.join(path, MANIFEST)
  try:
    with fs.open(manifest_path) as f:
      manifest = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{manifest_path}: not valid JSON: {e}") from e
  if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{manifest_path}: format {manifest.get('format')!r} version "
                     f"{manifest.get('format_version')!r}; expected {FORMAT!r} {FORMAT_VERSION}")
  if manifest.get("family") not in families.names():
    raise ValueError(f"{manifest_path}: unknown family {manifest.get('family')!r}; "
                     f"expected one of {list(families.names())}")
  return manifest


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
    cfg = families.get(manifest["family"]).config_class(**manifest["encoder_config"])
  except TypeError as e:
    raise ValueError(f"{path}/{MANIFEST}: bad encoder_config: {e}") from e
  model = dual_encoder.DualEncoder(cfg, pooling=manifest["pooling"],
                                   projection_dim=manifest["projection_dim"],
                                   normalize=manifest["normalize"],
                                   shared_towers=manifest["shared_towers"])
  params = checked_params(model, _restore_numpy(os.path.join(path, PARAMS_DIR)), path)
  return model, params, manifest


def _find_vocabulary(model_dir: str, family: families.EncoderFamily) -> str:
  for name in family.vocabulary_files:
    if fs.exists(os.path.join(model_dir, name)):
      return os.path.join(model_dir, name)
  raise FileNotFoundError(
      f"{model_dir}: no vocabulary file ({' or '.join(family.vocabulary_files)}); hybridir "
      "tokenises with it: copy the model's file there or pass vocabulary=PATH")


def load_encoder(path: str, vocabulary: str | None = None, model_config=None,
                 pooling: str | None = None, normalize: bool | None = None,
                 projection_dim: int | None = None, max_length: int | None = None,
                 batch_size: int = 32, text_format: text_lib.TextFormat | None = None) -> Encoder:
  """Loads an exported artifact, a Hugging Face directory or a T5X checkpoint (with vocabulary).

  An artifact carries its own config, pooling, vocabulary and text format; options that
  contradict it raise. A sentence-transformers folder's modules decide pooling and normalize the
  same way; elsewhere pooling defaults to the family's (mean for mT5 and XLM-R, [CLS] + dense
  pooler for BERT), normalize to True and text_format to bare texts (`text.UNFORMATTED`).
  """
  local = not path.startswith("gs://")
  if fs.exists(os.path.join(path, MANIFEST)):
    if model_config is not None:
      raise ValueError(f"{path}: an exported artifact carries its own config; drop model_config")
    model, params, manifest = _load_artifact(path, dict(
        pooling=pooling, normalize=normalize, projection_dim=projection_dim,
        text_format=text_format))
    text_format = manifest["text_format"]
    spm_path = vocabulary or os.path.join(path, manifest["vocabulary"]["file"])
    query_max_length = manifest.get("query_max_length") if max_length is None else None
    max_length = max_length or manifest["max_length"]
  else:
    query_max_length = None
    options = dict(pooling=pooling, normalize=normalize)  # None: the importer decides.
    if projection_dim:
      options["projection_dim"] = projection_dim
    if fs.exists(os.path.join(path, "config.json")):
      model, params = importers.load_hf(path, **options)
      spm_path = vocabulary or _find_vocabulary(path, families.of_config(model.encoder_config))
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
  return Encoder(model, params, check_vocabulary(cfg, spm_path),
                 max_length or cfg.max_length or 512, batch_size,
                 text_format or text_lib.UNFORMATTED, query_max_length)
