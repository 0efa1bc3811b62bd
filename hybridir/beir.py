"""The BEIR retrieval format (shared by pyserini, mteb and tevatron): corpus.jsonl (`_id`, `title`,
`text`), queries.jsonl (`_id`, `text`) and qrels.tsv (`query-id<TAB>corpus-id<TAB>score`, with a
header line); reading it checked, and writing LAReQA data in it (`python -m hybridir.data beir`).
"""
import dataclasses
import json
import os

from hybridir import corpora
from hybridir import fs
from hybridir import retrieval_data


@dataclasses.dataclass(frozen=True)
class BeirData:
  corpus: dict[str, dict[str, str]]  # {doc id: {"title": ..., "text": ...}}, in file order.
  queries: dict[str, str]             # {query id: text}, in file order.
  qrels: dict[str, dict[str, int]]    # {query id: {doc id: relevance}}.


def _read_records(path: str, fields: tuple[str, ...]) -> dict[str, dict]:
  records = {}
  for where, record in corpora.read_json_lines(path):
    key = corpora.required_text(record, "_id", where)
    if key in records:
      raise ValueError(f"{where}: duplicate _id {key!r}")
    for field in fields:
      if not isinstance(record.get(field, ""), str):
        raise ValueError(f"{where} (_id {key!r}): field {field!r} must be a string")
    records[key] = {field: record.get(field, "") for field in fields}
  return records


def read_beir(corpus_path: str, queries_path: str, qrels_path: str) -> BeirData:
  """The three files, checked: every judged query and document exists, scores are integers."""
  corpus = _read_records(corpus_path, ("title", "text"))
  queries = {k: v["text"] for k, v in _read_records(queries_path, ("text",)).items()}
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
    raise ValueError(f"{qrels_path}: no judgements")
  return BeirData(corpus, queries, qrels)


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
