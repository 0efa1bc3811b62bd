"""The study's report: the answer with confidence intervals, training against chance, tables, plots.

Input: `{(model, strategy, seed): study_results.json}` (hybridir.study_run). Every number in the
report, its opening paragraph included, is computed here from those files.
"""
import datetime
import math
import os
import platform

import matplotlib
matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402
import numpy as np  # noqa: E402

from hybridir import fs  # noqa: E402
from hybridir import miracl  # noqa: E402
from hybridir import reports  # noqa: E402
from hybridir import study_stats  # noqa: E402

SETTINGS = (("monolingual", "mono"), ("cross_lingual", "cross"), ("multilingual", "multi"))
IN_DOMAIN, OUT_OF_DOMAIN = "xquad_r", "mlqa_r"
DATASET_LABELS = {IN_DOMAIN: "XQuAD-R held-out (in-domain)", OUT_OF_DOMAIN: "MLQA-R (out-of-domain)"}
BASELINES = ("X-X-mono", "X-Y")
HYBRID = "hybrid"
TAIL = 0.1  # Final training loss and accuracy: the mean over the last 10% of steps.
# An arm learned if its final loss is this far below ln(batch) and its accuracy 3x chance.
LEARNED_LOSS_MARGIN, LEARNED_ACCURACY_FACTOR = 0.25, 3.0

NOTE = ("**Smoke scale.** Tiny encoders (d_model 64, 2 layers) trained from scratch for a few "
        "hundred steps on a CPU, with vocabularies trained on XQuAD-R's own training articles. "
        "They show that the pipeline runs end to end and how the comparison is made; they say "
        "nothing about pretrained mT5 or XLM-R at scale (`gin_configs/runs/study/` holds the "
        "full-scale configs).")
PRETRAINED_NOTE = (
    "**A pretrained encoder, fine-tuned briefly on a CPU.** Each arm fine-tunes the same "
    "pretrained checkpoint ({checkpoints}) with hybrid-batch training's recipe, and the zero-shot "
    "row is that checkpoint evaluated untrained with the same inputs (prefixes, lengths, pools). "
    "The training corpus is XQuAD-R's fit articles, so XQuAD-R's held-out articles are in-domain "
    "by construction and MLQA-R is out-of-domain. An English-pretrained encoder on de, en, es "
    "and vi stands in for the study's question on a CPU (does hybrid fine-tuning help a "
    "pretrained encoder out of domain and across languages?); mT5 against XLM-R remains a TPU "
    "question (`gin_configs/runs/study/`).")
ZERO_SHOT = "zero-shot"


def _mean_std(values) -> tuple[float, float]:
  values = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
  if not len(values):
    return math.nan, math.nan
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _fmt(values, scale=100.0, digits=1) -> str:
  mean, std = _mean_std(values)
  return "n/a" if math.isnan(mean) else f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def training_summary(result: dict) -> dict:
  """Final loss and in-batch accuracy (last 10% of steps) against a random encoder's."""
  history = result["train"]["history"]
  batch_size = result["settings"]["batch_size"]
  tail = history[-max(1, int(len(history) * TAIL)):] if history else []
  loss = float(np.mean([h["loss"] for h in tail])) if tail else math.nan
  accuracy = float(np.mean([h["accuracy"] for h in tail])) if tail else math.nan
  chance_loss, chance_accuracy = math.log(batch_size), 1.0 / batch_size
  learned = (loss < chance_loss - LEARNED_LOSS_MARGIN
             and accuracy > LEARNED_ACCURACY_FACTOR * chance_accuracy)
  return {"final_loss": loss, "final_accuracy": accuracy, "chance_loss": chance_loss,
          "chance_accuracy": chance_accuracy, "learned": bool(learned),
          "chosen_step": result["train"]["chosen_step"]}


def _arms(results: dict) -> dict:
  """{(model, strategy): {seed: result}} in the order runs were given."""
  arms = {}
  for (model, strategy, seed), result in results.items():
    arms.setdefault((model, strategy), {})[seed] = result
  return arms


def _per_query(result: dict) -> dict:
  return {dataset: result["evaluation"]["datasets"][dataset]["matched"]["per_query_above_chance"]
          for dataset in (IN_DOMAIN, OUT_OF_DOMAIN)}


