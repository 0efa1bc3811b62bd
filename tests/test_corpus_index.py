"""A corpus is encoded in fixed shards, each written atomically; a crashed job resumes where it
stopped and ends with the same index as one uninterrupted pass."""
import json

import flax.linen as nn
import jax
import ml_dtypes
import numpy as np
import pytest

from hybridir.evaluation import corpus_index
from hybridir.evaluation import corpus_search
from hybridir.export import encoder as encoder_lib
from hybridir import fs
from hybridir.models import dual_encoder
from hybridir.models import t5

CONFIG = t5.T5Config(vocab_size=300, emb_dim=16, num_layers=1, num_heads=2, head_dim=8,
                     mlp_dim=24, relative_attention_num_buckets=8,
                     relative_attention_max_distance=16, dropout_rate=0.0)
SHARD_SIZE = 64


def init_params(model, seed=0):
  tokens = np.ones((2, 8), np.int32)
  return nn.unbox(model.init(jax.random.key(seed), tokens, tokens)["params"])


def tiny_encoder(seed=0, batch_size=32):
  """A randomly initialised one-layer mT5-style encoder (no vocabulary: it encodes token ids)."""
  model = dual_encoder.DualEncoder(CONFIG)
  return encoder_lib.Encoder(model, init_params(model, seed), None, 32, batch_size)


@pytest.fixture(scope="module")
def encoder():
  return tiny_encoder()


def read_index(index_dir):
  """(ids, float32 embeddings) of a whole index, in passage order."""
  spec = corpus_index.read_spec(index_dir)
  ids, rows = [], []
  for shard in range(spec["num_shards"]):
    ids.extend(corpus_index.read_shard_ids(index_dir, spec, shard).tolist())
    rows.extend(r for _, r in corpus_index.iter_shard_rows(index_dir, spec, shard, 1000))
  return ids, np.concatenate(rows)


def test_synthetic_passages_are_a_function_of_position_alone():
  source = corpus_index.SyntheticPassages(100, 300, seed=3)
  ids, tokens = source.read(0, 100)
  assert source.read(37, 45) == (ids[37:45], tokens[37:45])
  assert all(8 <= len(t) <= 32 and min(t) >= 2 and max(t) < 300 for t in tokens)
  assert len({tuple(t) for t in tokens}) == 100
  assert corpus_index.SyntheticPassages(100, 300, seed=4).read(0, 5)[1] != tokens[:5]


def encode_killed_after_two_shards(encoder, source, index_dir, shard_size, monkeypatch):
  """encode_corpus interrupted as it starts writing its third shard."""
  write, written = corpus_index.write_shard, []

  def crash_after_two(*args):
    if len(written) == 2:
      raise KeyboardInterrupt("killed")
    write(*args)
    written.append(args[2])

  monkeypatch.setattr(corpus_index, "write_shard", crash_after_two)
  with pytest.raises(KeyboardInterrupt):
    corpus_index.encode_corpus(encoder, source, index_dir, shard_size, progress=False)
  monkeypatch.setattr(corpus_index, "write_shard", write)


def test_crashed_encoding_resumes_and_equals_one_pass(tmp_path, encoder, monkeypatch):
  source = corpus_index.SyntheticPassages(300, 300)  # 5 shards, the last one short.
  encode_killed_after_two_shards(encoder, source, str(tmp_path), SHARD_SIZE, monkeypatch)
  assert sorted(n for n in fs.listdir(tmp_path) if n.endswith(".npy")
                and not n.endswith(".ids.npy")) == ["shard-00000-of-00005.npy",
                                                    "shard-00001-of-00005.npy"]
  resumed = corpus_index.encode_corpus(encoder, source, str(tmp_path), SHARD_SIZE, progress=False)
  assert (resumed["encoded_shards"], resumed["skipped_shards"]) == (3, 2)
  assert resumed["encoded_passages"] == 300 - 2 * SHARD_SIZE

  ids, embeddings = read_index(str(tmp_path))
  one_pass_ids, tokens = source.read(0, 300)
  assert ids == one_pass_ids
  np.testing.assert_allclose(embeddings, encoder.encode_ids(tokens, "passage"), rtol=1e-5,
                             atol=1e-6)
  again = corpus_index.encode_corpus(encoder, source, str(tmp_path), SHARD_SIZE, progress=False)
  assert (again["encoded_shards"], again["skipped_shards"]) == (0, 5)


