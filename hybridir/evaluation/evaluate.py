"""Zero-shot evaluation: monolingual, cross-lingual and multilingual settings, and a CLI.

    python -m hybridir.evaluate --run RUN --qrels QRELS [--per_query] [--measures map,recall_10] \
        [--languages LANGS]
    python -m hybridir.evaluate --encoder PATH --corpus corpus.jsonl --queries queries.jsonl \
        --qrels qrels.tsv [--languages LANGS]   (BEIR format: see hybridir.evaluation.beir_eval)

reads a TREC run (`qid Q0 docid rank score tag`) and qrels (`qid 0 docid relevance`) and prints the
measures as JSON under pytrec_eval's names. With LANGS (TSV `id<TAB>language` for the candidates
and optionally the queries) it adds `rank_distance`, the language bias of a multilingual run.
"""
import json
import math
import os
import sys
from typing import Mapping, Optional, Sequence

import numpy as np

from hybridir import console
from hybridir.data import beir
from hybridir import errors
from hybridir.evaluation import metrics
from hybridir.evaluation import retrieval
from hybridir.evaluation import trec
from hybridir import fs

# {lang: [(qid, relevant candidate ids), ...]}; candidate ids are unique across all languages.
Questions = Mapping[str, Sequence[tuple[str, Sequence[str]]]]




def _evaluate_pool(questions: Sequence[tuple[str, Sequence[str]]], question_emb: np.ndarray,
                   pool_ids: Sequence[str], pool_emb: np.ndarray, measures: Sequence[str]):
  """Per-query measures and relevant ranks against one pool; only relevant ids in the pool count."""
  position = {docid: i for i, docid in enumerate(pool_ids)}
  kept, targets = [], []
  for row, (qid, relevant) in enumerate(questions):
    in_pool = [position[docid] for docid in relevant if docid in position]
    if in_pool:  # Queries with no relevant candidate in this pool are skipped (as trec_eval would).
      kept.append(row)
      targets.append(in_pool)
  if not kept:
    return {}, {}
  width = max(len(t) for t in targets)
  target_matrix = np.array([t + [-1] * (width - len(t)) for t in targets], np.int64)
  ranks = retrieval.ranks_of(question_emb[kept], pool_emb, target_matrix, retrieval.trec_tie_priority(pool_ids))
  per_query, relevant_ranks = {}, {}
  for row, rank_row, target_row in zip(kept, ranks, targets):
    qid = questions[row][0]
    rank_row = rank_row[:len(target_row)]
    per_query[qid] = metrics.measures_from_ranks(rank_row, np.ones(len(rank_row)), measures)
    relevant_ranks[qid] = {pool_ids[t]: int(r) for t, r in zip(target_row, rank_row)}
  return per_query, relevant_ranks


