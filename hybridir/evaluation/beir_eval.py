"""Evaluating an encoder on any corpus in the BEIR format:

    python -m hybridir.evaluate --encoder PATH --corpus corpus.jsonl --queries queries.jsonl \
        --qrels qrels.tsv [--languages LANGS] [--output_dir DIR] [--depth 100]

PATH is anything `load_encoder` takes (a training MODEL_DIR, an export, a Hugging Face directory).
Writes DIR/run.trec (TREC run, top `depth`), DIR/metrics.json (pytrec_eval's measure names; with
LANGS, `id<TAB>language` of documents and queries, also the language bias `rank_distance`) and
DIR/report.md. A document is read as its title, then its text (as MIRACL's baselines do).
"""
import os
import sys
import time
from typing import Sequence

import numpy as np

from hybridir import console
from hybridir.data import beir
from hybridir import errors
from hybridir.evaluation import metrics
from hybridir.evaluation import reports
from hybridir.evaluation import retrieval
from hybridir.evaluation import trec
from hybridir.export import encoder as encoder_lib
from hybridir.export import exporter
from hybridir import fs

SHOWN = ("map", "ndcg_cut_10", "recall_100")


def evaluate_beir(encoder: encoder_lib.Encoder, data: beir.BeirData, output_dir: str,
                  measures: Sequence[str] = metrics.DEFAULT_MEASURES, depth: int = 100,
                  languages: dict[str, str] | None = None, show_progress: bool = True) -> dict:
  """Encodes, searches the whole corpus, scores the run; writes run.trec, metrics.json, report.md
  under output_dir and returns the metrics. languages: `{id: language}` (trec.read_languages)
  for the language bias."""
  for name in measures:
    metrics.parse_measure(name)
  started = time.time()
  qids = [qid for qid in data.queries if qid in data.qrels]  # Unjudged queries cannot score.
  docids = list(data.corpus)
  query_emb = encoder.encode_queries([data.queries[q] for q in qids],
                                     show_progress_bar=show_progress)
  corpus_emb = encoder.encode_corpus([data.corpus[d] for d in docids],
                                     show_progress_bar=show_progress)
  print(f"searching {len(docids)} documents for {len(qids)} queries", file=sys.stderr)
  scores, indices = retrieval.top_k(query_emb, corpus_emb, min(depth, len(docids)))
  run = retrieval.ranking_to_run(qids, docids, scores, indices)
  per_query = metrics.evaluate_run(run, data.qrels, measures)
  results = {"all": {"num_q": len(per_query), **metrics.aggregate(per_query)},
             "corpus_size": len(docids), "depth": depth, "seconds": round(time.time() - started, 1)}
  if languages:
    results["rank_distance"] = _rank_distance(qids, query_emb, docids, corpus_emb, data.qrels,
                                              languages)
  trec.write_run(os.path.join(output_dir, "run.trec"), run, "hybridir")
  reports.write_json(os.path.join(output_dir, "metrics.json"), results)
  rows = [[name, results["all"][name]] for name in results["all"] if name != "num_q"]
  report = (f"# Retrieval of {len(qids)} queries over {len(docids)} documents\n\n"
            + reports.markdown_table(["measure", "value"], rows) + "\n")
  if "rank_distance" in results:
    bias = results["rank_distance"]
    report += (f"\nLanguage bias: mean maximum rank distance {bias['mean']:.1f} (a random "
               f"ranking: {bias['random']:.1f}; lower is less biased) over {bias['num_q']} "
               "queries; per query language: " + ", ".join(
                   f"{language} {v['mean']:.1f}" for language, v in
                   bias["per_query_language"].items()) + "\n")
  fs.write_text_atomically(os.path.join(output_dir, "report.md"), report)
  return results


def _rank_distance(qids, query_emb, docids, corpus_emb, qrels, languages) -> dict:
  """Language bias over the whole corpus: each relevant document's rank in the full ranking
  (`retrieval.ranks_of`, trec_eval's tie order), never sorting it."""
  position = {docid: i for i, docid in enumerate(docids)}
  relevant = [[position[d] for d, grade in qrels[q].items() if grade >= 1] for q in qids]
  width = max(map(len, relevant), default=1)
  targets = np.array([r + [-1] * (width - len(r)) for r in relevant], np.int64)
  ranks = retrieval.ranks_of(query_emb, corpus_emb, targets, retrieval.trec_tie_priority(docids))
  ranks_by_query = {q: {docids[t]: int(r) for t, r in zip(row, rank_row)}
                    for q, row, rank_row in zip(qids, relevant, ranks) if row}
  return metrics.rank_distance_of_ranks(ranks_by_query, dict.fromkeys(ranks_by_query,
                                                                       len(docids)), languages)


def main(encoder_path: str, data: beir.BeirData, output_dir: str, measures: Sequence[str],
         depth: int, languages: dict[str, str] | None, qrels_path: str) -> int:
  """The `--encoder` mode of `python -m hybridir.evaluate`, once it has read and checked the
  inputs (`data`, `languages`) and probed `output_dir`: loads the encoder, evaluates, reports."""
  if data.unjudged_queries:
    print(f"note: {len(data.unjudged_queries)} of {len(data.queries)} queries have no judgement "
          f"in {qrels_path} and are not scored (the first: {data.unjudged_queries[0]})",
          file=sys.stderr)
  try:
    encoder = exporter.load_encoder(encoder_path)
    results = evaluate_beir(encoder, data, output_dir, measures, depth, languages)
  except (OSError, ValueError) as error:
    print(errors.one_line(error), file=sys.stderr)
    return 1
  shown = ", ".join(f"{k} {v:.4f}" for k, v in results["all"].items() if k in SHOWN)
  print(f"{shown} over {results['all']['num_q']} queries", file=sys.stderr)
  console.finish(f"{output_dir}/run.trec, metrics.json and report.md",
                 f"cat {output_dir}/report.md")
  return 0
