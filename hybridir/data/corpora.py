"""Reading and validating parallel QA corpora (evaluation files: hybridir.data.retrieval_data).

Training corpora are parallel question-passage pairs: a `pair_id` names one QA item and all its
translations, and a `source` names the dataset it comes from (batches are drawn one source at a
time, by source size: hybridir.data.hybrid). Every reader validates as it goes and raises `CorpusError` naming the file, the line
(JSONL, TSV) or the record id (SQuAD) and what is wrong. No TensorFlow, no JAX.
"""
import bisect
import collections
import dataclasses
import gzip
import json
import logging
import os
import pathlib
import re
from typing import Iterator, Mapping, Sequence
import zlib

import numpy as np

from hybridir import fs

PathLike = str | os.PathLike

# The 101 mT5 (mC4) languages and the CC-100 languages (a superset of XLM-R's 100; romanized and
# script variants folded into their language), as ISO 639-1 codes where one exists, else ISO 639-3,
# with the aliases both models use (iw/he, fil/tl, no/nb/nn).
_MT5_LANGUAGES = (
    "af am ar az be bg bn ca ceb co cs cy da de el en eo es et eu fa fi fil fr fy ga gd gl gu "
    "ha haw hi hmn ht hu hy id ig is it iw ja jv ka kk km kn ko ku ky la lb lo lt lv mg mi mk ml "
    "mn mr ms mt my ne nl no ny pa pl ps pt ro ru sd si sk sl sm sn so sq sr st su sv sw ta te "
    "tg th tr uk ur uz vi xh yi yo zh zu")
_XLMR_LANGUAGES = (
    "af am ar as az be bg bn br bs ca cs cy da de el en eo es et eu fa ff fi fr fy ga gd gl gn "
    "gu ha he hi hr hu hy id ig is it ja jv ka kk km kn ko ku ky la lg li ln lo lt lv mg mk ml "
    "mn mr ms my ne nl no nso om or pa pl ps pt qu rm ro ru sa sc sd si sk sl so sq sr ss su sv "
    "sw ta te th tl tn tr ug uk ur uz vi wo xh yi yo zh zu")
KNOWN_LANGUAGES = frozenset(_MT5_LANGUAGES.split() + _XLMR_LANGUAGES.split() + ["nb", "nn"])

PASSAGE_UNITS = ("paragraph", "sentence")
# The held-out split: a seeded fifth of a corpus's whole articles is "test" (in-domain evaluation),
# the rest "train" (ParallelCorpus.select_articles).
TEST_FRACTION, SPLIT_SEED = 0.2, 0


class CorpusError(ValueError):
  """A corpus file is unreadable or holds an invalid record."""


def check_language(code: object, where: str) -> str:
  """Returns `code` if it is a known language code, else raises naming `where`."""
  if not isinstance(code, str) or code not in KNOWN_LANGUAGES:
    raise CorpusError(f"{where}: unknown language code {code!r} (expected an ISO 639 code of an "
                      "mT5 or XLM-R language, e.g. 'en', 'zh', 'ceb')")
  return code


@dataclasses.dataclass(frozen=True)
class QAPair:
  """One question and its passage in one language; `pair_id` is shared by its translations.

  `source`: the source dataset (a JSONL record's `source`, else the file's folder); "" until
  `load_parallel_corpus` fills in the default.
  """
  pair_id: str
  language: str
  question: str
  passage: str
  article_id: str
  answer_sentence: str | None = None
  source: str = ""


def required_text(record: Mapping, field: str, where: str) -> str:
  """The non-empty string `record[field]`, else a CorpusError naming `where` and `field`."""
  if field not in record:
    raise CorpusError(f"{where}: missing field {field!r}")
  value = record[field]
  if not isinstance(value, str):
    raise CorpusError(f"{where}: field {field!r} must be a string, found {type(value).__name__}")
  if not value.strip():
    raise CorpusError(f"{where}: field {field!r} is empty")
  return value


def _load_json(path: pathlib.Path) -> object:
  try:
    return json.loads(decoded_text(fs.read_bytes(path), path, 1))
  except json.JSONDecodeError as e:
    raise CorpusError(f"{path}: malformed or truncated JSON at line {e.lineno} column {e.colno}: "
                      f"{e.msg}") from e


_SENTENCE_END = re.compile(r"[.!?\u0964][\"'\u201d\u2019)\]]*\s+|[\u3002\uff01\uff1f]\s*")


