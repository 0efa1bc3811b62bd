"""The hybrid batch schedule: which source, which batch kind, which languages and which examples.

The batches of Elmahdy et al. 2024 (arXiv 2408.10536): each global batch comes from one
source dataset, drawn with probability proportional to its size (flattened by a temperature), and
is monolingual (X-X-mono: queries and passages in one language, drawn uniformly) with probability
`alpha`, else cross-lingual (X-Y: every example draws its own (x, y), x != y, so a batch mixes
language pairs). The schedule is a pure function of (seed, step): every host computes the same
global batch and keeps its own slice, and a run restarted at step N sees the batches an
uninterrupted run would. A batch's settings are one `HybridSchedule`, checked when it is made (a
gin run binds it beside BATCH_SIZE); `HybridSampler` draws a corpus's batches by it. No TensorFlow,
no JAX.
"""
import dataclasses
import logging

import numpy as np

from hybridir.data import corpora
from hybridir import errors

MONO, CROSS, MIXED = "mono", "cross", "mixed"
LANGUAGE_SAMPLINGS = ("uniform", "size")
# X-Y batches: each example its own (x, y) pair (the paper's), or one (x, y) for the whole batch.
CROSS_PAIRS = ("per_example", "per_batch")
_MAX_REDRAWS = 64  # Redraws of a duplicate example before listing what is left in its pool.


@dataclasses.dataclass(frozen=True)
class BatchSpec:
  """One host's share of a batch: kind, source, languages and the pair ids of its examples.

  `query_language`/`passage_language` are "mixed" when examples of one batch differ in language;
  `query_languages`/`passage_languages` always give each example's languages. `source` is the
  source dataset of every example ("mixed" for a seqio mixture drawing from several).
  """
  step: int
  kind: str
  query_language: str
  passage_language: str
  pair_ids: tuple[str, ...]
  query_languages: tuple[str, ...]
  passage_languages: tuple[str, ...]
  source: str


@dataclasses.dataclass(frozen=True)
class _Config:
  """A (query language, passage language) and the pair ids (as indices) present in both."""
  query_language: str
  passage_language: str
  pool: np.ndarray


@dataclasses.dataclass(frozen=True)
class _Source:
  """One source dataset: its size (pair ids), mono and cross configs and their draw weights."""
  name: str
  size: int
  configs: tuple[list[_Config], list[_Config]]  # (mono, cross)
  cumulative: tuple[np.ndarray, np.ndarray]


def _cumulative(weights) -> np.ndarray:
  cumulative = np.cumsum(np.asarray(weights, np.float64))
  return cumulative / cumulative[-1]


def _language_cumulative(configs: list[_Config], language_sampling: str,
                         temperature: float) -> np.ndarray:
  """Uniform over configs, or proportional to pool size ** (1 / temperature)."""
  if not configs:
    return np.ones(0)
  if language_sampling == "uniform":
    return _cumulative(np.ones(len(configs)))
  return _cumulative(np.asarray([len(c.pool) for c in configs], np.float64) ** (1.0 / temperature))


def _make_source(name: str, rows: np.ndarray, language_rows: dict[str, np.ndarray],
                 language_sampling: str, language_temperature: float, named: bool) -> _Source:
  """A source dataset's configs from its rows (indices of its pair ids) and each language's rows."""
  available = {language: np.isin(rows, all_rows) for language, all_rows in language_rows.items()}
  mono = [_Config(x, x, rows[available[x]]) for x in language_rows if available[x].any()]
  cross = [_Config(x, y, pool) for x in language_rows for y in language_rows if x != y
           for pool in [rows[available[x] & available[y]]] if len(pool)]
  unused = len(mono) * (len(mono) - 1) - len(cross)
  if unused:
    logging.getLogger(__name__).warning("%d language pairs%s share no pair id: unused", unused,
                                        f" in source {name!r}" if named else "")
  cumulative = tuple(_language_cumulative(c, language_sampling, language_temperature)
                     for c in (mono, cross))
  return _Source(name, len(rows), (mono, cross), cumulative)


