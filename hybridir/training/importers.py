"""Import pretrained checkpoints into the Flax dual encoder: Hugging Face and T5X.

Both importers return `(model, params)` with `params` shaped exactly as `model.init` makes them.
Every tensor is checked against the model's shapes before anything is used: a mismatch raises
`CheckpointMismatchError` naming every offending parameter, both shapes, and the unknown and
missing tensors.
"""
import dataclasses
import json
import os
import re

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hybridir import fs
from hybridir.models import dual_encoder
from hybridir.models import families
from hybridir.models import t5
from hybridir.training import sentence_transformers_folder as st_folder

# Tensors that a checkpoint may hold but an encoder does not use (decoder, LM head, pooler, ...).
_HF_UNUSED = re.compile(r"^(decoder\.|lm_head\.|pooler\.|embeddings\.(position|token_type)_ids$|"
                        r"encoder\.embed_tokens\.weight$|cls\.|lm_head$)")
_T5X_UNUSED = re.compile(r"^(decoder/|logits_dense/)")


class CheckpointMismatchError(ValueError):
  """A checkpoint does not fit the model config; the message lists every problem."""


def abstract_params(model: dual_encoder.DualEncoder) -> dict:
  """Parameter shapes of a model, without allocating them."""
  tokens = jnp.ones((1, 8), jnp.int32)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, tokens))
  return nn.unbox(variables)["params"]


def _flatten(tree: dict) -> dict[str, object]:
  return {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(tree).items()}


def assemble_params(model: dual_encoder.DualEncoder, tensors: dict[str, np.ndarray],
                    unknown: list[str], source: str) -> dict:
  """Checks tensors (keyed by param path) against the model's shapes and builds the params."""
  expected = check_tensors(model, tensors, unknown, source)
  flat = {tuple(p.split("/")): np.asarray(tensors[p], np.float32) for p in expected}
  return flax.traverse_util.unflatten_dict(flat)


def check_tensors(model: dual_encoder.DualEncoder, tensors: dict, unknown: list[str],
                  source: str) -> dict:
  """The model's flat param shapes, once every tensor (anything with .shape) fits them."""
  expected = _flatten(abstract_params(model))
  problems = []
  for path in sorted(set(expected) & set(tensors)):
    if tuple(tensors[path].shape) != tuple(expected[path].shape):
      problems.append(f"  shape mismatch {path}: checkpoint {tuple(tensors[path].shape)}, "
                      f"model {tuple(expected[path].shape)}")
  problems += [f"  missing in checkpoint: {p} {tuple(expected[p].shape)}"
               for p in sorted(set(expected) - set(tensors))]
  problems += [f"  unknown tensor: {name}" for name in sorted(unknown)]
  problems += [f"  unknown tensor: {p}" for p in sorted(set(tensors) - set(expected))]
  if problems:
    raise CheckpointMismatchError(
        f"checkpoint {source} does not fit the model ({len(problems)} problems):\n"
        + "\n".join(problems))
  return expected


# ---------------------------------------------------------------------------------------------
# Hugging Face

def config_from_hf(hf_config: dict, source: str = "config.json") -> dual_encoder.EncoderConfig:
  """Our encoder config from a transformers config.json, by its family's record."""
  family = families.from_hf_model_type(hf_config.get("model_type"), source)
  return family.config_from_hf(hf_config, source)


# BERT's and RoBERTa's dense tanh pooler: the DualEncoder's `pooler` with 'first_dense' pooling.
HF_POOLER_NAMES = {"pooler.dense.weight": ("pooler/kernel", True),
                   "pooler.dense.bias": ("pooler/bias", False)}


def _pooling_options(model_dir: str, settings: st_folder.FolderSettings, family,
                     options: dict) -> tuple[dict, dict]:
  """(DualEncoder options, pooler tensors): pooling and normalize as the folder's
  sentence-transformers modules give them (an option contradicting them raises), else the
  options, else the family's default pooling and normalize=True; a LaBSE-style Dense's tensors
  as the 'first_dense' pooler."""
  options = dict(options)
  if settings.pooling is not None:
    for name in ("pooling", "normalize"):
      if options.get(name) is not None and options[name] != getattr(settings, name):
        raise ValueError(f"{model_dir}/modules.json: the sentence-transformers modules give "
                         f"{name}={getattr(settings, name)!r}, not {options[name]!r}")
      options[name] = getattr(settings, name)
  if options.get("pooling") is None:
    options["pooling"] = family.default_pooling
  if options.get("normalize") is None:
    options["normalize"] = True
  tensors = {}
  if settings.dense_dir is not None:
    dense = _read_hf_tensors(settings.dense_dir)
    tensors = {"pooler/kernel": dense["linear.weight"].T, "pooler/bias": dense["linear.bias"]}
  return options, tensors


