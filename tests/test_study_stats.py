"""The study's intervals: coverage of a null effect across seed noise, the query part against a
paired item bootstrap, seed-by-query noise counted once, primary and Holm-adjusted cells."""
import numpy as np
import pytest

from hybridir.study import study_report
from hybridir.study import study_stats

SETTINGS = ("mono", "cross", "multi")
MODELS, BASELINES = ("mT5", "XLM-R"), ("X-X-mono", "X-Y")
ARMS = tuple((model, strategy) for model in MODELS for strategy in ("hybrid",) + BASELINES)
# The study's primary contrasts: hybrid minus each baseline per model, and the models' difference.
PRIMARY = {f"{model}: hybrid - {baseline}": {(model, "hybrid"): 1, (model, baseline): -1}
           for model in MODELS for baseline in BASELINES}
PRIMARY.update({f"mT5 - XLM-R: hybrid - {baseline}": {
    **PRIMARY[f"mT5: hybrid - {baseline}"],
    **{arm: -c for arm, c in PRIMARY[f"XLM-R: hybrid - {baseline}"].items()}}
    for baseline in BASELINES})
ITEMS = {"in": 120, "out": 150}  # QA items; out-of-domain items lack some languages' queries.


def _simulated_scores(rng, seed_sd, arms=ARMS, settings=SETTINGS, seeds=3, gap=0.0,
                      arm_question_sd=0.07, arm_query_sd=0.07, seed_query_sd=0.1):
  """Per-query AP above chance, `{arm: {seed: {dataset: {setting: {group: {item: value}}}}}}`.

  A query's value (sd ~0.25 over queries): its question's difficulty in that group, the same for
  every arm (sd 0.2); the arm's own advantage on the question (shared by its translations) and on
  the query; the seed's own per-query noise; and an offset per (arm, seed, dataset) of sd
  `seed_sd`: seed noise. The last arm's out-of-domain mean is `gap` higher, so its degradation is
  `gap` lower.
  """
  groups = 3
  scores = {arm: {seed: {} for seed in range(seeds)} for arm in arms}
  for dataset, num_items in ITEMS.items():
    shape = (len(settings), groups, num_items)
    asked = [[np.flatnonzero(rng.random(num_items) >= (0.2 if dataset == "out" else 0.0))
              for _ in range(groups)] for _ in settings]
    names = [[[f"{dataset}{i}" for i in items] for items in by_group] for by_group in asked]
    difficulty = rng.normal(0.3, 0.2, shape)
    for arm in arms:
      mean = difficulty + (gap if arm == arms[-1] and dataset == "out" else 0.0)
      own = (mean + rng.normal(0, arm_question_sd, num_items)
             + rng.normal(0, arm_query_sd, shape))
      for seed in range(seeds):
        values = own + rng.normal(0, seed_sd) + rng.normal(0, seed_query_sd, shape)
        scores[arm][seed][dataset] = {
            setting: {f"group{g}": dict(zip(names[t][g], values[t, g, asked[t][g]].tolist()))
                      for g in range(groups)} for t, setting in enumerate(settings)}
  return scores


def _as_comparison(scores, comparison="out"):
  """Simulated scores as one comparison's: {arm: {seed: {comparison: {side: ...}}}}."""
  return {arm: {seed: {comparison: {study_stats.IN_DOMAIN: by_dataset["in"],
                                    study_stats.OUT_OF_DOMAIN: by_dataset["out"]}}
                for seed, by_dataset in by_seed.items()} for arm, by_seed in scores.items()}


def _intervals(scores, contrasts, settings=SETTINGS):
  """One comparison's table: {contrast: {setting: cell}}."""
  table = study_stats.contrast_intervals(_as_comparison(scores), contrasts, {"out": settings},
                                         "out")
  return {name: by_comparison["out"] for name, by_comparison in table.items()}