def effects(results: dict, learned: dict) -> dict:
  """Hybrid minus each baseline on degradation per model, and mT5 minus XLM-R of each, with CIs.

  Arms that did not learn (any seed) are left out, and so is every contrast that needs them.
  """
  arms = _arms(results)
  usable = {arm for arm in arms if all(learned[arm[0], arm[1], s] for s in arms[arm])}
  models = list(dict.fromkeys(model for model, _ in arms))
  contrasts = {}
  for model in models:
    for baseline in BASELINES:
      if {(model, HYBRID), (model, baseline)} <= usable:
        contrasts[f"{model}: hybrid - {baseline}"] = {(model, HYBRID): 1, (model, baseline): -1}
  if len(models) == 2:
    first, second = models
    for baseline in BASELINES:
      a, b = f"{first}: hybrid - {baseline}", f"{second}: hybrid - {baseline}"
      if a in contrasts and b in contrasts:
        contrasts[f"{first} - {second}: hybrid - {baseline}"] = {
            **contrasts[a], **{arm: -c for arm, c in contrasts[b].items()}}
  if not contrasts:
    return {}
  scores = {arm: {seed: _per_query(result) for seed, result in by_seed.items()}
            for arm, by_seed in arms.items() if arm in usable}
  return study_stats.contrast_intervals(scores, contrasts, IN_DOMAIN, OUT_OF_DOMAIN,
                                       [s for s, _ in SETTINGS])


def _interval_method(table: dict) -> str:
  """What the intervals are over: queries, and seeds where an arm has more than one."""
  counts = sorted({n for by_setting in table.values()
                   for n in by_setting[study_stats.ALL_SETTINGS]["seeds"].values()})
  seeds = str(counts[0]) if counts[0] == counts[-1] else f"{counts[0]}-{counts[-1]}"
  if counts[-1] < 2:
    return (f"95% intervals over queries only ({seeds} seed per arm: seed-to-seed variation is "
            "not estimated)")
  return (f"95% intervals over queries (paired: every arm answers the same questions) and "
          f"{seeds} seeds per arm (t on Welch-Satterthwaite degrees of freedom)")


def _exploratory_cells(table: dict) -> list[tuple[str, str, dict]]:
  return [(name, setting, cell) for name, by_setting in table.items()
          for setting, cell in by_setting.items() if cell["role"] == study_stats.EXPLORATORY]


def _interval_text(cell: dict) -> str:
  return (f"{100 * cell['estimate']:+.1f} [{100 * cell['low']:+.1f}, "
          f"{100 * cell['high']:+.1f}]")


def answer_paragraph(table: dict, training: dict) -> str:
  """The opening paragraph: the primary effects and intervals, in numbers, the exploratory cells
  that stay clear of zero after Holm's adjustment, and the arms left out."""
  parts = ["**The answer, computed.** Out-of-domain degradation is in-domain minus out-of-domain "
           "mAP above chance on size-matched pools ((AP - chance) / (1 - chance), x 100); an "
           "effect below zero means hybrid batches lose less out of domain."]
  if table:
    parts.append("The primary answer is each effect on the mean of the mono, cross and multi "
                 f"settings, with {_interval_method(table)}:")
  for name, by_setting in table.items():
    cell = by_setting[study_stats.ALL_SETTINGS]
    verdict = "excludes zero" if cell["excludes_zero"] else "includes zero"
    parts.append(f"{name}: {_interval_text(cell)}, the interval {verdict}.")
  exploratory = _exploratory_cells(table)
  if exploratory:
    clear = [f"{name} {dict(SETTINGS)[setting]} {_interval_text(cell)}"
             for name, setting, cell in exploratory if cell["holm_excludes_zero"]]
    parts.append(f"The {len(exploratory)} per-setting effects in the table are exploratory: "
                 f"{sum(cell['excludes_zero'] for _, _, cell in exploratory)} exclude zero at 95%, "
                 f"{len(clear)} after Holm's adjustment over all {len(exploratory)}"
                 + (f" ({'; '.join(clear)})." if clear else "."))
  stuck = sorted({(m, s) for (m, s, _), t in training.items() if not t["learned"]})
  if stuck:
    parts.append("Left out because they did not learn (final training loss or in-batch accuracy "
                 "not clear of chance in at least one seed): " + ", ".join(f"{m} {s}" for m, s in stuck)
                 + ".")
  if not table:
    parts.append("No effect could be computed: no model has a hybrid arm and a baseline that "
                 "both learned.")
  return " ".join(parts)


