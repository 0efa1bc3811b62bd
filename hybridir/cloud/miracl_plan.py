"""The MIRACL stage's plan on a slice (`launch/study_sweep.sh --dry-run` prints it): per language,
the corpus files and records each host will read and its passages; per model, the index size and
a projected encoding time.

  python -m hybridir.miracl_plan --miracl_dir gs://b/miracl --accelerator_type v4-32 \
      [--models "mt5_base labse"] [--languages "sw en"] [--shard_size 65536] [--dtype float32] \
      [--mfu 0.38]

It reads no corpus, only its files' sizes: the job counts each file's records in a pass before
encoding, so here a language's published passage count is shared between its files by bytes, and
host boundaries are estimates. Time: each model's forward FLOPs per passage padded to the study's
passage length (an upper bound), over the host's chips at their published peak bf16 rate times
--mfu, an assumption (default 0.38: the best train-step MFU in BENCHMARKS.md), not a measurement.
"""
import os
import sys

from hybridir.cloud import accelerators
from hybridir.cloud import aot
from hybridir import console
from hybridir.data import corpus_files
from hybridir.data import miracl
from hybridir import errors
from hybridir.evaluation import corpus_index
from hybridir import fs
from hybridir.training import flops

# Peak dense bf16 FLOP/s per chip, as Google publishes them.
PEAK_BF16_FLOPS = {"v4": 275e12, "v5litepod": 197e12, "v5p": 459e12, "v6e": 918e12}
ID_BYTES = 4 * 12  # An index's ids: numpy unicode, about 12 characters ('12345678#12').


def estimated_corpus(paths, sizes, total: int) -> corpus_files.CorpusFiles:
  """Files with `total` records shared in proportion to their bytes (largest remainders)."""
  shares = [total * size / max(sum(sizes), 1) for size in sizes]
  records = [int(share) for share in shares]
  for index in sorted(range(len(paths)), key=lambda i: records[i] - shares[i])[:total -
                                                                              sum(records)]:
    records[index] += 1
  return corpus_files.CorpusFiles(tuple(corpus_files.FileCount(p, s, r)
                                        for p, s, r in zip(paths, sizes, records)))


def host_plan(corpus: corpus_files.CorpusFiles, shard_size: int, hosts: int) -> list[str]:
  """One line per host: its passages and what it reads (corpus_index's contiguous blocks)."""
  lines = []
  for host in range(hosts):
    start, stop = corpus_index.passages_of_process(len(corpus), shard_size, host, hosts)
    lines.append(f"host {host}: {stop - start:,} passages: "
                 f"{corpus_files.describe_segments(corpus.segments(start, stop)) or 'nothing'}")
  return lines


def model_cost(model: str) -> tuple[float, int, int]:
  """(forward FLOPs per passage, embedding dimension, passage length) of a study model, from
  gin_configs/runs/study/<model>.gin."""
  run = aot.train_run_from_gin([f"gin_configs/runs/study/{model}.gin"])
  encoder = run.model.encoder_config
  return (flops.encode_flops(encoder, run.passage_length),
          run.model.projection_dim or encoder.emb_dim, run.passage_length)


def cost_line(model: str, cost, passages: int, busiest: int, tpu_slice, dtype: str,
              mfu: float) -> str:
  per_passage, dimension, length = cost
  index_bytes = passages * (dimension * (4 if dtype == "float32" else 2) + ID_BYTES)
  rate = tpu_slice.chips_per_host * PEAK_BF16_FLOPS[tpu_slice.family.prefix] * mfu
  minutes = busiest * per_passage / rate / 60
  time = f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h"
  return (f"{model}: index {index_bytes / 1e9:.1f} GB ({dimension}-d {dtype}); encoding "
          f"{passages * per_passage:.2e} FLOP, {time} on the busiest host at MFU {mfu} "
          f"({per_passage / 1e9:.1f} GFLOP a passage at {length} tokens, "
          f"{tpu_slice.chips_per_host} chips a host)")


def plan(miracl_dir: str, accelerator_type: str, languages, models, shard_size: int = 65536,
         dtype: str = "float32", mfu: float = 0.38) -> list[str]:
  """The plan's lines, language by language."""
  tpu_slice = accelerators.get_slice(accelerator_type)
  costs = {model: model_cost(model) for model in models}
  lines = [f"MIRACL stage on {accelerator_type} ({tpu_slice.hosts} hosts, "
           f"{tpu_slice.chips_per_host} chips each; peak "
           f"{PEAK_BF16_FLOPS[tpu_slice.family.prefix] / 1e12:.0f} bf16 TFLOP/s a chip), "
           f"shards of {shard_size:,}; records per file estimated from bytes"]
  for language in languages:
    files = miracl.language_files(miracl_dir, language)
    paths = fs.glob(files.corpus)
    if not paths:
      raise FileNotFoundError(f"MIRACL {language}: no {files.corpus}")
    if language not in miracl.DEV_SIZES:
      raise ValueError(f"MIRACL {language}: no published size to plan from (languages: "
                       f"{sorted(miracl.DEV_SIZES)})")
    corpus = estimated_corpus(paths, [corpus_files.file_size(p) for p in paths],
                              miracl.DEV_SIZES[language][1])
    lines.append(f"MIRACL {language}: {len(corpus):,} passages in {len(paths)} files "
                 f"({sum(f.size_bytes for f in corpus.files) / 1e9:.2f} GB) under "
                 f"{os.path.dirname(files.corpus)}")
    lines += ["  " + line for line in host_plan(corpus, shard_size, tpu_slice.hosts)]
    busiest = max(stop - start for start, stop in (
        corpus_index.passages_of_process(len(corpus), shard_size, host, tpu_slice.hosts)
        for host in range(tpu_slice.hosts)))
    lines += ["  " + cost_line(model, costs[model], len(corpus), busiest, tpu_slice, dtype, mfu)
              for model in models]
  return lines


def main(argv=None) -> int:
  parser = console.ArgumentParser(prog="python -m hybridir.miracl_plan",
                                  description=__doc__.split("\n")[0])
  parser.add_argument("--miracl_dir", required=True, help="holds miracl/ and miracl-corpus/")
  parser.add_argument("--accelerator_type", required=True, help="e.g. v4-32")
  parser.add_argument("--models", default="mt5_base", help="study models, space-separated")
  parser.add_argument("--languages", default=" ".join(miracl.STUDY_LANGUAGES))
  parser.add_argument("--shard_size", type=int, default=65536)
  parser.add_argument("--dtype", default="float32", choices=corpus_index.DTYPES)
  parser.add_argument("--mfu", type=float, default=0.38)
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  with errors.one_line_errors((ValueError, FileNotFoundError)):
    lines = plan(args.miracl_dir.rstrip("/"), args.accelerator_type, args.languages.split(),
                 args.models.split(), args.shard_size, args.dtype, args.mfu)
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main())