def check_hosts(batch_size: int, host_index: int, host_count: int) -> None:
  """Fails unless this host is one of `host_count` and the global batch divides among them."""
  if not isinstance(host_count, (int, np.integer)) or host_count < 1:
    raise errors.SettingError(f"host_count must be a positive integer, found {host_count!r}")
  if not isinstance(host_index, (int, np.integer)) or not 0 <= host_index < host_count:
    raise errors.SettingError(f"host_index must be in [0, {host_count}), found {host_index!r}")
  if batch_size % host_count:
    raise errors.SettingError(f"batch_size {batch_size} is not divisible by host_count "
                              f"{host_count}")


def _is_integer(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, (float, np.floating)) or _is_integer(value)


@dataclasses.dataclass(frozen=True)
class HybridSchedule:
  """The batch recipe, bound once beside BATCH_SIZE and given to the input; checked when made.

  Args:
    batch_size: the global batch size, over all hosts.
    alpha: probability of a monolingual batch (the paper's best: 0.5).
    cross_pairs: "per_example" (the paper's X-Y: each example draws its own (x, y), x != y) or
      "per_batch" (one (x, y) pair for the whole batch; not the paper's).
    mono_mixed_languages: each example of a mono batch draws its own language (not the paper's).
    language_sampling: languages (pairs) drawn "uniform"ly (the paper's) or by number of pairs.
    language_temperature: language_sampling="size" draws ~ size ** (1 / language_temperature).
    source_temperature: a source is drawn with probability ~ its number of pair ids ** (1 / T).
    seed: the schedule's seed.
    allow_parallel_duplicates: in per-example batches, let one pair id appear in different
      languages (translations of one item in one batch: false negatives unless masked).
  """
  batch_size: int
  alpha: float = 0.5
  cross_pairs: str = "per_example"
  mono_mixed_languages: bool = False
  language_sampling: str = "uniform"
  language_temperature: float = 1.0
  source_temperature: float = 1.0
  seed: int = 0
  allow_parallel_duplicates: bool = False

  def __post_init__(self):
    def fail(name: str, expected: str):
      raise errors.SettingError(f"HybridSchedule.{name} must be {expected}, found "
                                f"{getattr(self, name)!r}")

    if not _is_integer(self.batch_size) or self.batch_size < 1:
      fail("batch_size", "a positive integer")
    if self.alpha == "by_size":
      raise errors.SettingError(
          "HybridSchedule.alpha='by_size' was removed: alpha is the probability of a monolingual "
          "batch (a number in [0, 1]; the paper's 0.5), and every batch is drawn from one source "
          "dataset by size (source_temperature)")
    if not _is_number(self.alpha) or not 0 <= self.alpha <= 1:
      fail("alpha", "in [0, 1] (the probability of a monolingual batch)")
    if self.cross_pairs not in CROSS_PAIRS:
      fail("cross_pairs", f"one of {CROSS_PAIRS}")
    if self.language_sampling not in LANGUAGE_SAMPLINGS:
      fail("language_sampling", f"one of {LANGUAGE_SAMPLINGS}")
    for name in ("language_temperature", "source_temperature"):
      if not _is_number(getattr(self, name)) or not getattr(self, name) > 0:
        fail(name, "positive")
    if not _is_integer(self.seed) or self.seed < 0:
      fail("seed", "a non-negative integer")
    for name in ("mono_mixed_languages", "allow_parallel_duplicates"):
      if not isinstance(getattr(self, name), (bool, np.bool_)):
        fail(name, "True or False")
    for name, kind in (("batch_size", int), ("seed", int), ("alpha", float),
                       ("language_temperature", float), ("source_temperature", float),
                       ("mono_mixed_languages", bool), ("allow_parallel_duplicates", bool)):
      object.__setattr__(self, name, kind(getattr(self, name)))


