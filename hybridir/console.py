"""What a command shows its user: hybridir's own log lines (other libraries' INFO lines hidden),
progress bars with an ETA, one closing line naming what was written and what to run next, and a
mistake in the command line as one line `error: ...`.

`quiet_start` (called by `hybridir/__init__.py`, so before any hybridir module loads jax or
TensorFlow): on a machine without an accelerator jax uses its CPU platform (no CUDA or TPU probing,
no libtpu lines), and the lines TensorFlow's C++ libraries print while they load are dropped.
`HYBRIDIR_VERBOSE=1` (or absl's `--verbosity=1`) shows other libraries' lines again.
"""
import argparse
import contextlib
import glob
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
from typing import Callable, Iterable, Iterator, TypeVar

from absl import app
from absl import flags
from absl import logging as absl_logging
import tqdm

from hybridir import errors

T = TypeVar("T")
# Device files and environment variables that mean an accelerator is (or may be) attached: GPUs
# (NVIDIA, AMD), Cloud TPUs (/dev/accel* on v2-v4, /dev/vfio/<n> on v5e and later).
_ACCELERATOR_DEVICES = ("/dev/nvidia[0-9]*", "/dev/accel*", "/dev/kfd", "/dev/vfio/[0-9]*")
_ACCELERATOR_VARIABLES = ("TPU_NAME", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES",
                          "CLOUD_TPU_TASK_ID", "COLAB_TPU_ADDR")
# What TensorFlow prints on stderr while it loads and first looks for a GPU, on a CPU machine.
_TENSORFLOW_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|cudart_stub\.cc|oneDNN custom operations|"
    r"cpu_feature_guard\.cc|rebuild TensorFlow with the appropriate compiler flags|"
    r"failed call to cuInit|TF-TRT Warning|Unable to register cu(DNN|FFT|BLAS) factory|"
    r"computation placer already registered|absl::InitializeLog\(\) is called")
# hybridir's packages (installed or not, `tasks` sits beside `hybridir`).
_OWN_ROOTS = tuple(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                name) + os.sep for name in ("hybridir", "tasks"))


def verbose_requested() -> bool:
  """HYBRIDIR_VERBOSE is set (to anything but 0)."""
  return os.environ.get("HYBRIDIR_VERBOSE", "") not in ("", "0")


def verbose() -> bool:
  return verbose_requested() or absl_logging.get_verbosity() > 0


def accelerator_present() -> bool:
  """Whether a GPU or TPU may be attached, judged from device files and TPU variables alone
  (without importing jax, which would probe for them)."""
  return (any(glob.glob(pattern) for pattern in _ACCELERATOR_DEVICES)
          or any(os.environ.get(name) for name in _ACCELERATOR_VARIABLES))


@contextlib.contextmanager
def _stderr_without(noise: re.Pattern) -> Iterator[None]:
  """Captures what is written to file descriptor 2 (C++ libraries too) and writes it back
  afterwards, less the lines `noise` matches."""
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (OSError, ValueError):  # No usable stderr: nothing to filter.
    yield
    return
  with tempfile.TemporaryFile() as capture:
    os.dup2(capture.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      capture.seek(0)
      kept = [line for line in capture.read().decode("utf-8", "replace").splitlines(True)
              if not noise.search(line)]
      sys.stderr.write("".join(kept))
      sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
  """TensorFlow's loader, run with its load-time lines (and its CUDA probe's) dropped."""

  def __init__(self, loader: importlib.abc.Loader):
    self._loader = loader

  def __getattr__(self, name: str):  # get_data, get_resource_reader, ...: the wrapped loader's.
    return getattr(self._loader, name)

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module) -> None:
    with _stderr_without(_TENSORFLOW_NOISE):
      self._loader.exec_module(module)
      config = getattr(module, "config", None)
      if config is not None and not accelerator_present():  # Its CUDA probe: here, not later.
        config.list_physical_devices("GPU")


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
  """Finds `tensorflow` as the other finders do, with _QuietLoader; then steps aside."""

  def find_spec(self, name, path, target=None):
    if name != "tensorflow":
      return None
    sys.meta_path.remove(self)
    spec = importlib.util.find_spec(name)
    if spec is not None and spec.loader is not None:
      spec.loader = _QuietLoader(spec.loader)
    return spec


