"""One command evaluates against a whole corpus streamed from gzip shards: two processes under
jax.distributed (`python -m hybridir.main --gin_file=gin_configs/runs/eval_corpus.gin`) give the
results of one (here the test's own process, called directly, to spare a third start) and of a
brute-force NumPy ranking."""
import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hybridir.data import spm
from hybridir.evaluation import corpus_eval
from hybridir.evaluation import corpus_index
from hybridir.export import artifacts
from hybridir.export import exporter
from hybridir.models import dual_encoder
from hybridir.models import t5
from tests.conftest import REPO_ROOT
from tests.test_corpus_index import init_params
from tests.test_corpus_index import read_index
from tests.test_corpus_search import PEAK_RSS_GROWTH
from tests.test_multihost import free_port
from tests.test_multihost import run_processes

pytestmark = pytest.mark.slow  # The 2-process run of `runs` takes 40-60 s on 2 shared cores.

WORDS = ("river city school music garden history language water mountain king football bridge "
         "science winter market island train paper forest castle").split()
NUM_PASSAGES, NUM_TOPICS = 240, 12
FILE_SIZES = (17, 100, 3, 70, 50)  # docs-0 ... docs-4: unequal, so shards cross files.
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


def write_gzip_shards(lines, folder, sizes) -> str:
  """lines split into folder/docs-<i>.jsonl.gz of the given sizes; returns their glob."""
  os.makedirs(folder, exist_ok=True)
  bounds = np.cumsum((0,) + tuple(sizes))
  assert bounds[-1] == len(lines)
  for i, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
    with gzip.open(os.path.join(folder, f"docs-{i}.jsonl.gz"), "wt", encoding="utf-8") as f:
      f.writelines(lines[start:stop])
  return os.path.join(folder, "docs-*.jsonl.gz")


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
  corpus = write_gzip_shards((root / "corpus.jsonl").read_text().splitlines(keepends=True),
                             root / "docs", FILE_SIZES)
  files = dict(encoder_path=encoder_dir, topics_tsv=str(root / "topics.tsv"),
               qrels_trec=str(root / "qrels.tsv"), corpus_jsonl=corpus,
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
  return two, one, root, encoder_dir


def run_lines(folder):
  return [line.split() for line in (folder / "run.trec").read_text().splitlines()]


def test_each_process_encodes_its_shards_into_one_index_equal_to_one_process(runs):
  two, one, _, _ = runs
  spec = corpus_index.read_spec(str(two / "index"))
  assert (spec["num_passages"], spec["num_shards"]) == (NUM_PASSAGES, 5)
  ids_two, embeddings_two = read_index(str(two / "index"))
  ids_one, embeddings_one = read_index(str(one / "index"))
  assert ids_two == ids_one == [f"doc{i}#0" for i in range(NUM_PASSAGES)]
  np.testing.assert_allclose(embeddings_two, embeddings_one, rtol=1e-5, atol=1e-6)


def test_each_process_encodes_a_contiguous_block_across_file_boundaries(runs):
  two, _, root, _ = runs
  counts = sorted(os.listdir(two / "index" / corpus_index.COUNTS_DIR))
  assert counts == [f"docs-{i}.jsonl.gz.json" for i in range(len(FILE_SIZES))]
  logs = [(root / "logs" / f"process_{i}.log").read_text() for i in range(2)]
  # 5 shards of 50: process 0 encodes shards 0-1 (docs-0, docs-1 up to record 82), process 1
  # shards 2-4 (the rest of docs-1, docs-2 to docs-4).
  assert "encoded 100 passages" in logs[0] and "encoded 140 passages" in logs[1]


def test_two_process_run_and_results_equal_one_process(runs):
  two, one, _, _ = runs
  lines = {name: run_lines(folder) for name, folder in (("two", two), ("one", one))}
  assert len(lines["two"]) == NUM_TOPICS * 20
  assert [l[:4] for l in lines["two"]] == [l[:4] for l in lines["one"]]
  np.testing.assert_allclose([float(l[4]) for l in lines["two"]],
                             [float(l[4]) for l in lines["one"]], rtol=1e-5)
  results = {name: json.loads((folder / "results.json").read_text())
             for name, folder in (("two", two), ("one", one))}
  assert results["two"] == pytest.approx(results["one"])
  assert results["two"]["num_q"] == NUM_TOPICS and results["two"]["recall_100"] > 0.5


def test_the_run_ranks_as_brute_force_over_the_encoded_corpus(runs):
  """Every query's top 20 in the 2-process run is NumPy's sort of title-and-text embeddings
  (scores descending, ties to the earlier passage), up to float32 rounding of near-ties."""
  two, _, root, encoder_dir = runs
  encoder = exporter.load_encoder(encoder_dir, batch_size=16)
  records = [json.loads(line) for line in (root / "corpus.jsonl").read_text().splitlines()]
  passages = encoder.encode([f"{r['title']} {r['text']}" for r in records], tower="passage")
  topics = [line.split("\t") for line in (root / "topics.tsv").read_text().splitlines()]
  scores = encoder.encode([text for _, text in topics], tower="query") @ passages.T
  position = {r["docid"]: i for i, r in enumerate(records)}
  found = {}
  for qid, _, docid, _, score, _ in run_lines(two):
    found.setdefault(qid, []).append(position[docid])
  for row, (qid, _) in enumerate(topics):
    expected = np.lexsort((np.arange(NUM_PASSAGES), -scores[row]))[:20]
    np.testing.assert_allclose(scores[row][found[qid]], scores[row][expected], rtol=1e-5,
                               atol=1e-6)
  exact = sum(found[qid] == np.lexsort((np.arange(NUM_PASSAGES), -scores[row]))[:20].tolist()
              for row, (qid, _) in enumerate(topics))
  assert exact >= NUM_TOPICS - 1


EVALUATE_AND_REPORT_RSS_GROWTH = PEAK_RSS_GROWTH + """
import functools, json, sys
from hybridir.evaluation import corpus_eval
from hybridir.export import exporter

encoder_dir, folder, names = sys.argv[1], sys.argv[2], sys.argv[3:]
encoder = exporter.load_encoder(encoder_dir, batch_size=64)
def evaluate(name):
  corpus_eval.evaluate_corpus(
      encoder, topics_tsv=f"{folder}/topics.tsv", qrels_trec=f"{folder}/qrels.tsv",
      corpus_jsonl=f"{folder}/{name}/docs-*.jsonl.gz", language="en",
      output_dir=f"{folder}/out-{name}", shard_size=1000, depth=10, memory_bytes=1 << 20,
      allow_subset=True)

evaluate(names[0])  # jax's start-up and every compilation (XLA's memory): out of the count.
print(json.dumps({name: peak_rss_growth(functools.partial(evaluate, name))
                  for name in names[1:]}))
"""


def test_evaluation_memory_does_not_grow_with_a_tenfold_corpus(tmp_path, data_dir):
  """Peak RSS growth of an evaluation process (measured, not timed) over gzip corpora of 2,000
  and 20,000 passages of 80 words in files of 3,000, shards of 1,000 and a 1 MiB search bound:
  measured 1.6 and 2.3 MB; holding the passages' texts as well gave 3.2 and 17.2 MB."""
  rng = np.random.default_rng(0)
  encoder_dir = tiny_encoder(tmp_path, data_dir)
  with open(tmp_path / "topics.tsv", "w") as topics, open(tmp_path / "qrels.tsv", "w") as qrels:
    for i in range(10):
      topics.write(f"q{i}\t{' '.join(rng.choice(WORDS, size=6))}\n")
      qrels.write(f"q{i} Q0 d{i} 1\n")
  sizes = {"warmup": 2000, "small": 2000, "large": 20_000}
  for name, count in sizes.items():
    lines = [json.dumps({"docid": f"d{i}", "title": " ".join(rng.choice(WORDS, size=3)),
                         "text": " ".join(rng.choice(WORDS, size=80))}) + "\n"
             for i in range(count)]
    write_gzip_shards(lines, tmp_path / name, [3000] * (count // 3000) + [count % 3000])
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", EVALUATE_AND_REPORT_RSS_GROWTH, encoder_dir,
                        str(tmp_path), *sizes], cwd=REPO_ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  growth = json.loads(out.stdout.splitlines()[-1])
  assert growth["large"] < 8 << 20, growth
  # RSS can shrink below the baseline (the allocator returns pages): no growth is 0.
  assert growth["large"] - max(growth["small"], 0) < 4 << 20, growth
