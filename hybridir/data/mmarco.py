"""mMARCO (Bonifacio et al. 2021, arXiv 2108.13897) from its public files as parallel training data.

The paper's largest source: MS MARCO passage ranking machine-translated, 39.8M training triples
(query, positive passage, negative passage). The public files are the Hugging Face dataset
unicamp-dl/mmarco, copied as downloaded under one root (README, "mMARCO as a training source"):

  ROOT/data/triples.train.ids.small.tsv                       qid<TAB>positive pid<TAB>negative pid
  ROOT/data/google/queries/train/{name}_queries.train.tsv     qid<TAB>query
  ROOT/data/google/collections/{name}_collection.tsv          pid<TAB>passage

{name} is the language's (`LANGUAGE_NAMES`); `google` is the v2 translation (`helsinki`, v1, has 8
languages). Ids are MS MARCO's in every translation, so a query's translations and its passage's
are parallel: one pair `mmarco-{qid}` per query, its passage the first positive of its first
triple, article `mmarco-passage-{pid}` (queries sharing a positive passage fall in one held-out
split), source "mmarco". Each query has many triples (other negatives), and the pairs have no
negative field, so the pairs are the triples' distinct queries. Read streamed, line by line:
memory holds one (pid, line) per distinct query of the triples file (at most MS MARCO's 502,939
judged queries), then only the texts of the `max_queries` drawn queries and of their passages.
"""
import argparse
import dataclasses
import sys
from typing import Iterator, Sequence

import numpy as np

from hybridir import console
from hybridir.data import corpora
from hybridir.data.corpora import CorpusError
from hybridir import fs

SOURCE = "mmarco"
TRIPLES = "data/triples.train.ids.small.tsv"
TRANSLATIONS = ("google", "helsinki")
LANGUAGE_NAMES = {
    "ar": "arabic", "de": "german", "en": "english", "es": "spanish", "fr": "french",
    "hi": "hindi", "id": "indonesian", "it": "italian", "ja": "japanese", "nl": "dutch",
    "pt": "portuguese", "ru": "russian", "vi": "vietnamese", "zh": "chinese"}
PAPER_LANGUAGES = ("en", "ar", "zh", "de", "es", "ru", "hi")  # The paper's mMARCO languages.


@dataclasses.dataclass(frozen=True)
class LanguageFiles:
  """One language's public files under a root: its queries and its passage collection."""
  language: str
  queries: str
  collection: str


def language_files(root: str, language: str, translation: str = "google",
                   split: str = "train") -> LanguageFiles:
  """The public files of `language` (an ISO code) under `root`, as laid out above."""
  if language not in LANGUAGE_NAMES:
    raise ValueError(f"mMARCO has no language {language!r}; it has {sorted(LANGUAGE_NAMES)}")
  if translation not in TRANSLATIONS:
    raise ValueError(f"translation must be one of {TRANSLATIONS}, found {translation!r}")
  name, folder = LANGUAGE_NAMES[language], f"{str(root).rstrip('/')}/data/{translation}"
  return LanguageFiles(language, f"{folder}/queries/{split}/{name}_queries.{split}.tsv",
                       f"{folder}/collections/{name}_collection.tsv")


def _id(text: str, what: str, path: str, number: int) -> int:
  if not text.isdigit():
    raise CorpusError(f"{path}: line {number}: {what} {text!r} is not a non-negative integer")
  return int(text)


def read_positives(path: str, show_progress: bool = False) -> dict[int, tuple[int, int]]:
  """{qid: (its first positive pid, the line giving it)} of training triples `qid pid pid` (or
  TREC qrels `qid 0 pid rel`, rel > 0 relevant), streamed."""
  positives = {}
  lines = console.progress(corpora.numbered_lines(path), f"read {path}", unit=" lines",
                           enabled=show_progress)
  for number, line in lines:
    fields = line.split()
    if len(fields) == 3:
      qid, pid = fields[0], fields[1]
    elif len(fields) == 4 and fields[3].lstrip("-").isdigit():
      qid, pid = (fields[0], fields[2]) if int(fields[3]) > 0 else (fields[0], None)
    else:
      raise CorpusError(f"{path}: line {number}: expected 'qid<TAB>positive pid<TAB>negative "
                        f"pid' (or qrels 'qid 0 pid relevance'), found {len(fields)} columns: "
                        f"{line[:80]!r}")
    query = _id(qid, "qid", path, number)
    if pid is not None:
      positives.setdefault(query, (_id(pid, "pid", path, number), number))
  if not positives:
    raise CorpusError(f"{path}: no (query, positive passage) pairs")
  return positives


def select_queries(positives: dict, max_queries: int | None, seed: int) -> list[int]:
  """The qids read, or a seeded sample of `max_queries` of them; sorted."""
  qids = sorted(positives)
  if max_queries is None or max_queries >= len(qids):
    return qids
  if max_queries < 1:
    raise ValueError(f"max_queries must be a positive integer or None, found {max_queries!r}")
  chosen = np.random.default_rng(seed).choice(len(qids), max_queries, replace=False)
  return sorted(qids[i] for i in chosen)


