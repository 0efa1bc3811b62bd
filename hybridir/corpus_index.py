"""Corpus encoding as a resumable, sharded job: N passages in fixed shards, one file pair per shard.

    INDEX_DIR/index.json                    what is encoded: passages, shards, dim, dtype, source
    INDEX_DIR/shard-00012-of-00100.ids.npy  the shard's passage ids (unicode), written first
    INDEX_DIR/shard-00012-of-00100.npy      its embeddings [rows, dim] (float32, or bfloat16 bits
                                            as uint16), written last: the shard's done marker

INDEX_DIR may be local or gs://; every file is written atomically (hybridir.fs), so a shard whose
embeddings file exists is complete and a rerun of the same job skips it. Shard s belongs to process
s mod process_count, which encodes it over all its local devices (an `encoder.Encoder`).
"""
import dataclasses
import hashlib
import io
import json
import os
import time
from typing import Any, Iterator, Protocol, Sequence

import jax
from jax.experimental import multihost_utils
import ml_dtypes
import numpy as np
import tqdm

from hybridir import fs

INDEX_FILE = "index.json"
FORMAT, FORMAT_VERSION = "hybridir-corpus-index", 1
DTYPES = ("float32", "bfloat16")
MAX_PASSAGES = 2**31 - 1  # Global passage positions travel between hosts as int32.
# An encoder.Encoder (encode_ids, tokenize, dimension, params, model); not imported, so that a
# search-only process (hybridir.corpus_search) loads neither the models nor their vocabularies.
Encoder = Any


class PassageSource(Protocol):
  """A corpus with random access by position: read(start, stop) -> (passage ids, token ids)."""

  def __len__(self) -> int: ...
  def read(self, start: int, stop: int) -> tuple[list[str], list[list[int]]]: ...
  def describe(self) -> dict: ...


@dataclasses.dataclass(frozen=True, eq=False)
class TextPassages:
  """Passages held as texts (with contexts: MIRACL titles), tokenised by the encoder as passages."""
  encoder: Encoder
  ids: Sequence[str]
  texts: Sequence[str]
  contexts: Sequence[str]

  def __len__(self) -> int:
    return len(self.ids)

  def read(self, start, stop):
    return (list(self.ids[start:stop]),
            self.encoder.tokenize(list(self.texts[start:stop]), "passage",
                                  list(self.contexts[start:stop])))

  def describe(self) -> dict:
    digest = hashlib.sha256("\n".join(self.ids).encode("utf-8")).hexdigest()
    return {"kind": "texts", "ids_sha256": digest}


def _mix(x: np.ndarray) -> np.ndarray:
  """splitmix64's finaliser on uint64 arrays: a counter-based hash, so any range reads alike."""
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


@dataclasses.dataclass(frozen=True)
class SyntheticPassages:
  """Random token ids (2 .. vocab_size-1) of random lengths, a pure function of (seed, position)."""
  num_passages: int
  vocab_size: int
  min_length: int = 8
  max_length: int = 32
  seed: int = 0

  def __post_init__(self):
    if not 2 <= self.min_length <= self.max_length or self.vocab_size < 3:
      raise ValueError(f"SyntheticPassages: need 2 <= min_length <= max_length and vocab_size >= 3,"
                       f" got {self.min_length}, {self.max_length}, {self.vocab_size}")

  def __len__(self) -> int:
    return self.num_passages

  def read(self, start, stop):
    stop = min(stop, self.num_passages)
    seed = _mix(np.full(1, self.seed, np.uint64) + np.uint64(1))[0]
    rows = _mix(np.arange(start, stop, dtype=np.uint64) ^ seed)
    span = self.max_length - self.min_length + 1
    lengths = self.min_length + (rows % np.uint64(span)).astype(np.int64)
    columns = np.arange(self.max_length, dtype=np.uint64)
    tokens = 2 + (_mix(rows[:, None] ^ _mix(columns + np.uint64(1))[None, :])
                  % np.uint64(self.vocab_size - 2)).astype(np.int64)
    return ([f"p{i}" for i in range(start, stop)],
            [row[:length].tolist() for row, length in zip(tokens, lengths)])

  def describe(self) -> dict:
    return {"kind": "synthetic", **dataclasses.asdict(self)}