def split_sentences(text: str) -> list[tuple[int, int]]:
  """Sentence breaks [start, end) that tile `text`: after . ! ? danda + space, or CJK 。！？."""
  breaks, start = [], 0
  for match in _SENTENCE_END.finditer(text):
    if text[start:match.end()].strip():
      breaks.append((start, match.end()))
      start = match.end()
  if text[start:].strip() or not breaks:
    breaks.append((start, len(text)))
  else:
    breaks[-1] = (breaks[-1][0], len(text))
  return breaks


def sentence_parts(passage: str, anchors: Sequence[str]) -> tuple[str, ...]:
  """The passage's sentences (split_sentences), each anchor found in it (an answer sentence) kept
  whole as one part: the units a passage is translated in and LAReQA's candidates."""
  cuts = {end for _, end in split_sentences(passage)}
  spans = []
  for anchor in (a.strip() for a in anchors):
    start = passage.find(anchor) if anchor else -1
    if start >= 0:
      spans.append((start, start + len(anchor)))
  cuts = {c for c in cuts if not any(s < c < e for s, e in spans)}
  cuts = sorted(cuts | {c for span in spans for c in span} | {0, len(passage)})
  return tuple(p for p in (passage[a:b].strip() for a, b in zip(cuts, cuts[1:])) if p)


@dataclasses.dataclass(frozen=True)
class SquadQuestion:
  qid: str
  text: str
  sentence_index: int  # The sentence holding the first answer's start.


@dataclasses.dataclass(frozen=True)
class SquadParagraph:
  article_id: str
  context: str
  sentences: tuple[str, ...]
  questions: tuple[SquadQuestion, ...]


def _paragraph_sentences(paragraph: Mapping, context: str, where: str):
  """The paragraph's sentences and breaks: its own `sentences`/`sentence_breaks`, else split."""
  if "sentences" not in paragraph and "sentence_breaks" not in paragraph:
    breaks = split_sentences(context)
    return [context[s:e].strip() for s, e in breaks], breaks
  sentences, breaks = paragraph.get("sentences"), paragraph.get("sentence_breaks")
  if not isinstance(sentences, list) or not isinstance(breaks, list):
    raise CorpusError(f"{where}: 'sentences' and 'sentence_breaks' must both be lists")
  if len(sentences) != len(breaks):
    raise CorpusError(f"{where}: {len(sentences)} sentences but {len(breaks)} sentence_breaks")
  for i, (sentence, span) in enumerate(zip(sentences, breaks)):
    if not isinstance(sentence, str) or not sentence.strip():
      raise CorpusError(f"{where}: sentence {i} is empty or not a string")
    if (not isinstance(span, list) or len(span) != 2 or not all(isinstance(x, int) for x in span)
        or not 0 <= span[0] <= span[1] <= len(context)):
      raise CorpusError(f"{where}: sentence_breaks[{i}] = {span!r} is not [start, end] inside "
                        f"the context of {len(context)} characters")
  return sentences, [tuple(span) for span in breaks]


def _answer_sentence_index(qa: Mapping, breaks: Sequence[tuple[int, int]], where: str) -> int:
  """Index of the sentence whose [start, end) holds the first answer's `answer_start`."""
  answers = qa.get("answers")
  if not isinstance(answers, list) or not answers or not isinstance(answers[0], Mapping):
    raise CorpusError(f"{where}: missing field 'answers' (a non-empty list)")
  start = answers[0].get("answer_start")
  if not isinstance(start, int):
    raise CorpusError(f"{where}: missing field 'answer_start' (an integer) in answers[0]")
  index = bisect.bisect_right([s for s, _ in breaks], start) - 1
  if index < 0 or not breaks[index][0] <= start < breaks[index][1]:
    raise CorpusError(f"{where}: answer_start {start} is outside every sentence break")
  return index


def read_squad_paragraphs(path: PathLike) -> Iterator[SquadParagraph]:
  """Validated paragraphs of a SQuAD v1.1 file (plus optional LAReQA sentence breaks)."""
  path = fs.path(path)
  root = _load_json(path)
  if not isinstance(root, Mapping) or not isinstance(root.get("data"), list):
    raise CorpusError(f"{path}: missing field 'data' (a list of articles)")
  for a, article in enumerate(root["data"]):
    where = f"{path}: article {a}"
    if not isinstance(article, Mapping) or not isinstance(article.get("paragraphs"), list):
      raise CorpusError(f"{where}: missing field 'paragraphs' (a list)")
    title = article.get("title")
    article_id = title if isinstance(title, str) and title.strip() else f"article-{a}"
    for p, paragraph in enumerate(article["paragraphs"]):
      where = f"{path}: article {a} ({article_id!r}) paragraph {p}"
      if not isinstance(paragraph, Mapping):
        raise CorpusError(f"{where}: paragraph is not an object")
      context = required_text(paragraph, "context", where)
      sentences, breaks = _paragraph_sentences(paragraph, context, where)
      if not isinstance(paragraph.get("qas"), list):
        raise CorpusError(f"{where}: missing field 'qas' (a list)")
      questions = []
      for q, qa in enumerate(paragraph["qas"]):
        if not isinstance(qa, Mapping):
          raise CorpusError(f"{where} question {q}: question is not an object")
        qid = required_text(qa, "id", f"{where} question {q}")
        record = f"{path}: record id {qid!r}"
        questions.append(SquadQuestion(qid, required_text(qa, "question", record),
                                        _answer_sentence_index(qa, breaks, record)))
      yield SquadParagraph(article_id, context, tuple(sentences), tuple(questions))


