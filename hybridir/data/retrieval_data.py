"""LAReQA (XQuAD-R, MLQA-R) and MIRACL evaluation data: questions, candidates, relevance.

Readers validate as they go and raise `corpora.CorpusError` naming the file, the line or the
record and what is wrong. No TensorFlow, no JAX.
"""
import collections
import dataclasses
import pathlib
import re
from typing import Mapping, Sequence

from hybridir.data import corpora
from hybridir.data.corpora import CorpusError
from hybridir.data.corpora import PathLike
from hybridir import fs

LAREQA_FOLDERS = {"xquad_r": "xquad-r", "mlqa_r": "mlqa-r"}
LAREQA_LANGUAGES = {
    "xquad_r": ("ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh"),
    "mlqa_r": ("ar", "de", "en", "es", "hi", "vi", "zh"),
}


@dataclasses.dataclass(frozen=True)
class Question:
  question_id: str
  language: str
  text: str
  relevant: tuple[str, ...]  # Candidate ids, in any language.


@dataclasses.dataclass(frozen=True)
class Candidate:
  candidate_id: str
  language: str
  text: str
  context: str  # The paragraph around the sentence (LAReQA); MIRACL has none.


@dataclasses.dataclass(frozen=True, eq=False)
class RetrievalDataset:
  """Questions and candidates by language, for mono/cross/multilingual retrieval evaluation."""
  name: str
  questions: dict[str, list[Question]]
  candidates: dict[str, list[Candidate]]
  candidate_unit: str = "sentence"  # LAReQA's answer sentences; "passage" (MIRACL, or a corpus
                                    # whose answer sentences are unknown: from_parallel_corpus).

  def stats(self) -> dict[str, dict[str, int]]:
    """Per language: questions, candidates, and (question, relevant candidate) pairs."""
    return {language: {
        "questions": len(self.questions.get(language, ())),
        "candidates": len(self.candidates.get(language, ())),
        "relevant_pairs": sum(len(q.relevant) for q in self.questions.get(language, ())),
    } for language in sorted(set(self.questions) | set(self.candidates))}


def lareqa_folder(data_dir: PathLike, dataset: str) -> pathlib.Path:
  """`data_dir/<dataset folder>` if it exists, else `data_dir` itself."""
  if dataset not in LAREQA_FOLDERS:
    raise ValueError(f"dataset must be one of {sorted(LAREQA_FOLDERS)}, found {dataset!r}")
  folder = fs.path(data_dir) / LAREQA_FOLDERS[dataset]
  return folder if folder.is_dir() else fs.path(data_dir)


def load_lareqa(data_dir: PathLike, dataset: str = "xquad_r",
                languages: Sequence[str] | None = None,
                split: Sequence[str] | None = None) -> RetrievalDataset:
  """LAReQA's XQuAD-R or MLQA-R: every sentence of every paragraph is a candidate.

  Candidates are NOT deduplicated: one per (paragraph, sentence position), which reproduces
  LAReQA's published counts exactly (deduplicating identical sentence text, or (sentence,
  paragraph), gives fewer for ar, hi, ru, tr, zh and MLQA-R ar, en, hi, vi). A question's relevant
  candidates are the sentences holding its answer_start ([start, end) of sentence_breaks) in every
  language where its id exists. `split`, a list of article titles, keeps those articles and, in
  every language, the articles holding their question ids (MLQA titles are per language).
  """
  folder = lareqa_folder(data_dir, dataset)
  languages = tuple(languages or LAREQA_LANGUAGES[dataset])
  for language in languages:
    corpora.check_language(language, f"languages argument for {dataset}")
  absent = [language for language in languages if not (folder / f"{language}.json").is_file()]
  if absent:
    raise CorpusError(f"{folder}: no {', '.join(f'{x}.json' for x in absent)} for {dataset} "
                      f"language(s) {absent} (choose the languages to load to leave them out)")
  paragraphs = {language: list(corpora.read_squad_paragraphs(folder / f"{language}.json"))
                for language in languages}
  if split is not None:
    paragraphs = _restrict_to_articles(paragraphs, set(split), folder)
  candidates, answers, texts = {}, collections.defaultdict(dict), {}
  for language in languages:
    candidates[language], texts[language] = [], {}
    for p, paragraph in enumerate(paragraphs[language]):
      ids = [f"{language}:{p}:{s}" for s in range(len(paragraph.sentences))]
      candidates[language] += [Candidate(i, language, sentence, paragraph.context)
                               for i, sentence in zip(ids, paragraph.sentences)]
      for question in paragraph.questions:
        if question.qid in texts[language]:  # As the training readers: never drop one silently.
          raise CorpusError(f"{folder / f'{language}.json'}: record id {question.qid!r}: "
                            "duplicate id")
        answers[question.qid][language] = ids[question.sentence_index]
        texts[language][question.qid] = question.text
  questions = {language: [
      Question(qid, language, text, tuple(answers[qid][other] for other in languages
                                          if other in answers[qid]))
      for qid, text in texts[language].items()] for language in languages}
  return RetrievalDataset(dataset, questions, candidates)