def quiet_start() -> None:
  """Before jax and TensorFlow load: on a machine without an accelerator (and JAX_PLATFORMS
  unset) jax uses its CPU platform without probing; TensorFlow's C++ INFO and WARNING lines and
  its load-time lines are hidden unless HYBRIDIR_VERBOSE is set."""
  if not accelerator_present():
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  if verbose_requested():
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if "tensorflow" not in sys.modules and not any(
      isinstance(finder, _QuietTensorFlowImport) for finder in sys.meta_path):
    sys.meta_path.insert(0, _QuietTensorFlowImport())


# Other libraries' warnings about what hybridir sees to: seqio's for XLM-R's SentencePiece model,
# whose padding id the fairseq mapping (vocab.py) supplies.
_HANDLED_WARNINGS = ("T5 library uses PAD_ID=0, which is different from the sentencepiece",)


class OwnInfoOnly(logging.Filter):
  """Passes warnings and errors of any library (but _HANDLED_WARNINGS), INFO and DEBUG lines
  only from hybridir's code."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.pathname.startswith(_OWN_ROOTS):
      return True
    return (record.levelno >= logging.WARNING
            and not str(record.msg).startswith(_HANDLED_WARNINGS))


def quiet_libraries() -> None:
  """Hides other libraries' INFO lines (orbax logs ~90 per run, seqio, jax) on absl's handler and
  the root logger's handlers, unless `verbose()`. Call it once absl has parsed its flags."""
  if verbose():
    return
  handlers = [absl_logging.get_absl_handler(), *logging.getLogger().handlers]
  for handler in handlers:
    if not any(isinstance(f, OwnInfoOnly) for f in handler.filters):
      handler.addFilter(OwnInfoOnly())


def _parse_flags_or_exit(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad flag one line `error: ...` (status 1), not two lines."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    errors.exit_with_line(f"{e} (--helpfull lists the flags)")


def run_app(main: Callable[[list[str]], object], argv: list[str] | None = None) -> None:
  """app.run(main) for hybridir's absl commands: a bad flag or an app.UsageError ends in one
  line `error: ...` with status 1 (no usage text), and other libraries' INFO lines are hidden."""
  def quiet_main(args):
    quiet_libraries()
    try:
      return main(args)
    except app.UsageError as e:
      errors.exit_with_line(e)
  app.run(quiet_main, argv=argv, flags_parser=_parse_flags_or_exit)


class ArgumentParser(argparse.ArgumentParser):
  """argparse's parser whose mistakes end in one line `error: ...` with status 1, no usage."""

  def error(self, message: str):
    errors.exit_with_line(f"{message} ({self.prog} --help lists the options)")


def check_input_files(parser: argparse.ArgumentParser, args: argparse.Namespace,
                      names: Iterable[str]) -> None:
  """Ends the command in one line naming the option when a local file it names is missing."""
  for name in names:
    path = getattr(args, name)
    if path and "://" not in path and not os.path.exists(path):
      parser.error(f"--{name} {path}: no such file or folder")


def progress(items: Iterable[T], description: str, total: int | None = None,
             unit: str = "it", enabled: bool = True) -> Iterator[T]:
  """items, with a progress bar (count, rate, ETA) on stderr; refreshed at most every 2 s when
  stderr is not a terminal, so a log file gets a few lines, not thousands."""
  interactive = sys.stderr.isatty()
  return tqdm.tqdm(items, desc=description, total=total, unit=unit, file=sys.stderr,
                   disable=not enabled, mininterval=0.1 if interactive else 2.0,
                   dynamic_ncols=interactive, leave=interactive)


def closing_line(wrote: str, next_command: str | None = None) -> str:
  """The one line a command ends with: what it wrote, and the natural next command."""
  line = f"wrote {wrote}"
  return line + (f"; next: {next_command}" if next_command else "")


def finish(wrote: str, next_command: str | None = None) -> None:
  """Prints `closing_line` to stderr (stdout stays for a command's data)."""
  print(closing_line(wrote, next_command), file=sys.stderr, flush=True)


@contextlib.contextmanager
def closed_pipe_ok() -> Iterator[None]:
  """Ends quietly when stdout's reader goes away (`... | head`), as Unix tools do."""
  try:
    yield
    sys.stdout.flush()
  except BrokenPipeError:
    # Python flushes stdout again at exit; point it at devnull so that flush cannot fail too.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
