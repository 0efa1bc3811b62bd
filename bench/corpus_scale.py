"""Corpus-scale evaluation at reduced scale: a synthetic corpus encoded and searched by two
jax.distributed CPU processes, killed mid-encoding and resumed, against one process and brute force.

  python bench/corpus_scale.py [--passages 1000000] [--shard_size 50000] [--queries 1000] \
      [--k 100] [--kill_after_shards 4] [--sample 100] [--out /tmp/corpus_scale]

Phases (each a fresh set of worker processes, one CPU device each unless said):
  1. 2 processes encode (hybridir.corpus_index, tiny random mT5-style encoder, random token ids);
     both are SIGKILLed once --kill_after_shards shards are on disk.
  2. 2 processes rerun the job: finished shards are skipped, the rest encoded; then they search
     (hybridir.corpus_search) the --queries query embeddings (made once by this driver).
  3. 1 process (2 devices) runs the same search over the same index.
Then: the two top-k lists must be equal; --sample queries are checked against a brute-force
NumPy sort. Prints a JSON line per phase and a summary (passages/s, search seconds, peak RSS).
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TINY = dict(vocab_size=1000, emb_dim=16, num_layers=1, num_heads=2, head_dim=8, mlp_dim=32,
            relative_attention_num_buckets=8, relative_attention_max_distance=16,
            dropout_rate=0.0)
ROUNDING = 4 * 2.0 ** -23  # Relative score tolerance: 4 float32 ulps (eps = 2^-23).
LENGTHS = (8, 16)  # Passage lengths in tokens: one length bucket (16).


def tiny_encoder(batch_size):
  import jax  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from hybridir import encoder as encoder_lib  # pylint: disable=g-import-not-at-top
  from hybridir.models import dual_encoder, t5  # pylint: disable=g-import-not-at-top
  model = dual_encoder.DualEncoder(t5.T5Config(**TINY))
  tokens = np.ones((2, 8), np.int32)
  params = nn.unbox(model.init(jax.random.key(0), tokens, tokens)["params"])
  return encoder_lib.Encoder(model, params, None, 16, batch_size)


def source(args):
  from hybridir import corpus_index  # pylint: disable=g-import-not-at-top
  return corpus_index.SyntheticPassages(args.passages, TINY["vocab_size"], *LENGTHS, seed=0)


def worker(args):
  """One process: encode (resuming) and, unless --encode_only, search; writes its report."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from hybridir import corpus_index, corpus_search  # pylint: disable=g-import-not-at-top
  if args.process_count > 1:
    jax.distributed.initialize(args.coordinator, args.process_count, args.process_id)
  report = {"process": jax.process_index(), "processes": jax.process_count(),
            "local_devices": jax.local_device_count()}
  if not args.search_only:
    encoding = corpus_index.encode_corpus(tiny_encoder(args.batch_size), source(args),
                                          args.index_dir, args.shard_size)
    report.update({key: encoding[key] for key in ("encoded_shards", "skipped_shards",
                                                  "encoded_passages", "seconds",
                                                  "passages_per_second")})
  if not args.encode_only:
    queries = np.load(os.path.join(args.out, "queries.npy"))
    began = time.monotonic()
    scores, indices = corpus_search.search_index(args.index_dir, queries, args.k,
                                                 args.memory_bytes)
    report["search_seconds"] = time.monotonic() - began
    if jax.process_index() == 0:
      np.savez(os.path.join(args.out, f"{args.phase}_topk.npz"), scores=scores, indices=indices)
  report["peak_rss_gib"] = peak_rss_bytes() / 2**30
  with open(os.path.join(args.out, f"{args.phase}_process{jax.process_index()}.json"), "w") as f:
    json.dump(report, f)


