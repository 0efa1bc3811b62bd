"""Corpus encoding as a resumable, sharded job: N passages in fixed shards, one file pair per shard.

    INDEX_DIR/index.json                    what is encoded: passages, shards, dim, dtype, source
    INDEX_DIR/counts/docs-3.jsonl.gz.json   a corpus file's records, counted once (StreamedPassages)
    INDEX_DIR/shard-00012-of-00100.ids.npy  the shard's passage ids (unicode), written first
    INDEX_DIR/shard-00012-of-00100.npy      its embeddings [rows, dim] (float32, or bfloat16 bits
                                            as uint16), written last: the shard's done marker

INDEX_DIR may be local or gs://; every file is written atomically (hybridir.fs), so a shard whose
embeddings file exists is complete and a rerun of the same job skips it. Process p of P encodes a
contiguous block of shards (the same number of passages, within one shard, and one pass over its
part of the corpus files) over all its local devices (an `encoder.Encoder`), reading
`read_size` passages at a time: memory holds one shard's ids and embeddings and one read's texts.
"""
import dataclasses
import hashlib
import io
import itertools
import json
import os
import time
from typing import Any, Iterator, Protocol, Sequence

import jax
from jax.experimental import multihost_utils
import ml_dtypes
import numpy as np
import tqdm

from hybridir.data import corpora
from hybridir.data import corpus_files
from hybridir import fs

INDEX_FILE = "index.json"
FORMAT, FORMAT_VERSION = "hybridir-corpus-index", 1
DTYPES = ("float32", "bfloat16")
MAX_PASSAGES = 2**31 - 1  # Global passage positions travel between hosts as int32.
READ_SIZE = 2048  # Passages read, tokenised and encoded at a time within a shard.
COUNTS_DIR = "counts"
# An encoder.Encoder (encode_ids, tokenize, dimension, params, model); not imported, so that a
# search-only process (hybridir.evaluation.corpus_search) loads neither the models
# nor their vocabularies.
Encoder = Any


class PassageSource(Protocol):
  """A corpus by position: read(start, stop) -> (passage ids, token ids); where(position) names
  a passage in errors (file and line)."""

  def __len__(self) -> int: ...
  def read(self, start: int, stop: int) -> tuple[list[str], list[list[int]]]: ...
  def where(self, position: int) -> str: ...
  def describe(self) -> dict: ...


class StreamedPassages:
  """Passages streamed from JSON-lines files (corpus_files), tokenised by the encoder as passages:
  `passage(record, where) -> (id, text)` reads one record. Consecutive reads continue one open
  stream; a read elsewhere reopens the file it starts in and skips to it."""

  def __init__(self, encoder: Encoder, corpus: corpus_files.CorpusFiles, passage):
    self.encoder, self.corpus, self.passage = encoder, corpus, passage
    self._stream, self._position = None, None

  def __len__(self) -> int:
    return len(self.corpus)

  def read(self, start, stop):
    stop = min(stop, len(self.corpus))
    if self._position != start:
      self._stream = self.corpus.records(start)
    ids, texts = [], []
    for where, record in itertools.islice(self._stream, stop - start):
      passage_id, text = self.passage(record, where)
      ids.append(passage_id)
      texts.append(text)
    self._position = stop
    return ids, self.encoder.tokenize(texts, "passage")

  def where(self, position: int) -> str:
    return self.corpus.where(position)

  def describe(self) -> dict:
    return self.corpus.describe()


