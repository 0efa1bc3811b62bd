"""Gathers the runs of a full-scale sweep into the study report.

Each run directory is named `{model}_{mono|cross|hybrid}_seed{seed}` (as launch/study_sweep.sh
makes them) and holds `study_results.json`, written by the study's run (hybridir.study.study_run),
the same file the CPU demo's runs write, and, when the sweep ran the MIRACL stage,
`miracl/<lang>/results.json` (hybridir.evaluation.corpus_eval), read into the results' `miracl`
field with each query's nDCG@10 above chance (from the stage's run.trec and qrels.trec): MIRACL's
degradation. The report prints the paper's Table 1 beside the XLM-R and LaBSE rows. Local folders
and gs:// both work.

  python -m hybridir.study_gather --runs_root gs://bucket/study --output_dir out/study_full
"""
import dataclasses
import json

from absl import flags

from hybridir import console
from hybridir.data import miracl
from hybridir.evaluation import corpus_eval
from hybridir.evaluation import evaluate
from hybridir.evaluation import trec
from hybridir import fs
from hybridir import gin_run
from hybridir.models import families
from hybridir.study import study_eval
from hybridir.study import study_layout
from hybridir.study import study_report
from hybridir.study import study_results
from hybridir.study import study_run



def model_name(prefix: str) -> str:
  """'mt5_base' -> 'mT5 base': the family's display name plus the size; a CPU demo run's
  prefix ('t5', study_layout.DEMO_PREFIXES) -> its model ('mT5')."""
  demo = {prefix: model for model, prefix in study_layout.DEMO_PREFIXES.items()}
  if prefix in demo:
    return demo[prefix]
  family, _, size = prefix.partition("_")
  return f"{families.display_names().get(family, family)} {size}".strip()


MIRACL_MEASURES = ("ndcg_cut_10", "recall_100")  # The paper's MIRACL measures.


def miracl_ndcg_above_chance(language_dir: str, language: str, results: dict) -> dict:
  """{qid: nDCG@10 above chance} of a MIRACL stage's run.trec and qrels.trec, chance for the
  language's corpus (results' num_candidates, else its published size, which the stage checks
  unless ALLOW_SUBSET) and each query's relevant count."""
  paths = [f"{language_dir}/{name}" for name in (corpus_eval.RUN_FILE, corpus_eval.QRELS_FILE)]
  absent = [path for path in paths if not fs.exists(path)]
  if absent:
    raise FileNotFoundError(f"{absent[0]}: MIRACL {language} has no run or qrels (the study's "
                            "MIRACL degradation needs each query's nDCG@10)")
  per_query = evaluate.evaluate_files(*paths, [study_eval.NDCG_MEASURE], per_query=True)
  relevant = {qid: sum(rel > 0 for rel in docs.values())
              for qid, docs in trec.read_qrels(paths[1]).items()}
  pool_size = results.get("num_candidates") or miracl.DEV_SIZES[language][1]
  return study_eval.ndcg_above_chance(
      {q: m[study_eval.NDCG_MEASURE] for q, m in per_query["per_query"].items()}, relevant,
      pool_size)


def read_miracl(run_dir: str) -> dict:
  """{language: results.json, with "ndcg_above_chance" per query} of a run's MIRACL stage ({}
  when it has none)."""
  folder = f"{run_dir}/miracl"
  if not fs.isdir(folder):
    return {}
  results = {}
  for language in [e.rstrip("/") for e in fs.listdir(folder)]:
    if language not in miracl.DEV_SIZES:
      continue  # logs/, or anything else that is not a language's folder.
    path = f"{folder}/{language}/{corpus_eval.RESULTS_FILE}"
    if not fs.exists(path):
      raise FileNotFoundError(f"{path}: MIRACL {language} has no results (did the run's MIRACL "
                              "stage finish? rerun it to resume)")
    with fs.open(path) as f:
      results[language] = json.load(f)
    absent = [m for m in MIRACL_MEASURES if m not in results[language]]
    if absent:
      raise ValueError(f"{path}: no {', '.join(absent)} (found {sorted(results[language])})")
    results[language]["ndcg_above_chance"] = miracl_ndcg_above_chance(
        f"{folder}/{language}", language, results[language])
  return results


def check_miracl_languages(results: dict, runs_root: str) -> None:
  """Fails naming the runs and languages missing when runs' MIRACL languages differ."""
  languages = {key: set(r.miracl) for key, r in results.items()}
  every = set().union(*languages.values())
  missing = {key: sorted(every - found) for key, found in languages.items() if every - found}
  if missing:
    raise FileNotFoundError(f"{runs_root}: the MIRACL stage is incomplete, missing " + "; ".join(
        f"{m} {s} seed {seed}: {', '.join(langs)}" for (m, s, seed), langs in missing.items()))


def read_runs(runs_root: str) -> dict:
  """{(model, strategy, seed): study_results.RunResults, with the run's MIRACL stage} for every
  run folder."""
  if not fs.isdir(runs_root):
    raise FileNotFoundError(f"--runs_root {runs_root}: no such folder")
  results = {}
  for entry in fs.listdir(runs_root):
    name = entry.rstrip("/")
    parsed = study_layout.parse_run_name(name)
    if not parsed or parsed[1] == study_layout.ZERO_SHOT:
      continue
    path = f"{runs_root.rstrip('/')}/{name}/{study_run.RESULTS_FILE}"
    if not fs.exists(path):
      raise FileNotFoundError(f"{path}: run {name} has no results (did its study run finish?)")
    results[model_name(parsed[0]), parsed[1], parsed[2]] = dataclasses.replace(
        study_results.read(path), miracl=read_miracl(f"{runs_root.rstrip('/')}/{name}"))
  if not results:
    raise FileNotFoundError(f"{runs_root}: no run folders named MODEL_{{mono,cross,hybrid}}_seedN")
  return results


def gather(runs_root: str, output_dir: str) -> dict:
  """Writes the study report for every run under `runs_root`; returns the report's paths."""
  results = read_runs(runs_root)
  models = list(dict.fromkeys(m for m, _, _ in results))
  strategies = [s for s in study_layout.STRATEGIES if any(k[1] == s for k in results)]
  seeds = sorted({seed for _, _, seed in results})
  missing = [(m, s, seed) for m in models for s in strategies for seed in seeds
             if (m, s, seed) not in results]
  if missing:
    raise FileNotFoundError(f"{runs_root}: the sweep is incomplete, missing runs {missing}")
  check_miracl_languages(results, runs_root)
  ordered = {(m, s, seed): results[m, s, seed] for m in models for s in strategies
             for seed in seeds}
  description = (f"Gathered from {runs_root}: {len(results)} runs ({len(models)} models x "
                 f"{len(strategies)} batch kinds x {len(seeds)} seeds).")
  return study_report.write(output_dir, ordered, description=description, beside_paper=True)


def main(argv):
  del argv
  with gin_run.one_line_errors():
    fs.check_writable(flags.FLAGS.output_dir, "--output_dir")
    paths = gather(flags.FLAGS.runs_root, flags.FLAGS.output_dir)
  print(f"Report: {paths['markdown']}")


if __name__ == "__main__":
  flags.DEFINE_string("runs_root", None, "Folder (or gs:// prefix) holding the run folders.",
                      required=True)
  flags.DEFINE_string("output_dir", "out/study_full", "Where the report goes.")
  console.run_app(main)
