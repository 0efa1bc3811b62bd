"""One command evaluates against a whole corpus: two processes under jax.distributed
(`python -m hybridir.main --gin_file=gin_configs/runs/eval_corpus.gin`) give the results of one
(here the test's own process, called directly, to spare a third start)."""
import json

import numpy as np
import pytest

from hybridir import artifacts
from hybridir import corpus_eval
from hybridir import corpus_index
from hybridir import spm
from hybridir.models import dual_encoder
from hybridir.models import t5
from tests.test_corpus_index import init_params
from tests.test_corpus_index import read_index
from tests.test_multihost import free_port
from tests.test_multihost import run_processes

# Every test reads one evaluation by two jax.distributed processes and by one.
pytestmark = pytest.mark.slow

WORDS = ("river city school music garden history language water mountain king football bridge "
         "science winter market island train paper forest castle").split()
NUM_PASSAGES, NUM_TOPICS = 240, 12
MACROS = {"encoder_path": "ENCODER_PATH", "topics_tsv": "TOPICS", "qrels_trec": "QRELS",
          "corpus_jsonl": "CORPUS", "language": "LANGUAGE", "shard_size": "SHARD_SIZE",
          "depth": "DEPTH", "memory_bytes": "SEARCH_MEMORY_BYTES", "batch_size": "BATCH_SIZE",
          "allow_subset": "ALLOW_SUBSET"}


def write_miracl_files(folder, rng):
  """MIRACL's layout: corpus JSONL (docid, title, text), topics TSV, qrels; each topic is a
  shuffled copy of its relevant passage's words."""
  passages = [" ".join(rng.choice(WORDS, size=int(rng.integers(5, 12)))) for _ in
              range(NUM_PASSAGES)]
  with open(folder / "corpus.jsonl", "w") as f:
    for i, text in enumerate(passages):
      f.write(json.dumps({"docid": f"doc{i}#0", "title": f"title {i % 7}", "text": text}) + "\n")
  relevant = rng.choice(NUM_PASSAGES, size=NUM_TOPICS, replace=False)
  with open(folder / "topics.tsv", "w") as topics, open(folder / "qrels.tsv", "w") as qrels:
    for qid, docid in enumerate(relevant):
      topics.write(f"q{qid}\t{' '.join(rng.permutation(passages[docid].split()))}\n")
      qrels.write(f"q{qid} Q0 doc{docid}#0 1\n")


def tiny_encoder(root, data_dir) -> str:
  """An exported tiny mT5 encoder (random weights, a 1000-piece vocabulary) under root."""
  spm_path = spm.train(str(data_dir / "xquad-r"), "t5", 1000, str(root / "spm"),
                       languages=["en"])
  model = dual_encoder.DualEncoder(t5.T5Config(
      vocab_size=1100, emb_dim=16, num_layers=1, num_heads=2, head_dim=8, mlp_dim=24,
      relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0))
  return artifacts.export_encoder(str(root / "encoder"), model, init_params(model), spm_path,
                                  max_length=32)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
  """(two-process MODEL_DIR, one-process MODEL_DIR) of the same evaluation."""
  root = tmp_path_factory.mktemp("corpus_eval")
  encoder_dir = tiny_encoder(root, data_dir)
  write_miracl_files(root, np.random.default_rng(0))
  files = dict(encoder_path=encoder_dir, topics_tsv=str(root / "topics.tsv"),
               qrels_trec=str(root / "qrels.tsv"), corpus_jsonl=str(root / "corpus.jsonl"),
               language="en", shard_size=50, depth=20, memory_bytes=1 << 20, batch_size=16,
               allow_subset=True)  # 240 passages, not English's 32.9M.
  two, one = root / "two_processes", root / "one_process"
  address = f"localhost:{free_port()}"
  flags = ["--gin_file=gin_configs/runs/eval_corpus.gin", f"--gin.MODEL_DIR='{two}'"]
  flags += [f"--gin.{MACROS[name]}={value!r}" for name, value in files.items()]
  run_processes([flags + [f"--coordinator_address={address}", "--process_count=2",
                          f"--process_id={i}"] for i in range(2)],
                devices_per_process=2, log_dir=root / "logs", worker="hybridir.main")
  corpus_eval.run_corpus_evaluation(output_dir=str(one), **files)  # Here: 8 devices.
  return two, one


def test_each_process_encodes_its_shards_into_one_index_equal_to_one_process(runs):
  two, one = runs
  spec = corpus_index.read_spec(str(two / "index"))
  assert (spec["num_passages"], spec["num_shards"]) == (NUM_PASSAGES, 5)
  ids_two, embeddings_two = read_index(str(two / "index"))
  ids_one, embeddings_one = read_index(str(one / "index"))
  assert ids_two == ids_one == [f"doc{i}#0" for i in range(NUM_PASSAGES)]
  np.testing.assert_allclose(embeddings_two, embeddings_one, rtol=1e-5, atol=1e-6)


def test_two_process_run_and_results_equal_one_process(runs):
  two, one = runs
  lines = {}
  for name, folder in (("two", two), ("one", one)):
    lines[name] = [line.split() for line in (folder / "run.trec").read_text().splitlines()]
  assert len(lines["two"]) == NUM_TOPICS * 20
  assert [l[:4] for l in lines["two"]] == [l[:4] for l in lines["one"]]
  np.testing.assert_allclose([float(l[4]) for l in lines["two"]],
                             [float(l[4]) for l in lines["one"]], rtol=1e-5)
  results = {name: json.loads((folder / "results.json").read_text())
             for name, folder in (("two", two), ("one", one))}
  assert results["two"] == pytest.approx(results["one"])
  assert results["two"]["num_q"] == NUM_TOPICS and results["two"]["recall_100"] > 0.5
