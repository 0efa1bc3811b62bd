"""Running a parsed gin config as `python -m hybridir.main` does: RUN's required settings and
every output location checked, then SETUP's calls, then RUN; and the expected errors a command
ends with as one line. The study runs each of its runs through `run_config`."""
import inspect
import os
from typing import Sequence

from absl import app
from absl import logging
import gin
import jax

from hybridir.data import corpora
from hybridir.data import spm
from hybridir import errors
from hybridir.evaluation import corpus_eval
from hybridir.evaluation import eval_run
from hybridir.export import artifacts
from hybridir.export import exporter
from hybridir import fs
from hybridir import gin_utils
from hybridir.study import study_results
from hybridir.study import study_run
from hybridir.training import checkpoints
from hybridir.training import run_dir
from hybridir.training import trainer

# Where each run function writes, by parameter ("directory": files go inside; "file": a file or
# a file prefix); checked writable before SETUP and RUN start.
OUTPUT_PARAMETERS = {
    trainer.train: {"model_dir": "directory"},
    study_run.train_and_evaluate: {"model_dir": "directory", "export_dir": "directory"},
    eval_run.run_evaluation: {"output_dir": "directory"},
    corpus_eval.run_corpus_evaluation: {"output_dir": "directory"},
    corpus_eval.run_miracl_evaluation: {"output_dir": "directory"},
    exporter.export_from_training_checkpoint: {"output_dir": "directory"},
    spm.train: {"output": "file"},
}
# Errors that describe bad input or an unusable output (their message names the file, record or
# parameter): reported as one line, not a traceback.
EXPECTED_ERRORS = (corpora.CorpusError, fs.NotWritableError, FileNotFoundError, FileExistsError,
                   artifacts.ArtifactError, errors.SettingError, checkpoints.CheckpointSaveError,
                   checkpoints.NoGoodCheckpointError, checkpoints.CheckpointShapeError,
                   checkpoints.CheckpointDamagedError, FloatingPointError,
                   study_results.ResultsError)


def _missing_required(fn) -> list[str]:
  """Keyword arguments without a default that no gin binding supplies."""
  bound = set(gin.get_bindings(fn))
  return [name for name, p in inspect.signature(fn).parameters.items()
          if p.default is inspect.Parameter.empty and name not in bound
          and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def resolve_run():
  """The function bound to RUN, checked for missing required settings."""
  try:
    reference = gin.query_parameter("%RUN")
  except ValueError as e:
    raise app.UsageError("no RUN bound: include a run file (gin_configs/runs/*.gin)") from e
  fn = reference.configurable.wrapped
  missing = _missing_required(fn)
  if missing:
    raise app.UsageError(
        f"{reference.configurable.name} is missing required settings: "
        + ", ".join(missing) + " (bind them in a gin file or with --gin.KEY=VALUE)")
  return reference.scoped_configurable_fn


def _macro_named(value, macros: list[str]) -> str | None:
  """The macro a bound value came from (the first of `macros` holding it), for messages."""
  for name in macros:
    try:
      if gin.query_parameter(f"%{name}") == value:
        return name
    except (ValueError, TypeError):
      continue
  return None


def check_output_locations() -> None:
  """Fails (fs.NotWritableError, one line naming the setting) unless every output location of
  the configured run functions (OUTPUT_PARAMETERS) can be written."""
  macros = sorted(gin_utils.declared_macros())  # Read from the config's text: once.
  for function, parameters in OUTPUT_PARAMETERS.items():
    try:
      bindings = gin.get_bindings(function)
    except ValueError:  # Not registered: this config does not use it.
      continue
    for parameter, kind in parameters.items():
      value = bindings.get(parameter)
      if isinstance(value, (str, os.PathLike)):
        module = function.__module__.rpartition(".")[2]
        setting = f"{module}.{function.__name__}.{parameter}"  # trainer.train.model_dir
        macro = _macro_named(value, macros)
        fs.check_writable(value, f"{macro} ({setting})" if macro else setting, kind)


def give_config_to_training(config_text: str) -> None:
  """A run that trains a MODEL_DIR (trainer.train, as RUN or inside it, as a study run's) keeps
  the gin config it was started with: trainer.train gets its text (`config_text`) and writes it
  as MODEL_DIR/config.gin with the run's description."""
  with gin.unlock_config():
    try:
      gin.bind_parameter(f"{gin_utils.TRAINING_RUN}.config_text", config_text)
    except ValueError:  # No trainer.train in this config: nothing trains.
      pass


def run_parsed_config():
  """Calls SETUP's functions, then RUN, of the parsed gin config; returns RUN's result."""
  run = resolve_run()
  check_output_locations()
  config_text = gin.config_str()
  if jax.process_index() == 0:  # A run that trains also writes it to MODEL_DIR/config.gin.
    logging.debug("gin config:\n%s", config_text)
  model_dir = gin_utils.macro("MODEL_DIR", None)
  with run_dir.undone_unless_trained(model_dir if isinstance(model_dir, str) else None):
    for call in gin_utils.macro("SETUP", []):
      call.scoped_configurable_fn()
    give_config_to_training(config_text)
    return run()


def run_config(gin_files: Sequence[str], gin_bindings: Sequence[str]):
  """Parses a config and runs it in this process, as `main` does; gin's config is cleared before
  and after, so runs do not see each other's bindings."""
  gin.clear_config()
  gin_utils.parse(list(gin_files), list(gin_bindings))
  try:
    return run_parsed_config()
  finally:
    gin.clear_config()


def one_line_errors():
  """Ends the program with `error: MESSAGE` and status 1 on an expected error (EXPECTED_ERRORS,
  or storage: errors.STORAGE_ERRNOS), without a traceback: its message names the file, record or
  parameter."""
  return errors.one_line_errors(EXPECTED_ERRORS)
