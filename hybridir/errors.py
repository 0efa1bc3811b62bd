"""The errors every stage raises for a setting out of its range or storage that fails, and the one
line a command shows for them.

Files and records have their own errors (`corpora.CorpusError`, `artifacts.ArtifactError`, ...);
`SettingError` is for the settings a run is given (a function's argument, a config field, a gin
macro). `one_line_errors` is how every command line ends on an expected error: `error: MESSAGE`,
the whole message on one line, status 1, no traceback.
"""
import contextlib
import errno
import logging
import os
import re
import sys
import threading
from typing import Iterator

# OSErrors that describe the storage, not the program: a full disk or quota, a file over the
# size limit, a read-only or unreadable place, a failing device. Their message names the file.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES,
                            errno.EPERM, errno.EIO})
# Exit status after SIGTERM (preemption) once the checkpoint is saved: 128 + SIGTERM, as a shell
# reports a process ended by it, so schedulers treat the run as interrupted, not finished.
PREEMPTED_EXIT_CODE = 143
_ERRNO = re.compile(r"\[Errno (\d+)\]")
# The note gin adds to an error raised inside a configurable: not part of what went wrong.
_GIN_CALL_NOTE = re.compile(r"\s*In call to configurable '[^']*' \(<[^>]*>\)( in scope '[^']*')?")


class SettingError(ValueError):
  """A setting the run cannot use; the message names it and the value found, so
  `hybridir.main` shows it as one line `error: ...` without a traceback."""


def is_storage_error(error: BaseException) -> bool:
  """An OSError of STORAGE_ERRNOS (also as gin re-raises it, its errno only in its message)."""
  if not isinstance(error, OSError):
    return False
  number = error.errno
  if number is None and (found := _ERRNO.match(str(error))):
    number = int(found.group(1))
  return number in STORAGE_ERRNOS


def one_line(error: BaseException | str) -> str:
  """`error: MESSAGE` with the whole message (every line, nothing cut) on one line."""
  return "error: " + " ".join(_GIN_CALL_NOTE.sub("", str(error)).split())


def _print_line(error: BaseException | str) -> None:
  """`one_line(error)` on stderr, after the log lines written before it."""
  for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
    handler.flush()
  print(one_line(error), file=sys.stderr, flush=True)


def exit_with_line(error: BaseException | str, status: int = 1) -> None:
  _print_line(error)
  sys.exit(status)


_ENDING = threading.Lock()


def exit_at_once(error: BaseException | str, status: int = 1) -> None:
  """Prints `one_line(error)` and ends the process now, from any thread (os._exit: a process
  whose peer is gone must not wait at an exit barrier); a second caller waits for the first."""
  with _ENDING:
    _print_line(error)
    sys.stdout.flush()
    os._exit(status)  # pylint: disable=protected-access


@contextlib.contextmanager
def one_line_errors(expected: tuple[type[BaseException], ...]) -> Iterator[None]:
  """Ends the program with `one_line` and status 1 on an error of the `expected` types or a
  storage error (STORAGE_ERRNOS), without a traceback: their message names the file, record or
  parameter."""
  try:
    yield
  except expected as e:
    exit_with_line(e)
  except OSError as e:
    if not is_storage_error(e):
      raise
    exit_with_line(e)
