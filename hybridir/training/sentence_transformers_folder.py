"""A model folder's encoding settings, read as sentence-transformers reads them.

modules.json and each module's config (Pooling, a LaBSE-style Dense, Normalize),
sentence_bert_config.json (max_seq_length, do_lower_case, query_length), the tokenizer's own
model_max_length and truncation side, config.json's max_position_embeddings and
config_sentence_transformers.json (prompts, default_prompt_name). `read(folder)` returns them as
one record; `importers.load_hf`, `importers.Pretrained` and `export.load_encoder` use it. A setting
hybridir cannot honour raises `UnsupportedSettingError`, one line `FILE: setting=value is not
supported (why)`, rather than giving other vectors than sentence-transformers does.
"""
import dataclasses
import json
import os

from hybridir import fs

# sentence-transformers' Pooling modes -> hybridir.models.dual_encoder's pooling.
POOLING_MODES = {"cls": "first", "mean": "mean", "max": "max",
                 "mean_sqrt_len_tokens": "mean_sqrt_length"}
# Folders from sentence-transformers < 6 hold one flag per mode (its own order).
_LEGACY_POOLING_FLAGS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                         "pooling_mode_mean_tokens": "mean",
                         "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                         "pooling_mode_weightedmean_tokens": "weightedmean",
                         "pooling_mode_lasttoken": "lasttoken"}
# sentence_bert_config.json keys and the values at which they change nothing hybridir computes.
_NEUTRAL_SETTINGS = {
    "transformer_task": ("feature-extraction",),
    "module_output_name": ("token_embeddings",),
    "modality_config": (
        {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},),
    "processing_kwargs": ({}, None), "model_kwargs": ({}, None), "model_args": ({}, None),
    "config_kwargs": ({}, None), "config_args": ({}, None), "query_expansion": (None,),
    "document_length": (None,)}
# Tokenizer lengths above this are transformers' "no limit" (VERY_LARGE_INTEGER).
_NO_LIMIT = 10**12
MODULE_KINDS = ("Transformer", "Pooling", "Dense", "Normalize")


class UnsupportedSettingError(ValueError):
  """A folder's setting that hybridir cannot honour; the message is one line naming the file."""


@dataclasses.dataclass(frozen=True)
class FolderSettings:
  """How the folder's model encodes, beyond the transformer's weights."""
  pooling: str | None = None  # DualEncoder pooling; None: no modules.json (the caller's default).
  normalize: bool | None = None  # None: no modules.json.
  dense_dir: str | None = None  # The Dense module's folder of 'first_dense' (LaBSE's head).
  max_seq_length: int | None = None  # Inputs are cut to it; None: the model's own limit.
  query_length: int | None = None  # Queries' cut (encode_query), when it differs.
  do_lower_case: bool = False  # Lower-case texts before the tokenizer (its normaliser aside).
  prompts: dict = dataclasses.field(default_factory=lambda: {"query": "", "document": ""})
  default_prompt_name: str | None = None  # The prompt of `encode(texts)` with none given.


def _read_json(path: str, default=None):
  if not fs.exists(path):
    return default
  try:
    with fs.open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON: {e}") from e


def _refuse(path: str, setting: str, value, why: str):
  raise UnsupportedSettingError(f"{path}: {setting}={json.dumps(value)} is not supported ({why})")


def read(model_dir: str) -> FolderSettings:
  """The settings of a Hugging Face or sentence-transformers folder (a plain Hugging Face folder:
  no pooling or normalize, its tokenizer's length, sentence-transformers' empty prompts)."""
  settings = dict(_read_modules(model_dir), **_read_prompts(model_dir))
  length = _read_lengths(model_dir)
  if length.pop("do_lower_case") and not _tokenizer_lowercases(model_dir):
    settings["do_lower_case"] = True
  return FolderSettings(**settings, **length)


def _read_modules(model_dir: str) -> dict:
  """pooling, normalize and dense_dir from modules.json; {} without one."""
  path = os.path.join(model_dir, "modules.json")
  modules = _read_json(path)
  if modules is None:
    return {}
  kinds = []
  for index, module in enumerate(modules):
    kind = str(module.get("type", ""))
    if not kind.startswith("sentence_transformers.") or kind.rsplit(".", 1)[-1] not in MODULE_KINDS:
      _refuse(path, f"modules[{index}].type", kind, "hybridir reads the modules "
              "Transformer, Pooling, a LaBSE-style Dense and Normalize")
    kinds.append(kind.rsplit(".", 1)[-1])
  order = [k for k in MODULE_KINDS if k in kinds]
  if kinds[:2] != ["Transformer", "Pooling"] or kinds != order:
    _refuse(path, "types", kinds, "hybridir reads Transformer, Pooling[, Dense][, Normalize] "
            "in that order")
  folders = {kind: os.path.join(model_dir, module.get("path", ""))
             for kind, module in zip(kinds, modules)}
  if modules[0].get("path", ""):
    _refuse(path, "modules[0].path", modules[0]["path"], "hybridir reads the transformer from "
            "the folder itself")
  pooling = _read_pooling(os.path.join(folders["Pooling"], "config.json"))
  if "Dense" in kinds:
    _check_dense(os.path.join(folders["Dense"], "config.json"), pooling)
    pooling = "first_dense"
  return {"pooling": pooling, "normalize": "Normalize" in kinds,
          "dense_dir": folders.get("Dense")}