class HybridSampler:
  """Draws hybrid (X-X-mono / X-Y) batches of parallel QA pairs, one source dataset per batch.

  Args:
    corpus: the parallel training corpus (its pairs' `source` names their source dataset).
    schedule: the batch recipe (checked when it was made); the sampler checks only that the
      corpus can make its batches.

  The source is drawn among those that can make the batch kind drawn (an English-only source
  makes no X-Y batch); when every source can make both kinds, source and kind are independent.
  """

  def __init__(self, corpus: corpora.ParallelCorpus, schedule: HybridSchedule):
    if not isinstance(schedule, HybridSchedule):
      raise errors.SettingError(f"schedule must be a hybrid.HybridSchedule, found {schedule!r}")
    self.schedule = schedule
    self._pair_ids = np.asarray(corpus.pair_ids(), dtype=object)
    index = {pair_id: i for i, pair_id in enumerate(self._pair_ids)}
    sources = corpus.sources()
    language_rows = {language: np.fromiter((index[i] for i in corpus.pairs[language]), np.int64)
                     for language in corpus.languages}
    self._sources = [
        _make_source(name, np.array([index[i] for i in ids], np.int64), language_rows,
                     schedule.language_sampling, schedule.language_temperature,
                     len(sources) > 1)
        for name, ids in sources.items()]
    # Per kind: the sources that can make it and their cumulative draw probabilities.
    self._eligible, self._source_cumulative = [], []
    for kind, needed in ((0, schedule.alpha > 0), (1, schedule.alpha < 1)):
      eligible = [i for i, s in enumerate(self._sources) if s.configs[kind]]
      if needed and not eligible:
        raise errors.SettingError(
            f"no {('language', 'language pair')[kind]} has any pair ids, so no batch of this "
            f"kind can be drawn; cross-lingual batches need two languages sharing ids "
            f"(or alpha=1), found alpha={schedule.alpha}")
      if needed and len(eligible) < len(self._sources):
        left_out = sorted(set(s.name for s in self._sources) -
                          {self._sources[i].name for i in eligible})
        logging.getLogger(__name__).warning("sources %s make no %s batch", left_out,
                                            (MONO, CROSS)[kind])
      for i in eligible if needed else ():
        self._check_pools(self._sources[i], kind, len(sources) > 1)
      self._eligible.append(eligible)
      self._source_cumulative.append(_cumulative(
          [self._sources[i].size ** (1.0 / schedule.source_temperature) for i in eligible]
      ) if eligible else np.ones(0))
    self._permutations = {}
    self._last_global = None

  @property
  def batch_size(self) -> int:
    return self.schedule.batch_size

  def settings(self) -> dict:
    """The schedule under the names a run's identity has always stored (checkpoints resume)."""
    s = self.schedule
    return {"batch_size": s.batch_size, "seed": s.seed, "alpha_mono": s.alpha,
            "mono_mixed_languages": s.mono_mixed_languages, "cross_pairs": s.cross_pairs,
            "language_sampling": s.language_sampling,
            "language_temperature": s.language_temperature,
            "source_temperature": s.source_temperature,
            "allow_parallel_duplicates": s.allow_parallel_duplicates}

  def _per_example(self, kind: int) -> bool:
    schedule = self.schedule
    return schedule.mono_mixed_languages if kind == 0 else schedule.cross_pairs == "per_example"

  def _check_pools(self, source: _Source, kind: int, name_source: bool) -> None:
    """Fails early when no batch of this kind can be drawn without repeats."""
    what = ("language", "language pair")[kind]
    where = f" of source {source.name!r}" if name_source else ""
    configs = source.configs[kind]
    if self._per_example(kind):
      union = len(set().union(*(c.pool.tolist() for c in configs)))
      if union < self.batch_size and not self.schedule.allow_parallel_duplicates:
        raise errors.SettingError(f"batch_size {self.batch_size} is larger than the {union} pair "
                                  f"ids available over all {what}s{where}")
      return
    for c in configs:
      if len(c.pool) < self.batch_size:
        raise errors.SettingError(
            f"batch_size {self.batch_size} is larger than the {len(c.pool)} pair ids available "
            f"for {what} ({c.query_language}, {c.passage_language}){where}")

  def _epoch_slice(self, source: int, kind: int, config_index: int, step: int) -> np.ndarray:
    """Slice `step` of the pool's walk through per-epoch permutations: no repeats in an epoch."""
    pool = self._sources[source].configs[kind][config_index].pool
    epoch, slot = divmod(step, len(pool) // self.batch_size)
    key = (source, kind, config_index, epoch)
    if key not in self._permutations:
      if len(self._permutations) > 1024:
        self._permutations.clear()
      rng = np.random.default_rng([self.schedule.seed, kind, config_index, epoch, 1, source])
      self._permutations[key] = rng.permutation(pool)
    return self._permutations[key][slot * self.batch_size:(slot + 1) * self.batch_size]

  def _draw_per_example(self, rng: np.random.Generator, configs: list[_Config],
                        choices: np.ndarray) -> np.ndarray:
    """One pair id per example from its config's pool; a pair id once per batch by default."""
    picks = np.empty(len(choices), np.int64)
    seen = set()
    key_of = lambda pick, c: (pick, c) if self.schedule.allow_parallel_duplicates else pick
    for slot, (c, u) in enumerate(zip(choices, rng.random(len(choices)))):
      pool = configs[c].pool
      pick = pool[int(u * len(pool))]
      for _ in range(_MAX_REDRAWS):
        if key_of(pick, c) not in seen:
          break
        pick = pool[rng.integers(len(pool))]
      else:
        left = [p for p in pool if key_of(p, c) not in seen]
        if not left:
          raise errors.SettingError(
              f"step batch needs more distinct pair ids than the {len(pool)} of "
              f"({configs[c].query_language}, {configs[c].passage_language}); lower batch_size")
        pick = left[rng.integers(len(left))]
      seen.add(key_of(pick, c))
      picks[slot] = pick
    return picks

  def global_batch(self, step: int) -> BatchSpec:
    """The whole batch at `step`, over all hosts."""
    if not isinstance(step, (int, np.integer)) or step < 0:
      raise errors.SettingError(f"step must be a non-negative integer, found {step!r}")
    if self._last_global is not None and self._last_global.step == step:
      return self._last_global
    rng = np.random.default_rng([self.schedule.seed, int(step)])
    kind = 0 if rng.random() < self.schedule.alpha else 1
    eligible = self._eligible[kind]
    source_index = eligible[int(np.searchsorted(self._source_cumulative[kind], rng.random(),
                                                side="right"))]
    source = self._sources[source_index]
    configs, cumulative = source.configs[kind], source.cumulative[kind]
    if self._per_example(kind):
      choices = np.searchsorted(cumulative, rng.random(self.batch_size), side="right")
      indices = self._draw_per_example(rng, configs, choices)
      query_language = passage_language = MIXED
      query_languages = tuple(configs[c].query_language for c in choices)
      passage_languages = tuple(configs[c].passage_language for c in choices)
    else:
      choice = int(np.searchsorted(cumulative, rng.random(), side="right"))
      indices = self._epoch_slice(source_index, kind, choice, int(step))
      query_language = configs[choice].query_language
      passage_language = configs[choice].passage_language
      query_languages = (query_language,) * self.batch_size
      passage_languages = (passage_language,) * self.batch_size
    spec = BatchSpec(int(step), (MONO, CROSS)[kind], query_language, passage_language,
                     tuple(self._pair_ids[indices]), query_languages, passage_languages,
                     source.name)
    self._last_global = spec
    return spec

  def batch(self, step: int, host_index: int = 0, host_count: int = 1) -> BatchSpec:
    """This host's share of the batch at `step`: slice `host_index` of the global batch."""
    check_hosts(self.batch_size, host_index, host_count)
    spec = self.global_batch(step)
    if host_count == 1:
      return spec
    share = self.batch_size // host_count
    part = slice(host_index * share, (host_index + 1) * share)
    return dataclasses.replace(spec, pair_ids=spec.pair_ids[part],
                               query_languages=spec.query_languages[part],
                               passage_languages=spec.passage_languages[part])