def _check_passage_unit(passage_unit: str) -> None:
  if passage_unit not in PASSAGE_UNITS:
    raise ValueError(f"passage_unit must be one of {PASSAGE_UNITS}, found {passage_unit!r}")


def read_squad(path: PathLike, language: str, passage_unit: str = "paragraph") -> list[QAPair]:
  """QA pairs of one language's SQuAD file; the passage is the paragraph or the answer sentence."""
  _check_passage_unit(passage_unit)
  check_language(language, f"{path}")
  pairs, seen = [], set()
  for paragraph in read_squad_paragraphs(path):
    for question in paragraph.questions:
      if question.qid in seen:
        raise CorpusError(f"{path}: record id {question.qid!r}: duplicate id")
      seen.add(question.qid)
      sentence = paragraph.sentences[question.sentence_index]
      passage = paragraph.context if passage_unit == "paragraph" else sentence
      pairs.append(QAPair(question.qid, language, question.text, passage, paragraph.article_id,
                          sentence))
  return pairs


def numbered_lines(path: PathLike) -> Iterator[tuple[int, str]]:
  """(line number, line) for each non-blank UTF-8 line; a .gz file is gunzipped as it is read,
  and a truncated or corrupt one is an error, never a shorter file."""
  number = 0
  try:
    with fs.open_bytes(path) as f:
      for number, raw in enumerate(f, start=1):
        line = decoded_text(raw, path, number).removesuffix("\n").removesuffix("\r")
        if line.strip():
          yield number, line
  except (EOFError, gzip.BadGzipFile, zlib.error) as e:
    raise CorpusError(f"{path}: truncated or corrupt gzip after line {number}: {e}") from e


def read_lines(path: PathLike) -> Iterator[tuple[str, str]]:
  """(where, line) for each non-blank line, `where` naming file and line number (numbered_lines)."""
  for number, line in numbered_lines(path):
    yield f"{path}: line {number}", line


def decoded_text(data: bytes, path: PathLike, line: int) -> str:
  """UTF-8 text of a line (or a whole file: line 1 onwards); CorpusError names the line and
  column of a byte that is not UTF-8 (in a .gz file, often a corrupt shard)."""
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    line += data.count(b"\n", 0, e.start)
    column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
    hint = " (a corrupt gzip shard?)" if os.fspath(path).endswith(".gz") else ""
    raise CorpusError(f"{path}: line {line} column {column}: not UTF-8 text (byte "
                      f"{data[e.start:e.start + 1].hex()}: {e.reason}){hint}") from None


def jsonl_files(path: PathLike) -> list[str]:
  """The JSON-lines files a path names: one file, a glob (`docs-*.jsonl.gz`) or a folder (its
  *.jsonl and *.jsonl.gz), in name order; a glob or folder that matches none is an error."""
  path = os.fspath(path)
  if any(c in os.path.basename(path) for c in "*?["):
    files = fs.glob(path)
  elif fs.isdir(path):
    files = [f for f in fs.glob(f"{path.rstrip('/')}/*") if f.endswith((".jsonl", ".jsonl.gz"))]
  else:
    return [path]
  if not files:
    raise CorpusError(f"{path}: no JSON-lines files (*.jsonl, *.jsonl.gz) there")
  return files


def json_record(line: str, where: str) -> Mapping:
  """The JSON object on one line, else a CorpusError naming `where`."""
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise CorpusError(f"{where}: malformed or truncated JSON: {e.msg}") from e
  if not isinstance(record, Mapping):
    raise CorpusError(f"{where}: a record must be a JSON object")
  return record


def read_json_lines(path: PathLike) -> Iterator[tuple[str, Mapping]]:
  """(where, record) for each non-blank line of a JSON lines file."""
  for where, line in read_lines(path):
    yield where, json_record(line, where)


