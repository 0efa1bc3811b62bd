"""Gathers the evaluations of a full-scale sweep into the study report.

Each run directory is named `{model}_{strategy}_seed{seed}` (as launch/study_sweep.sh makes them)
and holds `eval/xquad_r/xquad_r.json` and `eval/mlqa_r/mlqa_r.json` (gin_configs/runs/eval.gin's
output). Local folders and gs:// both work.

  python -m hybridir.study_gather --runs_root gs://bucket/study --output_dir out/study_full
"""
import dataclasses
import json
import re

from absl import app
from absl import flags

from hybridir import fs
from hybridir import study
from hybridir import study_report

RUN_NAME = re.compile(r"^(?P<model>.+)_(?P<strategy>monolingual|cross-lingual|hybrid)"
                      r"_seed(?P<seed>\d+)$")
MODEL_NAMES = {"mt5": "mT5", "xlmr": "XLM-R"}


def model_name(prefix: str) -> str:
  """'mt5_base' -> 'mT5 base': the family's display name plus the size."""
  family, _, size = prefix.partition("_")
  return f"{MODEL_NAMES.get(family, family)} {size}".strip()


def read_runs(runs_root: str) -> dict:
  """{(model, strategy, seed): {"evaluation": {dataset: results}}} for every complete run."""
  results = {}
  for entry in fs.listdir(runs_root):
    name = entry.rstrip("/")
    match = RUN_NAME.match(name)
    if not match:
      continue
    evaluation = {}
    for dataset, _ in study_report.DATASETS:
      path = f"{runs_root.rstrip('/')}/{name}/eval/{dataset}/{dataset}.json"
      if not fs.exists(path):
        raise FileNotFoundError(f"{path}: run {name} has no {dataset} evaluation (run eval.gin)")
      with fs.open(path) as f:
        evaluation[dataset] = json.load(f)
    key = (model_name(match["model"]), match["strategy"], int(match["seed"]))
    results[key] = {"evaluation": evaluation, "train": {"first_loss": None, "last_loss": None}}
  if not results:
    raise FileNotFoundError(f"{runs_root}: no run folders named MODEL_STRATEGY_seedN")
  return results


def gather(runs_root: str, output_dir: str) -> dict:
  """Writes the study report for every run under `runs_root`; returns the report's paths."""
  results = read_runs(runs_root)
  models = tuple(dict.fromkeys(m for m, _, _ in results))
  strategies = tuple(s for s in study.STRATEGIES if any(k[1] == s for k in results))
  seeds = tuple(sorted({seed for _, _, seed in results}))
  missing = [(m, s, seed) for m in models for s in strategies for seed in seeds
             if (m, s, seed) not in results]
  if missing:
    raise FileNotFoundError(f"{runs_root}: the sweep is incomplete, missing runs {missing}")
  config = dataclasses.replace(study.StudyConfig(), strategies=strategies, seeds=seeds)
  object.__setattr__(config, "models", models)  # Display names, beyond the CPU study's two.
  description = (f"Gathered from {runs_root}: {len(results)} runs ({len(models)} models x "
                 f"{len(strategies)} strategies x {len(seeds)} seeds).")
  return study_report.write(output_dir, results, config, datasets={}, description=description)


def main(argv):
  del argv
  paths = gather(flags.FLAGS.runs_root, flags.FLAGS.output_dir)
  print(f"Report: {paths['markdown']}")


if __name__ == "__main__":
  flags.DEFINE_string("runs_root", None, "Folder (or gs:// prefix) holding the run folders.",
                      required=True)
  flags.DEFINE_string("output_dir", "out/study_full", "Where the report goes.")
  app.run(main)
