"""The study's report: the answer with confidence intervals, training against chance, plots.

Input: `{(model, strategy, seed): study_results.RunResults}` (hybridir.study.study_run). Every
number in the report, its opening paragraph included, is computed here (and in study_tables) from
those files.
"""
import dataclasses
import datetime
import math
import os
import platform

import matplotlib
matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402
import numpy as np  # noqa: E402

from hybridir import console  # noqa: E402
from hybridir.evaluation import reports  # noqa: E402
from hybridir import fs  # noqa: E402
from hybridir.study import study_results  # noqa: E402
from hybridir.study import study_stats  # noqa: E402
from hybridir.study import study_tables  # noqa: E402
from hybridir.study.study_tables import label, PRIMARY, SETTINGS  # noqa: E402

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
    "An English-pretrained encoder on de, en, es "
    "and vi stands in for the study's question on a CPU (does hybrid fine-tuning help a "
    "pretrained encoder out of domain and across languages?); mT5 against XLM-R remains a TPU "
    "question (`gin_configs/runs/study/`).")


def training_summary(result: study_results.RunResults) -> dict:
  """Final loss and in-batch accuracy (last 10% of steps) against a random encoder's."""
  history = result.train.history
  batch_size = result.settings.batch_size
  tail = history[-max(1, int(len(history) * TAIL)):] if history else []
  loss = float(np.mean([h.loss for h in tail])) if tail else math.nan
  accuracy = float(np.mean([h.accuracy for h in tail])) if tail else math.nan
  chance_loss, chance_accuracy = math.log(batch_size), 1.0 / batch_size
  learned = (loss < chance_loss - LEARNED_LOSS_MARGIN
             and accuracy > LEARNED_ACCURACY_FACTOR * chance_accuracy)
  return {"final_loss": loss, "final_accuracy": accuracy, "chance_loss": chance_loss,
          "chance_accuracy": chance_accuracy, "learned": bool(learned),
          "chosen_step": result.train.chosen_step}


def model_pairs(models) -> list[tuple[str, str]]:
  """The models whose effects are contrasted: each mT5 against the XLM-R of its size (the study's
  question: 'mT5 base' - 'XLM-R base', the demo's 'mT5' - 'XLM-R'); else two models, in order."""
  pairs = [(a, b) for a in models for b in models if a.split()[0] == "mT5"
           and b.split()[0] == "XLM-R" and a.split()[1:] == b.split()[1:]]
  return pairs or ([tuple(models)] if len(models) == 2 else [])


def effects(results: dict, learned: dict) -> dict:
  """Hybrid minus each baseline on degradation per model, and mT5 minus XLM-R of each (model_pairs),
  with CIs, against every out-of-domain set (study_tables.comparison_scores); MLQA-R's is
  primary.

  Arms that did not learn (any seed) are left out, and so is every contrast that needs them.
  """
  arms = study_tables.arms_of(results)
  usable = {arm for arm in arms if all(learned[arm[0], arm[1], s] for s in arms[arm])}
  models = list(dict.fromkeys(model for model, _ in arms))
  contrasts = {}
  for model in models:
    for baseline in BASELINES:
      if {(model, HYBRID), (model, baseline)} <= usable:
        contrasts[f"{model}: hybrid - {baseline}"] = {(model, HYBRID): 1, (model, baseline): -1}
  for first, second in model_pairs(models):
    for baseline in BASELINES:
      a, b = f"{first}: hybrid - {baseline}", f"{second}: hybrid - {baseline}"
      if a in contrasts and b in contrasts:
        contrasts[f"{first} - {second}: hybrid - {baseline}"] = {
            **contrasts[a], **{arm: -c for arm, c in contrasts[b].items()}}
  scores = {arm: {seed: study_tables.comparison_scores(result) for seed, result in by_seed.items()}
            for arm, by_seed in arms.items() if arm in usable}
  every = [set(by_comparison) for by_seed in scores.values() for by_comparison in by_seed.values()]
  names = set.intersection(*every) if every else set()
  comparisons = {name: c["settings"] for name, c in next(iter(next(iter(
      scores.values())).values())).items() if name in names} if names else {}
  if not contrasts or not comparisons:
    return {}
  primary = PRIMARY if PRIMARY in comparisons else next(iter(comparisons))
  return study_stats.contrast_intervals(scores, contrasts, comparisons, primary)


