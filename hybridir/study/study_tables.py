"""The study report's tables: mAP beside chance on full and size-matched pools, degradation,
language bias, MIRACL, training against chance and fine-tuning against the pretrained model.

Input: `{(model, strategy, seed): study_results.RunResults}` (hybridir.study.study_run writes them);
an arm is a (model, strategy) with its seeds. Cells are mean ± std over seeds.
"""
import math

import numpy as np

from hybridir.data import miracl
from hybridir.evaluation import reports
from hybridir.study import study_results
from hybridir.study import study_stats

SETTINGS = (("monolingual", "mono"), ("cross_lingual", "cross"), ("multilingual", "multi"))
IN_DOMAIN, MIRACL = "in_domain", "miracl"  # The in-domain set (study_run); MIRACL's comparison.
PRIMARY = "mlqa_r"  # The comparison each effect's primary answer is on (study_report).
LABELS = {IN_DOMAIN: "in-domain", "xquad_r": "XQuAD-R", "mlqa_r": "MLQA-R", MIRACL: "MIRACL"}


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


def is_zero_shot(result: study_results.RunResults) -> bool:
  """A pretrained model's zero-shot row: evaluated untrained
  (hybridir.study.study_run, zero_shot)."""
  return result.train.zero_shot


def objective_rows(results: dict) -> list:
  """Per fine-tuned arm: the pretrained and the fine-tuned model's in-batch loss on held-out
  batches of the arm's own kind (mean ± std over seeds), and whether every seed improved it."""
  rows = []
  for (model, strategy), by_seed in arms_of(results).items():
    objectives = [r.train.objective for r in by_seed.values()]
    if not objectives or any(o is None for o in objectives):
      continue
    beats = all(o.fine_tuned < o.pretrained for o in objectives)
    rows.append([model, strategy, fmt([o.pretrained for o in objectives], 1.0, 3),
                 fmt([o.fine_tuned for o in objectives], 1.0, 3),
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


def average(result: study_results.RunResults, dataset: str, setting: str, key: str = "map"):
  return result.evaluation.datasets[dataset].average(setting, key)


def label(dataset: str) -> str:
  """A dataset's or comparison's name in the report."""
  return LABELS.get(dataset, dataset)


def lareqa_datasets(results: dict) -> list[str]:
  """The LAReQA-style sets evaluated (in-domain first, then XQuAD-R, MLQA-R), as the runs have
  them."""
  datasets = next(iter(results.values())).evaluation.datasets
  return [d for d in LABELS if d in datasets and d != MIRACL]


def set_description(results: dict) -> str:
  """Which set is in-domain and which are out of domain, in which languages, and on which
  languages each degradation compares them."""
  evaluation = next(iter(results.values())).evaluation
  datasets = evaluation.datasets

  def languages(name):
    return ", ".join(datasets[name].languages)

  inside = datasets[IN_DOMAIN]
  parts = [f"**In domain**: the held-out test split (articles never trained or validated on) of "
           f"the training corpus, `{evaluation.in_domain_corpus}`: "
           f"{inside.questions} QA items in {languages(IN_DOMAIN)}; candidates: "
           + ("answer sentences read in their passages, as LAReQA's"
              if inside.candidate_unit == "sentence"
              else "passages (the corpus gives no answer sentences)") + "."]
  outside = [f"{label(d)} in {languages(d)} ({datasets[d].questions} questions)"
             for d in lareqa_datasets(results) if d != IN_DOMAIN]
  miracl_languages = sorted({x for r in results.values() for x in miracl_per_query(r)})
  if miracl_languages:
    outside.append(f"MIRACL dev in {', '.join(miracl_languages)} (monolingual, nDCG@10)")
  if outside:
    parts.append("**Out of domain**, zero-shot: " + "; ".join(outside) + ".")
  if "xquad_r" not in datasets:
    parts.append("XQuAD-R is not out of domain here: the runs train on its training articles, so "
                 "its held-out articles are the in-domain set (by construction).")
  compared = comparison_scores(next(iter(results.values())))
  if compared:
    parts.append("Each degradation compares an out-of-domain set with the in-domain set on the "
                 "languages both have (" + "; ".join(
                     f"{label(c)}: {', '.join(v['languages'])}" for c, v in compared.items())
                 + "): LAReQA sets by mAP above chance on size-matched pools, MIRACL by nDCG@10 "
                 "above chance (a random ranking's exact expectation for the pool and the "
                 "query's relevant count) on full pools, monolingual.")
  return " ".join(parts)


def miracl_per_query(result: study_results.RunResults) -> dict:
  """{language: {qid: nDCG@10 above chance}} of a run's MIRACL: the corpus-scale stage's
  (hybridir.study.study_gather), else the in-memory evaluation's (miracl_<lang>)."""
  if result.miracl:
    return {x: r["ndcg_above_chance"] for x, r in result.miracl.items()
            if "ndcg_above_chance" in r}
  datasets = result.evaluation.datasets
  return {x: values for d in datasets if d.startswith("miracl_")
          for x, values in (datasets[d].ndcg_above_chance or {}).get("monolingual", {}).items()}


def comparison_scores(result: study_results.RunResults) -> dict:
  """{comparison: {"languages", "settings", IN_DOMAIN and OUT_OF_DOMAIN per-query scores ({setting:
  {group: {qid: value}}})}}: each out-of-domain LAReQA set's matched pools (study_run), then
  MIRACL against the in-domain set's nDCG@10 on the languages both have."""
  evaluation = result.evaluation
  out = {name: {"languages": list(c.languages), "settings": [s for s, _ in SETTINGS],
                **{side: getattr(c, side).per_query_above_chance for side in study_stats.SIDES}}
         for name, c in sorted(evaluation.comparisons.items(),
                               key=lambda item: item[0] != PRIMARY)}
  inside = (evaluation.datasets[IN_DOMAIN].ndcg_above_chance or {}).get("monolingual", {})
  outside = miracl_per_query(result)
  shared = sorted(set(inside) & set(outside))
  if shared:
    out[MIRACL] = {"languages": shared, "settings": ["monolingual"],
                   study_stats.IN_DOMAIN: {"monolingual": {x: inside[x] for x in shared}},
                   study_stats.OUT_OF_DOMAIN: {"monolingual": {x: outside[x] for x in shared}}}
  return out


def degradation(scores: dict, setting: str) -> float:
  """A comparison's degradation in one setting: the macro average over groups (of the mean over
  queries) in domain minus that out of domain, as study_stats averages."""
  def macro(groups):
    return float(np.mean([np.mean(list(v.values())) for v in groups.values() if v]))
  return (macro(scores[study_stats.IN_DOMAIN][setting])
          - macro(scores[study_stats.OUT_OF_DOMAIN][setting]))


def _full_pool_table(arms: dict, dataset: str) -> list[str]:
  """mAP beside chance, R@1 and R@10 on one dataset's full pools, per setting."""
  first = next(iter(next(iter(arms.values())).values())).evaluation.datasets[dataset]
  header = ["model", "batches"] + [f"{short} {measure}" for _, short in SETTINGS
                                   for measure in ("mAP (chance)", "R@1", "R@10")]
  rows = []
  for (model, strategy), by_seed in arms.items():
    row = [model, strategy]
    for setting, _ in SETTINGS:
      chance = first.full_chance.get(setting, math.nan)
      row += [f"{fmt([average(r, dataset, setting) for r in by_seed.values()])} "
              f"({100 * chance:.2f})",
              fmt([average(r, dataset, setting, "recall_1") for r in by_seed.values()]),
              fmt([average(r, dataset, setting, "recall_10") for r in by_seed.values()])]
    rows.append(row)
  name = label(dataset)
  return [f"## {name[0].upper() + name[1:]}, full pools ({', '.join(first.languages)}; "
          f"{first.questions} questions): mAP x 100 beside a random ranking's "
          "(exact expected AP), R@1 and R@10 x 100 (trec_eval's recall_1, recall_10)", "",
          reports.markdown_table(header, rows), ""]


def score_tables(results: dict) -> list[str]:
  arms = arms_of(results)
  lines = [line for dataset in lareqa_datasets(results) for line in _full_pool_table(arms, dataset)]
  first = next(iter(results.values())).evaluation
  compared = comparison_scores(next(iter(results.values())))
  for name, comparison in first.comparisons.items():
    header = ["model", "batches"] + [f"{short} {side}" for side in (label(IN_DOMAIN), label(name))
                                     for _, short in SETTINGS]
    rows = []
    for (model, strategy), by_seed in arms.items():
      row = [model, strategy]
      for side in study_stats.SIDES:
        for setting, _ in SETTINGS:
          cells = [getattr(r.evaluation.comparisons[name], side).summary[setting]
                   for r in by_seed.values()]
          row.append(f"{fmt([c['map'] for c in cells])} ({100 * cells[0]['chance']:.2f})")
      rows.append(row)
    lines += [f"## In-domain against {label(name)} on size-matched pools, mAP x 100 "
              f"({', '.join(comparison.languages)}; {first.matched_pool_size} candidates "
              f"per pool language and query, relevant ones kept; {first.matched_draws} seeded "
              "draws), beside chance", "",
              "Each cell: mean ± std over seeds (chance); the spread over draws is in "
              "`runs/*/study_results.json`.", "", reports.markdown_table(header, rows), ""]
  if compared:
    columns = [(name, setting) for name, c in compared.items() for setting in c["settings"]]
    short = dict(SETTINGS)
    rows = []
    for (model, strategy), by_seed in arms.items():
      scores = [comparison_scores(r) for r in by_seed.values()]
      rows.append([model, strategy] + [
          fmt([degradation(s[name], setting) for s in scores if name in s])
          for name, setting in columns])
    lines += ["## Degradation: in-domain minus out-of-domain score above chance (x 100, mean ± "
              "std over seeds; each on the languages both sets have)", "",
              reports.markdown_table(["model", "batches"] + [
                  f"{label(name)} {short[setting]}" + (" nDCG@10" if name == MIRACL else "")
                  for name, setting in columns], rows), ""]
  lines += distractor_table(results, arms)
  lines += ["## Language bias: maximum rank distance, multilingual full pools (lower is less "
            "biased; a random ranking's value in brackets)", ""]
  rows = []
  for (model, strategy), by_seed in arms.items():
    row = [model, strategy]
    for dataset in lareqa_datasets(results):
      values = [average(r, dataset, "multilingual", "rank_distance") for r in by_seed.values()]
      random = average(next(iter(by_seed.values())), dataset, "multilingual",
                        "rank_distance_random")
      row.append(fmt(values, 1.0) + (f" ({random:.0f})" if random is not None else ""))
    rows.append(row)
  lines += [reports.markdown_table(["model", "batches"] + [
      label(d) for d in lareqa_datasets(results)], rows), ""]
  return lines + miracl_tables(arms)


def distractor_table(results: dict, arms: dict) -> list[str]:
  """Degradation on distractor-matched pools (study_eval: every query keeps k same-paragraph
  distractors in each set), beside which the answer's size-matched degradation is read."""
  first = next(iter(results.values())).evaluation.comparisons
  names = [name for name, c in first.items() if c.distractor_matched]
  if not names:
    return []
  columns = [(name, setting) for name in names for setting, _ in SETTINGS]
  rows = []
  for (model, strategy), by_seed in arms.items():
    matched = [r.evaluation.comparisons for r in by_seed.values()]
    rows.append([model, strategy] + [fmt([degradation(
        {side: getattr(m[name].distractor_matched, side).per_query_above_chance
         for side in study_stats.SIDES}, setting) for m in matched]) for name, setting in columns])
  details = "; ".join(
      f"{label(name)}: k = {first[name].distractor_matched.in_domain.distractors}, "
      f"{first[name].distractor_matched.in_domain.pool_size} candidates per pool language"
      for name in names)
  return ["## Degradation on distractor-matched pools (x 100, mean ± std over seeds)", "",
          "Size-matched pools equalise pool size, not how many hard candidates a query meets. "
          "Here each query keeps exactly k same-paragraph distractors (candidates sharing its "
          "relevant one's paragraph, so its context) in both sets, and random others up to a "
          f"common size ({details}); queries with fewer are left out (`left_out` in the run's "
          "results). The answer above uses the size-matched pools, which keep every query; where "
          "the two tables agree, pool difficulty does not drive the degradation.", "",
          reports.markdown_table(["model", "batches"] + [
              f"{label(name)} {dict(SETTINGS)[setting]}" for name, setting in columns], rows), ""]


def miracl_scores(result: study_results.RunResults) -> dict:
  """{language: {measure: value}} of a run's MIRACL results: the corpus-scale stage's (gathered
  into `miracl` by hybridir.study.study_gather), else the in-memory evaluation's (miracl_<lang>)."""
  if result.miracl:
    return result.miracl
  datasets = result.evaluation.datasets
  return {d[len("miracl_"):]: datasets[d].full["monolingual"]["average"]
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


# The paper's Table 1 (Elmahdy et al. 2024; ../shared/PAPER.md): mAP mono, cross, multi on
# XQuAD-R and MLQA-R, maximum rank distance on XQuAD-R and MLQA-R, MIRACL dev mean nDCG@10.
PAPER_TABLE_1 = {
    ("XLM-R", "X-X-mono"): ((.792, .674, .547), (.648, .584, .473), (410, 288), .415),
    ("XLM-R", "X-Y"): ((.755, .700, .593), (.626, .620, .508), (295, 227), .399),
    ("XLM-R", "hybrid"): ((.798, .705, .593), (.648, .623, .512), (287, 227), .405),
    ("LaBSE", "X-X-mono"): ((.808, .752, .652), (.681, .656, .550), (262, 225), .455),
    ("LaBSE", "X-Y"): ((.801, .762, .679), (.671, .677, .576), (225, 198), .418),
    ("LaBSE", "hybrid"): ((.817, .767, .682), (.686, .681, .579), (221, 195), .441),
}
PAPER_SETS = {"xquad_r": 11, "mlqa_r": 7}  # The paper's languages per set (all of each).


def paper_table(results: dict) -> list[str]:
  """Every XLM-R and LaBSE arm beside the paper's Table 1: "ours (paper)", ours mean ± std over
  seeds on the whole XQuAD-R and MLQA-R full pools and MIRACL's mean over our languages."""
  rows = []
  for (model, strategy), by_seed in arms_of(results).items():
    paper = PAPER_TABLE_1.get((model.split()[0], strategy))
    if paper is None:
      continue
    runs = list(by_seed.values())
    row = [model, strategy]
    for dataset, values in zip(PAPER_SETS, paper[:2]):
      for (setting, _), value in zip(SETTINGS, values):
        ours = [average(r, dataset, setting) for r in runs
                if dataset in r.evaluation.datasets]
        row.append(f"{fmt(ours)} ({100 * value:.1f})")
    for dataset, value in zip(PAPER_SETS, paper[2]):
      ours = [average(r, dataset, "multilingual", "rank_distance") for r in runs
              if dataset in r.evaluation.datasets]
      row.append(f"{fmt(ours, 1.0, 0)} ({value})")
    means = [float(np.mean([v["ndcg_cut_10"] for v in miracl_scores(r).values()]))
             if miracl_scores(r) else None for r in runs]
    rows.append(row + [f"{fmt(means)} ({100 * paper[3]:.1f})"])
  if not rows:
    return []
  datasets = next(iter(results.values())).evaluation.datasets
  scope = "; ".join(
      f"{label(d)}: ours {len(datasets[d].languages)} languages, {datasets[d].questions} "
      f"questions (the paper's: all {n})" if d in datasets else f"{label(d)}: not evaluated"
      for d, n in PAPER_SETS.items())
  header = (["model", "batches"] + [f"{label(d)} {short}" for d in PAPER_SETS
                                    for _, short in SETTINGS]
            + [f"rank distance {label(d)}" for d in PAPER_SETS] + ["MIRACL nDCG@10"])
  return ["## Beside the paper's Table 1 (Elmahdy et al. 2024): ours (paper)", "",
          "mAP and nDCG@10 x 100, ours mean ± std over seeds on the full pools, zero-shot; "
          f"rank distance in ranks. {scope}. MIRACL: our mean over its languages evaluated (the "
          "paper's 15 are not named).", "", reports.markdown_table(header, rows), ""]