def _restrict_to_articles(paragraphs: dict[str, list[corpora.SquadParagraph]], titles: set[str],
                          folder: pathlib.Path) -> dict[str, list[corpora.SquadParagraph]]:
  kept_ids = {q.qid for ps in paragraphs.values() for p in ps if p.article_id in titles
              for q in p.questions}
  if not kept_ids:
    raise CorpusError(f"{folder}: none of the {len(titles)} split articles were found")
  kept_articles = {(language, p.article_id) for language, ps in paragraphs.items() for p in ps
                   if p.article_id in titles or any(q.qid in kept_ids for q in p.questions)}
  return {language: [
      dataclasses.replace(p, questions=tuple(q for q in p.questions if q.qid in kept_ids))
      for p in ps if (language, p.article_id) in kept_articles]
          for language, ps in paragraphs.items()}


def miracl_passage(record: Mapping, where: str) -> tuple[str, str]:
  """(docid, title then text) of one MIRACL corpus record, as MIRACL's baselines read it; a
  missing or empty field is an error naming `where` (file and line) and the docid."""
  docid = corpora.required_text(record, "docid", where)
  where = f"{where} (docid {docid!r})"
  if not isinstance(record.get("title"), str):
    raise CorpusError(f"{where}: missing field 'title' (a string)")
  text = corpora.required_text(record, "text", where)
  title = record["title"].strip()
  return docid, f"{title} {text}" if title else text


def read_miracl_topics(topics_tsv: PathLike, qrels_trec: PathLike,
                       language: str) -> tuple[list[Question], dict[str, str]]:
  """One MIRACL language's topics `qid<TAB>query` and qrels `qid Q0 docid rel`: its questions
  (relevant: the docids with rel > 0) and, for each relevant docid, where the qrels first judge
  it (to name it should the corpus not hold it). Small files: read whole."""
  corpora.check_language(language, f"{topics_tsv}")
  topics = {}
  for where, line in corpora.read_lines(topics_tsv):
    fields = line.split("\t")
    if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
      raise CorpusError(f"{where}: expected 'qid<TAB>query' with both non-empty, found {line!r}")
    if fields[0] in topics:
      raise CorpusError(f"{where}: duplicate qid {fields[0]!r}")
    topics[fields[0]] = fields[1].strip()
  relevant, judged = {qid: [] for qid in topics}, {}
  for where, line in corpora.read_lines(qrels_trec):
    fields = line.split()
    if len(fields) != 4 or not re.fullmatch(r"-?\d+", fields[3]):
      raise CorpusError(f"{where}: expected 'qid Q0 docid rel' with an integer rel, found {line!r}")
    qid, _, docid, rel = fields
    if qid not in topics:
      raise CorpusError(f"{where}: qid {qid!r} is not in {topics_tsv}")
    if int(rel) > 0:
      judged.setdefault(docid, where)
      if docid not in relevant[qid]:
        relevant[qid].append(docid)
  questions = [Question(qid, language, text, tuple(relevant[qid])) for qid, text in topics.items()]
  return questions, judged


