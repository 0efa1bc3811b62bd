"""The BEIR retrieval format (shared by pyserini, mteb and tevatron): corpus.jsonl (`_id`, `title`,
`text`), queries.jsonl (`_id`, `text`) and qrels.tsv (`query-id<TAB>corpus-id<TAB>score`, with a
header line); reading it checked, and writing LAReQA data in it (`python -m hybridir.data beir`).
"""
import dataclasses
import json
import os

from hybridir.data import corpora
from hybridir.data import retrieval_data
from hybridir import fs


@dataclasses.dataclass(frozen=True)
class BeirData:
  corpus: dict[str, dict[str, str]]  # {doc id: {"title": ..., "text": ...}}, in file order.
  queries: dict[str, str]             # {query id: text}, in file order.
  qrels: dict[str, dict[str, int]]    # {query id: {doc id: relevance}}.
  # Where each query without a judgement is ('queries.jsonl: line 3 (_id 'q9')'): not scored.
  unjudged_queries: tuple[str, ...] = ()


def _read_records(path: str, optional: tuple[str, ...]) -> tuple[dict[str, dict], dict[str, str]]:
  """({_id: {"text": ..., optional field: ...}}, {_id: where it is}) of a BEIR JSON lines file:
  every record has a string `_id` and `text` (a query's not empty), ids are unique, and the file
  holds at least one record; a CorpusError names the file and line otherwise."""
  records, where_of = {}, {}
  for where, record in corpora.read_json_lines(path):
    key = corpora.required_text(record, "_id", where)
    where = f"{where} (_id {key!r})"
    if key in records:
      raise corpora.CorpusError(f"{where}: duplicate _id (first at {where_of[key]})")
    if "text" not in record:
      raise corpora.CorpusError(f"{where}: missing field 'text'")
    for field in ("text", *optional):
      if not isinstance(record.get(field, ""), str):
        raise corpora.CorpusError(f"{where}: field {field!r} must be a string, found "
                                  f"{type(record[field]).__name__}")
    records[key] = {field: record.get(field, "") for field in ("text", *optional)}
    where_of[key] = where
  if not records:
    raise corpora.CorpusError(f"{path}: no records (an empty file; expected a JSON object with "
                              "_id and text per line)")
  return records, where_of


def read_beir(corpus_path: str, queries_path: str, qrels_path: str) -> BeirData:
  """The three files, checked: every record has `_id` and `text` (a query's not empty), ids are
  unique, no file is empty, every judged query and document exists, scores are integers. Queries
  without a judgement are kept aside (BEIR's queries.jsonl often holds every split's)."""
  corpus, _ = _read_records(corpus_path, ("title",))
  query_records, query_where = _read_records(queries_path, ())
  for qid, record in query_records.items():
    if not record["text"].strip():
      raise corpora.CorpusError(f"{query_where[qid]}: field 'text' is empty")
  queries = {qid: record["text"] for qid, record in query_records.items()}
  qrels = {}
  for number, (where, line) in enumerate(corpora.read_lines(qrels_path)):
    fields = line.split("\t")
    if number == 0 and fields[0] == "query-id":
      continue  # BEIR's header.
    if len(fields) != 3 or not fields[2].strip().lstrip("-").isdigit():
      raise ValueError(f"{where}: expected 'query-id<TAB>corpus-id<TAB>score' with an integer "
                       f"score, found {line!r}")
    qid, docid, score = fields[0], fields[1], int(fields[2])
    if qid not in queries:
      raise ValueError(f"{where}: query-id {qid!r} is not in {queries_path}")
    if docid not in corpus:
      raise ValueError(f"{where}: corpus-id {docid!r} is not in {corpus_path}")
    qrels.setdefault(qid, {})[docid] = score
  if not qrels:
    raise ValueError(f"{qrels_path}: no judgements (expected 'query-id<TAB>corpus-id<TAB>score' "
                     "lines after the header)")
  return BeirData(corpus, queries, qrels,
                  tuple(query_where[qid] for qid in queries if qid not in qrels))


def write_lareqa(output_dir: str, dataset: retrieval_data.RetrievalDataset) -> dict[str, str]:
  """A LAReQA (or MIRACL) dataset as BEIR files, plus languages.tsv (`id<TAB>language` of every
  query and document, for rank distance). Query ids are `{language}-{id}` (LAReQA shares a
  question's id across languages); a candidate's text is its sentence, then its context (the
  paragraph), as hybridir's `sentence_with_context` passage reads it."""
  fs.makedirs(output_dir)
  corpus, queries, qrels, languages = [], [], ["query-id\tcorpus-id\tscore"], []
  for language, items in dataset.candidates.items():
    for c in items:
      corpus.append(json.dumps({"_id": c.candidate_id, "title": "",
                                "text": f"{c.text} {c.context}".strip()},
                               ensure_ascii=False))
      languages.append(f"{c.candidate_id}\t{language}")
  for language, items in dataset.questions.items():
    for q in items:
      qid = f"{language}-{q.question_id}"
      queries.append(json.dumps({"_id": qid, "text": q.text}, ensure_ascii=False))
      qrels.extend(f"{qid}\t{docid}\t1" for docid in q.relevant)
      languages.append(f"{qid}\t{language}")
  paths = {name: os.path.join(output_dir, name) for name in
           ("corpus.jsonl", "queries.jsonl", "qrels.tsv", "languages.tsv")}
  for name, lines in zip(paths, (corpus, queries, qrels, languages)):
    fs.write_text_atomically(paths[name], "\n".join(lines) + "\n")
  return paths
