"""Trains a family's vocabulary on a corpus's questions and passages, for runs from scratch.

  python -m hybridir.spm --corpus DIR_OR_FILE --family FAMILY --vocab_size N --output PREFIX \
      [--languages en de ...] [--passage_unit paragraph|sentence] [--character_coverage 0.9995]

writes the vocabulary under PREFIX (each passage counted once) and prints its path. The family's
record fixes the kind and special ids: SentencePiece PREFIX.model (+ .vocab) for t5 (pad 0,
eos 1, unk 2) and xlmr (as XLM-R's model; fairseq adds <pad>), WordPiece PREFIX.txt for bert.
"""
import argparse
import json
import logging
import os
import sys
import tempfile
from typing import Sequence

from hybridir import console
from hybridir.data import corpora
from hybridir.data import vocab
from hybridir import errors
from hybridir import fs
from hybridir.models import families


def corpus_texts(corpus: corpora.ParallelCorpus) -> list[str]:
  """Every question, then every distinct passage, of every language (in a fixed order)."""
  pairs = [corpus.pairs[language][i] for language in corpus.languages
           for i in sorted(corpus.pairs[language])]
  return [p.question for p in pairs] + list(dict.fromkeys(p.passage for p in pairs))


def vocabulary_path(family: str, output: str) -> str:
  """The file the family's trainer writes under `output`: .model (SentencePiece), .txt
  (WordPiece), the suffix of the family's vocabulary file."""
  return output + vocab.family_kinds(families.get(family).name)[0].suffixes[0]


def train(corpus_path: str, family: str, vocab_size: int, output: str,
          languages: Sequence[str] | None = None, passage_unit: str = "paragraph",
          character_coverage: float = 0.9995) -> str:
  """Trains on the corpus and writes the vocabulary under `output` atomically; returns its path.

  A vocabulary trained earlier with the same settings (recorded in `output`.settings.json) is
  reused: SentencePiece's multi-threaded training is not repeatable, and a resumed run must keep
  the vocabulary its checkpoints were trained with.
  """
  settings = {"corpus_path": str(corpus_path), "family": family, "vocab_size": vocab_size,
              "languages": list(languages) if languages else None,
              "passage_unit": passage_unit, "character_coverage": character_coverage}
  record = output + ".settings.json"
  trained = vocabulary_path(family, output)
  if fs.exists(trained) and fs.exists(record) and (
      json.loads(fs.read_text(record)) == settings):
    logging.info("%s: reusing the vocabulary trained earlier with these settings", trained)
    return trained
  corpus = corpora.load_parallel_corpus(corpus_path, passage_unit, languages)
  path = train_on_corpus(corpus, family, vocab_size, output, character_coverage,
                         source=str(corpus_path))
  fs.write_text_atomically(record, json.dumps(settings, indent=1) + "\n")
  return path


def train_on_corpus(corpus: corpora.ParallelCorpus, family: str, vocab_size: int, output: str,
                    character_coverage: float = 0.9995, source: str = "the corpus") -> str:
  """Trains on a loaded (e.g. split) corpus; writes the vocabulary under `output` atomically."""
  if vocab_size < 8:
    raise ValueError(f"vocab_size must be at least 8, found {vocab_size}")
  record = families.get(family)
  with tempfile.TemporaryDirectory() as scratch:
    prefix = os.path.join(scratch, "vocab")
    try:
      path = vocab.train_family_vocabulary(record.name, corpus_texts(corpus), prefix, vocab_size,
                                           character_coverage=character_coverage)
    except RuntimeError as e:  # The trainer's own message says which setting to change.
      raise ValueError(f"training on {source} failed: {e}") from e
    for name in sorted(os.listdir(scratch)):
      if os.path.join(scratch, name) != path:
        fs.copy_file(os.path.join(scratch, name), output + name[len("vocab"):])
    trained = output + path[len(prefix):]
    fs.copy_file(path, trained)  # Last: a complete vocabulary file means done.
  return trained


def _parser() -> argparse.ArgumentParser:
  parser = console.ArgumentParser(prog="python -m hybridir.spm", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--corpus", required=True, help="folder of <lang>.json/.jsonl, or a .jsonl")
  parser.add_argument("--family", choices=families.names(), required=True)
  parser.add_argument("--vocab_size", type=int, required=True)
  parser.add_argument("--output", required=True, help="prefix: writes PREFIX.model or PREFIX.txt")
  parser.add_argument("--languages", nargs="+", help="default: all in the corpus")
  parser.add_argument("--passage_unit", choices=corpora.PASSAGE_UNITS, default="paragraph")
  parser.add_argument("--character_coverage", type=float, default=0.9995,
                      help="share of characters covered (SentencePiece allows 0.98 to 1)")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    fs.check_writable(args.output, "--output", kind="file")
    path = train(args.corpus, args.family, args.vocab_size, args.output, args.languages,
                 args.passage_unit, args.character_coverage)
  except (ValueError, OSError) as e:  # CorpusError, bad settings, unwritable --output: say why.
    print(errors.one_line(e), file=sys.stderr)
    return 1
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