def _read_pooling(path: str) -> str:
  """The DualEncoder pooling of a Pooling module's config.json."""
  config = _read_json(path, {})
  modes = config.get("pooling_mode")
  if modes is None:  # Legacy flags; none set means mean, as sentence-transformers reads them.
    modes = [mode for flag, mode in _LEGACY_POOLING_FLAGS.items() if config.get(flag)] or ["mean"]
  modes = [modes] if isinstance(modes, str) else list(modes)
  if len(modes) != 1 or modes[0] not in POOLING_MODES:
    _refuse(path, "pooling_mode", modes[0] if len(modes) == 1 else modes,
            f"hybridir pools with one of {sorted(POOLING_MODES)}")
  if not config.get("include_prompt", True):
    _refuse(path, "include_prompt", False, "hybridir pools over the prompt's tokens too")
  return POOLING_MODES[modes[0]]


def _check_dense(path: str, pooling: str) -> None:
  """Only LaBSE's head: a square Dense with bias and tanh after CLS pooling."""
  config = _read_json(path, {})
  for setting, fits in (
      ("activation_function", str(config.get("activation_function")).endswith("Tanh")),
      ("bias", config.get("bias", True) is True),
      ("out_features", config.get("out_features") == config.get("in_features"))):
    if not fits:
      _refuse(path, setting, config.get(setting), "hybridir reads a Dense only as LaBSE's head: "
              "in_features == out_features, bias, tanh, after cls pooling")
  if pooling != "first":
    _refuse(path, "pooling", pooling, "hybridir reads a Dense only after cls pooling, as "
            "LaBSE's head")


def _read_lengths(model_dir: str) -> dict:
  """max_seq_length, query_length and do_lower_case as sentence-transformers' Transformer takes
  them: sentence_bert_config.json's (its processor_kwargs' model_max_length first), else the
  tokenizer's model_max_length capped by config.json's max_position_embeddings."""
  path = os.path.join(model_dir, "sentence_bert_config.json")
  config = dict(_read_json(path, {}))
  processor = dict(config.pop("processor_kwargs", None) or config.pop("tokenizer_args", None)
                   or {})
  processor.pop("trust_remote_code", None)
  length = processor.pop("model_max_length", config.pop("max_seq_length", None))
  if processor:
    _refuse(path, "processor_kwargs", processor, "hybridir reads only model_max_length there")
  config.pop("unpad_inputs", None)  # Padding or not, the same vectors.
  lowercase, query_length = config.pop("do_lower_case", False), config.pop("query_length", None)
  for setting, value in config.items():
    if setting not in _NEUTRAL_SETTINGS:
      _refuse(path, setting, value, "not a setting of sentence-transformers' Transformer that "
              "hybridir knows")
    if value not in _NEUTRAL_SETTINGS[setting]:
      _refuse(path, setting, value, f"hybridir reads only {_NEUTRAL_SETTINGS[setting][0]!r}")
  tokenizer_path = os.path.join(model_dir, "tokenizer_config.json")
  tokenizer = _read_json(tokenizer_path, {})
  if tokenizer.get("truncation_side", "right") != "right":
    _refuse(tokenizer_path, "truncation_side", tokenizer["truncation_side"],
            "hybridir cuts a text's end")
  if length is None:
    length = tokenizer.get("model_max_length", _NO_LIMIT)
    positions = _read_json(os.path.join(model_dir, "config.json"), {}).get(
        "max_position_embeddings", -1)
    length = min(length, positions) if positions != -1 else length
  for setting, value in (("max_seq_length", length), ("query_length", query_length)):
    if value is not None and (not isinstance(value, int) or value < 2):
      _refuse(path, setting, value, "expected an int of at least 2")
  if not isinstance(lowercase, bool):
    _refuse(path, "do_lower_case", lowercase, "expected true or false")
  return {"max_seq_length": length if length is not None and length < _NO_LIMIT else None,
          "query_length": query_length, "do_lower_case": lowercase}


def _tokenizer_lowercases(model_dir: str) -> bool:
  """Whether the folder's own tokenizer already lower-cases (tokenizer.json's normaliser, else
  tokenizer_config.json's do_lower_case): do_lower_case then changes no id."""
  tokenizer = _read_json(os.path.join(model_dir, "tokenizer.json"))
  if tokenizer is None:
    return _read_json(os.path.join(model_dir, "tokenizer_config.json"), {}).get(
        "do_lower_case") is True
  normalizers = [tokenizer.get("normalizer") or {}]
  normalizers += normalizers[0].get("normalizers") or []
  return any(n.get("type") == "Lowercase" or (n.get("type") == "BertNormalizer" and
                                              n.get("lowercase")) for n in normalizers)


def _read_prompts(model_dir: str) -> dict:
  """prompts (with sentence-transformers' empty query and document prompts) and
  default_prompt_name of config_sentence_transformers.json."""
  path = os.path.join(model_dir, "config_sentence_transformers.json")
  config = _read_json(path, {})
  if config.get("model_type", "SentenceTransformer") != "SentenceTransformer":
    _refuse(path, "model_type", config["model_type"], "hybridir reads SentenceTransformer folders")
  if config.get("truncate_dim") is not None:
    _refuse(path, "truncate_dim", config["truncate_dim"], "hybridir keeps every dimension")
  saved = config.get("prompts") or {}
  if not isinstance(saved, dict) or not all(isinstance(v, str) for v in saved.values()):
    _refuse(path, "prompts", saved, "expected an object of strings")
  prompts = {"query": "", "document": "", **saved}
  default = config.get("default_prompt_name")
  if default is not None and default not in prompts:
    _refuse(path, "default_prompt_name", default, f"not one of the prompts {sorted(prompts)}")
  return {"prompts": prompts, "default_prompt_name": default}