def read_texts(path: str, wanted: dict[int, int], what: str, pairs_path: str,
               show_progress: bool = False) -> dict[int, str]:
  """{id: text} of the `wanted` ids ({id: the line of pairs_path needing it}) in an `id<TAB>text`
  file, streamed; stops once all are found, and names the first one missing."""
  texts = {}
  lines: Iterator = console.progress(corpora.numbered_lines(path), f"read {path}", unit=" lines",
                                     enabled=show_progress)
  for line_number, line in lines:
    key, tab, text = line.partition("\t")
    if not tab:
      raise CorpusError(f"{path}: line {line_number}: expected '{what}<TAB>text', found no tab: "
                        f"{line[:80]!r}")
    number = _id(key, what, path, line_number)
    if number in wanted:
      if number in texts:
        raise CorpusError(f"{path}: line {line_number}: duplicate {what} {number}")
      if not text.strip():
        raise CorpusError(f"{path}: line {line_number}: {what} {number} has empty text")
      texts[number] = text.strip()
      if len(texts) == len(wanted):
        break
  missing = sorted(set(wanted) - texts.keys(), key=wanted.get)
  if missing:
    raise CorpusError(f"{pairs_path}: line {wanted[missing[0]]}: {what} {missing[0]} is not in "
                      f"{path} ({len(missing)} of {len(wanted)} missing; an incomplete copy?)")
  return texts


def read_mmarco(root: str, languages: Sequence[str] = PAPER_LANGUAGES,
                max_queries: int | None = None, seed: int = 0, translation: str = "google",
                split: str = "train", pairs_path: str | None = None,
                show_progress: bool = False) -> corpora.ParallelCorpus:
  """mMARCO's pairs in `languages`: every query of the triples file (`pairs_path`, default
  ROOT/data/triples.train.ids.small.tsv) with a positive, or a seeded sample of `max_queries`."""
  files = [language_files(root, language, translation, split) for language in languages]
  pairs_path = pairs_path or f"{str(root).rstrip('/')}/{TRIPLES}"
  missing = [path for path in [pairs_path] + [p for f in files for p in (f.queries, f.collection)]
             if not fs.isfile(path)]
  if missing:
    raise FileNotFoundError(f"mMARCO: no {', '.join(missing)} (copy the public files as README's "
                            "'mMARCO as a training source' shows)")
  positives = read_positives(pairs_path, show_progress)
  qids = select_queries(positives, max_queries, seed)
  query_lines = {qid: positives[qid][1] for qid in qids}
  passage_lines = {}
  for qid in qids:
    passage_lines.setdefault(*positives[qid])
  pairs = {}
  for f in files:
    queries = read_texts(f.queries, query_lines, "qid", pairs_path, show_progress)
    passages = read_texts(f.collection, passage_lines, "pid", pairs_path, show_progress)
    pairs[f.language] = {
        f"mmarco-{qid}": corpora.QAPair(f"mmarco-{qid}", f.language, queries[qid],
                                        passages[positives[qid][0]],
                                        f"mmarco-passage-{positives[qid][0]}", source=SOURCE)
        for qid in qids}
  return corpora.ParallelCorpus(tuple(sorted(pairs)), {x: pairs[x] for x in sorted(pairs)})


def write_corpus(corpus: corpora.ParallelCorpus, output_dir: str) -> list[str]:
  """Each language's pairs as `output_dir/<lang>.jsonl`, written atomically: a corpus folder's
  source (`corpora.load_parallel_corpus` of the folder above reads it beside other sources)."""
  paths = []
  for language in corpus.languages:
    path = f"{str(output_dir).rstrip('/')}/{language}.jsonl"
    fs.write_text_atomically(path, "".join(
        corpora.jsonl_line(pair) + "\n" for _, pair in sorted(corpus.pairs[language].items())))
    paths.append(path)
  return paths


def _parser() -> argparse.ArgumentParser:
  parser = console.ArgumentParser(
      prog="python -m hybridir.mmarco", description="mMARCO's public files (unicamp-dl/mmarco) "
      "into a corpus folder's source: OUTPUT/<lang>.jsonl, source 'mmarco'.")
  parser.add_argument("--mmarco_dir", required=True, help="the root the public files lie under")
  parser.add_argument("--output", required=True, help="folder for <lang>.jsonl, e.g. "
                      "CORPUS/mmarco beside CORPUS's other sources")
  parser.add_argument("--languages", nargs="+", default=list(PAPER_LANGUAGES))
  parser.add_argument("--max_queries", type=int, help="a seeded sample of the queries (default: "
                      "every query of the triples file)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--translation", choices=TRANSLATIONS, default="google")
  parser.add_argument("--quiet", action="store_true", help="no progress bars")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    fs.check_writable(args.output, "--output")
    corpus = read_mmarco(args.mmarco_dir, args.languages, args.max_queries, args.seed,
                         args.translation, show_progress=not args.quiet)
    paths = write_corpus(corpus, args.output)
  except (ValueError, OSError) as e:  # CorpusError, missing files: say why.
    print(f"error: {e}", file=sys.stderr)
    return 1
  console.finish(f"{len(corpus.pair_ids())} mMARCO pairs in {len(paths)} languages to "
                 f"{args.output}", f"python -m hybridir.data batches --corpus "
                 f"{str(args.output).rstrip('/').rsplit('/', 1)[0]} --batch_size 8 --steps 5")
  return 0


if __name__ == "__main__":
  sys.exit(main())
