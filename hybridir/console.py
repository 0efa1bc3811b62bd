"""What a command shows its user: hybridir's own log lines (other libraries' INFO lines hidden),
progress bars with an ETA, and one closing line naming what was written and what to run next.

`HYBRIDIR_VERBOSE=1` (or absl's `--verbosity=1`) shows every library's INFO lines again.
"""
import contextlib
import logging
import os
import sys
from typing import Iterable, Iterator, TypeVar

from absl import logging as absl_logging
import tqdm

T = TypeVar("T")
if not os.environ.get("HYBRIDIR_VERBOSE"):  # TensorFlow's and XLA's C++ INFO and WARNING lines,
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # read when TensorFlow is first imported.
# hybridir's packages (installed or not, `tasks` sits beside `hybridir`).
_OWN_ROOTS = tuple(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                name) + os.sep for name in ("hybridir", "tasks"))


class OwnInfoOnly(logging.Filter):
  """Passes warnings and errors of any library, INFO and DEBUG lines only from hybridir's code."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or record.pathname.startswith(_OWN_ROOTS)


def verbose() -> bool:
  return os.environ.get("HYBRIDIR_VERBOSE", "") not in ("", "0") or absl_logging.get_verbosity() > 0


def quiet_libraries() -> None:
  """Hides other libraries' INFO lines (orbax logs ~90 per run, seqio, jax) on absl's handler and
  the root logger's handlers, unless `verbose()`. Call it once absl has parsed its flags, before TensorFlow is imported."""
  if verbose():
    return
  handlers = [absl_logging.get_absl_handler(), *logging.getLogger().handlers]
  for handler in handlers:
    if not any(isinstance(f, OwnInfoOnly) for f in handler.filters):
      handler.addFilter(OwnInfoOnly())


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