def read_jsonl(path: PathLike) -> list[QAPair]:
  """QA pairs from JSON lines {"id", "lang", "question", "passage"[, "article_id", "source"...]}."""
  pairs = []
  for where, record in read_json_lines(path):
    pair_id = required_text(record, "id", where)
    where = f"{where} (record id {pair_id!r})"
    language = check_language(required_text(record, "lang", where), where)
    article_id = required_text(record, "article_id", where) if "article_id" in record else pair_id
    answer_sentence = record.get("answer_sentence")
    if answer_sentence is not None:
      answer_sentence = required_text(record, "answer_sentence", where)
    source = required_text(record, "source", where) if "source" in record else ""
    pairs.append(QAPair(pair_id, language, required_text(record, "question", where),
                        required_text(record, "passage", where), article_id, answer_sentence,
                        source))
  return pairs


def jsonl_line(pair: QAPair) -> str:
  """`pair` as the JSON line read_jsonl reads back into it."""
  record = {"id": pair.pair_id, "lang": pair.language, "question": pair.question,
            "passage": pair.passage, "article_id": pair.article_id}
  if pair.answer_sentence is not None:
    record["answer_sentence"] = pair.answer_sentence
  if pair.source:
    record["source"] = pair.source
  return json.dumps(record, ensure_ascii=False)


@dataclasses.dataclass(frozen=True, eq=False)
class ParallelCorpus:
  """QA pairs by language and pair id: `pairs[language][pair_id] -> QAPair`."""
  languages: tuple[str, ...]
  pairs: Mapping[str, Mapping[str, QAPair]]

  def pair_ids(self) -> list[str]:
    """Every pair id present in at least one language, sorted."""
    return sorted(set().union(*(self.pairs[language] for language in self.languages)))

  def sources(self) -> dict[str, list[str]]:
    """{source dataset: its pair ids, sorted}; a pair id has one source in every language."""
    by_source = collections.defaultdict(set)
    for language in self.languages:
      for pair_id, pair in self.pairs[language].items():
        by_source[pair.source].add(pair_id)
    return {source: sorted(ids) for source, ids in sorted(by_source.items())}

  def missing_report(self) -> dict[str, int]:
    """Per language the number of pair ids it lacks, plus 'total_ids' (ids in any language)."""
    total = len(self.pair_ids())
    report = {language: total - len(self.pairs[language]) for language in self.languages}
    report["total_ids"] = total
    return report

  def article_ids(self) -> frozenset[str]:
    """Every article (document) id, in any language."""
    return frozenset(pair.article_id for language in self.languages
                     for pair in self.pairs[language].values())

  def _article_groups(self) -> list[list[str]]:
    """Pair ids grouped so that an article, in any language, lies in exactly one group.

    Titles differ across languages (MLQA), so ids are linked through every language's article.
    """
    parent = {}

    def find(node):
      while parent.setdefault(node, node) != node:
        parent[node] = parent[parent[node]]
        node = parent[node]
      return node

    for language in self.languages:
      for pair_id, pair in self.pairs[language].items():
        parent[find(("id", pair_id))] = find(("article", language, pair.article_id))
    groups = collections.defaultdict(list)
    for pair_id in self.pair_ids():
      groups[find(("id", pair_id))].append(pair_id)
    return sorted(groups.values())

  def restrict(self, pair_ids: set[str] | frozenset[str]) -> "ParallelCorpus":
    """The corpus holding only `pair_ids`."""
    return ParallelCorpus(self.languages, {
        language: {i: pair for i, pair in self.pairs[language].items() if i in pair_ids}
        for language in self.languages})

  def select_articles(self, split, where: str = "split") -> "ParallelCorpus":
    """The corpus's part a `split` names: None, all; "train" or "test", the held-out split
    (TEST_FRACTION of the articles, seed SPLIT_SEED), the same wherever it is asked for (training
    tasks, evaluation tasks, vocabularies); a list of article titles, those articles."""
    if split is None:
      return self
    if split in ("train", "test"):
      train, test = self.split_by_article(TEST_FRACTION, SPLIT_SEED)
      return train if split == "train" else test
    if isinstance(split, str):
      raise ValueError(f"{where}: split must be None, 'train', 'test' or a list of article "
                       f"titles, found {split!r}")
    titles = set(split)
    kept = {pair_id for language in self.languages
            for pair_id, pair in self.pairs[language].items() if pair.article_id in titles}
    if not kept:
      raise ValueError(f"{where}: none of the {len(titles)} split article titles were found")
    return self.restrict(kept)

  def split_by_article(self, test_fraction: float,
                       seed: int = 0) -> tuple["ParallelCorpus", "ParallelCorpus"]:
    """(train, test): a seeded split of whole articles, so no article lies in both."""
    if not 0 < test_fraction < 1:
      raise ValueError(f"test_fraction must be in (0, 1), found {test_fraction}")
    groups = self._article_groups()
    if len(groups) < 2:
      raise ValueError(f"cannot split {len(groups)} article(s) into train and test")
    order = np.random.default_rng(seed).permutation(len(groups))
    num_test = min(max(1, round(test_fraction * len(groups))), len(groups) - 1)
    test_ids = {i for g in order[:num_test] for i in groups[g]}
    train_ids = {i for g in order[num_test:] for i in groups[g]}
    return self.restrict(train_ids), self.restrict(test_ids)


