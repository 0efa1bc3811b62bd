"""A self-describing MODEL_DIR: beside its checkpoints, a training run keeps the gin config it ran
with (`config.gin`), a copy of its vocabulary (`vocabulary/`) and `encoder.json` (the model, its
text format, passage length and vocabulary file), so export and evaluation take just MODEL_DIR.

The trainer describes its run once (`describe`: a `RunDescription` of the objects it holds) and
writes it when training starts (`write_description`); `config.gin`, `encoder.json` and the
identity stored with each checkpoint (`RunDescription.checkpoint_identity`) are views of it. A
file that already says the same is left untouched, so a rerun on a full disk gets to its
checkpoints. `undone_unless_trained` puts them back as they were when a run is refused (or fails)
before it commits a checkpoint. `read_description` and `model_from_description` serve
`export.load_encoder(MODEL_DIR)`.
"""
import contextlib
import dataclasses
import hashlib
import json
import os
from typing import Iterator

from absl import logging

import jax

from hybridir.data import text as text_lib
from hybridir.data import vocab
from hybridir import fs
from hybridir.models import dual_encoder
from hybridir.models import families

CONFIG, DESCRIPTION, VOCABULARY_DIR = "config.gin", "encoder.json", "vocabulary"
CHOSEN = "chosen_checkpoint.json"  # The step a study picked (its best validation metric).
# A study run's results (hybridir.study.study_run writes them).
STUDY_RESULTS = "study_results.json"
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


