"""TensorBoard scalars written through hybridir.fs, so they reach gs:// (and the emulator tests
use) without TensorFlow's filesystem, which tf.summary needs and which cannot be pointed at an
emulator.

The files are TensorBoard's own format, built with TensorBoard's record writer and protos. A
local event file is appended to, as tf.summary does (a reader tolerates a torn last record). An
object cannot be appended to: the writer keeps the current file's records and uploads the whole
file at each write (one object upload, complete or absent), and starts a new file past
`max_file_bytes` so no upload grows without bound. TensorBoard reads a logdir's event files in
name order; names carry the creation time and a sequence number.

A resumed run replays the steps after its checkpoint: its writer is given `purge_step` (the first
step it writes) and starts with TensorBoard's restart marker (a SessionLog START at that step, as
tf.summary and PyTorch's `purge_step` write), so TensorBoard drops the earlier files' events from
that step on and shows each step once, with the values of the run that continued.
"""
import io
import os
import socket
import time

import jax
import numpy as np
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.scalar import summary_v2
from tensorboard.summary.writer import record_writer

from hybridir import fs


class SummaryWriter:
  """TensorBoard scalars under `logdir`, from process 0 only (None: writes nothing)."""

  def __init__(self, logdir: str | None, max_file_bytes: int = 1 << 20,
               purge_step: int | None = None):
    self._logdir = logdir if logdir and jax.process_index() == 0 else None
    self._purge_step = purge_step
    self._remote = bool(self._logdir) and fs.is_remote(self._logdir)
    self._max_file_bytes = max_file_bytes
    self._started = int(time.time())
    self._index = -1
    self._path = None
    self._records = io.BytesIO()

  def _record(self, event: event_pb2.Event) -> bytes:
    buffer = io.BytesIO()
    record_writer.RecordWriter(buffer).write(event.SerializeToString())
    return buffer.getvalue()

  def _next_file(self) -> None:
    self._index += 1
    name = (f"events.out.tfevents.{self._started:010d}.{socket.gethostname()}.{os.getpid()}."
            f"{self._index:05d}.v2")
    self._path = f"{self._logdir.rstrip('/')}/{name}"
    self._records = io.BytesIO()
    self._append(self._record(event_pb2.Event(wall_time=time.time(),
                                              file_version="brain.Event:2")))
    if self._purge_step is not None and self._index == 0:
      self._append(self._record(event_pb2.Event(
          wall_time=time.time(), step=int(self._purge_step),
          session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START))))

  def _append(self, record: bytes) -> None:
    if self._remote:
      self._records.write(record)
      fs.write_bytes_atomically(self._path, self._records.getvalue())
    else:
      fs.makedirs(self._logdir)
      with fs.open(self._path, "ab") as f:
        f.write(record)

  def write(self, step: int, scalars: dict) -> None:
    """One event holding every scalar of `step`, on storage when this returns."""
    if self._logdir is None:
      return
    if self._path is None or self._records.tell() > self._max_file_bytes or (
        not self._remote and os.path.getsize(self._path) > self._max_file_bytes):
      self._next_file()
    summary = summary_pb2.Summary()
    for name, value in scalars.items():
      summary.value.extend(summary_v2.scalar_pb(name, np.float32(value)).value)
    self._append(self._record(event_pb2.Event(wall_time=time.time(), step=int(step),
                                              summary=summary)))
