"""A multi-process job that loses a process ends on every other one with one line naming it.

JAX's coordination service notices a silent process only after its heartbeat timeout, and then
aborts every other process with a C++ stack dump (its missed-heartbeat callback cannot be replaced
from Python in JAX 0.10: it is called with a status jaxlib cannot convert). So each process beats
in the service's key-value store (`HEARTBEATS/<process>`) from a thread, and watches the others':
a process whose beat has not changed for `timeout` seconds is lost, and the watcher ends its own
process with `error: process 1 of 2 stopped ...` (through `on_lost`, `hybridir.main`'s: status 1)
before JAX's own, later, verdict. A
coordinator (process 0) that cannot be reached for `timeout` seconds is named the same way. A
process that finishes says so (`done`) and stops beating, so peers still at work do not count it.
"""
import math
import threading
import time
from typing import Callable

from absl import logging
import jax

HEARTBEATS = "hybridir/heartbeats/"
DONE = "done"
# JAX's own heartbeat timeout: this much after the watchdog's, so the watchdog names the lost
# process first and JAX's abort stays a backstop for a process whose Python is stuck.
JAX_HEARTBEAT_MARGIN_SECONDS = 60


class Watchdog:
  """Beats for this process and ends it through `on_lost(message)` when a peer is lost."""

  def __init__(self, client, timeout: float, on_lost: Callable[[str], None]):
    self.client, self.timeout, self.on_lost = client, timeout, on_lost
    self.process, self.count = jax.process_index(), jax.process_count()
    self.period = max(0.2, timeout / 5)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._watch, name="hybridir-watchdog", daemon=True)

  def start(self) -> "Watchdog":
    self._thread.start()
    return self

  def stop(self, done: bool) -> None:
    """Stops beating: `done` (finished) tells the peers to stop watching this process; else
    (failed) they see it fall silent, and end too."""
    if self._stop.is_set():
      return
    self._stop.set()
    self._thread.join()
    if done:
      try:
        self.client.key_value_set(f"{HEARTBEATS}{self.process}", DONE, allow_overwrite=True)
      except Exception:  # pylint: disable=broad-except  # The job is ending anyway.
        pass

  def _watch(self) -> None:
    peers = [p for p in range(self.count) if p != self.process]
    changed = dict.fromkeys(peers, time.monotonic())
    seen, beat, unreachable_since = {}, 0, None
    while not self._stop.wait(self.period):
      beat += 1
      now = time.monotonic()
      try:
        self.client.key_value_set(f"{HEARTBEATS}{self.process}", str(beat), allow_overwrite=True)
        beats = {key.rsplit("/", 1)[-1]: value
                 for key, value in self.client.key_value_dir_get(HEARTBEATS)}
        unreachable_since = None
      except Exception as e:  # pylint: disable=broad-except  # The coordination service is gone.
        unreachable_since = unreachable_since or now
        if now - unreachable_since > self.timeout and not self._stop.is_set():
          self.on_lost(self._line("the coordinator (process 0) cannot be reached for "
                                  f"{self.timeout:g} s: {' '.join(str(e).split())}"))
        continue
      for peer in peers:
        value = beats.get(str(peer))
        if value == DONE:
          changed[peer] = math.inf
        elif value != seen.get(peer):
          seen[peer], changed[peer] = value, now
      lost = [p for p in peers if now - changed[p] > self.timeout]
      if lost and not self._stop.is_set():
        self.on_lost(self._line(
            f"process {', '.join(map(str, lost))} of {self.count} stopped (no heartbeat for "
            f"{self.timeout:g} s)"))

  def _line(self, what: str) -> str:
    return f"{what}; process {self.process} stops too"


def start_watchdog(timeout: float, on_lost: Callable[[str], None]) -> Watchdog | None:
  """The Watchdog of this process once jax.distributed is initialised (None in one process)."""
  from jax._src import distributed  # pylint: disable=g-import-not-at-top  # Its client.
  client = distributed.global_state.client
  if jax.process_count() == 1 or client is None:
    return None
  logging.info("watching %d peer processes (lost after %g s without a heartbeat)",
               jax.process_count() - 1, timeout)
  return Watchdog(client, timeout, on_lost).start()