def _read_hf_tensors(model_dir: str) -> dict[str, np.ndarray]:
  """All tensors of a HF model directory: (sharded) safetensors, else PyTorch .bin."""
  files = sorted(f for f in fs.listdir(model_dir) if f.endswith(".safetensors"))
  if files:
    from safetensors.numpy import load_file
    tensors = {}
    for f in files:
      try:
        tensors.update(load_file(fs.local_copy(os.path.join(model_dir, f))))
      except Exception as e:  # safetensors raises its own error types.
        raise ValueError(f"{os.path.join(model_dir, f)}: unreadable safetensors file: {e}") from e
    return tensors
  bins = sorted(f for f in fs.listdir(model_dir) if f.startswith("pytorch_model") and
                f.endswith(".bin"))
  if not bins:
    raise FileNotFoundError(f"{model_dir}: no model.safetensors or pytorch_model.bin")
  try:
    import torch
  except ImportError as e:
    raise ImportError(f"{model_dir}: reading pytorch_model.bin needs torch (pip install "
                      "torch), or convert the checkpoint to safetensors") from e
  tensors = {}
  for f in bins:
    state = torch.load(fs.local_copy(os.path.join(model_dir, f)), map_location="cpu",
                       weights_only=True)
    tensors.update({k: v.float().numpy() for k, v in state.items()})
  return tensors


def load_hf(model_dir: str, target: dual_encoder.DualEncoder | None = None,
            **dual_encoder_options) -> tuple[dual_encoder.DualEncoder, dict]:
  """A transformers model directory of any family (MT5EncoderModel, XLMRobertaModel, BertModel...).

  `target`: check and assemble the tensors against this model (e.g. a gin-configured one to
  initialise training) instead of one built from the checkpoint's config.json; its pooling and
  normalize must be the folder's sentence-transformers modules' (else a ValueError naming both).
  Pooling and normalize: see `_pooling_options` (a sentence-transformers folder's modules decide).
  """
  config_path = os.path.join(model_dir, "config.json")
  if not fs.exists(config_path):
    raise FileNotFoundError(f"{model_dir}: no config.json (not a Hugging Face model directory)")
  with fs.open(config_path) as f:
    cfg = config_from_hf(json.load(f), config_path)
  family = families.of_config(cfg)
  settings = st_folder.read(model_dir)
  options, head_tensors = _pooling_options(model_dir, settings, family, dual_encoder_options)
  if target is not None and settings.pooling is not None:
    _check_target_head(model_dir, target, options)
  model = target or dual_encoder.DualEncoder(cfg, **options)
  names = {name: ("encoder/" + path, transpose)
           for name, (path, transpose) in family.hf_names(cfg).items()}
  if model.pooling != "first_dense":
    head_tensors = {}
  elif not head_tensors:
    names.update(HF_POOLER_NAMES)  # BertModel's own pooler; a sentence-transformers Dense wins.
  tensors, unknown = dict(head_tensors), []
  for name, value in _read_hf_tensors(model_dir).items():
    stripped = [name[len(p):] for p in family.hf_name_prefixes if name.startswith(p)]
    name = next((n for n in stripped if n in names), stripped[0] if stripped else name)
    if name in names:
      path, transpose = names[name]
      tensors[path] = value.T if transpose else value
    elif name == "encoder.embed_tokens.weight" and "encoder/token_embedder/embedding" not in tensors:
      tensors["encoder/token_embedder/embedding"] = value  # Saved without the tied `shared`.
    elif not _HF_UNUSED.match(name) and not re.match(
        r"^encoder\.block\.\d+\.layer\.0\.SelfAttention\.relative_attention_bias", name):
      unknown.append(name)
  return model, assemble_params(model, tensors, unknown, model_dir)


