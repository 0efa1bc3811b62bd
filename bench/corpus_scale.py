"""Corpus-scale evaluation, the whole eval_corpus.gin path, at growing corpus sizes: a synthetic
corpus in MIRACL's published layout evaluated by two jax.distributed CPU processes.

  python bench/corpus_scale.py [--passages 1000000 5000000] [--file_passages 100000] \
      [--queries 200] [--sample 20] [--out /tmp/corpus_scale]

Per size: writes `docs-<i>.jsonl.gz` files of --file_passages records ({"docid": "123#4", "title",
"text"}; titles of 1-6 words, texts of 20-180, mean 100, English words drawn by their frequency in
XQuAD-R's English contexts), topics and qrels; runs `python -m hybridir.main
--gin_file=gin_configs/runs/eval_corpus.gin` as 2 processes (1 CPU device each; a tiny random
mT5-style encoder, max_length 64, with a SentencePiece vocabulary trained on XQuAD-R en) under
/usr/bin/time (each one's peak RSS); reads their logs (counting, encoding, reading and tokenising,
the id check, the search); checks --sample queries of run.trec against a NumPy brute force over
the index. Prints a JSON line per size, then a table per million passages.
"""
import argparse
import collections
import gzip
import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(vocab_size=1100, emb_dim=16, num_layers=1, num_heads=2, head_dim=8, mlp_dim=32,
            relative_attention_num_buckets=8, relative_attention_max_distance=16,
            dropout_rate=0.0)
ROUNDING = 4 * 2.0 ** -23  # Relative score tolerance: 4 float32 ulps (NumPy vs XLA sums).
LOG_LINES = {
    "count_seconds": r"counted (\d+) passages in \d+ files in ([\d.]+) s",
    "encode_seconds": r"encoded (\d+) passages \(\d+ shards skipped\) in ([\d.]+) s",
    "read_seconds": r"\(([\d.]+) s reading and tokenising\)",
    "check_seconds": r"checked the index's ids in ([\d.]+) s",
    "search_seconds": r"searched \d+ queries over \d+ passages in ([\d.]+) s",
}


def english_words(data_dir):
  """XQuAD-R's English context words and their frequencies."""
  with open(os.path.join(data_dir, "xquad-r", "en.json"), encoding="utf-8") as f:
    data = json.load(f)["data"]
  counts = collections.Counter(word for article in data for paragraph in article["paragraphs"]
                               for word in paragraph["context"].split())
  words = sorted(counts)
  return words, [counts[w] for w in words]


