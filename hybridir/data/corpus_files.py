"""A corpus spread over JSON-lines files (MIRACL's `docs-*.jsonl.gz`) read as one sequence of
records by position: counted once per file, cut into contiguous ranges, streamed from any position.

A record is a non-blank line (corpora.numbered_lines), and its position is its place in the files
taken in name order. A gzip stream cannot be seeked, so a file's count is one pass over it, and
reading from position p opens p's file and skips its earlier lines unparsed: memory holds one line
at a time, whatever the corpus. No TensorFlow, no JAX.
"""
import bisect
import dataclasses
import functools
import itertools
import os
from typing import Iterator, Mapping, Sequence

from hybridir.data import corpora
from hybridir.data.corpora import CorpusError
from hybridir import fs


@dataclasses.dataclass(frozen=True)
class FileCount:
  """One corpus file: its path, its size when counted, and its records (non-blank lines)."""
  path: str
  size_bytes: int
  records: int


def file_size(path: str) -> int:
  return fs.path(path).stat().length


def count_records(path: str) -> FileCount:
  """One pass over a file (gunzipped when .gz): its records; a truncated gzip file or a line
  that is not UTF-8 is an error naming it (corpora.numbered_lines)."""
  size = file_size(path)
  return FileCount(path, size, sum(1 for _ in corpora.numbered_lines(path)))


def files_to_count(sizes: Sequence[int], process: int, count: int) -> list[int]:
  """The files one of `count` processes counts: those whose middle byte falls in its share of
  the corpus's bytes, so each counts about as many bytes as it will later encode."""
  total, mine, before = max(sum(sizes), 1), [], 0
  for index, size in enumerate(sizes):
    if min(count - 1, (before + size / 2) * count // total) == process:
      mine.append(index)
    before += size
  return mine


@dataclasses.dataclass(frozen=True)
class CorpusFiles:
  """The corpus's files in order, with their record counts: positions to (file, record)."""
  files: tuple[FileCount, ...]

  @functools.cached_property
  def starts(self) -> tuple[int, ...]:
    """The position of each file's first record, and the corpus's size last."""
    return tuple(itertools.accumulate((f.records for f in self.files), initial=0))

  def __len__(self) -> int:
    return self.starts[-1]

  def locate(self, position: int) -> tuple[int, int]:
    """(file index, record within the file) of a position in [0, len)."""
    if not 0 <= position < len(self):
      raise IndexError(f"position {position} is outside the corpus's {len(self)} records")
    index = bisect.bisect_right(self.starts, position) - 1
    return index, position - self.starts[index]

  def segments(self, start: int, stop: int) -> list[tuple[FileCount, int, int]]:
    """(file, first record, stop record) of each file holding positions [start, stop)."""
    out = []
    for index, file in enumerate(self.files):
      first, last = max(start, self.starts[index]), min(stop, self.starts[index + 1])
      if first < last:
        out.append((file, first - self.starts[index], last - self.starts[index]))
    return out

  def records(self, start: int) -> Iterator[tuple[str, Mapping]]:
    """(where, record) from position `start` to the end, `where` naming file and line; a file
    holding more or fewer records than counted is an error naming it."""
    index, skip = self.locate(start)
    for file in self.files[index:]:
      found = 0
      for number, line in corpora.numbered_lines(file.path):
        if found == file.records:
          raise _changed(file, f"more than {file.records} records (line {number})")
        if found >= skip:
          where = f"{file.path}: line {number}"
          yield where, corpora.json_record(line, where)
        found += 1
      if found != file.records:
        raise _changed(file, f"{found} records")
      skip = 0

  def where(self, position: int) -> str:
    """'path: line N' of a position: a pass over its file up to it (for error messages)."""
    index, record = self.locate(position)
    path = self.files[index].path
    number, _ = next(itertools.islice(corpora.numbered_lines(path), record, None))
    return f"{path}: line {number}"

  def describe(self) -> dict:
    """What an index built from these files records: names, sizes and counts (not the folder,
    so a copy elsewhere is the same corpus)."""
    return {"kind": "jsonl", "files": [[os.path.basename(f.path), f.size_bytes, f.records]
                                       for f in self.files]}


def _changed(file: FileCount, found: str) -> CorpusError:
  return CorpusError(f"{file.path}: {found} where it had {file.records} when counted "
                     f"({file.size_bytes} bytes then, {file_size(file.path)} now): the file "
                     "changed since; delete the index's counts to count it again")


def describe_segments(segments: Sequence[tuple[FileCount, int, int]]) -> str:
  """'docs-0 … docs-3.jsonl.gz (whole), docs-4.jsonl.gz records 0-1,234': what a host reads."""
  parts, whole = [], []

  def flush():
    if whole:
      name = (os.path.basename(whole[0]) if len(whole) == 1 else
              f"{os.path.basename(whole[0])} … {os.path.basename(whole[-1])}")
      parts.append(f"{name} (whole{'' if len(whole) == 1 else f', {len(whole)} files'})")
      whole.clear()

  for file, first, stop in segments:
    if (first, stop) == (0, file.records):
      whole.append(file.path)
      continue
    flush()
    parts.append(f"{os.path.basename(file.path)} records {first:,}-{stop - 1:,}")
  flush()
  return ", ".join(parts)
