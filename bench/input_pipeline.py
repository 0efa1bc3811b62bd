"""Input pipeline throughput (batches/s) of the hybrid mixture on XQuAD-R vs the trainer's need.

HybridInput tokenises every (language, pair) once, then serves batches by indexing; the table gives
the one-off tokenisation time and batches/s for the default hybrid schedule, the per-example mixed
schedule and the example-level seqio mixture. The peer is the training step rate: the pipeline must
give at least 5x the batches/s of an mT5-small-shaped training step on this CPU (~0.1-0.2 steps/s;
0.2 steps/s, i.e. --step_time 5, is the ASSUMPTION unless you pass a measured --step_time).

  python bench/input_pipeline.py [--batch_size 32] [--query_length 64] [--passage_length 256] \
      [--steps 2000] [--step_time 5.0] [--spm_path MODEL] [--family t5]
"""
import argparse
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tasks  # noqa: E402
from hybridir.data import hybrid  # noqa: E402
from hybridir.data import input_pipeline  # noqa: E402
from hybridir.data import spm  # noqa: E402
from hybridir import fs  # noqa: E402
from hybridir.models import families  # noqa: E402

REQUIRED_RATIO = 5.0


def _measure(name: str, lengths: dict, schedule: hybrid.HybridSchedule,
             steps: int) -> tuple[float, float]:
  """(seconds to build the input, tokenisation included; batches/s over `steps`)."""
  start = time.perf_counter()
  source = input_pipeline.HybridInput(name, lengths, schedule)
  source.batch(0)
  setup = time.perf_counter() - start
  start = time.perf_counter()
  for step in range(1, steps + 1):
    source.batch(step)
  return setup, steps / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default=fs.data_root())
  parser.add_argument("--family", choices=families.names(), default="t5")
  parser.add_argument("--spm_path", help="default: train one (vocab 8000) on XQuAD-R first")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--query_length", type=int, default=64)
  parser.add_argument("--passage_length", type=int, default=256)
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--step_time", type=float, default=5.0,
                      help="seconds per training step (default 5: the assumed 0.2 steps/s)")
  args = parser.parse_args()
  corpus = pathlib.Path(args.data_dir) / "xquad-r"
  lengths = {"query": args.query_length, "passage": args.passage_length}

  with tempfile.TemporaryDirectory() as scratch:
    spm_path = args.spm_path
    if spm_path is None:
      start = time.perf_counter()
      spm_path = spm.train(str(corpus), args.family, 8000, os.path.join(scratch, "xquad"))
      print(f"trained SentencePiece (vocab 8000) in {time.perf_counter() - start:.1f} s")
    rows = []
    for label, name, options in (
        ("hybrid, alpha 0.5 (one language (pair) per batch)", "bench",
         dict(cross_pairs="per_batch")),
        ("hybrid, alpha 0.5, per-example languages / pairs", "bench_mixed",
         dict(mono_mixed_languages=True, cross_pairs="per_example")),
        ("seqio example mixture bench_all_mix (tokens shared with row 1)", "bench", None)):
      if options is not None:
        mixture = tasks.register_parallel_qa(name, corpus, args.family, spm_path)
        target = mixture.name
      else:
        target = "bench_all_mix"
      schedule = hybrid.HybridSchedule(batch_size=args.batch_size, alpha=0.5, seed=0,
                                       **(options or {}))
      setup, rate = _measure(target, lengths, schedule, args.steps)
      rows.append((label, setup, rate))

  need = REQUIRED_RATIO / args.step_time
  print(f"\nXQuAD-R, {len(mixture.languages)} languages, {len(mixture.pair_ids)} pair ids, "
        f"family {args.family}, global batch {args.batch_size}, query length "
        f"{args.query_length}, passage length {args.passage_length}, {args.steps} batches\n")
  print("| input | setup s (tokenise once) | batches/s | x training steps/s |")
  print("|---|---|---|---|")
  for label, setup, rate in rows:
    print(f"| {label} | {setup:.1f} | {rate:,.0f} | {rate * args.step_time:,.0f}x |")
  print(f"\nTraining step rate: {1 / args.step_time:.2f} steps/s (step time {args.step_time} s"
        f"{', ASSUMED' if args.step_time == 5.0 else ''}); needed: {need:.2f} batches/s "
        f"({REQUIRED_RATIO:.0f}x). Slowest input gives "
        f"{min(r for _, _, r in rows) * args.step_time:,.0f}x.")


if __name__ == "__main__":
  main()