def _cells(table: dict, role: str) -> list[tuple[str, str, str, dict]]:
  """(contrast, comparison, setting, cell) of every cell of a role."""
  return [(name, comparison, setting, cell) for name, by_comparison in table.items()
          for comparison, cells in by_comparison.items() for setting, cell in cells.items()
          if cell["role"] == role]


def _interval_method(table: dict) -> str:
  """What the intervals are over: queries, and seeds where an arm has more than one."""
  counts = sorted({n for _, _, _, cell in _cells(table, study_stats.PRIMARY)
                   for n in cell["seeds"].values()})
  seeds = str(counts[0]) if counts[0] == counts[-1] else f"{counts[0]}-{counts[-1]}"
  if counts[-1] < 2:
    return (f"95% intervals over queries only ({seeds} seed per arm: seed-to-seed variation is "
            "not estimated)")
  return (f"95% intervals over queries (paired: every arm answers the same questions) and "
          f"{seeds} seeds per arm (t on Welch-Satterthwaite degrees of freedom)")


def _setting_name(setting: str) -> str:
  return "mean of settings" if setting == study_stats.ALL_SETTINGS else dict(SETTINGS)[setting]


def _interval_text(cell: dict) -> str:
  return (f"{100 * cell['estimate']:+.1f} [{100 * cell['low']:+.1f}, "
          f"{100 * cell['high']:+.1f}]")