def _primary_cells(scores, contrasts, settings=SETTINGS):
  table = _intervals(scores, contrasts, settings)
  return [study_stats.primary_cell({"out": table[name]}) for name in contrasts]


@pytest.mark.parametrize("seed_sd", [0.0, 0.01, 0.02, 0.05])
def test_a_null_effects_primary_intervals_cover_zero_at_every_seed_noise_level(seed_sd):
  # At seed sd 0.05 seeds differ far more than query sampling moves an effect (its standard
  # error over queries is ~0.01). The percentile bootstrap over seeds and queries this replaced
  # covered zero 96%, 92%, 82% and 72% of the time here at seed sd 0, 0.01, 0.02 and 0.05.
  rng = np.random.default_rng(7)
  covered = [cell["low"] <= 0 <= cell["high"] for _ in range(200)
             for cell in _primary_cells(_simulated_scores(rng, seed_sd), PRIMARY)]
  assert np.mean(covered) >= 0.93, f"seed sd {seed_sd}: coverage {np.mean(covered):.3f}"


def test_a_known_effect_is_estimated_and_covered():
  rng = np.random.default_rng(1)
  arms = ARMS[:2]
  contrast = {"X-X-mono - hybrid": {arms[1]: 1, arms[0]: -1}}
  cells = [_primary_cells(_simulated_scores(rng, 0.02, arms, gap=0.1), contrast)[0]
           for _ in range(60)]
  assert np.mean([c["estimate"] for c in cells]) == pytest.approx(-0.1, abs=0.01)
  assert np.mean([c["low"] <= -0.1 <= c["high"] for c in cells]) >= 0.9


def _paired_bootstrap_sd(scores, coefficients, setting, num_samples, rng):
  """The contrast's sd when items are resampled with replacement, the same for every arm."""
  items = {d: sorted({i for g in scores[ARMS[0]][0][d][setting].values() for i in g})
           for d in ITEMS}
  weights = {d: rng.multinomial(len(items[d]), np.full(len(items[d]), 1 / len(items[d])),
                                size=num_samples) for d in ITEMS}
  contrast = 0.0
  for arm, coefficient in coefficients.items():
    degradation = 0.0
    for dataset, sign in (("in", 1), ("out", -1)):
      column = {item: k for k, item in enumerate(items[dataset])}
      group_means = []
      for values in scores[arm][0][dataset][setting].values():
        w = weights[dataset][:, [column[item] for item in values]]
        group_means.append(w @ np.array(list(values.values())) / w.sum(axis=1))
      degradation = degradation + sign * np.mean(group_means, axis=0)
    contrast = contrast + coefficient * degradation
  return float(np.std(contrast))


def test_with_one_seed_the_interval_is_over_queries_and_matches_a_paired_item_bootstrap():
  rng = np.random.default_rng(3)
  scores = {arm: {0: by_seed[0]} for arm, by_seed in _simulated_scores(rng, 0.02).items()}
  table = _intervals(scores, PRIMARY, ["mono"])
  for name, coefficients in PRIMARY.items():
    cell = table[name]["mono"]
    assert cell["df"] is None  # No seed part: a normal interval.
    assert cell["high"] - cell["low"] == pytest.approx(2 * 1.959964 * cell["standard_error"])
    bootstrap = _paired_bootstrap_sd(scores, coefficients, "mono", 4000, rng)
    assert cell["standard_error"] == pytest.approx(bootstrap, rel=0.05)


def test_seed_by_query_noise_is_counted_once():
  # Arms differ only by each seed's per-query noise: it moves the estimate once, through the
  # seeds. Counting it in the query part too would make the variance twice what it is.
  rng = np.random.default_rng(5)
  contrast = {"contrast": PRIMARY["mT5: hybrid - X-X-mono"]}
  cells = [_primary_cells(_simulated_scores(rng, 0.0, ARMS[:2], ("mono",), arm_question_sd=0.0,
                                            arm_query_sd=0.0, seed_query_sd=0.25),
                          contrast, ("mono",))[0] for _ in range(200)]
  ratio = np.mean([c["standard_error"] ** 2 for c in cells]) / np.var(
      [c["estimate"] for c in cells])
  assert 0.8 <= ratio <= 1.25


