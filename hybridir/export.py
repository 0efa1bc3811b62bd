"""Encoders ready for use: exported artifacts, `load_encoder(path)` and `Encoder.encode(texts)`.

An exported artifact is a directory holding `manifest.json` (what the model is: family, encoder
config, pooling, vocabulary, ...), `params/` (orbax, float32 or bfloat16) and a copy of the
SentencePiece model, so it is self-contained. `load_encoder` also reads a Hugging Face model
directory (config.json, weights, SentencePiece model) or a T5X checkpoint plus a vocabulary.
Artifacts are written under a temporary name and renamed when complete.
"""
import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import shutil
import tempfile

import flax
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from hybridir import importers
from hybridir import partitioning
from hybridir import vocab as vocab_lib
from hybridir.models import dual_encoder
from hybridir.models import t5
from hybridir.models import xlmr

# SentencePiece files as the Hugging Face hub names them, by encoder family.
HF_SPM_FILES = {"t5": ("spiece.model",), "xlmr": ("sentencepiece.bpe.model", "spiece.model")}
MIN_BUCKET = 16
FORMAT, FORMAT_VERSION = "hybridir-encoder", 1
MANIFEST, PARAMS_DIR, SPM_FILE = "manifest.json", "params", "sentencepiece.model"
PARAM_DTYPES = ("float32", "bfloat16")
_CONFIGS = {"t5": t5.T5Config, "xlmr": xlmr.XLMRConfig}


@dataclasses.dataclass
class Encoder:
  """A dual encoder with its parameters and vocabulary; encodes texts in fixed-shape batches.

  The forward pass splits each batch over all local devices (parameters replicated), so
  batch_size is rounded up to a multiple of the local device count.
  """
  model: dual_encoder.DualEncoder
  params: dict
  vocabulary: object
  max_length: int = 512
  batch_size: int = 32

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

  def tokenize(self, texts: list[str]) -> list[list[int]]:
    return [vocab_lib.tokenize(self.vocabulary, self.family, t, self.max_length) for t in texts]

  def bucket(self, num_tokens: int) -> int:
    """The padded length of a batch whose longest text has num_tokens: a power of two."""
    return min(self.max_length, max(MIN_BUCKET, 1 << (num_tokens - 1).bit_length()))

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
      tokens = np.full((self.batch_size, self.bucket(max(len(ids[i]) for i in chunk))), pad,
                       np.int32)
      for row, i in enumerate(chunk):
        tokens[row, :len(ids[i])] = ids[i]
      with partitioning.axis_rules_context(self._rules, self.mesh):
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
def atomic_directory(output_dir: str, overwrite: bool = False):
  """Yields a temporary directory beside output_dir that becomes output_dir only on success."""
  output_dir = os.path.abspath(output_dir)
  check_writable(output_dir, overwrite)
  parent = os.path.dirname(output_dir)
  os.makedirs(parent, exist_ok=True)
  temporary = tempfile.mkdtemp(prefix=os.path.basename(output_dir) + ".tmp-", dir=parent)
  try:
    yield temporary
    check_writable(output_dir, overwrite)
    if os.path.exists(output_dir) and os.listdir(output_dir):
      old = tempfile.mkdtemp(prefix=os.path.basename(output_dir) + ".old-", dir=parent)
      os.rename(output_dir, os.path.join(old, "replaced"))
      os.rename(temporary, output_dir)
      shutil.rmtree(old)
    else:
      os.rename(temporary, output_dir)  # Replaces an empty directory atomically.
  finally:
    if os.path.exists(temporary):
      shutil.rmtree(temporary)


def check_writable(output_dir: str, overwrite: bool) -> None:
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise FileExistsError(f"{output_dir} exists and is not a directory")
  if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
    raise FileExistsError(f"{output_dir} exists and is not empty; pass overwrite=True to "
                          "replace it")


