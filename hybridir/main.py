"""The gin entry point: `python -m hybridir.main --gin_file=gin_configs/runs/train.gin
--gin.MODEL_DIR="'/tmp/run'" --gin.TRAIN_STEPS=100`.

A run file binds `RUN` (the function to call: train, evaluate or export) and may bind `SETUP`,
a list of calls made first (task registration, vocabulary preparation). `--gin.KEY=VALUE` flags
are gin bindings, as in T5X: a string value takes gin's quotes inside the shell's
(`--gin.MODEL_DIR="'/tmp/run'"`). A mistake in the command line (a flag, a gin file or include that
does not exist, a binding gin cannot parse, a macro no file declares, a `%gin.REQUIRED` setting
left unbound, an input that does not exist) ends it in about a second, before TensorFlow and jax
load; output locations that cannot be written, and unknown parameters, fail before any compute.
Each of these and the expected errors (bad input files, artifacts, outputs, failed saves, no good
checkpoint, a full disk) end the run with one line `error: ...` and status 1, without a traceback
or usage text. A run stopped by SIGTERM exits with status 143
after saving its checkpoint. In a multi-process run, a process that stops sending heartbeats for
--heartbeat_timeout_seconds (killed, hung, its host gone) ends every other with one line naming
it, status 1; the last committed checkpoint is intact.
"""
import contextlib
import functools
import os
import sys
import threading
import tokenize
from typing import Sequence

from absl import app
from absl import flags
from absl import logging

from hybridir import console
from hybridir import errors
from hybridir import gin_utils