def is_zero_shot(result: dict) -> bool:
  """A pretrained model's zero-shot row: evaluated untrained (hybridir.study_run, ZERO_SHOT)."""
  return bool(result["train"].get("zero_shot"))


def objective_rows(results: dict) -> list:
  """Per fine-tuned arm: the pretrained and the fine-tuned model's in-batch loss on held-out
  batches of the arm's own kind (mean ± std over seeds), and whether every seed improved it."""
  rows = []
  for (model, strategy), by_seed in _arms(results).items():
    objectives = [r["train"].get("objective") for r in by_seed.values()]
    if not objectives or any(o is None for o in objectives):
      continue
    beats = all(o["fine_tuned"] < o["pretrained"] for o in objectives)
    rows.append([model, strategy, _fmt([o["pretrained"] for o in objectives], 1.0, 3),
                 _fmt([o["fine_tuned"] for o in objectives], 1.0, 3),
                 "yes" if beats else "**no**"])
  return rows


def objective_sentence(rows: list) -> str:
  """Whether every fine-tuned arm beat the pretrained model on its own training objective."""
  if not rows:
    return ""
  failed = [f"{model} {strategy}" for model, strategy, *_, beats in rows if beats != "yes"]
  if failed:
    return ("**Not every fine-tuned arm beat the pretrained model on its own training objective** "
            "(held-out in-batch loss, every seed): " + ", ".join(failed) + " did not.")
  return ("Every fine-tuned arm, in every seed, beat the pretrained model on its own training "
          "objective (held-out in-batch loss on batches of its own kind).")


def _training_rows(training: dict, results: dict) -> list:
  rows = []
  for (model, strategy), by_seed in _arms(results).items():
    t = [training[model, strategy, seed] for seed in by_seed]
    rows.append([model, strategy, _fmt([x["final_loss"] for x in t], 1.0, 3),
                 f"{t[0]['chance_loss']:.3f}", _fmt([x["final_accuracy"] for x in t]),
                 f"{100 * t[0]['chance_accuracy']:.1f}",
                 ", ".join(str(x["chosen_step"]) for x in t),
                 "yes" if all(x["learned"] for x in t) else "**no**"])
  return rows


def _average(result, dataset, setting, key="map"):
  return result["evaluation"]["datasets"][dataset]["full"][setting]["average"].get(key)


def _tables(results: dict) -> list[str]:
  arms = _arms(results)
  lines = ["## mAP x 100 on the full pools, beside a random ranking's (exact expected AP)", ""]
  header = ["model", "batches"] + [f"{short} {d}" for d in (IN_DOMAIN, OUT_OF_DOMAIN)
                                   for _, short in SETTINGS]
  rows = []
  for (model, strategy), by_seed in arms.items():
    row = [model, strategy]
    for dataset in (IN_DOMAIN, OUT_OF_DOMAIN):
      for setting, _ in SETTINGS:
        chance = next(iter(by_seed.values()))["evaluation"]["datasets"][dataset]["full_chance"]
        row.append(f"{_fmt([_average(r, dataset, setting) for r in by_seed.values()])} "
                   f"({100 * chance[setting]:.2f})")
    rows.append(row)
  lines += [reports.markdown_table(header, rows), ""]
  first = next(iter(results.values()))["evaluation"]
  lines += [f"## mAP x 100 on size-matched pools ({first['matched_pool_size']} candidates per "
            f"pool language and query, relevant ones kept; {first['matched_draws']} seeded "
            "draws), beside chance", "",
            "Each cell: mean ± std over seeds (chance); the spread over draws is in "
            "`study.json`.", ""]
  rows = []
  for (model, strategy), by_seed in arms.items():
    row = [model, strategy]
    for dataset in (IN_DOMAIN, OUT_OF_DOMAIN):
      for setting, _ in SETTINGS:
        cells = [r["evaluation"]["datasets"][dataset]["matched"]["summary"][setting]
                 for r in by_seed.values()]
        row.append(f"{_fmt([c['map'] for c in cells])} ({100 * cells[0]['chance']:.2f})")
    rows.append(row)
  lines += [reports.markdown_table(header, rows), "",
            "## Degradation on matched pools: in-domain minus out-of-domain mAP above chance "
            "(x 100, mean ± std over seeds)", ""]
  rows = []
  for (model, strategy), by_seed in arms.items():
    row = [model, strategy]
    for setting, _ in SETTINGS:
      values = []
      for r in by_seed.values():
        matched = {d: r["evaluation"]["datasets"][d]["matched"]["summary"][setting]["above_chance"]
                   for d in (IN_DOMAIN, OUT_OF_DOMAIN)}
        values.append(matched[IN_DOMAIN] - matched[OUT_OF_DOMAIN])
      row.append(_fmt(values))
    rows.append(row)
  lines += [reports.markdown_table(["model", "batches"] + [s for _, s in SETTINGS], rows), "",
            "## Language bias: maximum rank distance, multilingual full pools (lower is less "
            "biased; a random ranking's value in brackets)", ""]
  rows = []
  for (model, strategy), by_seed in arms.items():
    row = [model, strategy]
    for dataset in (IN_DOMAIN, OUT_OF_DOMAIN):
      values = [_average(r, dataset, "multilingual", "rank_distance") for r in by_seed.values()]
      random = _average(next(iter(by_seed.values())), dataset, "multilingual",
                        "rank_distance_random")
      row.append(_fmt(values, 1.0) + (f" ({random:.0f})" if random is not None else ""))
    rows.append(row)
  lines += [reports.markdown_table(["model", "batches", IN_DOMAIN, OUT_OF_DOMAIN], rows), ""]
  return lines + _miracl_tables(arms)


