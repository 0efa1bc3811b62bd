"""Evaluation against a whole corpus (MIRACL-scale): encode it into a resumable sharded index,
search it exactly in bounded memory, write the TREC run and qrels, score them.

    python -m hybridir.main --gin_file=gin_configs/runs/eval_corpus.gin \
      --gin.ENCODER_PATH="'gs://b/export'" --gin.TOPICS="'topics.tsv'" --gin.QRELS="'qrels.txt'" \
      --gin.CORPUS="'corpus.jsonl'" --gin.LANGUAGE="'sw'" --gin.EVAL_DIR="'gs://b/eval/sw'"

The same command runs on one process or on every host of a pod (jax.distributed, hybridir.main's
flags): each process reads only its part of the corpus files, encodes and searches its own
shards; process 0 writes the run and results.
Rerunning after a crash skips the shards already encoded. A MIRACL language whose files do not
hold its published numbers of queries and passages is refused unless ALLOW_SUBSET = True.

`run_miracl_evaluation` (gin_configs/runs/study/miracl.gin) is the study's MIRACL stage: every
language in turn from the public files under one root, skipping those already done.
"""
import json
import os
import time
from typing import Sequence

from absl import logging
import jax

from hybridir.data import corpora
from hybridir.data import miracl
from hybridir.data import retrieval_data
from hybridir.evaluation import corpus_index
from hybridir.evaluation import corpus_search
from hybridir.evaluation import evaluate
from hybridir.evaluation import metrics
from hybridir.evaluation import trec
from hybridir.export import artifacts
from hybridir.export import encoder as encoder_lib
from hybridir.export import exporter
from hybridir import fs

RUN_FILE, QRELS_FILE, RESULTS_FILE = "run.trec", "qrels.trec", "results.json"
ENCODER_FILE = "encoder.json"  # The MIRACL stage: which encoder a language's results are of.
BATCH_SIZE = 64  # Encoding batch per process (rounded up to its local devices).


def write_run(output_dir: str, index_dir: str, qids: Sequence[str], scores, indices,
              tag: str = "hybridir") -> str:
  """The TREC run of a corpus search (top-k positions mapped to the index's passage ids)."""
  ids = corpus_search.passage_ids(index_dir, corpus_index.read_spec(index_dir), indices)
  run = {qid: {docid: float(score) for docid, score in zip(id_row, score_row)}
         for qid, id_row, score_row in zip(qids, ids, scores)}
  path = os.path.join(output_dir, RUN_FILE)
  trec.write_run(path, run, tag)
  return path


def run_corpus_evaluation(*, encoder_path: str, topics_tsv: str, qrels_trec: str,
                          corpus_jsonl: str, language: str, output_dir: str,
                          index_dir: str | None = None, shard_size: int = 65536,
                          dtype: str = "float32", depth: int = 100,
                          memory_bytes: int = 2 << 30, batch_size: int = BATCH_SIZE,
                          num_partitions: int = 1,
                          measures: Sequence[str] = metrics.DEFAULT_MEASURES,
                          allow_subset: bool = False) -> dict:
  """Evaluates an encoder on one MIRACL-format language (topics, qrels, corpus JSONL; local or
  gs://): {measure: mean over judged queries, num_q}, also written to output_dir/results.json.
  num_partitions: local devices each parameter is split over (load_encoder's).

  The corpus: a JSONL file, a glob or a folder of them, gzipped or not, streamed (evaluate_corpus).
  The index goes to index_dir (default output_dir/index). A language of MIRACL's table must have
  its published dev sizes (`miracl.check_published_counts`) unless allow_subset.
  """
  for name in measures:
    metrics.parse_measure(name)
  encoder = exporter.load_encoder(encoder_path, batch_size=batch_size,  # Before a long corpus read.
                                num_partitions=num_partitions)
  return evaluate_corpus(encoder, topics_tsv=topics_tsv, qrels_trec=qrels_trec,
                         corpus_jsonl=corpus_jsonl, language=language, output_dir=output_dir,
                         index_dir=index_dir, shard_size=shard_size, dtype=dtype, depth=depth,
                         memory_bytes=memory_bytes, measures=measures, allow_subset=allow_subset)