@dataclasses.dataclass(frozen=True)
class RunDescription:
  """What a training run is, as plain JSON values: its model (`model_description`), the input's
  identity (corpus or mixture, split, batch size, seed, schedule), the run's seed and lengths,
  the text format, the vocabulary file and the gin config it was started with (when given)."""
  model: dict
  input: dict
  seed: int
  task_feature_lengths: dict
  text_format: dict | None = None
  vocabulary: str | None = None  # The input's vocabulary file, copied into MODEL_DIR/vocabulary.
  config_text: str | None = None

  @property
  def family(self) -> str:
    return self.model["family"]

  def checkpoint_identity(self) -> dict:
    """The part stored with each checkpoint and compared on resume. The encoder's `kernels` is not
    in it: it changes how the model is computed, not what, so a run may resume with the other."""
    encoder = {k: v for k, v in self.model["encoder_config"].items() if k != "kernels"}
    identity = {"seed": self.seed, "task_feature_lengths": self.task_feature_lengths,
                "model": encoder, "input": self.input}
    if self.text_format is not None:  # What an export must apply.
      identity["text_format"] = self.text_format
    return identity

  def encoder_json(self, vocabulary_copy: str, vocabulary_bytes: bytes) -> dict:
    """encoder.json: what rebuilds the encoder from MODEL_DIR (`read_description`)."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, **self.model,
            "text_format": self.text_format or text_lib.TextFormat().to_json(),
            "max_length": int(self.task_feature_lengths["passage"]),
            "query_max_length": int(self.task_feature_lengths["query"]),
            "vocabulary": {"file": vocabulary_copy, "source": fs.abspath(self.vocabulary),
                           "sha256": hashlib.sha256(vocabulary_bytes).hexdigest()}}


def _plain(value):
  """`value` as JSON reads it back (tuples as lists; other objects as their str)."""
  return json.loads(json.dumps(value, default=str))


def describe(model: dual_encoder.DualEncoder, train_input, task_feature_lengths: dict, seed: int,
             config_text: str | None = None) -> RunDescription:
  """The run's description from the objects the trainer holds; an input without `identity()`
  (a test's) is named by its `name` and `batch_size`."""
  identity = getattr(train_input, "identity", None)
  text_format = getattr(train_input, "text_format", None)
  return RunDescription(
      model=_plain(model_description(model)),
      input=_plain(identity() if callable(identity) else {
          "input": str(getattr(train_input, "name", "")),
          "batch_size": getattr(train_input, "batch_size", None)}),
      seed=seed, task_feature_lengths=_plain(dict(task_feature_lengths)),
      text_format=None if text_format is None else _plain(text_format.to_json()),
      vocabulary=getattr(train_input, "vocabulary_path", None), config_text=config_text)


def write_description(model_dir: str, description: RunDescription) -> None:
  """Writes the run's description into MODEL_DIR (process 0 only; each file atomically, and only
  when it says something else): vocabulary/<file> and encoder.json when the input names its
  vocabulary file, config.gin when the config text is given."""
  if jax.process_index() != 0:
    return
  if description.config_text is not None:
    _write_if_changed(os.path.join(model_dir, CONFIG), description.config_text)
  if description.vocabulary is None:
    return
  source = description.vocabulary
  kind = vocab.kind_of(description.family, source)
  copy = os.path.join(VOCABULARY_DIR, "sentencepiece.model" if source.endswith(".model")
                      else kind.files[0])
  text = json.dumps(description.encoder_json(copy, fs.read_bytes(source)), indent=2,
                    sort_keys=True)
  path = os.path.join(model_dir, DESCRIPTION)
  if _holds(path, text) and fs.exists(os.path.join(model_dir, copy)):
    return  # Written by an earlier run of the same settings and vocabulary.
  fs.makedirs(os.path.join(model_dir, VOCABULARY_DIR))
  # As an export writes it: a WordPiece vocabulary with the tokenizer_config.json of its options.
  vocab.write_vocabulary(kind.read(source), source, os.path.join(model_dir, copy))
  fs.write_text_atomically(path, text)


def _holds(path: str, text: str) -> bool:
  """Whether the file at `path` exists with exactly `text` in it."""
  return fs.isfile(path) and fs.read_bytes(path) == text.encode("utf-8")


def _write_if_changed(path: str, text: str) -> None:
  """Writes `text` to `path` (atomically) unless the file already holds it."""
  if not _holds(path, text):
    fs.makedirs(os.path.dirname(path))
    fs.write_text_atomically(path, text)


def _committed_steps(model_dir: str) -> set[str]:
  directory = os.path.join(model_dir, "checkpoints")
  return {n for n in fs.listdir(directory) if n.isdigit()} if fs.isdir(directory) else set()


def _snapshot(path: str):
  """A file's bytes, a folder's {name: bytes} (files directly in it), or None when absent."""
  if fs.isdir(path):
    return {name: fs.read_bytes(os.path.join(path, name)) for name in fs.listdir(path)
            if fs.isfile(os.path.join(path, name))}
  return fs.read_bytes(path) if fs.isfile(path) else None


def _put_back(path: str, before) -> None:
  """Makes `path` what `_snapshot` saw, writing only what differs (the disk may be full)."""
  now = _snapshot(path)
  if now == before:
    return
  if before is None:
    if fs.isdir(path):
      fs.rmtree(path)
    else:
      fs.path(path).unlink()
  elif isinstance(before, bytes):
    fs.write_bytes_atomically(path, before)
  else:
    now = now if isinstance(now, dict) else {}
    for name in set(now) - set(before):
      fs.path(os.path.join(path, name)).unlink()
    for name in (name for name, data in before.items() if now.get(name) != data):
      fs.write_bytes_atomically(os.path.join(path, name), before[name])


@contextlib.contextmanager
def undone_unless_trained(model_dir: str | None) -> Iterator[None]:
  """Puts MODEL_DIR's config.gin, encoder.json and vocabulary/ back as they were (removing new
  ones, and a MODEL_DIR or checkpoints/ left empty) when the code inside raises before a new
  checkpoint is committed: a run refused for a setting, or failed before training, leaves what
  was there, so a refused rerun of an existing run cannot rewrite its description either."""
  if not model_dir or jax.process_index() != 0:
    yield
    return
  existed = {p: fs.exists(p) for p in (model_dir, os.path.join(model_dir, "checkpoints"))}
  before = {name: _snapshot(os.path.join(model_dir, name))
            for name in (CONFIG, DESCRIPTION, VOCABULARY_DIR)}
  steps = _committed_steps(model_dir)
  try:
    yield
  except Exception:
    if _committed_steps(model_dir) == steps:
      try:
        for name, content in before.items():
          _put_back(os.path.join(model_dir, name), content)
        for path in sorted(existed, reverse=True):  # checkpoints/ before MODEL_DIR.
          if not existed[path] and fs.isdir(path) and not fs.listdir(path):
            fs.rmtree(path)
      except OSError as e:  # The first error is the one to show.
        logging.warning("could not restore %s as it was: %s", model_dir, e)
    raise


def record_chosen_step(model_dir: str, step: int, metric: str) -> None:
  """Records the checkpoint a study chose (process 0, atomically): load_encoder(MODEL_DIR) and
  export then take that step rather than the latest."""
  if jax.process_index() == 0:
    fs.write_text_atomically(os.path.join(model_dir, CHOSEN),
                             json.dumps({"step": int(step), "metric": metric}))


def chosen_step(model_dir: str) -> int | None:
  """The step recorded by record_chosen_step, else None (the latest checkpoint is the run's)."""
  path = os.path.join(model_dir, CHOSEN)
  if not fs.exists(path):
    return None
  try:
    return int(json.loads(fs.read_text(path))["step"])
  except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
    raise ValueError(f"{path}: expected {{\"step\": N, \"metric\": ...}}: {e}") from e


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