def load_miracl(topics_tsv: PathLike, qrels_trec: PathLike, corpus_jsonl: PathLike,
                language: str) -> RetrievalDataset:
  """One MIRACL language in memory: topics, qrels and corpus JSONL (read_miracl_topics,
  miracl_passage), for small sets; the corpus-scale evaluation streams it (corpus_eval).

  The corpus is one JSONL file, a glob or a folder of them, gzipped or not (the public corpus:
  `miracl-corpus-v1.0-{lang}/docs-*.jsonl.gz`; hybridir.data.miracl has the public paths).
  A topic without a relevant docid keeps an empty `relevant`.
  """
  questions, judged = read_miracl_topics(topics_tsv, qrels_trec, language)
  documents = {}
  records = (item for path in corpora.jsonl_files(corpus_jsonl)
             for item in corpora.read_json_lines(path))
  for where, record in records:
    docid, text = miracl_passage(record, where)
    if docid in documents:
      raise CorpusError(f"{where} (docid {docid!r}): duplicate docid")
    documents[docid] = Candidate(docid, language, text, "")
  for docid, where in judged.items():
    if docid not in documents:
      raise CorpusError(f"{where}: docid {docid!r} is not in {corpus_jsonl}")
  return RetrievalDataset(f"miracl_{language}", {language: questions},
                          {language: list(documents.values())}, candidate_unit="passage")


def from_parallel_corpus(corpus: corpora.ParallelCorpus, name: str) -> RetrievalDataset:
  """LAReQA's construction on any parallel QA corpus (e.g. a translated training corpus's held-out
  articles): every sentence of every distinct passage is a candidate, read in its passage, and a
  question's relevant candidates are its answer sentence in every language holding its pair.

  Sentences are `corpora.sentence_parts` (each answer sentence whole, as the translation stage
  cut them). If any pair's answer sentence is absent or not found in its passage, the candidates
  are the distinct passages instead (`candidate_unit` "passage"), in every language alike.
  """
  pairs = {language: [corpus.pairs[language][i] for i in sorted(corpus.pairs[language])]
           for language in corpus.languages}
  anchors = {language: {} for language in corpus.languages}  # passage -> its answer sentences
  for language, items in pairs.items():
    for pair in items:
      anchors[language].setdefault(pair.passage, []).append((pair.answer_sentence or "").strip())
  parts = {language: {passage: corpora.sentence_parts(passage, sorted(set(found)))
                      for passage, found in by_passage.items()}
           for language, by_passage in anchors.items()}
  by_sentence = all(pair.answer_sentence and pair.answer_sentence.strip() in parts[language][
      pair.passage] for language, items in pairs.items() for pair in items)
  candidates, answers = {}, collections.defaultdict(dict)
  for language, items in pairs.items():
    candidates[language], ids = [], {}
    for p, (passage, units) in enumerate(parts[language].items()):
      units = units if by_sentence else (passage,)
      for s, unit in enumerate(units):
        ids[passage, unit] = f"{language}:{p}:{s}"
        candidates[language].append(Candidate(ids[passage, unit], language, unit,
                                              passage if by_sentence else ""))
    for pair in items:
      unit = pair.answer_sentence.strip() if by_sentence else pair.passage
      answers[pair.pair_id][language] = ids[pair.passage, unit]
  questions = {language: [
      Question(pair.pair_id, language, pair.question, tuple(
          answers[pair.pair_id][other] for other in corpus.languages
          if other in answers[pair.pair_id])) for pair in items]
      for language, items in pairs.items()}
  return RetrievalDataset(name, questions, candidates,
                          candidate_unit="sentence" if by_sentence else "passage")