def miracl_scores(result: dict) -> dict:
  """{language: {measure: value}} of a run's MIRACL results: the corpus-scale stage's (gathered
  into "miracl" by hybridir.study_gather), else the in-memory evaluation's (miracl_<lang>)."""
  if result.get("miracl"):
    return result["miracl"]
  datasets = result["evaluation"]["datasets"]
  return {d[len("miracl_"):]: datasets[d]["full"]["monolingual"]["average"]
          for d in datasets if d.startswith("miracl_")}


def _miracl_tables(arms: dict) -> list[str]:
  """nDCG@10 and Recall@100 per language and their mean over languages, mean ± std over seeds."""
  scores = {arm: [miracl_scores(r) for r in by_seed.values()] for arm, by_seed in arms.items()}
  languages = sorted({x for runs in scores.values() for run in runs for x in run})
  if not languages:
    return []
  note = (f" These are MIRACL's {len(languages)} languages with training data, one more than "
          "the paper's 15, which it does not name." if tuple(languages) == tuple(
              sorted(miracl.STUDY_LANGUAGES)) else "")
  lines = []
  for measure, label in (("ndcg_cut_10", "nDCG@10"), ("recall_100", "Recall@100")):
    rows = []
    for (model, strategy), runs in scores.items():
      per_language = [_fmt([run.get(x, {}).get(measure) for run in runs]) for x in languages]
      means = [float(np.mean([run[x][measure] for x in languages]))
               if all(x in run for x in languages) else None for run in runs]
      rows.append([model, strategy] + per_language + [_fmt(means)])
    lines += [f"## MIRACL dev {label} x 100 (monolingual: each language's queries against its "
              "whole corpus, passages read as title then text)", "",
              f"Mean ± std over seeds; mean: over the {len(languages)} languages, per seed."
              + note, "",
              reports.markdown_table(["model", "batches"] + languages + ["mean"], rows), ""]
  return lines


def _cell_text(cell: dict) -> str:
  """An effect's interval, marked ~0 when it includes zero, and ~0 after Holm when an exploratory
  cell's Holm-adjusted p-value does not clear 5%."""
  if not cell["excludes_zero"]:
    return _interval_text(cell) + " ~0"
  return _interval_text(cell) + ("" if cell.get("holm_excludes_zero", True) else " ~0 after Holm")


def _effects_table(table: dict) -> list[str]:
  if not table:
    return []
  header = (["effect on degradation (x 100)"] + [s for _, s in SETTINGS]
            + ["mean of settings (primary)"])
  rows = [[name] + [_cell_text(by_setting[s])
                    for s in [s for s, _ in SETTINGS] + [study_stats.ALL_SETTINGS]]
          for name, by_setting in table.items()]
  return ["## Effects with 95% confidence intervals over queries and seeds", "",
          "Primary: the mean of settings (the answer above). Exploratory: the per-setting cells, "
          f"each with its own 95% interval; Holm's adjustment runs over all "
          f"{len(_exploratory_cells(table))} of them. ~0: the interval includes zero; ~0 after "
          "Holm: it excludes zero, but not after the adjustment. Standard errors, degrees of "
          "freedom and p-values: `study.json`.", "",
          reports.markdown_table(header, rows), ""]


