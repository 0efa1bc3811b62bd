"""The evaluation's text files: TREC runs and qrels (as trec_eval reads them) and a languages TSV.

A run is `qid Q0 docid rank score tag` per line, qrels `qid 0 docid relevance`, languages
`id<TAB>language`. Writing is atomic and refuses ids a TREC file cannot hold; reading names the
file and line of a bad field or a repeated document.
"""
import math

from hybridir.data import corpora
from hybridir.evaluation import metrics
from hybridir import fs


def _check_token(value: str, what: str) -> str:
  if not value or any(c.isspace() for c in value):
    raise ValueError(f"{what} {value!r} is empty or contains whitespace; TREC files cannot hold it")
  return value


def write_run(path: str, run: metrics.Run, tag: str) -> None:
  """Writes `run` as a TREC run file, each query in trec_eval's order (score desc, docid desc)."""
  _check_token(tag, "run tag")
  lines = []
  for qid in sorted(run):
    _check_token(qid, "qid")
    for rank, docid in enumerate(metrics.trec_order(run[qid]), start=1):
      score = float(run[qid][docid])
      lines.append(f"{qid} Q0 {_check_token(docid, 'docid')} {rank} {score!r} {tag}\n")
  fs.write_text_atomically(path, "".join(lines))


def write_qrels(path: str, qrels: metrics.Qrels) -> None:
  """Writes `qrels` as a TREC qrels file (`qid 0 docid relevance`)."""
  lines = [f"{_check_token(qid, 'qid')} 0 {_check_token(docid, 'docid')} {int(rel)}\n"
           for qid in sorted(qrels) for docid, rel in sorted(qrels[qid].items())]
  fs.write_text_atomically(path, "".join(lines))


def _read_table(path: str, num_fields: int, layout: str, separator: str | None = None):
  """Yields (line number, fields) of non-blank lines; a wrong field count raises naming the line."""
  with fs.open(path, "rb") as f:
    for number, raw in enumerate(f, start=1):
      line = corpora.decoded_text(raw, path, number)
      if not line.strip():
        continue
      fields = line.rstrip("\r\n").split(separator)
      if len(fields) != num_fields:
        raise ValueError(f"{path}:{number}: expected {num_fields} fields '{layout}', found "
                         f"{len(fields)}: {line.rstrip()!r}")
      yield number, fields


def _parse(path, number, value, kind, what):
  try:
    parsed = kind(value)
  except ValueError:
    raise ValueError(f"{path}:{number}: {what} {value!r} is not a valid {kind.__name__}") from None
  if kind is float and not math.isfinite(parsed):
    raise ValueError(f"{path}:{number}: {what} {value!r} is not finite")
  return parsed


def _record_first(first_line: dict, path: str, number: int, qid: str, docid: str,
                  repeated: str) -> None:
  """Notes the line (qid, docid) first appears on in `first_line`; raises naming both lines
  (`document ... {repeated} for query ...`) when it appears again."""
  if (qid, docid) in first_line:
    raise ValueError(f"{path}:{number}: document {docid!r} {repeated} for query {qid!r} (first on "
                     f"line {first_line[qid, docid]})")
  first_line[qid, docid] = number


def read_run(path: str) -> dict[str, dict[str, float]]:
  """Reads a TREC run file into `{qid: {docid: score}}`; duplicates and bad fields name the line."""
  run, first_line = {}, {}
  rows = _read_table(path, 6, "qid Q0 docid rank score tag")
  for number, (qid, _, docid, rank, score, _) in rows:
    _parse(path, number, rank, int, "rank")
    _record_first(first_line, path, number, qid, docid, "repeated")
    run.setdefault(qid, {})[docid] = _parse(path, number, score, float, "score")
  return run


def read_qrels(path: str) -> dict[str, dict[str, int]]:
  """Reads a TREC qrels file into `{qid: {docid: relevance}}`."""
  qrels, first_line = {}, {}
  for number, (qid, _, docid, rel) in _read_table(path, 4, "qid 0 docid relevance"):
    _record_first(first_line, path, number, qid, docid, "judged twice")
    qrels.setdefault(qid, {})[docid] = _parse(path, number, rel, int, "relevance")
  return qrels


def read_languages(path: str) -> dict[str, str]:
  """`{id: language}` from a TSV file of `id<TAB>language` lines (candidates and/or queries)."""
  languages, first_line = {}, {}
  for number, fields in _read_table(path, 2, "id<TAB>language", separator="\t"):
    docid, language = (field.strip() for field in fields)
    if not docid or not language:
      raise ValueError(f"{path}:{number}: empty id or language")
    if docid in languages and languages[docid] != language:
      raise ValueError(f"{path}:{number}: id {docid!r} has language {language!r}, but "
                       f"{languages[docid]!r} on line {first_line[docid]}")
    first_line.setdefault(docid, number)
    languages[docid] = language
  return languages
