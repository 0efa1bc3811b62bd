"""Confidence intervals for the study's effects: paired over queries, t over seeds.

Scores are per query and per comparison (an out-of-domain set against the in-domain one, on the
languages both have): `{arm: {seed: {comparison: {side: {setting: {group: {item: value}}}}}}}`,
side in-domain or out-of-domain, where a group is what a setting macro-averages over (a language,
or a language pair) and an item is a QA item (a question id, shared by its translations). An arm's
statistic for one comparison and setting is the degradation: the macro average in domain minus
that out of domain, averaged over seeds. An effect is a linear contrast of arms, sum_a c_a D_a
(hybrid minus a baseline; the difference of such effects between models), with variance

  V = V_query + sum_a c_a^2 s_a^2 / n_a,

s_a^2 the sample variance of arm a's n_a per-seed degradations. Every arm and seed answers the same
questions, so query sampling moves them together and hardly shows between seeds: V_query is the
contrast's variance when each side's items are resampled, the same items for every arm (delta
method), less the seed-by-query part that s_a^2 already holds (estimated from each seed's deviation
from its arm's mean), so that no noise is counted twice. The interval is estimate +-
t_{df} sqrt(V), df by Welch-Satterthwaite with V_query's taken as infinite (thousands of queries
against n_a - 1 per arm): with 3 seeds per arm, seed noise widens it as a t on few df should. An arm
with one seed has no seed part (its interval is over queries only). Each cell is one comparison's:
no interval combines two comparisons, so their shared in-domain queries need no joint resampling.

One comparison is primary (the study's: MLQA-R): each effect's primary answer is its mean over
that comparison's settings. Every other cell (the primary comparison's settings, every setting and
mean of the other comparisons) is exploratory: their p-values are Holm-adjusted together.
"""
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

ALL_SETTINGS = "all"  # The contrast on the mean over settings.
PRIMARY, EXPLORATORY = "primary", "exploratory"
IN_DOMAIN, OUT_OF_DOMAIN = "in_domain", "out_of_domain"  # The two sides of a comparison.
SIDES = (IN_DOMAIN, OUT_OF_DOMAIN)


