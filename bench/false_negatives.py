"""False negatives per batch from shared passage text, before and after passage-key masking.

A false negative of query i is another example's positive passage that is i's own positive text
(several questions on one paragraph or answer sentence) or a translation of it (the same text in
a language both items have). "Before" masks only examples of the same QA item (pair id), as the
loss did; "after" masks examples sharing a passage key (input_pipeline.HybridInput). Default
hybrid batches (alpha 0.5, X-Y pairs per example) over the real XQuAD-R, all 11 languages.

  python bench/false_negatives.py [--batch_size 32] [--steps 500] [--passage_length 256] \
      [--spm_path MODEL]
"""
import argparse
import collections
import os
import pathlib
import sys
import tempfile

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tasks  # noqa: E402
from hybridir.data import hybrid  # noqa: E402
from hybridir.data import input_pipeline  # noqa: E402
from hybridir.data import spm  # noqa: E402
from hybridir.data import text  # noqa: E402
from hybridir import fs  # noqa: E402


def text_groups(corpus, text_format) -> dict[str, set[int]]:
  """{pair id: ids of its (language, passage text) groups}: two ids sharing one share a text."""
  index, groups = {}, collections.defaultdict(set)
  for language, pairs in corpus.pairs.items():
    for pair_id, pair in pairs.items():
      passage = text.model_input("passage", *text.passage_parts(pair, text_format.passage_unit),
                                 text_format)
      groups[pair_id].add(index.setdefault((language, passage), len(index)))
  return groups


def batch_counts(pair_ids, masks, groups) -> dict[str, tuple[int, int, int]]:
  """Per mask name: (queries with an unmasked false negative, unmasked false-negative entries,
  masked entries that are no false negative: true negatives lost)."""
  size = len(pair_ids)
  false_negative = np.array([[i != j and bool(groups[pair_ids[i]] & groups[pair_ids[j]])
                              for j in range(size)] for i in range(size)])
  result = {}
  for name, keys in masks.items():
    masked = (keys[:, None] == keys[None, :]) & ~np.eye(size, dtype=bool)
    unmasked = false_negative & ~masked
    result[name] = (int(unmasked.any(axis=1).sum()), int(unmasked.sum()),
                    int((masked & ~false_negative).sum()))
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default=fs.data_root())
  parser.add_argument("--spm_path", help="default: train one (vocab 8000) on XQuAD-R first")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--steps", type=int, default=500)
  parser.add_argument("--passage_length", type=int, default=256)
  args = parser.parse_args()
  corpus_path = pathlib.Path(args.data_dir) / "xquad-r"
  lengths = {"query": 64, "passage": args.passage_length}
  print(f"XQuAD-R, 11 languages, batch {args.batch_size}, {args.steps} default hybrid batches, "
        f"passage length {args.passage_length}")
  print("| passage unit | mask | queries with a false negative, per batch | false-negative "
        "entries per batch | batches with any | true negatives masked per batch |")
  print("|---|---|---|---|---|---|")
  with tempfile.TemporaryDirectory() as scratch:
    spm_path = args.spm_path or spm.train(str(corpus_path), "t5", 8000,
                                          os.path.join(scratch, "xquad"))
    for unit in text.PASSAGE_UNITS:
      text_format = text.TextFormat(passage_unit=unit)
      mixture = tasks.register_parallel_qa(f"fn_{unit}", corpus_path, "t5", spm_path,
                                           text_format=text_format)
      source = input_pipeline.HybridInput(mixture.name, lengths,
                                          hybrid.HybridSchedule(batch_size=args.batch_size))
      groups = text_groups(mixture.corpus, text_format)
      totals = collections.defaultdict(list)
      for step in range(args.steps):
        spec, batch = source.batch_spec(step), source.batch(step)
        counts = batch_counts(spec.pair_ids, {"pair id (before)": batch["pair_ids"],
                                              "passage key (after)": batch["passage_keys"]},
                              groups)
        for name, value in counts.items():
          totals[name].append(value)
      for name, values in totals.items():
        values = np.array(values)
        print(f"| {unit} | {name} | {values[:, 0].mean():.2f} of {args.batch_size} "
              f"({values[:, 0].mean() / args.batch_size:.1%}) | {values[:, 1].mean():.2f} | "
              f"{np.mean(values[:, 0] > 0):.1%} | {values[:, 2].mean():.2f} |")


if __name__ == "__main__":
  main()