def check_vocabulary(config: dual_encoder.EncoderConfig, spm_path: str):
  """The family's vocabulary of a SentencePiece file, checked to fit the model's embedding."""
  if not spm_path.startswith("gs://") and not os.path.isfile(spm_path):
    raise FileNotFoundError(f"{spm_path}: SentencePiece model not found")
  vocabulary = vocab_lib.get_vocabulary(config.family, spm_path)
  if vocabulary.vocab_size > config.vocab_size:
    raise ValueError(f"{spm_path}: vocabulary has {vocabulary.vocab_size} ids but the model's "
                     f"embedding has {config.vocab_size}")
  return vocabulary


def checked_params(model: dual_encoder.DualEncoder, params, source: str) -> dict:
  """Params (numpy or jax, boxed or not) as float32 numpy, checked against the model's shapes."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(nn.unbox(params)), sep="/")
  return importers.assemble_params(model, flat, [], source)


def _sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _write_manifest(directory: str, manifest: dict) -> None:
  with open(os.path.join(directory, MANIFEST), "w") as f:
    json.dump(manifest, f, indent=2, sort_keys=True)


def export_encoder(output_dir: str, model: dual_encoder.DualEncoder, params, spm_path: str,
                   dtype: str = "float32", max_length: int = 512,
                   extra_metadata: dict | None = None, overwrite: bool = False) -> str:
  """Writes an encoder-only artifact (manifest, orbax params, SentencePiece copy); returns it."""
  cfg = model.encoder_config
  if dtype not in PARAM_DTYPES:
    raise ValueError(f"export_encoder dtype must be one of {PARAM_DTYPES}, got {dtype!r}")
  longest = cfg.max_length if cfg.family == "xlmr" else None
  if not isinstance(max_length, int) or max_length < 2 or (longest and max_length > longest):
    raise ValueError(f"export_encoder max_length must be an int in [2, {longest or 'inf'}], "
                     f"got {max_length!r}")
  json.dumps(extra_metadata)  # Fails early (TypeError) when not JSON-serialisable.
  check_writable(os.path.abspath(output_dir), overwrite)
  check_vocabulary(cfg, spm_path)
  params = checked_params(model, params, "export_encoder params")
  params = jax.tree.map(lambda x: x.astype(jnp.dtype(dtype)), params)
  manifest = {
      "format": FORMAT, "format_version": FORMAT_VERSION, "family": cfg.family,
      "encoder_config": dataclasses.asdict(cfg), "pooling": model.pooling,
      "normalize": model.normalize, "projection_dim": model.projection_dim,
      "shared_towers": model.shared_towers, "param_dtype": dtype, "max_length": max_length,
      "vocabulary": {"source": os.path.abspath(spm_path), "file": SPM_FILE,
                     "sha256": _sha256(spm_path)},
      "parameter_count": int(sum(x.size for x in jax.tree.leaves(params))),
      "created": {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                  "hybridir_version": _version(), "jax_version": jax.__version__},
      "metadata": extra_metadata or {},
  }
  with atomic_directory(output_dir, overwrite) as temporary:
    ocp.PyTreeCheckpointer().save(os.path.join(temporary, PARAMS_DIR),
                                  args=ocp.args.PyTreeSave(params))
    shutil.copyfile(spm_path, os.path.join(temporary, SPM_FILE))
    _write_manifest(temporary, manifest)
  return os.path.abspath(output_dir)


def _version() -> str:
  import hybridir  # The package's own version; imported here to keep the import graph one-way.
  return hybridir.__version__


def _restore_numpy(path: str, subtree: str | None = None) -> dict:
  """An orbax pytree (or one top-level entry of it) as numpy arrays, whatever devices saved it."""
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
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{directory}: no checkpoints directory (is {model_dir} a MODEL_DIR?)")
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit()
                and os.path.isdir(os.path.join(directory, name, "state")))


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


@gin.configurable
def export_from_training_checkpoint(model_dir: str, output_dir: str,
                                    model: dual_encoder.DualEncoder, spm_path: str,
                                    step: int | None = None, **export_options) -> str:
  """Exports the model params of MODEL_DIR's latest (or given) training checkpoint."""
  step, params = restore_training_params(model_dir, step)
  metadata = dict(export_options.pop("extra_metadata", None) or {})
  metadata.update(training_checkpoint=os.path.abspath(model_dir), step=step)
  return export_encoder(output_dir, model, params, spm_path, extra_metadata=metadata,
                        **export_options)


