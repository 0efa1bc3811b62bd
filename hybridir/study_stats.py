"""Confidence intervals for the study's effects: a two-stage bootstrap over seeds and queries.

Scores are per query: `{arm: {seed: {dataset: {setting: {group: {item: value}}}}}}`, where a group
is what a setting macro-averages over (a language, or a language pair) and an item is a QA item (a
question id, shared by its translations). An arm's statistic for one setting is the degradation:
the macro average on the in-domain dataset minus that on the out-of-domain one, averaged over
seeds. An effect is a linear contrast of arms (hybrid minus a baseline; the difference of such
effects between models).

Each bootstrap replicate draws the items of every dataset with replacement, the same items for
every arm (the arms answer the same questions, so the contrasts are paired over queries), and the
seeds of every arm with replacement, the seed-stage deviation scaled by sqrt(n / (n - 1)) (a
bootstrap of n seeds otherwise shrinks their variance by (n - 1) / n, which matters at n = 3).
The interval is the replicates' percentile interval.
Pure NumPy.
"""
import math
from typing import Mapping, Sequence

import numpy as np

ALL_SETTINGS = "all"  # The contrast on the mean over settings.


def item_weights(num_items: int, num_samples: int, rng: np.random.Generator) -> np.ndarray:
  """[num_samples, num_items] counts of each item in a resample with replacement."""
  return rng.multinomial(num_items, np.full(num_items, 1.0 / num_items), size=num_samples)


def macro_means(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
  """Macro average over groups of the weighted mean over items, one per row of `weights`.

  values: [groups, items], NaN where the item has no query in that group.
  weights: [samples, items]. A group no resampled item falls in is left out of that average.
  """
  present = ~np.isnan(values)
  numerator = weights @ np.where(present, values, 0.0).T
  denominator = weights @ present.T.astype(np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    per_group = numerator / denominator
  return np.nanmean(np.where(denominator > 0, per_group, np.nan), axis=1)


def _matrix(groups: Mapping[str, Mapping[str, float]], items: Sequence[str]) -> np.ndarray:
  index = {item: i for i, item in enumerate(items)}
  matrix = np.full((len(groups), len(items)), np.nan)
  for g, name in enumerate(sorted(groups)):
    for item, value in groups[name].items():
      matrix[g, index[item]] = value
  return matrix


def _percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
  tail = (1.0 - confidence) / 2.0 * 100.0
  low, high = np.percentile(samples, [tail, 100.0 - tail])
  return float(low), float(high)


def bootstrap_contrasts(scores: Mapping, contrasts: Mapping[str, Mapping], in_domain: str,
                        out_of_domain: str, settings: Sequence[str], num_samples: int = 2000,
                        confidence: float = 0.95, seed: int = 0) -> dict:
  """Each contrast of arms' degradation with its bootstrap interval, per setting and overall.

  Args:
    scores: per-query values, `{arm: {seed: {dataset: {setting: {group: {item: value}}}}}}`.
    contrasts: `{name: {arm: coefficient}}`, e.g. `{"hybrid - mono": {hyb: 1, mono: -1}}`.
    in_domain, out_of_domain: the two dataset names; degradation = in-domain - out-of-domain.
    settings: the settings to report; ALL_SETTINGS is their mean.

  Returns:
    `{name: {setting: {"estimate", "low", "high", "excludes_zero", "seeds"}}}`, settings plus
    ALL_SETTINGS; "seeds" maps each arm to its number of seeds.
  """
  if not 0 < confidence < 1:
    raise ValueError(f"confidence must be in (0, 1), found {confidence}")
  arms = sorted({arm for weights in contrasts.values() for arm in weights}, key=str)
  for arm in arms:
    if arm not in scores or not scores[arm]:
      raise ValueError(f"contrast arm {arm!r} has no scores; arms with scores: {sorted(scores)}")
  rng = np.random.default_rng(seed)
  datasets = (in_domain, out_of_domain)
  items = {d: sorted({item for arm in arms for by_seed in scores[arm].values()
                      for groups in by_seed[d].values() for values in groups.values()
                      for item in values}) for d in datasets}
  weights = {d: item_weights(len(items[d]), num_samples, rng) for d in datasets}
  full = {d: np.ones((1, len(items[d]))) for d in datasets}
  # Per arm and setting: the degradation of each seed, on the full data and per replicate.
  point, replicates = {}, {}
  for arm in arms:
    seeds = sorted(scores[arm])
    for setting in settings:
      rows, estimate = [], []
      for s in seeds:
        degradation = []
        for w in (full, weights):
          inside = macro_means(_matrix(scores[arm][s][in_domain][setting], items[in_domain]),
                               w[in_domain])
          outside = macro_means(_matrix(scores[arm][s][out_of_domain][setting],
                                        items[out_of_domain]), w[out_of_domain])
          degradation.append(inside - outside)
        estimate.append(degradation[0][0])
        rows.append(degradation[1])
      rows = np.stack(rows)  # [seeds, samples]
      draws = rng.integers(len(seeds), size=(num_samples, len(seeds)))  # Seeds with replacement.
      centre = rows.mean(axis=0)
      resampled = rows[draws, np.arange(num_samples)[:, None]].mean(axis=1)
      # A bootstrap of n seeds shrinks their variance by (n - 1) / n: undo it (n is small).
      inflation = math.sqrt(len(seeds) / (len(seeds) - 1)) if len(seeds) > 1 else 1.0
      replicates[arm, setting] = centre + inflation * (resampled - centre)
      point[arm, setting] = float(np.mean(estimate))
  results = {}
  for name, coefficients in contrasts.items():
    results[name] = {}
    for setting in list(settings) + [ALL_SETTINGS]:
      chosen = settings if setting == ALL_SETTINGS else [setting]
      estimate = sum(c * np.mean([point[arm, s] for s in chosen])
                     for arm, c in coefficients.items())
      samples = sum(c * np.mean([replicates[arm, s] for s in chosen], axis=0)
                    for arm, c in coefficients.items())
      low, high = _percentile_interval(samples, confidence)
      results[name][setting] = {
          "estimate": float(estimate), "low": low, "high": high,
          "excludes_zero": bool(low > 0 or high < 0),
          "seeds": {str(arm): len(scores[arm]) for arm in coefficients}}
  return results


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