def test_holm_adjusted_p_values_match_a_hand_computation():
  # Sorted p-values times 5, 4, 3, 2, 1, made monotone, capped at 1; back in the given order.
  adjusted = study_stats.holm_adjusted([0.04, 0.01, 0.05, 0.03, 0.02])
  np.testing.assert_allclose(adjusted, [0.09, 0.05, 0.09, 0.09, 0.08])
  np.testing.assert_allclose(study_stats.holm_adjusted([0.3, 0.6]), [0.6, 0.6])


def test_the_mean_over_settings_is_primary_and_per_setting_cells_are_holm_adjusted_together():
  rng = np.random.default_rng(2)
  scores = _simulated_scores(rng, 0.01, gap=0.08)
  table = _intervals(scores, PRIMARY, SETTINGS)
  cells = [cell for by_setting in table.values() for cell in by_setting.values()]
  primary = [table[name][study_stats.ALL_SETTINGS] for name in PRIMARY]
  exploratory = [table[name][s] for name in PRIMARY for s in SETTINGS]
  assert all(c["role"] == study_stats.PRIMARY and "holm_p_value" not in c for c in primary)
  assert all(c["role"] == study_stats.EXPLORATORY for c in exploratory)
  assert len(cells) == len(primary) + len(exploratory) == 4 * len(PRIMARY)
  adjusted = study_stats.holm_adjusted([c["p_value"] for c in exploratory])
  np.testing.assert_allclose([c["holm_p_value"] for c in exploratory], adjusted)
  assert [c["holm_excludes_zero"] for c in exploratory] == list(adjusted < 0.05)
  # The 95% interval and the p-value agree; the adjustment only ever removes a cell.
  assert all(c["excludes_zero"] == (c["p_value"] < 0.05) for c in cells)
  assert any(c["excludes_zero"] for c in exploratory)
  assert all(c["excludes_zero"] for c in exploratory if c["holm_excludes_zero"])


def test_a_seed_without_scored_queries_in_a_setting_is_named():
  scores = _simulated_scores(np.random.default_rng(0), 0.0, ARMS[:2], ("mono",))
  scores[ARMS[1]][2]["out"]["mono"] = {"group0": {}}
  with pytest.raises(ValueError, match=r"'X-X-mono'\) seed 2: no scored query in out "
                     "out_of_domain mono"):
    _intervals(scores, {"c": PRIMARY["mT5: hybrid - X-X-mono"]}, ["mono"])


def _three_sets(rng, settings, gap=0.0, seed_sd=0.005):
  """Scores of three comparisons, as the full-scale study has them: MLQA-R and XQuAD-R (every
  setting) and MIRACL (monolingual only), each simulated on its own items."""
  comparisons = {"mlqa_r": settings, "xquad_r": settings, "miracl": settings[:1]}
  scores = {arm: {seed: {} for seed in range(3)} for arm in ARMS}
  for name, its_settings in comparisons.items():
    simulated = _as_comparison(_simulated_scores(rng, seed_sd, settings=its_settings, gap=gap),
                               name)
    for arm, by_seed in simulated.items():
      for seed, by_comparison in by_seed.items():
        scores[arm][seed].update(by_comparison)
  return scores, comparisons