def plot_loss_curves(path: str, results: dict) -> None:
  """Training loss per step of every run, one panel per model, chance as a dashed line."""
  arms = _arms(results)
  models = list(dict.fromkeys(m for m, _ in arms))
  figure = Figure(figsize=(5 * len(models), 3.6))
  colours = {"X-X-mono": "tab:blue", "X-Y": "tab:orange", "hybrid": "tab:green"}
  for i, model in enumerate(models):
    axes = figure.add_subplot(1, len(models), i + 1)
    for (m, strategy), by_seed in arms.items():
      if m != model:
        continue
      for j, result in enumerate(by_seed.values()):
        if is_zero_shot(result):
          continue
        history = result["train"]["history"]
        steps = [h["step"] for h in history]
        axes.plot(steps, [h["loss"] for h in history], color=colours.get(strategy, "grey"),
                  alpha=0.6, linewidth=0.8, label=strategy if j == 0 else None)
      batch = next(iter(by_seed.values()))["settings"]["batch_size"]
    axes.axhline(math.log(batch), color="black", linestyle="--", linewidth=0.8,
                 label=f"chance ln({batch})")
    axes.set_title(model)
    axes.set_xlabel("step")
    axes.set_ylabel("training loss")
    axes.legend(fontsize=8)
  figure.tight_layout()
  reports.save_figure(figure, path)


def title(results: dict) -> str:
  """The report's title, naming the models it compares."""
  models = list(dict.fromkeys(model for model, _, _ in results))
  return ("# Hybrid batches against X-X-mono and X-Y: out-of-domain degradation, "
          + " vs ".join(models))


def markdown(results: dict, training: dict, table: dict, description: str) -> str:
  trained = {k: r for k, r in results.items() if not is_zero_shot(r)}
  objectives = objective_rows(results)
  objective_lines = [] if not objectives else [
      "## Fine-tuning against the pretrained model: in-batch loss on held-out batches of each "
      "arm's own kind (lower is better; mean ± std over seeds)", "",
      objective_sentence(objectives), "",
      reports.markdown_table(["model", "batches", "pretrained (zero-shot)", "fine-tuned",
                              "improved in every seed"], objectives), ""]
  lines = [title(results), "", answer_paragraph(table, training), "",
           *([objective_sentence(objectives), ""] if objectives else []), description, "",
           *_effects_table(table), *objective_lines,
           f"## Training against chance (final = mean of the last {int(TAIL * 100)}% of steps; "
           "a run learned if its final loss is "
           f"{LEARNED_LOSS_MARGIN} below ln(batch) and its in-batch accuracy {LEARNED_ACCURACY_FACTOR:g}x "
           "chance)", "",
           reports.markdown_table(["model", "batches", "final loss", "chance loss",
                                   "final accuracy %", "chance %", "checkpoint (per seed)",
                                   "learned"], _training_rows(training, trained)), "",
           "Loss curves: `study_loss.png`.", "", *_tables(results),
           "Per-run results (every language and pair, per-query scores): "
           "`runs/*/study_results.json`; all cells and intervals: `study.json`."]
  return "\n".join(lines) + "\n"