def test_an_index_made_by_another_job_is_refused_naming_what_differs(tmp_path, encoder):
  source = corpus_index.SyntheticPassages(100, 300)
  corpus_index.encode_corpus(encoder, source, str(tmp_path), SHARD_SIZE, progress=False)
  with pytest.raises(ValueError, match=r"differs in \['shard_size'\]"):
    corpus_index.encode_corpus(encoder, source, str(tmp_path), 50, progress=False)
  with pytest.raises(ValueError, match=r"differs in \['encoder'\]"):
    corpus_index.encode_corpus(tiny_encoder(seed=1), source, str(tmp_path), SHARD_SIZE,
                               progress=False)


def test_bfloat16_index_stores_two_bytes_per_value_and_reads_back_rounded(tmp_path, encoder):
  source = corpus_index.SyntheticPassages(100, 300)
  corpus_index.encode_corpus(encoder, source, str(tmp_path), SHARD_SIZE, "bfloat16",
                             progress=False)
  stored = np.load(tmp_path / "shard-00000-of-00002.npy")
  assert stored.dtype == np.uint16 and stored.shape == (SHARD_SIZE, 16)
  _, embeddings = read_index(str(tmp_path))
  expected = encoder.encode_ids(source.read(0, 100)[1], "passage")
  np.testing.assert_array_equal(  # Values bfloat16 holds exactly, within its rounding.
      embeddings, embeddings.astype(ml_dtypes.bfloat16).astype(np.float32))
  np.testing.assert_allclose(embeddings, expected, rtol=2**-8, atol=1e-6)
  assert not np.array_equal(embeddings, expected)


def test_a_truncated_shard_is_reported_with_its_path(tmp_path, encoder):
  source = corpus_index.SyntheticPassages(100, 300)
  corpus_index.encode_corpus(encoder, source, str(tmp_path), SHARD_SIZE, progress=False)
  path = tmp_path / "shard-00001-of-00002.npy"
  path.write_bytes(path.read_bytes()[:-8])
  with pytest.raises(ValueError, match="shard-00001-of-00002.npy: truncated"):
    read_index(str(tmp_path))


def test_index_on_gcs_encodes_resumes_and_searches(gcs_bucket, encoder, tmp_path):
  source = corpus_index.SyntheticPassages(150, 300)
  remote, local = f"{gcs_bucket}/corpus_index", str(tmp_path)
  for index_dir in (remote, local):
    corpus_index.encode_corpus(encoder, source, index_dir, SHARD_SIZE, progress=False)
  assert json.loads(fs.read_text(f"{remote}/index.json"))["num_shards"] == 3
  fs.path(f"{remote}/shard-00002-of-00003.npy").unlink()
  resumed = corpus_index.encode_corpus(encoder, source, remote, SHARD_SIZE, progress=False)
  assert (resumed["encoded_shards"], resumed["skipped_shards"]) == (1, 2)
  queries = encoder.encode_ids(source.read(0, 7)[1], "query")
  on_gcs = corpus_search.search_index(remote, queries, 5, memory_bytes=1 << 20)
  on_disk = corpus_search.search_index(local, queries, 5, memory_bytes=1 << 20)
  np.testing.assert_array_equal(on_gcs[1], on_disk[1])
  np.testing.assert_array_equal(on_gcs[0], on_disk[0])
  assert on_gcs[1][:, 0].tolist() == list(range(7))  # Each passage is its own nearest.