def test_miracl_enters_the_intervals_as_a_third_out_of_domain_set_and_mlqa_r_stays_primary():
  settings = [setting for setting, _ in study_report.SETTINGS]
  scores, comparisons = _three_sets(np.random.default_rng(4), settings, gap=0.05)
  table = study_stats.contrast_intervals(scores, PRIMARY, comparisons, "mlqa_r")
  for name in PRIMARY:
    assert set(table[name]) == {"mlqa_r", "xquad_r", "miracl"}
    assert list(table[name]["miracl"]) == ["monolingual"]  # One setting: no mean cell.
    roles = {(c, s): cell["role"] for c, cells in table[name].items() for s, cell in cells.items()}
    assert [k for k, role in roles.items() if role == study_stats.PRIMARY] == [
        ("mlqa_r", study_stats.ALL_SETTINGS)]
  exploratory = [cell for by_comparison in table.values() for cells in by_comparison.values()
                 for cell in cells.values() if cell["role"] == study_stats.EXPLORATORY]
  assert len(exploratory) == len(PRIMARY) * (3 + 4 + 1)  # Holm runs over every one of them.
  np.testing.assert_allclose([c["holm_p_value"] for c in exploratory],
                             study_stats.holm_adjusted([c["p_value"] for c in exploratory]))
  # MIRACL's cell is its own comparison's: the degradation contrast of its per-query scores, with
  # the interval it has alone (the other sets only join the Holm family).
  contrast = PRIMARY["mT5: hybrid - X-X-mono"]
  expected = 0.0
  for arm, coefficient in contrast.items():
    per_seed = []
    for by_comparison in scores[arm].values():
      means = {side: np.mean([np.mean(list(g.values())) for g in by_side["monolingual"].values()])
               for side, by_side in by_comparison["miracl"].items()}
      per_seed.append(means[study_stats.IN_DOMAIN] - means[study_stats.OUT_OF_DOMAIN])
    expected += coefficient * np.mean(per_seed)
  cell = table["mT5: hybrid - X-X-mono"]["miracl"]["monolingual"]
  assert cell["estimate"] == pytest.approx(expected)
  alone = study_stats.contrast_intervals(scores, {"c": contrast}, {"miracl": ["monolingual"]},
                                         "miracl")["c"]["miracl"]["monolingual"]
  assert (alone["low"], alone["high"]) == pytest.approx((cell["low"], cell["high"]))
  with pytest.raises(ValueError, match="primary comparison 'tydi' is not one of"):
    study_stats.contrast_intervals(scores, PRIMARY, comparisons, "tydi")


def test_the_report_names_the_primary_answer_and_marks_cells_that_do_not_survive_holm():
  settings = [setting for setting, _ in study_report.SETTINGS]
  scores, comparisons = _three_sets(np.random.default_rng(1), settings, gap=0.06)
  table = study_stats.contrast_intervals(scores, PRIMARY, comparisons, "mlqa_r")
  cells = [cell for by_comparison in table.values() for by_setting in by_comparison.values()
           for cell in by_setting.values()]
  exploratory = [c for c in cells if c["role"] == study_stats.EXPLORATORY]
  survivors = [c for c in exploratory if c["holm_excludes_zero"]]
  lost = [c for c in exploratory if c["excludes_zero"] and not c["holm_excludes_zero"]]
  assert survivors and lost  # The case the marks are for.
  paragraph = study_report.answer_paragraph(table, {})
  assert ("The primary answer is each effect on MLQA-R, on the mean of the mono, cross and multi "
          "settings, with 95% intervals over queries (paired" in paragraph)
  assert "3 seeds per arm (t on Welch-Satterthwaite degrees of freedom)" in paragraph
  assert (f"The 48 other effects in the tables are exploratory (the per-setting effects, and every "
          f"effect on MIRACL and XQuAD-R): {len(survivors + lost)} exclude zero at 95%, "
          f"{len(survivors)} after Holm's adjustment over all 48" in paragraph)
  effects_table = "\n".join(study_report._effects_table(table))
  assert "| mean of settings (primary) |" in effects_table
  assert "**MIRACL** (nDCG@10, monolingual)" in effects_table and "**XQuAD-R**" in effects_table
  assert effects_table.count("~0 after Holm") == len(lost) + 1  # And once in the legend.
  assert effects_table.count("] ~0 |") == sum(not c["excludes_zero"] for c in cells)
