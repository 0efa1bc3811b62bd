"""The study's report: every strategy x model x dataset x setting cell as mean +- std over seeds,
the in- vs out-of-domain degradation, language bias, and plots."""
import dataclasses
import datetime
import os
import platform

import matplotlib
matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402
import numpy as np  # noqa: E402

from hybridir import evaluate  # noqa: E402
from hybridir import reports  # noqa: E402

SETTINGS = (("monolingual", "mono"), ("cross_lingual", "cross"), ("multilingual", "multi"))
DATASETS = (("xquad_r", "XQuAD-R held-out (in-domain)"), ("mlqa_r", "MLQA-R (out-of-domain)"))
MEASURE = "map"

NOTE = ("**Smoke scale.** These are tiny encoders (d_model 64, 2 layers) trained from scratch "
        "for a few hundred steps on one CPU, with a vocabulary trained on XQuAD-R's own training "
        "articles. They show that the pipeline runs end to end and how the comparison is made; "
        "they say little about pretrained mT5 or XLM-R at scale (see `gin_configs/runs/study/` "
        "for the full-scale configs). A difference smaller than the seed spread is not an effect.")


def _average(results, model, strategy, seed, dataset, setting, measure=MEASURE):
  return results[(model, strategy, seed)]["evaluation"][dataset][setting]["average"].get(measure)


def _cell(values) -> dict:
  values = [v for v in values if v is not None]
  if not values:
    return {"mean": None, "std": None, "n": 0}
  array = np.asarray(values, np.float64)
  return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
          "n": len(values)}


def _fmt(cell, scale=100.0, digits=1) -> str:
  if cell["mean"] is None:
    return "n/a"
  return f"{cell['mean'] * scale:.{digits}f} ± {cell['std'] * scale:.{digits}f}"


def aggregate(results: dict, config) -> dict:
  """{model: {strategy: {"map": {dataset: {setting: cell}}, "degradation": {setting: {abs, rel}},
  "rank_distance": {dataset: cell}}}}, each cell mean/std/n over seeds."""
  table = {}
  for model in config.models:
    for strategy in config.strategies:
      seeds = config.seeds
      entry = {"map": {}, "degradation": {}, "rank_distance": {}}
      for dataset, _ in DATASETS:
        entry["map"][dataset] = {setting: _cell([_average(results, model, strategy, s, dataset,
                                                          setting) for s in seeds])
                                 for setting, _ in SETTINGS}
        entry["rank_distance"][dataset] = _cell([_average(
            results, model, strategy, s, dataset, "multilingual", "rank_distance") for s in seeds])
      for setting, _ in SETTINGS:
        per_seed = [evaluate.degradation(
            {MEASURE: _average(results, model, strategy, s, "xquad_r", setting)},
            {MEASURE: _average(results, model, strategy, s, "mlqa_r", setting)})[MEASURE]
                    for s in seeds]
        entry["degradation"][setting] = {"absolute": _cell([d["absolute"] for d in per_seed]),
                                         "relative": _cell([d["relative"] for d in per_seed])}
      entry["train_loss"] = {k: _cell([results[(model, strategy, s)]["train"][k] for s in seeds])
                             for k in ("first_loss", "last_loss")}
      table.setdefault(model, {})[strategy] = entry
  return table