def _summary(per_query: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
  return {"num_q": len(per_query), **metrics.aggregate(per_query)}


def _macro_average(entries: Sequence[Mapping[str, float]]) -> dict[str, float]:
  """Unweighted mean over languages (or pairs) of each measure; entries without queries left out."""
  entries = [e for e in entries if e["num_q"] > 0]
  names = [name for name in (entries[0] if entries else {}) if name != "num_q"]
  return {name: float(np.mean([e[name] for e in entries])) for name in names}


def _validate_settings_input(questions, question_emb, candidates, candidate_emb) -> dict[str, str]:
  """Checks counts and ids; returns {candidate id: language}."""
  candidate_language = {}
  for lang in sorted(candidates):
    if lang not in candidate_emb or len(candidates[lang]) != len(candidate_emb[lang]):
      raise ValueError(f"candidates[{lang!r}] has {len(candidates[lang])} ids but candidate_emb "
                       f"has {len(candidate_emb.get(lang, ()))} rows")
    for docid in candidates[lang]:
      if docid in candidate_language:
        raise ValueError(f"candidate id {docid!r} appears in {candidate_language[docid]!r} and "
                         f"{lang!r}; ids must be unique across languages")
      candidate_language[docid] = lang
  for lang in sorted(questions):
    if lang not in question_emb or len(questions[lang]) != len(question_emb[lang]):
      raise ValueError(f"questions[{lang!r}] has {len(questions[lang])} entries but question_emb "
                       f"has {len(question_emb.get(lang, ()))} rows")
    for qid, relevant in questions[lang]:
      unknown = [docid for docid in relevant if docid not in candidate_language]
      if unknown:
        raise ValueError(f"question {qid!r} ({lang}): relevant ids {unknown[:3]} are not "
                         f"candidates")
  return candidate_language


def evaluate_settings(questions: Questions, question_emb: Mapping[str, np.ndarray],
                      candidates: Mapping[str, Sequence[str]],
                      candidate_emb: Mapping[str, np.ndarray],
                      measures: Sequence[str] = metrics.DEFAULT_MEASURES) -> dict:
  """Monolingual, cross-lingual and multilingual results over precomputed embeddings.

  Args:
    questions: `{lang: [(qid, relevant candidate ids), ...]}`, rows aligned with
      `question_emb[lang]`.
    question_emb: `{lang: [num_questions, dim]}`.
    candidates: `{lang: [candidate id, ...]}`, ids unique across languages, aligned with
      `candidate_emb[lang]` ([num_candidates, dim]).
    measures: metric names (see hybridir.evaluation.metrics).

  Returns:
    `{"monolingual": {"per_language": {X: m}, "average": m},
      "cross_lingual": {"per_pair": {X: {Y: m}}, "average": m},
      "multilingual": {"per_language": {X: m}, "average": m}}`, where `m` maps each measure to its
    mean over queries (plus `num_q`; multilingual adds `rank_distance`, the maximum rank distance,
    and `rank_distance_random`, a random ranking's expectation of it, see metrics.rank_distances)
    and averages are unweighted over languages or pairs. Monolingual: questions in X against
    candidates in X; cross-lingual: every X != Y; multilingual: X against all languages' candidates.
    Only relevant candidates inside the pool count, and queries with none there are skipped.
  """
  candidate_language = _validate_settings_input(questions, question_emb, candidates, candidate_emb)
  languages = sorted(questions)
  mono = {lang: _summary(per_query) for lang, per_query in monolingual_per_query(
      questions, question_emb, candidates, candidate_emb, measures).items()}
  cross, multi = {}, {}
  for query_lang in languages:
    cross[query_lang] = {}
    for pool_lang in sorted(candidates):
      if pool_lang != query_lang:
        per_query, _ = _evaluate_pool(questions[query_lang], np.asarray(question_emb[query_lang]),
                                      candidates[pool_lang], np.asarray(candidate_emb[pool_lang]),
                                      measures)
        cross[query_lang][pool_lang] = _summary(per_query)
  pool_ids = [docid for lang in sorted(candidates) for docid in candidates[lang]]
  pool_emb = np.concatenate([np.asarray(candidate_emb[lang]) for lang in sorted(candidates)])
  for lang in languages:
    per_query, ranks = _evaluate_pool(questions[lang], np.asarray(question_emb[lang]), pool_ids,
                                      pool_emb, measures)
    multi[lang] = _summary(per_query)
    if per_query:
      multi[lang].update(metrics.rank_distance_means(
          metrics.rank_distances(ranks, candidate_language, len(pool_ids))))
  return {
      "monolingual": {"per_language": mono, "average": _macro_average(list(mono.values()))},
      "cross_lingual": {"per_pair": cross, "average": _macro_average(
          [entry for row in cross.values() for entry in row.values()])},
      "multilingual": {"per_language": multi, "average": _macro_average(list(multi.values()))},
  }


def monolingual_per_query(questions: Questions, question_emb: Mapping[str, np.ndarray],
                          candidates: Mapping[str, Sequence[str]],
                          candidate_emb: Mapping[str, np.ndarray],
                          measures: Sequence[str] = metrics.DEFAULT_MEASURES) -> dict:
  """`{X: {qid: {measure: value}}}`: each query in X against the pool in X (evaluate_settings's
  monolingual setting, per query); queries with no relevant candidate in X are left out."""
  for name in measures:
    metrics.parse_measure(name)
  return {lang: _evaluate_pool(questions[lang], np.asarray(question_emb[lang]),
                               candidates.get(lang, []),
                               np.asarray(candidate_emb.get(lang, np.zeros((0, 1)))), measures)[0]
          for lang in sorted(questions)}




def rank_distance_of_run(run: metrics.Run, qrels: metrics.Qrels,
                         languages: Mapping[str, str]) -> dict:
  """Language bias of a run over a multilingual pool, beside a random ranking's exact value.

  Per query, the maximum rank distance (metrics.rank_distances) in its ranking by the run; its
  mean per query language (queries' languages from `languages`, else one group "all"), then the
  unweighted mean over query languages. `random`: the same means of a random ranking's
  expectation, exact for each query's pool size and number of relevant candidates. Every relevant
  candidate must be ranked (a full ranking of the pool).
  """
  ranks_by_query, pool_sizes = {}, {}
  for qid in sorted(run):
    relevant = [docid for docid, grade in qrels.get(qid, {}).items() if grade >= 1]
    if not relevant:
      continue
    ranks, _ = metrics.relevant_ranks(metrics.trec_order(run[qid]), {d: 1 for d in relevant})
    if not ranks.all():
      missing = [d for d, r in zip(relevant, ranks) if not r]
      raise ValueError(f"query {qid!r}: relevant candidates {missing[:3]} are not in its ranking; "
                       "rank distance needs the full ranking of the pool")
    ranks_by_query[qid] = dict(zip(relevant, ranks.tolist()))
    pool_sizes[qid] = len(run[qid])
  return metrics.rank_distance_of_ranks(ranks_by_query, pool_sizes, languages)




def degradation(in_domain: Mapping[str, float],
                out_of_domain: Mapping[str, float]) -> dict[str, dict[str, float]]:
  """Per metric: both values, the absolute drop (in - out) and the relative drop ((in - out) / in).

  The relative drop is NaN where the in-domain value is 0.
  """
  if set(in_domain) != set(out_of_domain):
    only_in, only_out = set(in_domain) - set(out_of_domain), set(out_of_domain) - set(in_domain)
    raise ValueError(f"metrics differ: only in-domain {sorted(only_in)}, "
                     f"only out-of-domain {sorted(only_out)}")
  result = {}
  for name in in_domain:
    inside, outside = float(in_domain[name]), float(out_of_domain[name])
    result[name] = {"in_domain": inside, "out_of_domain": outside, "absolute": inside - outside,
                    "relative": (inside - outside) / inside if inside else math.nan}
  return result


def evaluate_files(run_path: str, qrels_path: str, measures: Sequence[str],
                   per_query: bool = False, languages_path: Optional[str] = None) -> dict:
  """`{"all": {num_q, measure: mean}}`, plus `"per_query": {qid: {measure: value}}` if asked and
  `"rank_distance"` (see `rank_distance_of_run`) given a languages file."""
  for name in measures:
    metrics.parse_measure(name)
  languages = trec.read_languages(languages_path) if languages_path else None
  run, qrels = trec.read_run(run_path), trec.read_qrels(qrels_path)
  results = metrics.evaluate_run(run, qrels, measures)
  output = {"all": {"num_q": len(results), **metrics.aggregate(results)}}
  if per_query:
    output["per_query"] = results
  if languages is not None:
    output["rank_distance"] = rank_distance_of_run(run, qrels, languages)
  return output


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = console.ArgumentParser(prog="python -m hybridir.evaluate",
                                  description=__doc__.split("\n")[0])
  parser.add_argument("--run", help="TREC run file: qid Q0 docid rank score tag")
  parser.add_argument("--qrels", required=True, help="TREC qrels file: qid 0 docid relevance "
                      "(with --encoder: BEIR's qrels.tsv)")
  encoder = parser.add_argument_group("evaluating an encoder on a BEIR-format corpus "
                                      "(hybridir.evaluation.beir_eval)")
  encoder.add_argument("--encoder", help="anything load_encoder takes: MODEL_DIR, an export, ...")
  encoder.add_argument("--corpus", help="BEIR corpus.jsonl (_id, title, text)")
  encoder.add_argument("--queries", help="BEIR queries.jsonl (_id, text)")
  encoder.add_argument("--output_dir", help="default: ./eval_<encoder folder name>")
  encoder.add_argument("--depth", type=int, default=100, help="documents ranked per query")
  parser.add_argument("--measures", default=",".join(metrics.DEFAULT_MEASURES),
                      help="comma-separated pytrec_eval measure names")
  parser.add_argument("--per_query", action="store_true", help="also print every query's measures")
  parser.add_argument("--languages", help="TSV id<TAB>language of the candidates (and optionally "
                      "the queries): adds rank_distance, the language bias, beside its random value")
  args = parser.parse_args(argv)
  console.check_input_files(parser, args, ("run", "qrels", "encoder", "corpus", "queries",
                                           "languages"))
  measures = [name.strip() for name in args.measures.split(",") if name.strip()]
  if args.encoder:
    if not (args.corpus and args.queries):
      parser.error("--encoder needs --corpus and --queries (and --qrels)")
    output_dir = args.output_dir or os.path.join(os.getcwd(), "eval_" + os.path.basename(
        os.path.normpath(args.encoder)))
    try:  # Every input read and checked, the output probed, before the encoder loads.
      for name in measures:
        metrics.parse_measure(name)
      data = beir.read_beir(args.corpus, args.queries, args.qrels)
      languages = trec.read_languages(args.languages) if args.languages else None
      fs.check_writable(output_dir, "--output_dir")
    except (OSError, ValueError) as error:
      print(errors.one_line(error), file=sys.stderr)
      return 1
    from hybridir.evaluation import beir_eval  # pylint: disable=import-outside-toplevel  (jax: after the checks)
    return beir_eval.main(args.encoder, data, output_dir, measures, args.depth, languages,
                          args.qrels)
  if not args.run:
    parser.error("give --run (a TREC run to score) or --encoder (an encoder to evaluate)")
  try:
    output = evaluate_files(args.run, args.qrels, measures, args.per_query, args.languages)
  except (OSError, ValueError) as error:
    print(errors.one_line(error), file=sys.stderr)
    return 1
  print(json.dumps(output, indent=1, sort_keys=True))
  return 0


if __name__ == "__main__":
  sys.exit(main())