def write_corpus(folder, passages, file_passages, queries, data_dir, seed=0):
  """MIRACL's layout under folder: docs-<i>.jsonl.gz, topics.tsv, qrels.tsv (one judged passage
  per query, its shuffled title and first words)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  words, counts = english_words(data_dir)
  pool_words = rng.choice(len(words), size=4_000_000, p=np.array(counts) / sum(counts))
  pool = " ".join(words[i] for i in pool_words) + " "
  starts = np.flatnonzero(np.frombuffer(pool.encode("latin-1", "replace"), np.uint8) == 32) + 1
  starts = np.concatenate([[0], starts])  # starts[k]: where the k-th word begins.
  os.makedirs(folder, exist_ok=True)
  judged = set(rng.choice(passages, size=queries, replace=False).tolist())
  topics, began = {}, time.monotonic()
  for first in range(0, passages, file_passages):
    count = min(file_passages, passages - first)
    offsets = rng.integers(0, len(starts) - 200, size=count)
    title_words, text_words = rng.integers(1, 7, size=count), rng.integers(20, 181, size=count)
    path = os.path.join(folder, f"docs-{first // file_passages}.jsonl.gz")
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=6) as f:
      for i in range(count):
        at, n_title = offsets[i], title_words[i]
        title = pool[starts[at]:starts[at + n_title] - 1]
        text = pool[starts[at + n_title]:starts[at + n_title + text_words[i]] - 1]
        docid = f"{(first + i) // 8}#{(first + i) % 8}"
        f.write(json.dumps({"docid": docid, "title": title, "text": text}) + "\n")
        if first + i in judged:
          topics[docid] = " ".join(rng.permutation((title + " " + text).split()[:10]))
  with open(os.path.join(folder, "topics.tsv"), "w") as t, \
       open(os.path.join(folder, "qrels.tsv"), "w") as q:
    for number, (docid, query) in enumerate(sorted(topics.items())):
      t.write(f"q{number}\t{query}\n")
      q.write(f"q{number} Q0 {docid} 1\n")
  return time.monotonic() - began


def export_encoder(out, data_dir):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from hybridir.data import spm  # pylint: disable=g-import-not-at-top
  from hybridir.export import artifacts
  from hybridir.models import dual_encoder, t5  # pylint: disable=g-import-not-at-top
  spm_path = spm.train(os.path.join(data_dir, "xquad-r"), "t5", 1000, os.path.join(out, "spm"),
                       languages=["en"])
  model = dual_encoder.DualEncoder(t5.T5Config(**TINY))
  tokens = np.ones((2, 8), np.int32)
  params = nn.unbox(model.init(jax.random.key(0), tokens, tokens)["params"])
  return artifacts.export_encoder(os.path.join(out, "encoder"), model, params, spm_path,
                                  max_length=64)


def evaluate(args, folder, encoder_dir, model_dir):
  """The 2-process eval_corpus.gin run: per process, its log's figures and peak RSS."""
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("localhost", 0))
    address = f"localhost:{s.getsockname()[1]}"
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  bindings = {"MODEL_DIR": model_dir, "ENCODER_PATH": encoder_dir,
              "TOPICS": f"{folder}/topics.tsv", "QRELS": f"{folder}/qrels.tsv",
              "CORPUS": f"{folder}/docs-*.jsonl.gz", "LANGUAGE": "en"}
  flags = [f"--gin.{k}={v!r}" for k, v in bindings.items()] + [
      "--gin.ALLOW_SUBSET=True", f"--gin.SHARD_SIZE={args.shard_size}",
      f"--gin.SEARCH_MEMORY_BYTES={args.memory_bytes}", f"--gin.BATCH_SIZE={args.batch_size}",
      f"--gin.DEPTH={args.k}"]
  procs, began = [], time.monotonic()
  for i in range(2):
    log = open(f"{model_dir}.process{i}.log", "w")
    procs.append(subprocess.Popen(
        ["/usr/bin/time", "-f", "%M", "-o", f"{model_dir}.process{i}.rss", sys.executable, "-m",
         "hybridir.main", "--gin_file=gin_configs/runs/eval_corpus.gin", *flags,
         f"--coordinator_address={address}", "--process_count=2", f"--process_id={i}"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
  for p in procs:
    p.wait()
  wall = time.monotonic() - began
  if any(p.returncode for p in procs):
    raise SystemExit(f"a process failed; see {model_dir}.process*.log")
  reports = []
  for i in range(2):
    log = open(f"{model_dir}.process{i}.log").read()
    report = {"peak_rss_gib": int(open(f"{model_dir}.process{i}.rss").read().split()[-1])
                              * 1024 / 2**30}
    for name, pattern in LOG_LINES.items():
      report[name] = float(re.search(pattern, log).groups()[-1])
    report["encoded_passages"] = int(re.search(LOG_LINES["encode_seconds"], log).group(1))
    reports.append(report)
  return {"wall_seconds": wall, "processes": reports}


def brute_force_check(args, folder, encoder_dir, model_dir):
  """--sample queries' top-k by a float32 NumPy matmul over the whole index (score descending,
  then position) against run.trec: identical, or equal up to near-ties within rounding."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from hybridir.evaluation import corpus_index
  from hybridir.export import exporter  # pylint: disable=g-import-not-at-top
  index_dir = os.path.join(model_dir, "index")
  spec = corpus_index.read_spec(index_dir)
  ids, rows = [], []
  for shard in range(spec["num_shards"]):
    ids.extend(corpus_index.read_shard_ids(index_dir, spec, shard).tolist())
    rows.extend(r for _, r in corpus_index.iter_shard_rows(index_dir, spec, shard, 1 << 20))
  passages, position = np.concatenate(rows), {docid: i for i, docid in enumerate(ids)}
  topics = [line.split("\t") for line in open(f"{folder}/topics.tsv").read().splitlines()]
  encoder = exporter.load_encoder(encoder_dir, batch_size=args.batch_size)
  # All topics in one call with the run's batch size, as the run encoded them: the same batches.
  queries = encoder.encode([text for _, text in topics], tower="query")[:args.sample]
  topics = topics[:args.sample]
  scores = queries @ passages.T
  found = collections.defaultdict(list)
  for line in open(os.path.join(model_dir, "run.trec")):
    qid, _, docid, *_ = line.split()
    found[qid].append(position[docid])
  identical = within = 0
  for row, (qid, _) in enumerate(topics):
    order = np.argpartition(-scores[row], args.k)[:args.k + 1]
    candidates = np.flatnonzero(scores[row] >= scores[row][order].min())
    expected = candidates[np.lexsort((candidates, -scores[row][candidates]))][:args.k]
    identical += found[qid] == expected.tolist()
    true, got = scores[row][expected], scores[row][found[qid]]
    within += bool(np.all(np.abs(got - true) <= ROUNDING * np.abs(true)))
  return {"sample": len(topics), "identical": identical, "equal_up_to_rounding_ties": within}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--passages", type=int, nargs="+", default=[1_000_000, 5_000_000])
  parser.add_argument("--file_passages", type=int, default=100_000)
  parser.add_argument("--shard_size", type=int, default=50_000)
  parser.add_argument("--queries", type=int, default=200)
  parser.add_argument("--k", type=int, default=100)
  parser.add_argument("--sample", type=int, default=20)
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--memory_bytes", type=int, default=64 << 20)
  parser.add_argument("--data_dir", default=os.path.join(REPO, "..", "shared", "data"))
  parser.add_argument("--out", default="/tmp/corpus_scale")
  parser.add_argument("--keep", action="store_true", help="keep each size's corpus and index")
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  encoder_dir = export_encoder(args.out, args.data_dir)
  summary = []
  for passages in args.passages:
    folder = os.path.join(args.out, f"corpus_{passages}")
    model_dir = os.path.join(args.out, f"eval_{passages}")
    if os.path.exists(model_dir):
      raise SystemExit(f"{model_dir} exists: give a fresh --out")
    write_seconds = write_corpus(folder, passages, args.file_passages, args.queries,
                                 args.data_dir)
    corpus_bytes = sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder))
    result = {"passages": passages, "files": -(-passages // args.file_passages),
              "corpus_gzip_bytes": corpus_bytes, "write_seconds": write_seconds,
              **evaluate(args, folder, encoder_dir, model_dir),
              "brute_force": brute_force_check(args, folder, encoder_dir, model_dir),
              "load_average": os.getloadavg()}
    print(json.dumps(result), flush=True)
    summary.append(result)
    if not args.keep:
      subprocess.run(["rm", "-rf", folder, model_dir], check=True)
  print("| passages | files (gzip) | wall | count s/M | encode s/M (reading+tokenising) | "
        "encode passages/s, 2 processes | id check s/M | search s/M | peak RSS per process |")
  for r in summary:
    per_million, procs = 1e6 / r["passages"], r["processes"]
    def slowest(key):
      return max(p[key] for p in procs)  # pylint: disable=cell-var-from-loop
    print(f"| {r['passages']:,} | {r['files']} ({r['corpus_gzip_bytes'] / 1e9:.2f} GB) | "
          f"{r['wall_seconds']:.0f} s | {slowest('count_seconds') * per_million:.1f} | "
          f"{slowest('encode_seconds') * per_million:.0f} "
          f"({slowest('read_seconds') * per_million:.0f}) | "
          f"{r['passages'] / slowest('encode_seconds'):,.0f} | "
          f"{slowest('check_seconds') * per_million:.1f} | "
          f"{slowest('search_seconds') * per_million:.1f} | "
          + ", ".join(f"{p['peak_rss_gib']:.2f}" for p in procs) + " GiB |")


if __name__ == "__main__":
  main()