def count_corpus(index_dir: str, paths: Sequence[str]) -> corpus_files.CorpusFiles:
  """The corpus files' record counts, from INDEX_DIR/counts/ where counted before (same size),
  else counted now: each process counts its share of the bytes (corpus_files.files_to_count),
  then all wait for each other and read every count."""
  sizes = [corpus_files.file_size(p) for p in paths]
  def count_path(path):
    return os.path.join(index_dir, COUNTS_DIR, os.path.basename(path) + ".json")

  def recorded(index):
    path = count_path(paths[index])
    if not fs.exists(path):
      return None
    count = corpus_files.FileCount(**json.loads(fs.read_text(path)))
    return count if count.size_bytes == sizes[index] else None

  fs.makedirs(os.path.join(index_dir, COUNTS_DIR))
  for index in corpus_files.files_to_count(sizes, jax.process_index(), jax.process_count()):
    if recorded(index) is None:
      count = corpus_files.count_records(paths[index])
      fs.write_text_atomically(count_path(paths[index]), json.dumps(dataclasses.asdict(count)))
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("corpus_index.count_corpus")
  counts = [recorded(index) for index in range(len(paths))]
  changed = [paths[i] for i, count in enumerate(counts) if count is None]
  if changed:
    raise corpora.CorpusError(f"{changed[0]}: its count in {count_path(changed[0])} is missing "
                              "or of another size after counting: was it written meanwhile?")
  return corpus_files.CorpusFiles(tuple(dataclasses.replace(c, path=p)
                                        for c, p in zip(counts, paths)))


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

  def where(self, position: int) -> str:
    return f"synthetic passage {position}"

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
  """The shards one process encodes and searches: its contiguous block of num_shards / count
  (blocks differ by at most one shard), so it reads its part of the corpus in one pass."""
  process = jax.process_index() if process is None else process
  count = jax.process_count() if count is None else count
  return list(range(process * num_shards // count, (process + 1) * num_shards // count))


def passages_of_process(num_passages: int, shard_size: int, process: int,
                        count: int) -> tuple[int, int]:
  """[start, stop) of the passages a process encodes (its shards' span)."""
  spec = {"shard_size": shard_size, "num_passages": num_passages}
  shards = shards_of_process(-(-num_passages // shard_size), process, count)
  if not shards:
    return 0, 0
  return shard_bounds(spec, shards[0])[0], shard_bounds(spec, shards[-1])[1]


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
                  shard_size: int = 65536, dtype: str = "float32", progress: bool = True,
                  read_size: int = READ_SIZE) -> dict:
  """Encodes this process's unfinished shards of `source` into index_dir, `read_size` passages
  at a time; returns the index spec with this run's counts (`encoded_shards`, `skipped_shards`,
  `seconds`, `read_seconds`: reading and tokenising, `passages_per_second`).

  A passage id twice in one shard is an error naming both (source.where) before the shard is
  written; across shards, check_passage_ids. All processes wait for each other at the end, so
  the index is complete when this returns.
  """
  if dtype not in DTYPES:
    raise ValueError(f"encode_corpus dtype must be one of {DTYPES}, got {dtype!r}")
  for name, value in (("shard_size", shard_size), ("read_size", read_size)):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"encode_corpus {name} must be a positive int, got {value!r}")
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

  began, reading = time.monotonic(), 0.0
  with tqdm.tqdm(total=rows(mine), initial=rows(mine) - rows(pending), unit="passage",
                 desc=f"encoding (process {jax.process_index()})", disable=not progress,
                 smoothing=0.1) as bar:
    for shard in pending:
      start, stop = shard_bounds(spec, shard)
      ids, embeddings = [], np.empty((stop - start, spec["dimension"]), np.float32)
      for first in range(start, stop, read_size):
        read_began = time.monotonic()
        read_ids, tokens = source.read(first, min(first + read_size, stop))
        reading += time.monotonic() - read_began
        ids += read_ids
        embeddings[first - start:first - start + len(tokens)] = encoder.encode_ids(tokens,
                                                                                   "passage")
        bar.update(len(tokens))
      _check_unique_in_shard(ids, start, source)
      write_shard(index_dir, spec, shard, ids, embeddings)
  seconds = time.monotonic() - began
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("corpus_index.encode_corpus")
  missing = [s for s in range(spec["num_shards"]) if not shard_done(index_dir, spec, s)]
  if missing:
    raise RuntimeError(f"{index_dir}: shards {missing[:5]} of {spec['num_shards']} are missing "
                       "after encoding")
  encoded = rows(pending)
  return dict(spec, encoded_shards=len(pending), skipped_shards=len(mine) - len(pending),
              encoded_passages=encoded, seconds=seconds, read_seconds=reading,
              passages_per_second=encoded / seconds if seconds > 0 else 0.0)


def _check_unique_in_shard(ids: Sequence[str], start: int, source: PassageSource) -> None:
  if len(set(ids)) == len(ids):
    return
  first = {}
  for offset, passage_id in enumerate(ids):
    if passage_id in first:
      raise _duplicate(source.where, passage_id, start + first[passage_id], start + offset)
    first[passage_id] = offset


def id_hashes(ids: np.ndarray) -> np.ndarray:
  """64-bit hashes of unicode ids (one numpy pass per character column, splitmix64 mixing; the
  padding of a shorter id leaves its hash unchanged, so any array width hashes alike)."""
  ids = np.ascontiguousarray(ids, dtype=np.str_)
  width = ids.dtype.itemsize // 4
  columns = ids.view(np.uint32).reshape(len(ids), width).astype(np.uint64)
  hashes = np.full(len(ids), 0x9E3779B97F4A7C15, np.uint64)
  for column in columns.T:
    hashes = np.where(column != 0, _mix(hashes ^ column), hashes)
  return hashes


def check_passage_ids(index_dir: str, spec: dict, where, required: Sequence[str] = (),
                      memory_bytes: int = 2 << 30) -> list[str]:
  """Fails, naming both places (where(position)), if an id is held twice anywhere in a complete
  index; returns the `required` ids it does not hold (compared exactly).

  Ids are hashed (id_hashes) and checked a bucket of hash values at a time, 32 bytes a passage
  within memory_bytes; equal hashes are compared as ids. Every process reads every ids file, so
  all fail alike.
  """
  required = np.asarray(sorted(set(required)), dtype=np.str_)
  absent = np.ones(len(required), bool)
  buckets = max(1, -(-spec["num_passages"] * 32 // memory_bytes))
  edges = [np.uint64(b * (2**64 // buckets)) for b in range(buckets)]
  for bucket, low in enumerate(edges):
    hashes, positions = [], []
    for shard in range(spec["num_shards"]):
      ids = read_shard_ids(index_dir, spec, shard)
      if bucket == 0 and len(required):
        absent &= ~np.isin(required, ids)
      shard_hashes = id_hashes(ids)
      keep = shard_hashes >= low
      if bucket + 1 < buckets:
        keep &= shard_hashes < edges[bucket + 1]
      hashes.append(shard_hashes[keep])
      positions.append(shard_bounds(spec, shard)[0] + np.flatnonzero(keep))
    hashes, positions = np.concatenate(hashes), np.concatenate(positions)
    order = np.argsort(hashes, kind="stable")  # Equal hashes stay in position order.
    hashes, positions = hashes[order], positions[order]
    for i in np.flatnonzero(hashes[1:] == hashes[:-1]):
      first, second = (_id_at(index_dir, spec, p) for p in positions[i:i + 2])
      if first == second:
        raise _duplicate(where, first, int(positions[i]), int(positions[i + 1]))
  return required[absent].tolist()


def _duplicate(where, passage_id: str, first: int, second: int) -> corpora.CorpusError:
  return corpora.CorpusError(f"{where(second)}: duplicate docid {passage_id!r} (first at "
                             f"{where(first)})")


def _id_at(index_dir: str, spec: dict, position: int) -> str:
  shard = int(position) // spec["shard_size"]
  return str(read_shard_ids(index_dir, spec, shard)[int(position) - shard * spec["shard_size"]])