def markdown(table: dict, config, datasets: dict, description: str | None = None) -> str:
  """The report; `description` replaces the smoke-scale set-up line and note (gathered sweeps)."""
  seeds = ", ".join(map(str, config.seeds))
  setup = [f"Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on "
           f"{platform.node() or 'unknown host'} ({os.cpu_count()} CPU cores). Seeds: {seeds}; "
           f"{config.train_steps} steps of batch {config.batch_size}; languages: "
           f"{', '.join(config.languages)}.", "", NOTE]
  lines = ["# Hybrid batch training: mono vs cross vs hybrid, mT5 vs XLM-R", "",
           *([description] if description else setup), "",
           "## mAP x 100 (mean ± std over seeds)", ""]
  header = ["model", "strategy"] + [f"{short} {label.split(' ')[0]}" for _, label in DATASETS
                                     for _, short in SETTINGS]
  rows = [[model, strategy] + [_fmt(entry["map"][dataset][setting]) for dataset, _ in DATASETS
                               for setting, _ in SETTINGS]
          for model, strategies in table.items() for strategy, entry in strategies.items()]
  lines += [reports.markdown_table(header, rows), "",
            "## Degradation: in-domain mAP minus out-of-domain mAP", "",
            "Absolute in mAP points (x 100); relative in % of the in-domain mAP. Lower is better.", ""]
  header = ["model", "strategy"] + [f"{short} abs" for _, short in SETTINGS] + [
      f"{short} rel %" for _, short in SETTINGS]
  rows = [[model, strategy] + [_fmt(entry["degradation"][s]["absolute"]) for s, _ in SETTINGS]
          + [_fmt(entry["degradation"][s]["relative"]) for s, _ in SETTINGS]
          for model, strategies in table.items() for strategy, entry in strategies.items()]
  lines += [reports.markdown_table(header, rows), "",
            "## Language bias: rank distance in the multilingual setting (lower is less biased)", ""]
  header = ["model", "strategy"] + [label for _, label in DATASETS]
  rows = [[model, strategy] + [_fmt(entry["rank_distance"][d], scale=1.0) for d, _ in DATASETS]
          for model, strategies in table.items() for strategy, entry in strategies.items()]
  lines += [reports.markdown_table(header, rows), "", "## Training loss (first 10 / last 10 steps)", ""]
  rows = [[model, strategy, _fmt(entry["train_loss"]["first_loss"], 1.0, 3),
           _fmt(entry["train_loss"]["last_loss"], 1.0, 3)]
          for model, strategies in table.items() for strategy, entry in strategies.items()]
  lines += [reports.markdown_table(["model", "strategy", "first", "last"], rows), "", "## Data", ""]
  for name, stats in datasets.items():
    questions = sum(s["questions"] for s in stats.values())
    candidates = sum(s["candidates"] for s in stats.values())
    lines.append(f"- {name}: {questions} questions, {candidates} candidates over "
                 f"{len(stats)} languages")
  lines += ["", "Per-run results (every language and pair, Recall@k, nDCG@10, MRR@10): "
            "`runs/*/results.json`; all cells: `study.json`."]
  return "\n".join(lines) + "\n"


def plot_degradation(path: str, table: dict) -> None:
  """Grouped bars: relative degradation per setting, one group per model x strategy."""
  figure = Figure(figsize=(9, 4))
  axes = figure.add_subplot()
  labels = [f"{m}\n{s}" for m, strategies in table.items() for s in strategies]
  x = np.arange(len(labels))
  width = 0.8 / len(SETTINGS)
  for i, (setting, short) in enumerate(SETTINGS):
    cells = [e["degradation"][setting]["relative"] for st in table.values() for e in st.values()]
    means = [100 * (c["mean"] if c["mean"] is not None else np.nan) for c in cells]
    stds = [100 * (c["std"] or 0.0) for c in cells]
    axes.bar(x + (i - 1) * width, means, width, yerr=stds, label=short, capsize=2)
  axes.set_xticks(x, labels, fontsize=8)
  axes.set_ylabel("relative mAP drop, in-domain to out-of-domain (%)")
  axes.axhline(0, color="black", linewidth=0.5)
  axes.legend()
  figure.tight_layout()
  reports.save_figure(figure, path)


def write(output_dir: str, results: dict, config, datasets: dict,
          description: str | None = None) -> dict:
  """Writes study.json, README-style study.md and the degradation plot; returns their paths."""
  table = aggregate(results, config)
  paths = {"json": os.path.join(output_dir, "study.json"),
           "markdown": os.path.join(output_dir, "study.md"),
           "plot": os.path.join(output_dir, "study_degradation.png")}
  reports.write_json(paths["json"], {"config": dataclasses.asdict(config), "cells": table,
                                     "datasets": datasets})
  evaluate.write_text_atomically(paths["markdown"], markdown(table, config, datasets, description))
  plot_degradation(paths["plot"], table)
  return paths
