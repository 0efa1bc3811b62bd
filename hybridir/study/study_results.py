"""A study run's results (MODEL_DIR/study_results.json): their schema, written and read checked.

hybridir.study.study_run writes them; the report (study_report, study_tables), the gather
(study_gather), the demo (study) and the model card read them through `read`, by attribute. The file
is the JSON of `RunResults.to_json()`; a file without `format_version` (written before it existed)
has the same layout and is read as version 1. A missing field or another version is refused in one
line naming the file and the field.
"""
import dataclasses
import json
import types
import typing

from hybridir import fs

FORMAT_VERSION = 1


class ResultsError(ValueError):
  """A results file that is not this format: the message names the file and the field."""


@dataclasses.dataclass(frozen=True)
class Settings:
  """The run's settings, as the study's gin macros bind them (gin_configs/runs/study/base.gin)."""
  family: str
  alpha: float
  seed: int
  train_steps: int
  batch_size: int
  learning_rate: float
  weight_decay: float
  temperature: float
  languages: tuple[str, ...] | None
  task_feature_lengths: dict[str, int]
  validation_fraction: float
  init_checkpoint: str | None
  validation_languages: tuple[str, ...] | None
  validation_file: str | None
  out_of_domain_languages: tuple[str, ...] | None
  in_domain_max_items: int | None


@dataclasses.dataclass(frozen=True)
class TrainingPoint:
  """One logged training step: its loss and in-batch accuracy."""
  step: int
  loss: float
  accuracy: float


@dataclasses.dataclass(frozen=True)
class Objective:
  """The pretrained and the fine-tuned model's in-batch loss on `steps` held-out batches of the
  run's own kind (the corpus's `split`)."""
  pretrained: float
  fine_tuned: float
  steps: int
  split: str


@dataclasses.dataclass(frozen=True)
class Training:
  """How the run trained: its loss curve, validation losses ({step, eval/loss, eval/accuracy})
  and the checkpoint chosen by `best_metric` (0 for a zero-shot run, None when none was kept)."""
  chosen_step: int | None
  best_metric: str
  zero_shot: bool
  history: tuple[TrainingPoint, ...]
  validation: tuple[dict[str, float], ...]
  objective: Objective | None = None


@dataclasses.dataclass(frozen=True)
class DatasetResults:
  """One evaluation set on its full pools: evaluate.evaluate_settings' `full` ({setting:
  {"average": {measure: value}, ...}}), a random ranking's mAP per setting, and (in-domain and
  MIRACL) per-query nDCG@10 above chance ({"monolingual": {language: {qid: value}}})."""
  languages: tuple[str, ...]
  questions: int
  candidate_unit: str
  full: dict[str, dict]
  full_chance: dict[str, float]
  ndcg_above_chance: dict[str, dict] | None = None

  def average(self, setting: str, measure: str = "map") -> float | None:
    """A measure's average over languages (or pairs) in one setting; None if not measured."""
    return self.full[setting]["average"].get(measure)


@dataclasses.dataclass(frozen=True)
class PoolScores:
  """One side of a comparison on matched pools (study_eval.score_dataset): per-query AP above
  chance ({setting: {group: {qid: value}}}) and {setting: {map, chance, map_std_over_draws,
  above_chance}}; distractor-matched pools add the queries left out, k and the pool size."""
  per_query_above_chance: dict[str, dict]
  summary: dict[str, dict[str, float]]
  left_out: dict | None = None
  distractors: int | None = None
  pool_size: int | None = None


@dataclasses.dataclass(frozen=True)
class DistractorMatched:
  """Both sides of a comparison on distractor-matched pools."""
  in_domain: PoolScores
  out_of_domain: PoolScores


@dataclasses.dataclass(frozen=True)
class Comparison:
  """The in-domain set against one out-of-domain set on the languages both have, on size-matched
  pools (and distractor-matched ones where both are LAReQA sentences)."""
  languages: tuple[str, ...]
  in_domain: PoolScores
  out_of_domain: PoolScores
  distractor_matched: DistractorMatched | None = None


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """The chosen encoder's evaluation: every set (in-domain first) and each comparison; the
  matched pools' size and draws, and the question and candidate limits (None: all)."""
  datasets: dict[str, DatasetResults]
  comparisons: dict[str, Comparison]
  matched_pool_size: int | None
  matched_draws: int
  max_questions_per_language: int | None
  max_candidates_per_language: int | None
  in_domain_corpus: str


