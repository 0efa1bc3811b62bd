"""Encoder families: one record per family, found by name.

The module `hybridir/models/{name}.py` of a family defines `FAMILY = EncoderFamily(...)`: its Flax
encoder and config, the Hugging Face config mapping both ways, the tensor-name mapping used by
import and export and the default pooling; the vocabulary kinds it reads are
hybridir.data.vocab_families' line for it (tasks read them before the models). Code outside
`hybridir/models` asks the record (`families.get(name)`, `families.of_config(config)`) instead of testing the name,
so adding a family is one new module, its line in vocab_families and a gin model file.
"""
import dataclasses
import functools
import importlib
import pkgutil
from typing import Any, Callable, Iterable


@dataclasses.dataclass(frozen=True)
class EncoderFamily:
  """What hybridir needs to know about an encoder family."""
  name: str  # The module name; manifests, gin FAMILY and configs' `family` use it.
  config_class: type
  encoder_class: type  # Flax module: (tokens, mask, deterministic=) -> hidden states.
  hf_model_types: tuple[str, ...]  # transformers config.json `model_type`s read as this family.
  config_from_hf: Callable[[dict, str], Any]  # (config.json dict, its path) -> our config.
  hf_config: Callable[[Any], dict]  # Our config -> transformers config.json.
  # Our config -> {transformers tensor name: (encoder param path, transposed?)}; import and
  # export both read this one table.
  hf_names: Callable[[Any], dict[str, tuple[str, bool]]]
  hf_name_prefixes: tuple[str, ...]  # Prefixes a task model puts before the encoder's names.
  display_names: dict[str, str]  # Gin model-file prefix -> display name ('mt5' -> 'mT5').
  default_pooling: str = "mean"


@functools.lru_cache(maxsize=None)
def names() -> tuple[str, ...]:
  """Every family: the modules of hybridir.models that define FAMILY."""
  package = importlib.import_module("hybridir.models")
  found = []
  for module in pkgutil.iter_modules(package.__path__):
    if hasattr(importlib.import_module(f"hybridir.models.{module.name}"), "FAMILY"):
      found.append(module.name)
  return tuple(sorted(found))


def get(name: str) -> EncoderFamily:
  """The record of family `name`, else a ValueError listing the families."""
  if not isinstance(name, str) or name not in names():
    raise ValueError(f"unknown encoder family {name!r}; expected one of {list(names())}")
  return importlib.import_module(f"hybridir.models.{name}").FAMILY


def of_config(config) -> EncoderFamily:
  """The family of an encoder config."""
  family = getattr(config, "family", None)
  if family is None:
    raise TypeError(f"unsupported encoder config {type(config).__name__}: it names no family")
  return get(family)


def from_hf_model_type(model_type, source: str = "config.json") -> EncoderFamily:
  """The family that reads a transformers config.json of this `model_type`."""
  for name in names():
    if model_type in get(name).hf_model_types:
      return get(name)
  known = sorted(t for n in names() for t in get(n).hf_model_types)
  raise ValueError(f"{source}: unsupported model_type {model_type!r}; expected one of {known}")


def vocabulary(name: str, path: str):
  """The seqio vocabulary of family `name` from its vocabulary file."""
  from hybridir.data import vocab  # Here: the encoders import without seqio or TensorFlow.
  return vocab.family_vocabulary(get(name).name, path)


def train_vocabulary(name: str, texts: Iterable[str], prefix: str, vocab_size: int,
                     **options) -> str:
  """Trains family `name`'s kind of vocabulary on texts; returns the vocabulary file."""
  from hybridir.data import vocab  # Here: the encoders import without seqio or TensorFlow.
  return vocab.train_family_vocabulary(get(name).name, texts, prefix, vocab_size, **options)


def display_names() -> dict[str, str]:
  """Every family's gin model-file prefixes and their display names."""
  return {prefix: shown for name in names() for prefix, shown in get(name).display_names.items()}