def _corpus_files(path: pathlib.Path) -> list[tuple[pathlib.Path, str]]:
  """(file, default source) of a corpus: the file itself, or a folder's `.json`/`.jsonl` files
  and those of its subfolders, one source dataset per subfolder (named after it); subfolders
  named with a leading "_" or "." (work folders, e.g. the translation stage's) are not sources."""
  if path.is_file():
    return [(path, path.stem)]
  if not path.is_dir():
    raise CorpusError(f"{path}: no such file or folder")
  qa_files = lambda folder: sorted(p for p in folder.iterdir()
                                   if p.is_file() and p.suffix in (".json", ".jsonl"))
  files = [(file, path.name) for file in qa_files(path)]
  for folder in sorted(p for p in path.iterdir() if p.is_dir() and p.name[0] not in "._"):
    files += [(file, folder.name) for file in qa_files(folder)]
  return files


def _squad_file_language(file: pathlib.Path, path: pathlib.Path,
                         languages: Sequence[str] | None) -> str:
  """A SQuAD file's language: its name (`de.json`); a lone file not named after a language, read
  with one language asked for, is in that language (SQuADShifts' `new_wiki_v1.0.json` as 'en')."""
  if file == path and file.stem not in KNOWN_LANGUAGES and languages and len(languages) == 1:
    return languages[0]
  return file.stem


def load_parallel_corpus(path: PathLike, passage_unit: str = "paragraph",
                         languages: Sequence[str] | None = None) -> ParallelCorpus:
  """A folder of `<lang>.json` SQuAD files and/or `.jsonl` files (or one `.jsonl` file, or one
  SQuAD file: named after its language, or read in the one language of `languages`).

  Source datasets: a JSONL record's `source` field, else the subfolder holding the file (a folder
  `corpus/<source>/<lang>.json` per source), else the corpus's own name (folder or file stem).
  """
  _check_passage_unit(passage_unit)
  path = fs.path(path)
  files = _corpus_files(path)
  if languages is not None:
    for language in languages:
      check_language(language, f"languages argument for {path}")
  by_language = collections.defaultdict(dict)
  source_of = {}
  for file, default_source in files:
    if file.suffix == ".json":
      language = _squad_file_language(file, path, languages)
      if languages is not None and language not in languages:
        continue
      pairs = read_squad(file, check_language(language, f"{file} (the file name)"), passage_unit)
    else:
      pairs = read_jsonl(file)
    for pair in pairs:
      if languages is not None and pair.language not in languages:
        continue
      if pair.pair_id in by_language[pair.language]:
        raise CorpusError(f"{file}: record id {pair.pair_id!r}: duplicate id in language "
                          f"{pair.language!r}")
      pair = pair if pair.source else dataclasses.replace(pair, source=default_source)
      if source_of.setdefault(pair.pair_id, pair.source) != pair.source:
        raise CorpusError(f"{file}: record id {pair.pair_id!r}: source {pair.source!r}, but its "
                          f"other languages have source {source_of[pair.pair_id]!r}")
      by_language[pair.language][pair.pair_id] = pair
  found = tuple(sorted(by_language))
  if not found:
    raise CorpusError(f"{path}: no <lang>.json or .jsonl QA files found")
  absent = sorted(set(languages or ()) - set(found))
  if absent:
    raise CorpusError(f"{path}: no QA pairs for requested languages {absent}; found {list(found)}")
  corpus = ParallelCorpus(found, {language: by_language[language] for language in found})
  report = corpus.missing_report()
  if any(report[language] for language in found):
    counts = ", ".join(f"{language} {report[language]}" for language in found)
    logging.getLogger(__name__).warning("%s: of %d pair ids, missing per language: %s", path,
                                        report["total_ids"], counts)
  return corpus