_GIN_FILE = flags.DEFINE_multi_string("gin_file", [], "Gin files, parsed in order.")
_GIN_BINDINGS = flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings (after the files).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0, for multi-host runs off Cloud TPU.")
_PROCESS_COUNT = flags.DEFINE_integer("process_count", None, "Number of processes (hosts).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_MULTIHOST = flags.DEFINE_bool("multihost", None, "Initialise jax.distributed (default: "
                               "auto, on when a coordinator is given or a TPU pod is detected).")
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout_seconds", 60, "Multi-host: a process silent this long (killed, hung, its "
    "host gone) is declared lost, and every other process ends with one line naming it.")
_SHUTDOWN_TIMEOUT = flags.DEFINE_integer(
    "shutdown_timeout_seconds", 60, "Multi-host: how long a finishing process waits at exit for "
    "the others to finish too.")

# What the run functions read, by parameter ("run": a training run's MODEL_DIR; "path": a file
# or folder): checked to exist before anything is imported, so by complete selector (as the gin
# files' imports resolve what they call, LiteralConfig.selector).
INPUT_PARAMETERS = {
    "hybridir.export.exporter.export_from_training_checkpoint": {"model_dir": "run"},
    "hybridir.evaluation.eval_run.run_evaluation": {"encoder_path": "path"},
    "hybridir.evaluation.corpus_eval.run_corpus_evaluation": {"encoder_path": "path",
                                                              "topics_tsv": "path",
                                                              "qrels_trec": "path"},
    "hybridir.evaluation.corpus_eval.run_miracl_evaluation": {"encoder_path": "path",
                                                              "miracl_dir": "path"},
    "tasks.register_parallel_qa": {"corpus_path": "path"},
}


def gin_flags_to_bindings(argv: list[str]) -> tuple[list[str], list[str]]:
  """Splits T5X-style `--gin.KEY=VALUE` flags off argv, returning (argv, bindings)."""
  rest, bindings = [], []
  for arg in argv:
    if arg.startswith("--gin."):
      key, sep, value = arg[len("--gin."):].partition("=")
      if not sep:
        raise app.UsageError(f"{arg}: gin flags take the form --gin.KEY=VALUE")
      bindings.append(f"{key} = {value}")
    else:
      rest.append(arg)
  return rest, bindings


def _called(config: gin_utils.LiteralConfig) -> list[str]:
  """The configurables RUN and SETUP call, as the files write them ('export.export_...')."""
  setup = config.resolved("SETUP")
  references = [config.resolved("RUN"), *(setup if isinstance(setup, list) else [])]
  return [r[1:].removesuffix("()") for r in references
          if isinstance(r, str) and r.startswith("@")]


def check_inputs(config: gin_utils.LiteralConfig) -> None:
  """Fails (SettingError, one line naming the setting) when a local input of INPUT_PARAMETERS
  that the config's RUN or SETUP reads does not exist, or a MODEL_DIR to export holds no run."""
  for written in _called(config):
    for parameter, kind in INPUT_PARAMETERS.get(config.selector(written), {}).items():
      key = f"{written}.{parameter}"
      path, bound = config.resolved(key), config.values.get(key)
      if not isinstance(path, str) or "://" in path or path.startswith(("@", "%")):
        continue
      macro = bound[1:] if isinstance(bound, str) and bound.startswith("%") else None
      setting = f"{written.rpartition('.')[2]}.{parameter}"
      name = f"{macro} ({setting})" if macro else setting
      if not os.path.exists(path):
        hint = ("; train a run there first (gin_configs/runs/train.gin or smoke.gin)"
                if kind == "run" else "")
        raise errors.SettingError(f"{name}: {path}: no such file or folder{hint}")
      if kind == "run" and not (os.path.isdir(path) and {"checkpoints", "encoder.json"} & set(
          os.listdir(path))):
        raise errors.SettingError(f"{name}: {path} holds no training run (no checkpoints/ or "
                                  "encoder.json): give the MODEL_DIR a training run wrote")


def check_command_line(argv: list[str]) -> None:
  """Ends the program with one line `error: ...` (status 1) on a mistake that can be found
  without running anything: a flag, a gin file, a binding, a required setting, a missing input.
  Imports nothing heavy: mistakes show in about a second, not after TensorFlow and jax load."""
  try:
    argv, bindings = gin_flags_to_bindings(argv)
    app.define_help_flags()
    flags.FLAGS(argv)
    check_inputs(gin_utils.check_command_line(_GIN_FILE.value,
                                              _GIN_BINDINGS.value + bindings))
  except flags.Error as e:
    errors.exit_with_line(f"{e} (--helpfull lists the flags)")
  except (app.UsageError, errors.SettingError) as e:
    errors.exit_with_line(e)
  finally:
    flags.FLAGS.unparse_flags()  # app.run parses them again.


if __name__ == "__main__":
  check_command_line(sys.argv)

# pylint: disable=g-import-not-at-top,wrong-import-position  (after check_command_line, on purpose)
import jax

from hybridir.cloud import multihost
from hybridir.export import exporter
from hybridir import gin_run
from hybridir.training import checkpoints
from hybridir.training import trainer
# pylint: enable=g-import-not-at-top,wrong-import-position


def initialize_distributed() -> None:
  """jax.distributed.initialize when several processes run the job, with the shutdown timeout of
  the flags, and a multihost.Watchdog ending this process in one line when a peer is lost."""
  on_tpu_pod = "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
  wanted = _MULTIHOST.value if _MULTIHOST.value is not None else (
      bool(_COORDINATOR.value) or on_tpu_pod)
  if not wanted:
    return
  jax.distributed.initialize(
      coordinator_address=_COORDINATOR.value, num_processes=_PROCESS_COUNT.value,
      process_id=_PROCESS_ID.value,
      heartbeat_timeout_seconds=_HEARTBEAT_TIMEOUT.value + multihost.JAX_HEARTBEAT_MARGIN_SECONDS,
      shutdown_timeout_seconds=_SHUTDOWN_TIMEOUT.value)
  watchdog = multihost.start_watchdog(_HEARTBEAT_TIMEOUT.value, _end_on_lost_peer)
  if watchdog:
    _WATCHDOG.append(watchdog)
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


_PEER_LOST = threading.Event()
_WATCHDOG = []  # This process's multihost.Watchdog, once started.


def _end_on_lost_peer(line: str) -> None:
  """The watchdog's verdict (its thread): a peer is lost; this process ends with the line, and
  the checkpoint a rerun of every process resumes from."""
  _PEER_LOST.set()
  model_dir, steps = gin_utils.macro("MODEL_DIR", None), []
  try:
    steps = checkpoints.training_steps(model_dir) if isinstance(model_dir, str) else []
  except (OSError, ValueError):
    pass
  last = f"{model_dir}/checkpoints/{steps[-1]}" if steps else "none"
  errors.exit_at_once(f"{line}. Last committed checkpoint (intact, as every commit is atomic): "
                      f"{last}; rerun every process to resume from it")


# Errors a process meets when a peer is gone (a collective, a barrier, a save needing its shards).
_PEER_FAILURES = (jax.errors.JaxRuntimeError, TimeoutError, checkpoints.CheckpointSaveError)


@contextlib.contextmanager
def told_to_peers():
  """In a multi-process run: an error of the kind a lost peer causes waits (up to the heartbeat
  timeout and a little more) for the watchdog's verdict, so the line names the lost process, not
  the collective that failed; a process failing stops beating, so its peers end too, and one
  failing with an expected error ends at once with its line, without the exit barrier."""
  if not _WATCHDOG:
    yield
    return
  watchdog = _WATCHDOG[0]
  try:
    yield
  except BaseException as e:
    if isinstance(e, _PEER_FAILURES) and _PEER_LOST.wait(watchdog.timeout + 3 * watchdog.period):
      threading.Event().wait()  # _end_on_lost_peer is ending the process.
    watchdog.stop(done=False)
    if isinstance(e, gin_run.EXPECTED_ERRORS) or errors.is_storage_error(e):
      errors.exit_at_once(e)
    raise
  watchdog.stop(done=True)


def parse_config(gin_files: Sequence[str], gin_bindings: Sequence[str]) -> None:
  """gin_utils.parse, with a bad file or binding (missing file, syntax, unknown name or macro) a
  UsageError."""
  try:
    gin_utils.parse(list(gin_files), list(gin_bindings))
  except (ValueError, NameError, SyntaxError, tokenize.TokenError, OSError) as e:
    raise app.UsageError(errors.one_line(e).removeprefix("error: ")) from None


def closing_line_parts() -> tuple[str, str | None]:
  """(what the finished RUN wrote, the natural next command), from the run's directory macros."""
  run = gin_utils.run_function()
  model_dir, export_dir, eval_dir = (gin_utils.macro(name, None)
                                     for name in ("MODEL_DIR", "EXPORT_DIR", "EVAL_DIR"))
  if run is exporter.export_from_training_checkpoint and export_dir:
    return (f"the encoder {export_dir}", "python -m hybridir.evaluate --encoder "
            f"{export_dir} --corpus corpus.jsonl --queries queries.jsonl --qrels qrels.tsv")
  if eval_dir:
    return f"evaluation reports to {eval_dir} (summary.json)", None
  if run is trainer.train and model_dir:
    return (f"checkpoints, config.gin and the vocabulary to {model_dir}",
            "python -m hybridir.main --gin_file=gin_configs/runs/export.gin "
            f"--gin.MODEL_DIR=\"'{model_dir}'\" --gin.EXPORT_DIR=\"'{model_dir}/export'\"")
  return f"the results of {run.__name__}", None


def main(argv, gin_flag_bindings: Sequence[str] = ()):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  initialize_distributed()
  parse_config(_GIN_FILE.value, _GIN_BINDINGS.value + list(gin_flag_bindings))
  with gin_run.one_line_errors(), told_to_peers():
    result = gin_run.run_parsed_config()
  if jax.process_index() == 0 and not getattr(result, "stopped_early", False):
    console.finish(*closing_line_parts())
  if getattr(result, "stopped_early", False):
    logging.warning("preempted: checkpoint saved; exiting with status %d so a scheduler requeues "
                    "the run (rerun the same command to resume)", errors.PREEMPTED_EXIT_CODE)
    sys.exit(errors.PREEMPTED_EXIT_CODE)


def console_main():
  argv, bindings = gin_flags_to_bindings(sys.argv)
  console.run_app(functools.partial(main, gin_flag_bindings=bindings), argv=argv)


if __name__ == "__main__":
  console_main()