def _check_target_head(model_dir: str, target: dual_encoder.DualEncoder, folder: dict) -> None:
  """A run's model pools and normalises as the folder it starts from, else one line naming both:
  the run describes, trains and exports its own model, so it may not silently differ."""
  changed = [f"{name}={folder[name]!r} (the run's model: {getattr(target, name)!r})"
             for name in ("pooling", "normalize") if getattr(target, name) != folder[name]]
  if changed:
    raise ValueError(f"{model_dir}/modules.json gives " + ", ".join(changed)
                     + ": set the model file's POOLING (and normalize) to the folder's")


# ---------------------------------------------------------------------------------------------
# T5X

def _kvstore(path: str) -> dict:
  if path.startswith("gs://"):
    bucket, _, prefix = path[len("gs://"):].partition("/")
    return {"driver": "gcs", "bucket": bucket, "path": prefix}
  return {"driver": "file", "path": os.path.abspath(path) + ("/" if path.endswith("/") else "")}


def _read(leaf, index=()):
  """leaf[index] as numpy: a tensorstore array reads only that slice."""
  return leaf[index].read().result() if hasattr(leaf, "read") else np.asarray(leaf)[index]


def open_t5x_checkpoint(path: str, skip: re.Pattern | None = None) -> dict:
  """A T5X checkpoint's parameters, flat by path, unread: opened tensorstore arrays (shape and
  dtype from their metadata) or the small numpy arrays stored inline. `skip`: names not to open."""
  import tensorstore as ts
  ckpt_dir = path[:-len("/checkpoint")] if path.endswith("/checkpoint") else path.rstrip("/")
  store = ts.KvStore.open(_kvstore(ckpt_dir + "/")).result()
  raw = store.read("checkpoint").result()
  if raw.state != "value":
    raise FileNotFoundError(f"{ckpt_dir}: no T5X `checkpoint` file")
  try:
    tree = flax.serialization.msgpack_restore(bytes(raw.value))
    target = tree["optimizer"]["target"]
  except Exception as e:
    raise ValueError(f"{ckpt_dir}/checkpoint: not a T5X checkpoint: {e}") from e

  def is_spec(x):
    return isinstance(x, dict) and "driver" in x and "kvstore" in x

  out = {}
  for keys, leaf in flax.traverse_util.flatten_dict(target, is_leaf=lambda _, x: is_spec(x)).items():
    name = "/".join(keys)
    if skip is not None and skip.match(name):
      continue
    if is_spec(leaf):
      spec = dict(leaf)
      relative = spec["kvstore"].get("path") or spec.get("path")
      spec["kvstore"] = _kvstore(f"{ckpt_dir}/{relative}")
      spec.pop("path", None)
      try:
        out[name] = ts.open(spec, open=True, read=True).result()
      except Exception as e:
        raise ValueError(f"{ckpt_dir}/{relative}: unreadable tensorstore array for {name}: {e}")
    else:
      out[name] = np.asarray(leaf)
  return out


def config_from_t5x(tensors: dict[str, np.ndarray], **overrides) -> t5.T5Config:
  """Infers a T5 config from a T5X checkpoint's shapes (T5X checkpoints carry no config).

  `wi` means a T5 1.0 ReLU MLP and `wi_0`/`wi_1` a gated-GELU one; anything else (dropout,
  max distance, ...) can be given in `overrides`.
  """
  num_layers = len({k.split("/")[1] for k in tensors if re.match(r"^encoder/layers_\d+/", k)})
  rel = tensors["encoder/relpos_bias/rel_embedding"]
  embedding = tensors["token_embedder/embedding"]
  gated = "encoder/layers_0/mlp/wi_0/kernel" in tensors
  wi = tensors["encoder/layers_0/mlp/wi_0/kernel" if gated else "encoder/layers_0/mlp/wi/kernel"]
  fields = dict(vocab_size=embedding.shape[0], emb_dim=embedding.shape[1], num_layers=num_layers,
                num_heads=rel.shape[0], head_dim=tensors["encoder/layers_0/attention/query/kernel"]
                .shape[1] // rel.shape[0], mlp_dim=wi.shape[1],
                mlp_activations=("gelu", "linear") if gated else ("relu",),
                relative_attention_num_buckets=rel.shape[1])
  fields.update(overrides)
  return t5.T5Config(**fields)