def macro_mean_and_influence(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Macro average over groups of each group's mean over its items, and each item's influence.

  values: [..., groups, items], NaN where the item has no query in that group; a group with none
  is left out. An item's influence is the average's derivative in its weight when items are
  resampled; the resampled average's variance is the sum of squared influences (delta method).
  Returns the averages [...] and the influences [..., items].
  """
  present = ~np.isnan(values)
  counts = np.maximum(present.sum(axis=-1, keepdims=True), 1)
  means = np.where(present, values, 0.0).sum(axis=-1, keepdims=True) / counts  # 0 if empty.
  num_groups = present.any(axis=-1).sum(axis=-1)
  deviations = np.where(present, values - means, 0.0) / counts
  return means[..., 0].sum(axis=-1) / num_groups, deviations.sum(axis=-2) / num_groups[..., None]


def holm_adjusted(p_values: Sequence[float]) -> np.ndarray:
  """Holm's step-down adjusted p-values: they control the family-wise error rate over all."""
  p_values = np.asarray(p_values, np.float64)
  order = np.argsort(p_values, kind="stable")
  steps = len(p_values) - np.arange(len(p_values))
  adjusted = np.empty_like(p_values)
  adjusted[order] = np.minimum(np.maximum.accumulate(steps * p_values[order]), 1.0)
  return adjusted


def _matrix(groups: Mapping[str, Mapping[str, float]], names: Sequence[str],
            index: Mapping[str, int]) -> np.ndarray:
  """[groups, items] of one seed's scores, NaN where the group lacks the item (or the group)."""
  matrix = np.full((len(names), len(index)), np.nan)
  for g, name in enumerate(names):
    if name in groups:
      matrix[g, np.fromiter(map(index.__getitem__, groups[name]), np.int64)] = list(
          groups[name].values())
  return matrix


def _arm_arrays(arm, by_seed: Mapping, comparison: str, settings: Sequence[str],
                indices: Mapping) -> tuple[np.ndarray, np.ndarray]:
  """An arm's degradation [seeds, cells] in one comparison and its items' influence [seeds, cells,
  items]. Cells are the settings then their mean; items are the in-domain then the out-of-domain
  ones."""
  seeds = sorted(by_seed)
  degradation, influence = [], []
  for setting in settings:
    per_side = []
    for side in SIDES:
      names = sorted({g for s in seeds for g in by_seed[s][side].get(setting, {})})
      values = np.stack([_matrix(by_seed[s][side].get(setting, {}), names, indices[side])
                         for s in seeds])
      empty = [s for s, seed_values in zip(seeds, values) if np.isnan(seed_values).all()]
      if empty:
        raise ValueError(f"arm {arm!r} seed {empty[0]}: no scored query in {comparison} {side} "
                         f"{setting} (found groups {names})")
      per_side.append(macro_mean_and_influence(values))
    (inside, inside_influence), (outside, outside_influence) = per_side
    degradation.append(inside - outside)
    influence.append(np.concatenate([inside_influence, -outside_influence], axis=-1))
  degradation, influence = np.stack(degradation, axis=1), np.stack(influence, axis=1)
  return (np.concatenate([degradation, degradation.mean(axis=1, keepdims=True)], axis=1),
          np.concatenate([influence, influence.mean(axis=1, keepdims=True)], axis=1))


def t_intervals(coefficients: Mapping, degradation: Mapping, influence: Mapping,
                item_factor: np.ndarray, confidence: float) -> dict:
  """A contrast's estimate, standard error, df, interval and p-value per cell (module docstring).

  degradation: {arm: [seeds, cells]}; influence: {arm: [seeds, cells, items]}; item_factor:
  [items], n / (n - 1) of the item's dataset (the unbiased variance of a resampled sum).
  """
  estimate = sum(c * degradation[arm].mean(axis=0) for arm, c in coefficients.items())
  contrast_influence = sum(c * influence[arm].mean(axis=0) for arm, c in coefficients.items())
  query_variance = (contrast_influence ** 2 * item_factor).sum(axis=-1)
  seed_terms, seed_dfs = [], []
  for arm, c in coefficients.items():
    num_seeds = len(degradation[arm])
    if num_seeds < 2:
      continue
    deviation = influence[arm] - influence[arm].mean(axis=0)
    seed_by_query = (deviation ** 2 * item_factor).sum(axis=(0, -1)) / (num_seeds - 1)
    query_variance = query_variance - c ** 2 * seed_by_query / num_seeds
    seed_terms.append(c ** 2 * degradation[arm].var(axis=0, ddof=1) / num_seeds)
    seed_dfs.append(num_seeds - 1)
  variance = np.maximum(query_variance, 0.0) + sum(seed_terms, np.zeros_like(estimate))
  welch_denominator = sum((term ** 2 / df for term, df in zip(seed_terms, seed_dfs)),
                          np.zeros_like(estimate))
  with np.errstate(divide="ignore", invalid="ignore"):
    df = np.where(welch_denominator > 0, variance ** 2 / welch_denominator, np.inf)
    statistic = np.where(variance > 0, np.abs(estimate) / np.sqrt(variance),
                         np.where(estimate == 0, 0.0, np.inf))
  half_width = stats.t.ppf(0.5 + confidence / 2, df) * np.sqrt(variance)
  return {"estimate": estimate, "standard_error": np.sqrt(variance), "df": df,
          "low": estimate - half_width, "high": estimate + half_width,
          "p_value": 2 * stats.t.sf(statistic, df)}


def _comparison_table(scores: Mapping, contrasts: Mapping[str, Mapping], comparison: str,
                      settings: Sequence[str], confidence: float) -> dict:
  """{contrast: {cell: cell}} of one comparison: its settings, and their mean when several."""
  arms = sorted({arm for weights in contrasts.values() for arm in weights}, key=str)
  by_arm = {}
  for arm in arms:
    missing = [seed for seed, by_seed in scores[arm].items() if comparison not in by_seed]
    if missing:
      raise ValueError(f"arm {arm!r} seed {missing[0]}: no {comparison} scores (found "
                       f"{sorted(scores[arm][missing[0]])})")
    by_arm[arm] = {seed: by_seed[comparison] for seed, by_seed in scores[arm].items()}
  indices = {side: {item: i for i, item in enumerate(sorted(set().union(
      *(values for arm in arms for by_seed in by_arm[arm].values()
        for groups in by_seed[side].values() for values in groups.values()))))} for side in SIDES}
  item_factor = np.concatenate([np.full(len(indices[side]), len(indices[side]) / max(
      len(indices[side]) - 1, 1)) for side in SIDES])
  arrays = {arm: _arm_arrays(arm, by_arm[arm], comparison, settings, indices) for arm in arms}
  cells = list(settings) + ([ALL_SETTINGS] if len(settings) > 1 else [])
  table = {}
  for name, coefficients in contrasts.items():
    columns = t_intervals(coefficients, {arm: arrays[arm][0] for arm in coefficients},
                          {arm: arrays[arm][1] for arm in coefficients}, item_factor, confidence)
    table[name] = {}
    for k, setting in enumerate(cells):
      cell = {key: float(values[k]) for key, values in columns.items()}
      cell["df"] = cell["df"] if np.isfinite(cell["df"]) else None
      cell["excludes_zero"] = bool(cell["low"] > 0 or cell["high"] < 0)
      cell["seeds"] = {str(arm): len(scores[arm]) for arm in coefficients}
      table[name][setting] = cell
  return table


def contrast_intervals(scores: Mapping, contrasts: Mapping[str, Mapping],
                       comparisons: Mapping[str, Sequence[str]], primary: str,
                       confidence: float = 0.95) -> dict:
  """Each contrast of arms' degradation with its interval over queries and seeds, for every
  comparison (an out-of-domain set against the in-domain one) per setting and on their mean.

  Args:
    scores: per-query values, `{arm: {seed: {comparison: {side: {setting: {group: {item:
      value}}}}}}}`, side IN_DOMAIN or OUT_OF_DOMAIN (each comparison's own in-domain scores: on
      the languages it shares with that out-of-domain set).
    contrasts: `{name: {arm: coefficient}}`, e.g. `{"hybrid - mono": {hyb: 1, mono: -1}}`.
    comparisons: `{comparison: its settings}`; a comparison of several settings adds their mean
      (ALL_SETTINGS).
    primary: the comparison whose mean over settings (its one setting, if one) answers each
      contrast: the PRIMARY cell. Every other cell, of every comparison, is EXPLORATORY, and their
      p-values are Holm-adjusted together.

  Returns:
    `{name: {comparison: {setting: cell}}}`; a cell has "estimate", "low", "high",
    "excludes_zero", "standard_error", "df" (None: infinite), "p_value", "role" (exploratory
    cells add "holm_p_value" and "holm_excludes_zero") and "seeds" (each arm's number of seeds).
  """
  if not 0 < confidence < 1:
    raise ValueError(f"confidence must be in (0, 1), found {confidence}")
  if primary not in comparisons:
    raise ValueError(f"primary comparison {primary!r} is not one of {sorted(comparisons)}")
  for arm in {arm for weights in contrasts.values() for arm in weights}:
    if arm not in scores or not scores[arm]:
      raise ValueError(f"contrast arm {arm!r} has no scores; arms with scores: {sorted(scores)}")
  tables = {comparison: _comparison_table(scores, contrasts, comparison, settings, confidence)
            for comparison, settings in comparisons.items()}
  results = {name: {comparison: tables[comparison][name] for comparison in comparisons}
             for name in contrasts}
  exploratory = []
  for by_comparison in results.values():
    for comparison, cells in by_comparison.items():
      answer = ALL_SETTINGS if ALL_SETTINGS in cells else next(iter(cells))
      for setting, cell in cells.items():
        cell["role"] = PRIMARY if (comparison, setting) == (primary, answer) else EXPLORATORY
        if cell["role"] == EXPLORATORY:
          exploratory.append(cell)
  for cell, adjusted in zip(exploratory, holm_adjusted([c["p_value"] for c in exploratory])):
    cell["holm_p_value"] = float(adjusted)
    cell["holm_excludes_zero"] = bool(adjusted < 1 - confidence)
  return results


def primary_cell(by_comparison: Mapping[str, Mapping[str, dict]]) -> dict:
  """A contrast's PRIMARY cell (contrast_intervals)."""
  return next(cell for cells in by_comparison.values() for cell in cells.values()
              if cell["role"] == PRIMARY)


def expected_random_average_precision(pool_size: int, num_relevant: int) -> float:
  """A random ranking's expected AP with `num_relevant` relevant among `pool_size`, exactly.

  A relevant candidate sits at a uniform rank r; the other R - 1 relevant ones fill the r - 1
  places above it at rate (R - 1) / (N - 1), so E[AP] = (H_N + (R - 1) / (N - 1) (N - H_N)) / N.
  """
  if not 1 <= num_relevant <= pool_size:
    raise ValueError(f"need 1 <= num_relevant <= pool_size, found {num_relevant} relevant in a "
                     f"pool of {pool_size}")
  harmonic = float(np.sum(1.0 / np.arange(1, pool_size + 1)))
  if pool_size == 1:
    return 1.0
  return (harmonic + (num_relevant - 1) / (pool_size - 1) * (pool_size - harmonic)) / pool_size


def expected_random_ndcg(pool_size: int, num_relevant: int, cutoff: int = 10) -> float:
  """A random ranking's expected nDCG@cutoff with `num_relevant` relevant (gain 1) among
  `pool_size`, exactly: rank i holds a relevant one with probability R / N, so E[DCG] =
  (R / N) sum_{i <= min(k, N)} 1 / log2(i + 1), over the ideal DCG (trec_eval's ndcg_cut)."""
  if not 1 <= num_relevant <= pool_size:
    raise ValueError(f"need 1 <= num_relevant <= pool_size, found {num_relevant} relevant in a "
                     f"pool of {pool_size}")
  discounts = 1.0 / np.log2(np.arange(2, cutoff + 2))
  ideal = float(discounts[:min(num_relevant, cutoff)].sum())
  return num_relevant / pool_size * float(discounts[:min(cutoff, pool_size)].sum()) / ideal