def answer_paragraph(table: dict, training: dict) -> str:
  """The opening paragraph: the primary effects and intervals, in numbers, the exploratory cells
  (other out-of-domain sets, per-setting effects) that stay clear of zero after Holm's
  adjustment, and the arms left out."""
  parts = ["**The answer, computed.** Out-of-domain degradation is the in-domain score minus the "
           "out-of-domain one, each above chance ((score - chance) / (1 - chance), x 100): mAP "
           "on size-matched pools for XQuAD-R and MLQA-R, nDCG@10 for MIRACL; an effect below "
           "zero means hybrid batches lose less out of domain."]
  primary = _cells(table, study_stats.PRIMARY)
  if primary:
    _, comparison, setting, _ = primary[0]
    on = ("the mean of the mono, cross and multi settings" if setting == study_stats.ALL_SETTINGS
          else f"the {_setting_name(setting)} setting")
    parts.append(f"The primary answer is each effect on {label(comparison)}, on {on}, with "
                 f"{_interval_method(table)}:")
  for name, _, _, cell in primary:
    verdict = "excludes zero" if cell["excludes_zero"] else "includes zero"
    parts.append(f"{name}: {_interval_text(cell)}, the interval {verdict}.")
  exploratory = _cells(table, study_stats.EXPLORATORY)
  if exploratory:
    others = sorted({label(c) for _, c, _, _ in exploratory if c != primary[0][1]}
                    if primary else ())
    clear = [f"{name} {label(comparison)} {_setting_name(setting)} {_interval_text(cell)}"
             for name, comparison, setting, cell in exploratory if cell["holm_excludes_zero"]]
    parts.append(f"The {len(exploratory)} other effects in the tables are exploratory (the "
                 "per-setting effects" + (f", and every effect on {' and '.join(others)}"
                                          if others else "") + "): "
                 f"{sum(cell['excludes_zero'] for *_, cell in exploratory)} exclude zero at 95%, "
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


def _cell_text(cell: dict) -> str:
  """An effect's interval, marked ~0 when it includes zero, and ~0 after Holm when an exploratory
  cell's Holm-adjusted p-value does not clear 5%."""
  if not cell["excludes_zero"]:
    return _interval_text(cell) + " ~0"
  return _interval_text(cell) + ("" if cell.get("holm_excludes_zero", True) else " ~0 after Holm")


def _effects_table(table: dict) -> list[str]:
  if not table:
    return []
  lines = ["## Effects with 95% confidence intervals over queries and seeds", "",
           "One table per out-of-domain set, each against the in-domain set on the languages "
           "both have. Primary: the cell marked (primary), the answer above. Exploratory: every "
           "other cell, "
           f"each with its own 95% interval; Holm's adjustment runs over all "
           f"{len(_cells(table, study_stats.EXPLORATORY))} of them. ~0: the interval includes "
           "zero; ~0 after Holm: it excludes zero, but not after the adjustment. Standard "
           "errors, degrees of freedom and p-values: `study.json`.", ""]
  for comparison, cells in next(iter(table.values())).items():
    header = ["effect on degradation (x 100)"] + [
        _setting_name(setting) + (" (primary)" if cell["role"] == study_stats.PRIMARY else "")
        for setting, cell in cells.items()]
    rows = [[name] + [_cell_text(by_comparison[comparison][s]) for s in cells]
            for name, by_comparison in table.items()]
    lines += [f"**{label(comparison)}**" + (" (nDCG@10, monolingual)"
                                            if comparison == study_tables.MIRACL else ""), "",
              reports.markdown_table(header, rows), ""]
  return lines


def plot_loss_curves(path: str, results: dict) -> None:
  """Training loss per step of every run, one panel per model, chance as a dashed line."""
  arms = study_tables.arms_of(results)
  models = list(dict.fromkeys(m for m, _ in arms))
  figure = Figure(figsize=(5 * len(models), 3.6))
  colours = {"X-X-mono": "tab:blue", "X-Y": "tab:orange", "hybrid": "tab:green"}
  for i, model in enumerate(models):
    axes = figure.add_subplot(1, len(models), i + 1)
    for (m, strategy), by_seed in arms.items():
      if m != model:
        continue
      for j, result in enumerate(by_seed.values()):
        if study_tables.is_zero_shot(result):
          continue
        history = result.train.history
        steps = [h.step for h in history]
        axes.plot(steps, [h.loss for h in history], color=colours.get(strategy, "grey"),
                  alpha=0.6, linewidth=0.8, label=strategy if j == 0 else None)
      batch = next(iter(by_seed.values())).settings.batch_size
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


def markdown(results: dict, training: dict, table: dict, description: str,
             beside_paper: bool = False) -> str:
  """The report; beside_paper adds the paper's Table 1 beside the XLM-R and LaBSE rows (a
  full-scale sweep: study_gather)."""
  trained = {k: r for k, r in results.items() if not study_tables.is_zero_shot(r)}
  objectives = study_tables.objective_rows(results)
  objective_lines = [] if not objectives else [
      "## Fine-tuning against the pretrained model: in-batch loss on held-out batches of each "
      "arm's own kind (lower is better; mean ± std over seeds)", "",
      study_tables.objective_sentence(objectives), "",
      reports.markdown_table(["model", "batches", "pretrained (zero-shot)", "fine-tuned",
                              "improved in every seed"], objectives), ""]
  lines = [title(results), "", answer_paragraph(table, training), "",
           *([study_tables.objective_sentence(objectives), ""] if objectives else []),
           description, "", study_tables.set_description(results), "",
           *(study_tables.paper_table(results) if beside_paper else []),
           *_effects_table(table), *objective_lines,
           f"## Training against chance (final = mean of the last {int(TAIL * 100)}% of steps; "
           "a run learned if its final loss is "
           f"{LEARNED_LOSS_MARGIN} below ln(batch) and its in-batch accuracy {LEARNED_ACCURACY_FACTOR:g}x "
           "chance)", "",
           reports.markdown_table(["model", "batches", "final loss", "chance loss",
                                   "final accuracy %", "chance %", "checkpoint (per seed)",
                                   "learned"], study_tables.training_rows(training, trained)), "",
           "Loss curves: `study_loss.png`.", "", *study_tables.score_tables(results),
           "Per-run results (every language and pair, per-query scores): "
           "`runs/*/study_results.json`; all cells and intervals: `study.json`."]
  return "\n".join(lines) + "\n"


def describe(results: dict, elapsed_seconds: float | None, kept_runs: int = 0) -> str:
  """The set-up line of a demo report: when, where, which settings, how long (kept_runs: runs
  an earlier invocation finished, which that time leaves out)."""
  trained = {k: r for k, r in results.items() if not study_tables.is_zero_shot(r)} or results
  settings = next(iter(trained.values())).settings
  seeds = sorted({seed for _, _, seed in trained})
  learning_rates = {m: r.settings.learning_rate for (m, _, _), r in trained.items()}
  took = f" in {elapsed_seconds / 60:.0f} min" if elapsed_seconds else ""
  if took and kept_runs:
    took += f" ({kept_runs} of the {len(results)} runs kept from an earlier invocation)"
  checkpoints = sorted({os.path.basename(r.settings.init_checkpoint.rstrip("/"))
                        for r in results.values() if r.settings.init_checkpoint})
  note = PRETRAINED_NOTE.format(checkpoints=", ".join(checkpoints)) if checkpoints else NOTE
  evaluation = next(iter(results.values())).evaluation
  sampled = [f"the first {evaluation.max_questions_per_language} questions per language"
             if evaluation.max_questions_per_language else "",
             f"{evaluation.max_candidates_per_language} candidates per language (every "
             "relevant one, then one seeded draw shared by all runs)"
             if evaluation.max_candidates_per_language else ""]
  sampled = " and ".join(part for part in sampled if part)
  sampled = (f" Evaluation on {sampled}, to fit the budget: the \"full\" pools below are these "
             "sampled pools." if sampled else "")
  return (f"Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on "
          f"{platform.node() or 'unknown host'} ({os.cpu_count()} CPU cores){took}: "
          f"{len(results)} runs, seeds {', '.join(map(str, seeds))}; {settings.train_steps} "
          f"steps of batch {settings.batch_size}, learning rate "
          + ", ".join(f"{m} {rate:g}" for m, rate in learning_rates.items())
          + f", temperature "
          f"{settings.temperature}, AdamW weight decay {settings.weight_decay}, lengths "
          f"query {settings.task_feature_lengths['query']} and passage "
          f"{settings.task_feature_lengths['passage']} tokens; training languages "
          f"{', '.join(settings.languages)}.{sampled}\n\n{note}")


def write(output_dir: str, results: dict, description: str | None = None,
          elapsed_seconds: float | None = None, beside_paper: bool = False,
          kept_runs: int = 0) -> dict:
  """Writes study.json, study.md and study_loss.png; returns their paths. beside_paper: as
  markdown's; elapsed_seconds and kept_runs: as describe's."""
  trained = {key: result for key, result in results.items()
             if not study_tables.is_zero_shot(result)}
  training = {key: training_summary(result) for key, result in trained.items()}
  table = effects(trained, {k: t["learned"] for k, t in training.items()})
  paths = {"json": os.path.join(output_dir, "study.json"),
           "markdown": os.path.join(output_dir, "study.md"),
           "loss_plot": os.path.join(output_dir, "study_loss.png")}
  reports.write_json(paths["json"], {
      "effects": table, "training": {"/".join(map(str, k)): v for k, v in training.items()},
      "objective": {"/".join(map(str, k)): dataclasses.asdict(r.train.objective)
                    for k, r in trained.items() if r.train.objective}})
  text = markdown(results, training, table, description or describe(results, elapsed_seconds, kept_runs),
                  beside_paper)
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
  parser = console.ArgumentParser(prog="python -m hybridir.study_report",
                                  description="Copies a study report into README's section.")
  parser.add_argument("--report", default="out/study/study.md")
  parser.add_argument("--readme", default="README.md")
  parser.add_argument("--section", default="study-demo", choices=SECTIONS,
                      help="study-demo (make demo) or study-pretrained (make study-pretrained)")
  arguments = parser.parse_args()
  update_readme(arguments.report, arguments.readme, arguments.section)
  print(f"{arguments.readme}: section {arguments.section} replaced by {arguments.report}")