def evaluate_corpus(encoder: encoder_lib.Encoder, *, topics_tsv: str, qrels_trec: str,
                    corpus_jsonl: str, language: str, output_dir: str,
                    index_dir: str | None = None, shard_size: int = 65536,
                    dtype: str = "float32", depth: int = 100, memory_bytes: int = 2 << 30,
                    measures: Sequence[str] = metrics.DEFAULT_MEASURES,
                    allow_subset: bool = False) -> dict:
  """run_corpus_evaluation with the encoder already loaded.

  The corpus is never held whole: its files are counted once (index_dir/counts), each process
  streams the records of its own shards (corpus_index.StreamedPassages), and after encoding the
  index's ids are checked for duplicates and for the judged docids (check_passage_ids).
  """
  index_dir = index_dir or os.path.join(output_dir, "index")
  questions, judged = retrieval_data.read_miracl_topics(topics_tsv, qrels_trec, language)
  began = time.monotonic()
  corpus = corpus_index.count_corpus(index_dir, corpora.jsonl_files(corpus_jsonl))
  logging.info("counted %d passages in %d files in %.1f s", len(corpus), len(corpus.files),
               time.monotonic() - began)
  if not allow_subset:
    miracl.check_published_counts(language, topics_tsv, len(questions), corpus_jsonl,
                                  len(corpus))
  source = corpus_index.StreamedPassages(encoder, corpus, retrieval_data.miracl_passage)
  encoding = corpus_index.encode_corpus(encoder, source, index_dir, shard_size, dtype)
  logging.info("encoded %d passages (%d shards skipped) in %.1f s (%.1f s reading and "
               "tokenising) at %.1f passages/s", encoding["encoded_passages"],
               encoding["skipped_shards"], encoding["seconds"], encoding["read_seconds"],
               encoding["passages_per_second"])
  began = time.monotonic()
  absent = corpus_index.check_passage_ids(index_dir, encoding, source.where, list(judged),
                                          memory_bytes)
  if absent:
    missing = frozenset(absent)
    first = next(docid for docid in judged if docid in missing)  # In the qrels' order.
    raise corpora.CorpusError(f"{judged[first]}: docid {first!r} is not in {corpus_jsonl}" + (
        f" (nor are {len(absent) - 1} other judged docids)" if len(absent) > 1 else ""))
  logging.info("checked the index's ids in %.1f s", time.monotonic() - began)
  began = time.monotonic()
  query_emb = encoder.encode([q.text for q in questions], tower="query")
  scores, indices = corpus_search.search_index(index_dir, query_emb, min(depth, len(corpus)),
                                               memory_bytes)
  logging.info("searched %d queries over %d passages in %.1f s", len(questions), len(corpus),
               time.monotonic() - began)
  if jax.process_index() != 0:  # Every process holds the same top-k; one writes.
    return {}
  qids = [q.question_id for q in questions]
  run_path = write_run(output_dir, index_dir, qids, scores, indices)
  qrels_path = os.path.join(output_dir, QRELS_FILE)
  trec.write_qrels(qrels_path, {q.question_id: {docid: 1 for docid in q.relevant}
                                for q in questions if q.relevant})
  results = evaluate.evaluate_files(run_path, qrels_path, measures)["all"]
  fs.write_text_atomically(os.path.join(output_dir, RESULTS_FILE),
                           json.dumps(results, indent=1, sort_keys=True) + "\n")
  logging.info("results: %s", results)
  return results


def encoder_identity(encoder_path: str) -> dict:
  """The training run and step an exported encoder comes from (its manifest's metadata), else
  its path: what a resumed MIRACL stage must find unchanged."""
  if fs.isfile(os.path.join(encoder_path, artifacts.MANIFEST)):
    return artifacts.read_manifest(encoder_path)["metadata"]
  return {"encoder_path": encoder_path}


def run_miracl_evaluation(*, encoder_path: str, miracl_dir: str, output_dir: str,
                          languages: Sequence[str] = miracl.STUDY_LANGUAGES,
                          allow_subset: bool = False, keep_index: bool = False,
                          **options) -> dict:
  """Evaluates an encoder on every MIRACL language in turn, from the public dev files under
  miracl_dir (hybridir.data.miracl), into output_dir/<lang>/results.json: {language: results}.

  A language whose results.json exists is skipped, so a rerun resumes (and a language cut short
  resumes its encoding), unless they are another encoder's (output_dir/<lang>/encoder.json: the
  training run and step): that is an error, never a table mixing two encoders. Every language's
  files are checked before the first is read. The index (output_dir/<lang>/index) is deleted
  once the results are written, unless keep_index.
  options: run_corpus_evaluation's (shard_size, dtype, depth, memory_bytes, batch_size, ...).
  """
  if "index_dir" in options:
    raise ValueError("run_miracl_evaluation: each language's index is output_dir/<lang>/index")
  for name in options.get("measures", ()):
    metrics.parse_measure(name)
  loading = {"batch_size": options.pop("batch_size", BATCH_SIZE),
             "num_partitions": options.pop("num_partitions", 1)}
  encoder = None  # Loaded once, when the first language not yet done needs it.
  files = [miracl.language_files(miracl_dir, language) for language in languages]
  for language_files in files:
    miracl.check_files(language_files)
  identity, results = encoder_identity(encoder_path), {}
  for f in files:
    language_dir = f"{output_dir.rstrip('/')}/{f.language}"
    done, used = f"{language_dir}/{RESULTS_FILE}", f"{language_dir}/{ENCODER_FILE}"
    if fs.exists(done):
      recorded = json.loads(fs.read_text(used)) if fs.exists(used) else None
      if recorded != identity:
        raise ValueError(f"{done}: the results of encoder {recorded}, not of {encoder_path} "
                         f"({identity}); delete {language_dir} to evaluate this one")
      logging.info("MIRACL %s: %s exists, skipping the language", f.language, done)
      results[f.language] = json.loads(fs.read_text(done))
      continue
    logging.info("MIRACL %s: evaluating into %s", f.language, language_dir)
    if jax.process_index() == 0:
      fs.write_text_atomically(used, json.dumps(identity, sort_keys=True))
    encoder = encoder or exporter.load_encoder(encoder_path, **loading)
    results[f.language] = evaluate_corpus(
        encoder, topics_tsv=f.topics_tsv, qrels_trec=f.qrels_trec, corpus_jsonl=f.corpus,
        language=f.language, output_dir=language_dir, allow_subset=allow_subset, **options)
    if not keep_index and jax.process_index() == 0:  # Every process has read its shards.
      fs.rmtree(f"{language_dir}/index")
  return results