# ---------------------------------------------------------------------------------------------
# The index's files

def shard_name(shard: int, num_shards: int) -> str:
  return f"shard-{shard:05d}-of-{num_shards:05d}"


def shard_bounds(spec: dict, shard: int) -> tuple[int, int]:
  start = shard * spec["shard_size"]
  return start, min(start + spec["shard_size"], spec["num_passages"])


def shards_of_process(num_shards: int, process: int | None = None,
                      count: int | None = None) -> list[int]:
  """The shards one process encodes and searches: s mod process_count == process_index."""
  process = jax.process_index() if process is None else process
  count = jax.process_count() if count is None else count
  return list(range(process, num_shards, count))


def _npy_bytes(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  np.save(buffer, array, allow_pickle=False)
  return buffer.getvalue()


def write_shard(index_dir: str, spec: dict, shard: int, ids: Sequence[str],
                embeddings: np.ndarray) -> None:
  """Writes one shard atomically: ids first, then the embeddings file that marks it done."""
  start, stop = shard_bounds(spec, shard)
  expected = (stop - start, spec["dimension"])
  if len(ids) != expected[0] or embeddings.shape != expected:
    raise ValueError(f"shard {shard}: {len(ids)} ids and embeddings {embeddings.shape}; expected "
                     f"{expected[0]} rows of dimension {expected[1]}")
  name = os.path.join(index_dir, shard_name(shard, spec["num_shards"]))
  fs.write_bytes_atomically(name + ".ids.npy", _npy_bytes(np.asarray(ids, dtype=str)))
  if spec["dtype"] == "bfloat16":
    embeddings = np.asarray(embeddings, ml_dtypes.bfloat16).view(np.uint16)
  fs.write_bytes_atomically(name + ".npy", _npy_bytes(np.asarray(embeddings, np.float32)
                                                      if spec["dtype"] == "float32"
                                                      else embeddings))


def shard_done(index_dir: str, spec: dict, shard: int) -> bool:
  return fs.exists(os.path.join(index_dir, shard_name(shard, spec["num_shards"]) + ".npy"))


def read_shard_ids(index_dir: str, spec: dict, shard: int) -> np.ndarray:
  with fs.open(os.path.join(index_dir, shard_name(shard, spec["num_shards"]) + ".ids.npy"),
               "rb") as f:
    return np.load(f, allow_pickle=False)


def iter_shard_rows(index_dir: str, spec: dict, shard: int,
                    rows_per_read: int) -> Iterator[tuple[int, np.ndarray]]:
  """Yields (global position of the first row, float32 [<= rows_per_read, dim]) of one shard,
  read sequentially from storage: memory holds one read, whatever the shard's size."""
  path = os.path.join(index_dir, shard_name(shard, spec["num_shards"]) + ".npy")
  start, stop = shard_bounds(spec, shard)
  stored = np.dtype(np.float32 if spec["dtype"] == "float32" else np.uint16)
  with fs.open(path, "rb") as f:
    version = np.lib.format.read_magic(f)
    shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                       else np.lib.format.read_array_header_2_0(f))
    if shape != (stop - start, spec["dimension"]) or dtype != stored:
      raise ValueError(f"{path}: {dtype} {shape}, expected {stored} "
                       f"{(stop - start, spec['dimension'])} (index.json)")
    row_bytes = spec["dimension"] * stored.itemsize
    for first in range(0, stop - start, rows_per_read):
      count = min(rows_per_read, stop - start - first)
      data = f.read(count * row_bytes)
      if len(data) != count * row_bytes:
        raise ValueError(f"{path}: truncated at row {first} ({len(data)} of "
                         f"{count * row_bytes} bytes)")
      rows = np.frombuffer(data, stored).reshape(count, spec["dimension"])
      if spec["dtype"] == "bfloat16":
        rows = rows.view(ml_dtypes.bfloat16)
      yield start + first, rows.astype(np.float32)