# ---------------------------------------------------------------------------------------------
# Loading

def read_manifest(path: str) -> dict:
  manifest_path = os.path.join(path, MANIFEST)
  try:
    with open(manifest_path) as f:
      manifest = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{manifest_path}: not valid JSON: {e}") from e
  if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{manifest_path}: format {manifest.get('format')!r} version "
                     f"{manifest.get('format_version')!r}; expected {FORMAT!r} {FORMAT_VERSION}")
  if manifest.get("family") not in _CONFIGS:
    raise ValueError(f"{manifest_path}: unknown family {manifest.get('family')!r}; "
                     f"expected one of {sorted(_CONFIGS)}")
  return manifest


def _load_artifact(path: str, overrides: dict) -> tuple[dual_encoder.DualEncoder, dict, dict]:
  """(model, float32 params, manifest) of an exported artifact."""
  manifest = read_manifest(path)
  for name, value in overrides.items():
    if value is not None and value != manifest[name]:
      raise ValueError(f"{path}: the artifact was exported with {name}={manifest[name]!r}, "
                       f"not {value!r}")
  try:
    cfg = _CONFIGS[manifest["family"]](**manifest["encoder_config"])
  except TypeError as e:
    raise ValueError(f"{path}/{MANIFEST}: bad encoder_config: {e}") from e
  model = dual_encoder.DualEncoder(cfg, pooling=manifest["pooling"],
                                   projection_dim=manifest["projection_dim"],
                                   normalize=manifest["normalize"],
                                   shared_towers=manifest["shared_towers"])
  params = checked_params(model, _restore_numpy(os.path.join(path, PARAMS_DIR)), path)
  return model, params, manifest


def _find_spm(model_dir: str, family: str) -> str:
  for name in HF_SPM_FILES[family]:
    if os.path.exists(os.path.join(model_dir, name)):
      return os.path.join(model_dir, name)
  raise FileNotFoundError(
      f"{model_dir}: no SentencePiece model ({' or '.join(HF_SPM_FILES[family])}); hybridir "
      "tokenises with SentencePiece: copy the model's file there or pass vocabulary=PATH")


def load_encoder(path: str, vocabulary: str | None = None, model_config=None,
                 pooling: str | None = None, normalize: bool | None = None,
                 projection_dim: int | None = None, max_length: int | None = None,
                 batch_size: int = 32) -> Encoder:
  """Loads an exported artifact, a Hugging Face directory or a T5X checkpoint (with vocabulary).

  An artifact carries its own config, pooling and vocabulary; options that contradict it raise.
  Elsewhere pooling defaults to 'mean' and normalize to True.
  """
  local = not path.startswith("gs://")
  if local and os.path.exists(os.path.join(path, MANIFEST)):
    if model_config is not None:
      raise ValueError(f"{path}: an exported artifact carries its own config; drop model_config")
    model, params, manifest = _load_artifact(path, dict(
        pooling=pooling, normalize=normalize, projection_dim=projection_dim))
    spm_path = vocabulary or os.path.join(path, manifest["vocabulary"]["file"])
    max_length = max_length or manifest["max_length"]
  else:
    options = dict(pooling=pooling or "mean", normalize=True if normalize is None else normalize)
    if projection_dim:
      options["projection_dim"] = projection_dim
    if local and os.path.exists(os.path.join(path, "config.json")):
      model, params = importers.load_hf(path, **options)
      spm_path = vocabulary or _find_spm(path, model.encoder_config.family)
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
  default_length = cfg.max_length if cfg.family == "xlmr" else 512
  return Encoder(model, params, check_vocabulary(cfg, spm_path), max_length or default_length,
                 batch_size)