def load_t5x(path: str, config: t5.T5Config | None = None,
             target: dual_encoder.DualEncoder | None = None,
             **dual_encoder_options) -> tuple[dual_encoder.DualEncoder, dict]:
  """A T5X (dual) encoder checkpoint: `token_embedder`, `encoder/...`, optional projection.

  `target`: check and assemble against this model instead of one built from `config` (or the
  config inferred from the checkpoint's shapes).
  """
  model, tensors, unknown = _t5x_encoder(path, config, target, dual_encoder_options)
  return model, assemble_params(model, tensors, unknown, path)


def load_t5x_sharded(path: str, target: dual_encoder.DualEncoder, shardings) -> dict:
  """A T5X checkpoint's encoder params as global jax.Arrays laid out by `shardings` (NamedShardings
  shaped like the params), as a pod loads them: each process reads only the slices its own devices
  hold (tensorstore reads a slice's chunks), nothing of the decoder, and no process holds the
  whole tree; every process calls it (the checkpoint is checked against `target` first)."""
  model, tensors, unknown = _t5x_encoder(path, None, target, {})
  expected = check_tensors(model, tensors, unknown, path)
  flat_shardings = _flatten(shardings)
  if set(flat_shardings) != set(expected):
    raise ValueError(f"load_t5x_sharded: shardings do not match the params of the model: "
                     f"{sorted(set(flat_shardings) ^ set(expected))[:5]}")
  arrays = {tuple(p.split("/")): jax.make_array_from_callback(
      tuple(expected[p].shape), flat_shardings[p], _slice_reader(tensors[p])) for p in expected}
  return flax.traverse_util.unflatten_dict(arrays)


def _slice_reader(leaf):
  """index -> float32 numpy slice of leaf; a slice several local devices hold is read once."""
  cache = {}

  def read(index):
    key = tuple((s.start, s.stop, s.step) if isinstance(s, slice) else s for s in index)
    if key not in cache:
      cache[key] = np.asarray(_read(leaf, index), np.float32)
    return cache[key]

  return read


def _t5x_encoder(path, config, target, dual_encoder_options):
  """(model, unread encoder tensors keyed by param path, names an encoder cannot use)."""
  flat = open_t5x_checkpoint(path, skip=_T5X_UNUSED)
  for required in ("token_embedder/embedding", "encoder/relpos_bias/rel_embedding"):
    if required not in flat:
      raise CheckpointMismatchError(f"{path}: no {required}; not a T5X T5 encoder checkpoint "
                                    f"(found {sorted(flat)[:8]} ...)")
  if "projection_layer/kernel" in flat:
    dual_encoder_options.setdefault("projection_dim", flat["projection_layer/kernel"].shape[1])
  for name, default in (("pooling", t5.FAMILY.default_pooling), ("normalize", True)):
    if dual_encoder_options.get(name) is None:
      dual_encoder_options[name] = default
  tensors, unknown = {}, []
  for name, value in flat.items():
    if name.startswith("token_embedder/"):
      tensors["encoder/" + name] = value
    elif name.startswith("encoder/") or name.startswith("projection_layer/"):
      tensors[name] = value
    else:
      unknown.append(name)
  model = target or dual_encoder.DualEncoder(config or config_from_t5x(flat),
                                             **dual_encoder_options)
  return model, tensors, unknown


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """Pretrained encoder weights, a Hugging Face directory or a T5X checkpoint at `path`: what
  `trainer.CheckpointConfig(init_params=...)` starts a fresh run from."""
  path: str

  def __call__(self, model: dual_encoder.DualEncoder, shardings) -> dict:
    """The model's parameters, checked against `model` (raises listing every mismatch). A T5X
    checkpoint is read as a pod reads it: each host its shards of `shardings`."""
    if fs.exists(os.path.join(self.path, "config.json")):
      if st_folder.read(self.path).do_lower_case:
        raise st_folder.UnsupportedSettingError(
            f"{self.path}/sentence_bert_config.json: do_lower_case=true is not supported for "
            "training (texts are tokenised by SPM_PATH's vocabulary: use an uncased one)")
      return load_hf(self.path, target=model)[1]
    return load_t5x_sharded(self.path, model, shardings)


def pretrained(path: str | None) -> Pretrained | None:
  """Pretrained(path); None (train from scratch) when no path is given."""
  return Pretrained(path) if path else None