def read_spec(index_dir: str) -> dict:
  path = os.path.join(index_dir, INDEX_FILE)
  if not fs.exists(path):
    raise FileNotFoundError(f"{path}: no corpus index here (run the encoding first)")
  spec = json.loads(fs.read_text(path))
  if (spec.get("format"), spec.get("format_version")) != (FORMAT, FORMAT_VERSION):
    raise ValueError(f"{path}: format {spec.get('format')!r} version "
                     f"{spec.get('format_version')!r}; expected {FORMAT!r} {FORMAT_VERSION}")
  return spec


def _write_or_check_spec(index_dir: str, spec: dict) -> None:
  """Writes index.json, or checks that the index there was made by the same job."""
  path = os.path.join(index_dir, INDEX_FILE)
  if fs.exists(path):
    found = read_spec(index_dir)
    different = sorted(key for key in spec if found.get(key) != spec[key])
    if different:
      raise ValueError(f"{path}: the index there differs in {different} (found "
                       f"{ {k: found.get(k) for k in different} }, this job "
                       f"{ {k: spec[k] for k in different} }); use another index_dir")
  elif jax.process_index() == 0:  # Every process computes the same spec; one writes it.
    fs.write_text_atomically(path, json.dumps(spec, indent=1, sort_keys=True))


def encoder_fingerprint(encoder: Encoder) -> str:
  """sha256 of the encoder's parameters, pooling and length: an index names what encoded it."""
  digest = hashlib.sha256(repr((encoder.model.encoder_config, encoder.model.pooling,
                                encoder.model.normalize, encoder.model.projection_dim,
                                encoder.max_length)).encode())
  for leaf in jax.tree.leaves(encoder.params):
    digest.update(np.asarray(leaf).tobytes())
  return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# The job

def encode_corpus(encoder: Encoder, source: PassageSource, index_dir: str,
                  shard_size: int = 65536, dtype: str = "float32",
                  progress: bool = True) -> dict:
  """Encodes this process's unfinished shards of `source` into index_dir; returns the index spec
  with this run's counts (`encoded_shards`, `skipped_shards`, `seconds`, `passages_per_second`).

  All processes wait for each other at the end, so the index is complete when this returns.
  """
  if dtype not in DTYPES:
    raise ValueError(f"encode_corpus dtype must be one of {DTYPES}, got {dtype!r}")
  if not isinstance(shard_size, int) or shard_size < 1:
    raise ValueError(f"encode_corpus shard_size must be a positive int, got {shard_size!r}")
  if not 1 <= len(source) <= MAX_PASSAGES:
    raise ValueError(f"encode_corpus: the source has {len(source)} passages; expected 1 to "
                     f"{MAX_PASSAGES}")
  spec = {"format": FORMAT, "format_version": FORMAT_VERSION, "num_passages": len(source),
          "shard_size": shard_size, "num_shards": -(-len(source) // shard_size),
          "dimension": encoder.dimension, "dtype": dtype, "source": source.describe(),
          "encoder": encoder_fingerprint(encoder)}
  fs.makedirs(index_dir)
  _write_or_check_spec(index_dir, spec)
  mine = shards_of_process(spec["num_shards"])
  pending = [s for s in mine if not shard_done(index_dir, spec, s)]
  def rows(shards):
    return sum(stop - start for start, stop in (shard_bounds(spec, s) for s in shards))

  began = time.monotonic()
  with tqdm.tqdm(total=rows(mine), initial=rows(mine) - rows(pending), unit="passage",
                 desc=f"encoding (process {jax.process_index()})", disable=not progress,
                 smoothing=0.1) as bar:
    for shard in pending:
      start, stop = shard_bounds(spec, shard)
      ids, tokens = source.read(start, stop)
      write_shard(index_dir, spec, shard, ids, encoder.encode_ids(tokens, "passage"))
      bar.update(stop - start)
  seconds = time.monotonic() - began
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("corpus_index.encode_corpus")
  missing = [s for s in range(spec["num_shards"]) if not shard_done(index_dir, spec, s)]
  if missing:
    raise RuntimeError(f"{index_dir}: shards {missing[:5]} of {spec['num_shards']} are missing "
                       "after encoding")
  encoded = rows(pending)
  return dict(spec, encoded_shards=len(pending), skipped_shards=len(mine) - len(pending),
              encoded_passages=encoded, seconds=seconds,
              passages_per_second=encoded / seconds if seconds > 0 else 0.0)