def peak_rss_bytes():
  """This process's peak resident memory (VmHWM: its own, where ru_maxrss would also count the
  parent's memory at the fork that started it)."""
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def launch(args, phase, process_count, devices, extra=(), kill_after_shards=None):
  """Runs the worker processes of one phase; SIGKILLs them once enough shards are done."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  address = f"localhost:{free_port()}"
  common = [sys.executable, os.path.abspath(__file__), "--role=worker", f"--phase={phase}",
            f"--passages={args.passages}", f"--shard_size={args.shard_size}", f"--k={args.k}",
            f"--out={args.out}", f"--index_dir={args.index_dir}",
            f"--batch_size={args.batch_size}", f"--memory_bytes={args.memory_bytes}",
            f"--coordinator={address}", f"--process_count={process_count}", *extra]
  procs = [subprocess.Popen(common + [f"--process_id={i}"], env=env,
                            stdout=open(os.path.join(args.out, f"{phase}_{i}.log"), "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
           for i in range(process_count)]
  began = time.monotonic()
  while any(p.poll() is None for p in procs):
    if kill_after_shards is not None:
      done = [n for n in os.listdir(args.index_dir) if n.endswith(".npy")
              and not n.endswith(".ids.npy")] if os.path.isdir(args.index_dir) else []
      if len(done) >= kill_after_shards:
        for p in procs:
          os.killpg(p.pid, signal.SIGKILL)
        for p in procs:
          p.wait()
        return {"phase": phase, "killed_with_shards_done": len(done),
                "wall_seconds": time.monotonic() - began}
    time.sleep(0.5)
  if any(p.returncode for p in procs):
    raise SystemExit(f"phase {phase}: a process failed; see {args.out}/{phase}_*.log")
  reports = []
  for i in range(process_count):
    with open(os.path.join(args.out, f"{phase}_process{i}.json")) as f:
      reports.append(json.load(f))
  return {"phase": phase, "wall_seconds": time.monotonic() - began, "processes": reports}


def brute_force_check(args, sample):
  """Top-k of `sample` queries by a float32 NumPy matmul over the whole index, sorted by score
  descending then position ascending, against the 2-process search."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from hybridir import corpus_index  # pylint: disable=g-import-not-at-top
  spec = corpus_index.read_spec(args.index_dir)
  queries = np.load(os.path.join(args.out, "queries.npy"))[:sample]
  scores = np.empty((len(queries), spec["num_passages"]), np.float32)
  for shard in range(spec["num_shards"]):
    for first, rows in corpus_index.iter_shard_rows(args.index_dir, spec, shard, 1 << 20):
      scores[:, first:first + len(rows)] = queries @ rows.T
  order = np.empty((len(queries), args.k), np.int64)
  for row, query_scores in enumerate(scores):  # The k best, then sorted: exact, and no 1M sort.
    candidates = np.argpartition(-query_scores, args.k)[:args.k + 1]
    threshold = query_scores[candidates].min()
    candidates = np.flatnonzero(query_scores >= threshold)  # Every tie at the boundary.
    order[row] = candidates[np.lexsort((candidates, -query_scores[candidates]))][:args.k]
  found = np.load(os.path.join(args.out, "two_processes_topk.npz"))
  indices = found["indices"][:sample]
  same = (indices == order).all(axis=1)
  # Where the order differs, each passage found must score (in NumPy) within float32 rounding of
  # the true score at its rank: the search's own scores may round a near-tie to a tie.
  true_at_rank = np.take_along_axis(scores, order, axis=1)
  of_found = np.take_along_axis(scores, indices, axis=1)
  within = np.abs(of_found - true_at_rank) <= ROUNDING * np.abs(true_at_rank)
  return {"sample": sample, "queries_equal_to_brute_force": int(same.sum()),
          "queries_equal_up_to_rounding_ties": int((same | within.all(axis=1)).sum()),
          "max_score_difference": float(np.abs(found["scores"][:sample] - true_at_rank).max())}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--role", default="driver", choices=["driver", "worker"])
  parser.add_argument("--passages", type=int, default=1_000_000)
  parser.add_argument("--shard_size", type=int, default=50_000)
  parser.add_argument("--queries", type=int, default=1000)
  parser.add_argument("--k", type=int, default=100)
  parser.add_argument("--sample", type=int, default=100)
  parser.add_argument("--kill_after_shards", type=int, default=4)
  parser.add_argument("--batch_size", type=int, default=1024)
  parser.add_argument("--memory_bytes", type=int, default=64 << 20)
  parser.add_argument("--out", default="/tmp/corpus_scale")
  parser.add_argument("--index_dir", default=None)
  # Worker only.
  parser.add_argument("--phase", default="")
  parser.add_argument("--coordinator", default=None)
  parser.add_argument("--process_count", type=int, default=1)
  parser.add_argument("--process_id", type=int, default=0)
  parser.add_argument("--encode_only", action="store_true")
  parser.add_argument("--search_only", action="store_true")
  args = parser.parse_args()
  args.index_dir = args.index_dir or os.path.join(args.out, "index")
  if args.role == "worker":
    return worker(args)

  os.makedirs(args.out, exist_ok=True)
  if os.path.exists(args.index_dir):
    raise SystemExit(f"{args.index_dir} exists: give a fresh --out")
  import numpy as np  # pylint: disable=g-import-not-at-top
  from hybridir import corpus_index  # pylint: disable=g-import-not-at-top
  queries_source = corpus_index.SyntheticPassages(args.queries, TINY["vocab_size"], *LENGTHS,
                                                  seed=1)
  np.save(os.path.join(args.out, "queries.npy"), tiny_encoder(64).encode_ids(
      queries_source.read(0, args.queries)[1], "query"))
  phases = [launch(args, "killed", 2, 1, ["--encode_only"], args.kill_after_shards),
            launch(args, "two_processes", 2, 1),
            launch(args, "one_process", 1, 2, ["--search_only"])]
  two = np.load(os.path.join(args.out, "two_processes_topk.npz"))
  one = np.load(os.path.join(args.out, "one_process_topk.npz"))
  check = {"two_equal_one_indices": bool((two["indices"] == one["indices"]).all()),
           "two_vs_one_max_score_difference": float(np.abs(two["scores"] - one["scores"]).max()),
           **brute_force_check(args, args.sample)}
  for phase in phases + [check]:
    print(json.dumps(phase))
  resumed = phases[1]["processes"]
  encoded = sum(p["encoded_passages"] for p in resumed)
  seconds = max(p["seconds"] for p in resumed)
  print(f"resumed encoding: {encoded} passages in {seconds:.1f} s by 2 processes = "
        f"{encoded / seconds:.0f} passages/s "
        f"({', '.join('%.0f' % p['passages_per_second'] for p in resumed)} per process)")
  print(f"search, {args.queries} queries x {args.passages} passages, k={args.k}: 2 processes "
        f"{max(p['search_seconds'] for p in resumed):.1f} s, 1 process "
        f"{phases[2]['processes'][0]['search_seconds']:.1f} s")
  print(f"brute force (NumPy float32), {check['sample']} queries: "
        f"{check['queries_equal_to_brute_force']} identical top-{args.k}, "
        f"{check['queries_equal_up_to_rounding_ties']} equal up to ties within float32 rounding")
  print("peak RSS GiB: " + ", ".join(f"{phase['phase']} process {p['process']} "
                                     f"{p['peak_rss_gib']:.2f}"
                                     for phase in phases[1:] for p in phase["processes"]))


if __name__ == "__main__":
  main()
