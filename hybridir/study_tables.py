"""The study report's tables: mAP beside chance on full and size-matched pools, degradation,
language bias, MIRACL, training against chance and fine-tuning against the pretrained model.

Input: `{(model, strategy, seed): study_results.json}` (hybridir.study_run); an arm is a (model,
strategy) with its seeds. Cells are mean ± std over seeds.
"""
import math

import numpy as np

from hybridir import miracl
from hybridir import reports

SETTINGS = (("monolingual", "mono"), ("cross_lingual", "cross"), ("multilingual", "multi"))
IN_DOMAIN, OUT_OF_DOMAIN = "xquad_r", "mlqa_r"
ZERO_SHOT = "zero-shot"


def mean_std(values) -> tuple[float, float]:
  values = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
  if not len(values):
    return math.nan, math.nan
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0



def fmt(values, scale=100.0, digits=1) -> str:
  mean, std = mean_std(values)
  return "n/a" if math.isnan(mean) else f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"



def arms_of(results: dict) -> dict:
  """{(model, strategy): {seed: result}} in the order runs were given."""
  arms = {}
  for (model, strategy, seed), result in results.items():
    arms.setdefault((model, strategy), {})[seed] = result
  return arms



def is_zero_shot(result: dict) -> bool:
  """A pretrained model's zero-shot row: evaluated untrained (hybridir.study_run, ZERO_SHOT)."""
  return bool(result["train"].get("zero_shot"))



def objective_rows(results: dict) -> list:
  """Per fine-tuned arm: the pretrained and the fine-tuned model's in-batch loss on held-out
  batches of the arm's own kind (mean ± std over seeds), and whether every seed improved it."""
  rows = []
  for (model, strategy), by_seed in arms_of(results).items():
    objectives = [r["train"].get("objective") for r in by_seed.values()]
    if not objectives or any(o is None for o in objectives):
      continue
    beats = all(o["fine_tuned"] < o["pretrained"] for o in objectives)
    rows.append([model, strategy, fmt([o["pretrained"] for o in objectives], 1.0, 3),
                 fmt([o["fine_tuned"] for o in objectives], 1.0, 3),
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



def training_rows(training: dict, results: dict) -> list:
  rows = []
  for (model, strategy), by_seed in arms_of(results).items():
    t = [training[model, strategy, seed] for seed in by_seed]
    rows.append([model, strategy, fmt([x["final_loss"] for x in t], 1.0, 3),
                 f"{t[0]['chance_loss']:.3f}", fmt([x["final_accuracy"] for x in t]),
                 f"{100 * t[0]['chance_accuracy']:.1f}",
                 ", ".join(str(x["chosen_step"]) for x in t),
                 "yes" if all(x["learned"] for x in t) else "**no**"])
  return rows



def average(result, dataset, setting, key="map"):
  return result["evaluation"]["datasets"][dataset]["full"][setting]["average"].get(key)



def score_tables(results: dict) -> list[str]:
  arms = arms_of(results)
  lines = ["## mAP x 100 on the full pools, beside a random ranking's (exact expected AP)", ""]
  header = ["model", "batches"] + [f"{short} {d}" for d in (IN_DOMAIN, OUT_OF_DOMAIN)
                                   for _, short in SETTINGS]
  rows = []
  for (model, strategy), by_seed in arms.items():
    row = [model, strategy]
    for dataset in (IN_DOMAIN, OUT_OF_DOMAIN):
      for setting, _ in SETTINGS:
        chance = next(iter(by_seed.values()))["evaluation"]["datasets"][dataset]["full_chance"]
        row.append(f"{fmt([average(r, dataset, setting) for r in by_seed.values()])} "
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
        row.append(f"{fmt([c['map'] for c in cells])} ({100 * cells[0]['chance']:.2f})")
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
      row.append(fmt(values))
    rows.append(row)
  lines += [reports.markdown_table(["model", "batches"] + [s for _, s in SETTINGS], rows), "",
            "## Language bias: maximum rank distance, multilingual full pools (lower is less "
            "biased; a random ranking's value in brackets)", ""]
  rows = []
  for (model, strategy), by_seed in arms.items():
    row = [model, strategy]
    for dataset in (IN_DOMAIN, OUT_OF_DOMAIN):
      values = [average(r, dataset, "multilingual", "rank_distance") for r in by_seed.values()]
      random = average(next(iter(by_seed.values())), dataset, "multilingual",
                        "rank_distance_random")
      row.append(fmt(values, 1.0) + (f" ({random:.0f})" if random is not None else ""))
    rows.append(row)
  lines += [reports.markdown_table(["model", "batches", IN_DOMAIN, OUT_OF_DOMAIN], rows), ""]
  return lines + miracl_tables(arms)



def miracl_scores(result: dict) -> dict:
  """{language: {measure: value}} of a run's MIRACL results: the corpus-scale stage's (gathered
  into "miracl" by hybridir.study_gather), else the in-memory evaluation's (miracl_<lang>)."""
  if result.get("miracl"):
    return result["miracl"]
  datasets = result["evaluation"]["datasets"]
  return {d[len("miracl_"):]: datasets[d]["full"]["monolingual"]["average"]
          for d in datasets if d.startswith("miracl_")}



def miracl_tables(arms: dict) -> list[str]:
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
      per_language = [fmt([run.get(x, {}).get(measure) for run in runs]) for x in languages]
      means = [float(np.mean([run[x][measure] for x in languages]))
               if all(x in run for x in languages) else None for run in runs]
      rows.append([model, strategy] + per_language + [fmt(means)])
    lines += [f"## MIRACL dev {label} x 100 (monolingual: each language's queries against its "
              "whole corpus, passages read as title then text)", "",
              f"Mean ± std over seeds; mean: over the {len(languages)} languages, per seed."
              + note, "",
              reports.markdown_table(["model", "batches"] + languages + ["mean"], rows), ""]
  return lines