def describe(results: dict, elapsed_seconds: float | None) -> str:
  """The set-up line of a demo report: when, where, which settings, how long."""
  trained = {k: r for k, r in results.items() if not is_zero_shot(r)} or results
  settings = next(iter(trained.values()))["settings"]
  seeds = sorted({seed for _, _, seed in trained})
  learning_rates = {m: r["settings"]["learning_rate"] for (m, _, _), r in trained.items()}
  took = f" in {elapsed_seconds / 60:.0f} min" if elapsed_seconds else ""
  checkpoints = sorted({os.path.basename(str(r["settings"].get("init_checkpoint")).rstrip("/"))
                        for r in results.values() if r["settings"].get("init_checkpoint")})
  note = PRETRAINED_NOTE.format(checkpoints=", ".join(checkpoints)) if checkpoints else NOTE
  evaluation = next(iter(results.values()))["evaluation"]
  sampled = [f"the first {evaluation['max_questions_per_language']} questions per language"
             if evaluation.get("max_questions_per_language") else "",
             f"{evaluation['max_candidates_per_language']} candidates per language (every "
             "relevant one, then one seeded draw shared by all runs)"
             if evaluation.get("max_candidates_per_language") else ""]
  sampled = " and ".join(part for part in sampled if part)
  sampled = (f" Evaluation on {sampled}, to fit the budget: the \"full\" pools below are these "
             "sampled pools." if sampled else "")
  return (f"Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on "
          f"{platform.node() or 'unknown host'} ({os.cpu_count()} CPU cores){took}: "
          f"{len(results)} runs, seeds {', '.join(map(str, seeds))}; {settings['train_steps']} "
          f"steps of batch {settings['batch_size']}, learning rate "
          + ", ".join(f"{m} {rate:g}" for m, rate in learning_rates.items())
          + f", temperature "
          f"{settings['temperature']}, AdamW weight decay {settings['weight_decay']}, lengths "
          f"query {settings['task_feature_lengths']['query']} and passage "
          f"{settings['task_feature_lengths']['passage']} tokens; languages "
          f"{', '.join(settings['languages'])}.{sampled}\n\n{note}")


def write(output_dir: str, results: dict, description: str | None = None,
          elapsed_seconds: float | None = None) -> dict:
  """Writes study.json, study.md and study_loss.png; returns their paths."""
  trained = {key: result for key, result in results.items() if not is_zero_shot(result)}
  training = {key: training_summary(result) for key, result in trained.items()}
  table = effects(trained, {k: t["learned"] for k, t in training.items()})
  paths = {"json": os.path.join(output_dir, "study.json"),
           "markdown": os.path.join(output_dir, "study.md"),
           "loss_plot": os.path.join(output_dir, "study_loss.png")}
  reports.write_json(paths["json"], {
      "effects": table, "training": {"/".join(map(str, k)): v for k, v in training.items()},
      "objective": {"/".join(map(str, k)): r["train"]["objective"] for k, r in trained.items()
                    if r["train"].get("objective")}})
  text = markdown(results, training, table, description or describe(results, elapsed_seconds))
  fs.write_text_atomically(paths["markdown"], text)
  plot_loss_curves(paths["loss_plot"], results)
  return paths


SECTIONS = ("study-demo", "study-pretrained")  # README's generated sections, by marker name.


def update_readme(report_path: str, readme_path: str, section: str = "study-demo") -> None:
  """Replaces a README section (between its `<!-- {section}:begin` and `<!-- {section}:end -->`
  markers) with the report, headings demoted and its plot named by its path."""
  if section not in SECTIONS:
    raise ValueError(f"section must be one of {SECTIONS}, found {section!r}")
  begin, end_marker = f"<!-- {section}:begin", f"<!-- {section}:end -->"
  body = fs.read_text(report_path).split("\n", 1)[1].strip()  # Without the report's title.
  body = "\n".join("##" + line if line.startswith("## ") else line for line in body.splitlines())
  plot = os.path.join(os.path.relpath(os.path.dirname(os.path.abspath(report_path))),
                      "study_loss.png")
  body = body.replace("`study_loss.png`", f"`{plot}`")
  with open(readme_path, encoding="utf-8") as f:
    readme = f.read()
  start, end = readme.find(begin), readme.find(end_marker)
  if start < 0 or end < start:
    raise ValueError(f"{readme_path}: no '{begin} ... {end_marker}' section to replace")
  start = readme.index("\n", start) + 1
  fs.write_text_atomically(readme_path, readme[:start] + body + "\n" + readme[end:])


if __name__ == "__main__":
  import argparse
  parser = argparse.ArgumentParser(prog="python -m hybridir.study_report",
                                   description="Copies a study report into README's section.")
  parser.add_argument("--report", default="out/study/study.md")
  parser.add_argument("--readme", default="README.md")
  parser.add_argument("--section", default="study-demo", choices=SECTIONS,
                      help="study-demo (make demo) or study-pretrained (make study-pretrained)")
  arguments = parser.parse_args()
  update_readme(arguments.report, arguments.readme, arguments.section)
  print(f"{arguments.readme}: section {arguments.section} replaced by {arguments.report}")
