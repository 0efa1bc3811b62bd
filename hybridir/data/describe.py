"""Data command line: LAReQA statistics and the hybrid batch schedule, as JSON.

  python -m hybridir.data stats --dataset xquad_r [--data_dir DIR]
  python -m hybridir.data beir --dataset xquad_r --languages en de --output DIR
  python -m hybridir.data batches --corpus DIR --alpha 0.5 --batch_size 32 --steps 10 \
      [--seed 0] [--host_index 0 --host_count 1] [--cross_pairs per_batch]

`batches` prints each step's kind, source dataset and every example's pair id and languages.
"""
import argparse
import json
import pathlib
import sys
from typing import Sequence

from hybridir import console
from hybridir.data import beir
from hybridir.data import corpora
from hybridir.data import hybrid
from hybridir.data import retrieval_data
from hybridir import errors
from hybridir import fs


def default_data_dir(dataset: str) -> pathlib.Path:
  """The dataset's folder in the shared data folder (fs.data_root)."""
  return fs.path(fs.data_root()) / retrieval_data.LAREQA_FOLDERS[dataset]


def _alpha(value: str) -> float:
  try:
    return float(value)
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"expected a number in [0, 1], found {value!r}" + (
            " ('by_size' was removed: batches are drawn by source dataset size, see "
            "--source_temperature)" if value == "by_size" else "")) from None


def _parser() -> argparse.ArgumentParser:
  parser = console.ArgumentParser(prog="python -m hybridir.data", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  stats = commands.add_parser("stats", help="per-language LAReQA question/candidate counts")
  stats.add_argument("--dataset", choices=sorted(retrieval_data.LAREQA_FOLDERS), required=True)
  stats.add_argument("--data_dir", help="folder of <lang>.json (default: shared data)")
  stats.add_argument("--languages", nargs="+", help="default: all of the dataset's")
  beir_files = commands.add_parser("beir", help="a LAReQA dataset as BEIR files (corpus.jsonl, "
                                   "queries.jsonl, qrels.tsv) and languages.tsv")
  beir_files.add_argument("--dataset", choices=sorted(retrieval_data.LAREQA_FOLDERS),
                          required=True)
  beir_files.add_argument("--data_dir", help="folder of <lang>.json (default: shared data)")
  beir_files.add_argument("--languages", nargs="+", help="default: all of the dataset's")
  beir_files.add_argument("--output", required=True, help="output folder")
  batches = commands.add_parser("batches", help="one JSON line per step of the hybrid schedule")
  batches.add_argument("--corpus", required=True, help="folder of <lang>.json or .jsonl files")
  batches.add_argument("--alpha", type=_alpha, default=0.5)
  batches.add_argument("--batch_size", type=int, required=True, help="global batch size")
  batches.add_argument("--steps", type=int, required=True)
  batches.add_argument("--start_step", type=int, default=0)
  batches.add_argument("--seed", type=int, default=0)
  batches.add_argument("--host_index", type=int, default=0)
  batches.add_argument("--host_count", type=int, default=1)
  batches.add_argument("--cross_pairs", choices=hybrid.CROSS_PAIRS, default="per_example",
                       help="X-Y batches: each example its own (x, y) pair (the paper's), or one "
                       "pair per batch")
  batches.add_argument("--source_temperature", type=float, default=1.0,
                       help="a batch's source dataset is drawn ~ size ** (1 / T)")
  batches.add_argument("--language_sampling", choices=hybrid.LANGUAGE_SAMPLINGS,
                       default="uniform")
  batches.add_argument("--language_temperature", type=float, default=1.0)
  batches.add_argument("--mono_mixed_languages", action="store_true")
  batches.add_argument("--passage_unit", choices=corpora.PASSAGE_UNITS, default="paragraph")
  batches.add_argument("--languages", nargs="+", help="default: all in the corpus")
  return parser


def _stats(args: argparse.Namespace) -> None:
  data_dir = args.data_dir or default_data_dir(args.dataset)
  dataset = retrieval_data.load_lareqa(data_dir, args.dataset, languages=args.languages)
  print(json.dumps(dataset.stats(), indent=2, sort_keys=True))


def _beir(args: argparse.Namespace) -> None:
  data_dir = args.data_dir or default_data_dir(args.dataset)
  dataset = retrieval_data.load_lareqa(data_dir, args.dataset, languages=args.languages)
  paths = beir.write_lareqa(args.output, dataset)
  console.finish(", ".join(paths.values()),
                 f"python -m hybridir.evaluate --encoder MODEL_DIR --corpus {paths['corpus.jsonl']}"
                 f" --queries {paths['queries.jsonl']} --qrels {paths['qrels.tsv']}"
                 f" --languages {paths['languages.tsv']}")


def _batches(args: argparse.Namespace) -> None:
  corpus = corpora.load_parallel_corpus(args.corpus, args.passage_unit, args.languages)
  schedule = hybrid.HybridSchedule(
      batch_size=args.batch_size, alpha=args.alpha, cross_pairs=args.cross_pairs,
      mono_mixed_languages=args.mono_mixed_languages, language_sampling=args.language_sampling,
      language_temperature=args.language_temperature,
      source_temperature=args.source_temperature, seed=args.seed)
  sampler = hybrid.HybridSampler(corpus, schedule)
  for step in range(args.start_step, args.start_step + args.steps):
    spec = sampler.batch(step, args.host_index, args.host_count)
    print(json.dumps({"step": spec.step, "kind": spec.kind, "source": spec.source,
                      "query_language": spec.query_language,
                      "passage_language": spec.passage_language,
                      "pair_ids": list(spec.pair_ids),
                      "query_languages": list(spec.query_languages),
                      "passage_languages": list(spec.passage_languages),
                      "language_pairs": [f"{x}-{y}" for x, y in zip(spec.query_languages,
                                                                    spec.passage_languages)]},
                     ensure_ascii=False))


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    with console.closed_pipe_ok():
      {"stats": _stats, "beir": _beir, "batches": _batches}[args.command](args)
  except (ValueError, OSError) as e:  # CorpusError, bad settings, unreadable files: say why.
    print(errors.one_line(e), file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