@dataclasses.dataclass(frozen=True)
class RunResults:
  """A study run's results. `miracl` ({language: results with per-query nDCG@10 above chance})
  is the sweep's corpus-scale MIRACL stage, which the gather adds; a run's file has none."""
  settings: Settings
  evaluation: Evaluation
  train: Training
  miracl: dict[str, dict] = dataclasses.field(default_factory=dict)
  format_version: int = FORMAT_VERSION

  def to_json(self) -> dict:
    """The file's JSON: every field, the optional ones only when set."""
    return _to_json(self)


def _required(field: dataclasses.Field) -> bool:
  return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _to_json(value):
  """A value of this module's types as JSON: a dataclass as an object, optional fields left unset
  (None, {}) left out."""
  if dataclasses.is_dataclass(value):
    return {f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value)
            if _required(f) or getattr(value, f.name) not in (None, {})}
  if isinstance(value, dict):
    return {key: _to_json(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [_to_json(item) for item in value]
  return value


def _from_json(kind, value, where: str, field: str):
  """`value` (JSON) as `kind`, a field type of this module; ResultsError names `where` and the
  field's path in the file when a field is missing or a value has another shape."""
  origin, arguments = typing.get_origin(kind), typing.get_args(kind)
  if origin in (typing.Union, types.UnionType):
    if value is None:
      return None
    kind = next(argument for argument in arguments if argument is not type(None))
    origin, arguments = typing.get_origin(kind), typing.get_args(kind)
  if dataclasses.is_dataclass(kind):
    if not isinstance(value, dict):
      raise ResultsError(f"{where}: {field or 'the file'} is not an object ({kind.__name__}), "
                         f"found {type(value).__name__}")
    hints = typing.get_type_hints(kind)
    values = {}
    for f in dataclasses.fields(kind):
      path = f"{field}.{f.name}" if field else f.name
      if f.name in value:
        values[f.name] = _from_json(hints[f.name], value[f.name], where, path)
      elif _required(f):
        raise ResultsError(f"{where}: no field '{path}' (study results format {FORMAT_VERSION})")
    return kind(**values)
  expected = {tuple: (list, tuple), dict: dict}.get(origin, kind)
  if expected is float and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if not isinstance(value, expected):
    raise ResultsError(f"{where}: '{field}' should be {(origin or kind).__name__}, found "
                       f"{type(value).__name__} {value!r:.60}")
  if origin is tuple:
    return tuple(_from_json(arguments[0], item, where, f"{field}[{i}]")
                 for i, item in enumerate(value))
  if origin is dict and dataclasses.is_dataclass(arguments[1]):
    return {key: _from_json(arguments[1], item, where, f"{field}.{key}")
            for key, item in value.items()}
  return value


def from_json(data, where: str) -> RunResults:
  """Results from their JSON, checked: ResultsError, naming `where` (the file) and the field, for
  a missing field, a value of another shape or another format version."""
  if isinstance(data, dict):
    version = data.get("format_version", 1)  # Files from before the field: the same layout.
    if version != FORMAT_VERSION:
      raise ResultsError(f"{where}: study results format {version!r}, this hybridir reads format "
                         f"{FORMAT_VERSION} (rerun the study run, or read it with the hybridir "
                         "that wrote it)")
  return _from_json(RunResults, data, where, "")


def read(path: str) -> RunResults:
  """A run's study_results.json (local or gs://), checked as from_json checks it."""
  with fs.open(path) as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise ResultsError(f"{path}: not JSON ({e})") from None
  return from_json(data, path)


def write(path: str, results: RunResults) -> None:
  """Writes results atomically (NaN kept as JSON's NaN, as Python's json reads it)."""
  fs.write_text_atomically(path, json.dumps(results.to_json(), allow_nan=True))


def settings_from(values: dict, where: str) -> Settings:
  """The run's settings from the study's bound macros ({name: value}), checked as from_json
  checks a file's."""
  return _from_json(Settings, values, where, "settings")
