"""The hybrid batch schedule: which batch kind, which language (pair) and which examples.

Each global batch is monolingual (queries and passages in one language) with probability
`alpha_mono`, else cross-lingual (queries in x, passages in y, x != y). The schedule is a pure
function of (seed, step): every host computes the same global batch and keeps its own slice, and a
run restarted at step N sees the batches an uninterrupted run would. No TensorFlow, no JAX.
"""
import dataclasses
import logging

import numpy as np

from hybridir import corpora

MONO, CROSS, MIXED = "mono", "cross", "mixed"
LANGUAGE_SAMPLINGS = ("uniform", "size")
_MAX_REDRAWS = 64  # Redraws of a duplicate example before listing what is left in its pool.


@dataclasses.dataclass(frozen=True)
class BatchSpec:
  """One host's share of a batch: kind, languages and the pair ids of its examples.

  `query_language`/`passage_language` are "mixed" when examples of one batch differ in language;
  `query_languages`/`passage_languages` always give each example's languages.
  """
  step: int
  kind: str
  query_language: str
  passage_language: str
  pair_ids: tuple[str, ...]
  query_languages: tuple[str, ...]
  passage_languages: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class _Config:
  """A (query language, passage language) and the pair ids (as indices) present in both."""
  query_language: str
  passage_language: str
  pool: np.ndarray


def _cumulative(sizes: list[int], language_sampling: str, temperature: float) -> np.ndarray:
  """Cumulative probabilities: uniform, or proportional to size ** (1 / temperature)."""
  if language_sampling == "uniform":
    weights = np.ones(len(sizes))
  else:
    weights = np.asarray(sizes, np.float64) ** (1.0 / temperature)
  cumulative = np.cumsum(weights)
  return cumulative / cumulative[-1]


class HybridSampler:
  """Draws hybrid (mono / cross-lingual) batches of parallel QA pairs.

  Args:
    corpus: the parallel training corpus.
    batch_size: the global batch size, over all hosts.
    alpha: probability of a monolingual batch, or "by_size": the share of mono among all
      (example, language pair) combinations, mono ** (1/T) / (mono ** (1/T) + cross ** (1/T)).
    temperature: T above, also used by language_sampling="size" (probability ~ size ** (1/T)).
    mono_mixed_languages: each example of a mono batch draws its own language.
    cross_mixed_pairs: each example of a cross batch draws its own (x, y) pair.
    language_sampling: languages (pairs) drawn "uniform"ly or by number of available pairs.
    seed: the schedule's seed.
    allow_parallel_duplicates: in mixed batches, let one pair id appear in different languages.
  """

  def __init__(self, corpus: corpora.ParallelCorpus, batch_size: int,
               alpha: float | str = 0.5, temperature: float = 1.0,
               mono_mixed_languages: bool = False, cross_mixed_pairs: bool = False,
               language_sampling: str = "uniform", seed: int = 0,
               allow_parallel_duplicates: bool = False):
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
      raise ValueError(f"batch_size must be a positive integer, found {batch_size!r}")
    if language_sampling not in LANGUAGE_SAMPLINGS:
      raise ValueError(f"language_sampling must be one of {LANGUAGE_SAMPLINGS}, "
                       f"found {language_sampling!r}")
    if not temperature > 0:
      raise ValueError(f"temperature must be positive, found {temperature!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
      raise ValueError(f"seed must be a non-negative integer, found {seed!r}")
    self.batch_size = int(batch_size)
    self.seed = int(seed)
    self.mono_mixed_languages = mono_mixed_languages
    self.cross_mixed_pairs = cross_mixed_pairs
    self.allow_parallel_duplicates = allow_parallel_duplicates
    self._pair_ids = np.asarray(corpus.pair_ids(), dtype=object)
    index = {pair_id: i for i, pair_id in enumerate(self._pair_ids)}
    available = {language: np.zeros(len(index), bool) for language in corpus.languages}
    for language in corpus.languages:
      available[language][[index[i] for i in corpus.pairs[language]]] = True
    self._mono = [_Config(x, x, np.flatnonzero(available[x])) for x in corpus.languages]
    self._cross = []
    for x in corpus.languages:
      for y in corpus.languages:
        pool = np.flatnonzero(available[x] & available[y])
        if x != y and len(pool):
          self._cross.append(_Config(x, y, pool))
        elif x != y:
          logging.getLogger(__name__).warning("no pair id is in both %s and %s: pair unused", x, y)
    self.alpha_mono = self._resolve_alpha(alpha, temperature)
    self._mono_cumulative = _cumulative([len(c.pool) for c in self._mono], language_sampling,
                                        temperature)
    self._cross_cumulative = (_cumulative([len(c.pool) for c in self._cross], language_sampling,
                                          temperature) if self._cross else np.ones(0))
    if self.alpha_mono > 0:
      self._check_pools(self._mono, mono_mixed_languages, "language")
    if self.alpha_mono < 1:
      self._check_pools(self._cross, cross_mixed_pairs, "language pair")
    self._permutations = {}
    self._last_global = None

  def _resolve_alpha(self, alpha: float | str, temperature: float) -> float:
    if alpha == "by_size":
      mono = sum(len(c.pool) for c in self._mono) ** (1.0 / temperature)
      cross = sum(len(c.pool) for c in self._cross) ** (1.0 / temperature)
      return mono / (mono + cross)
    if isinstance(alpha, str) or not 0 <= alpha <= 1:
      raise ValueError(f"alpha must be in [0, 1] or 'by_size', found {alpha!r}")
    return float(alpha)

  def _check_pools(self, configs: list[_Config], mixed: bool, what: str) -> None:
    """Fails early when no batch of this kind can be drawn without repeats."""
    if not configs:
      raise ValueError(f"no {what} has any pair ids, so no batch of this kind can be drawn; "
                       f"cross-lingual batches need two languages sharing ids (or alpha=1)")
    if mixed:
      union = len(set().union(*(c.pool.tolist() for c in configs)))
      if union < self.batch_size and not self.allow_parallel_duplicates:
        raise ValueError(f"batch_size {self.batch_size} is larger than the {union} pair ids "
                         f"available over all {what}s")
      return
    for c in configs:
      if len(c.pool) < self.batch_size:
        raise ValueError(f"batch_size {self.batch_size} is larger than the {len(c.pool)} pair ids "
                         f"available for {what} ({c.query_language}, {c.passage_language})")

  def _epoch_permutation(self, kind: int, config_index: int, epoch: int) -> np.ndarray:
    key = (kind, config_index, epoch)
    if key not in self._permutations:
      if len(self._permutations) > 1024:
        self._permutations.clear()
      pool = (self._mono if kind == 0 else self._cross)[config_index].pool
      rng = np.random.default_rng([self.seed, kind, config_index, epoch, 1])
      self._permutations[key] = rng.permutation(pool)
    return self._permutations[key]

  def _epoch_slice(self, kind: int, config_index: int, step: int) -> np.ndarray:
    """Slice `step` of the pool's walk through per-epoch permutations: no repeats in an epoch."""
    pool = (self._mono if kind == 0 else self._cross)[config_index].pool
    epoch, slot = divmod(step, len(pool) // self.batch_size)
    permutation = self._epoch_permutation(kind, config_index, epoch)
    return permutation[slot * self.batch_size:(slot + 1) * self.batch_size]

  def _draw_mixed(self, rng: np.random.Generator, configs: list[_Config],
                  choices: np.ndarray) -> np.ndarray:
    """One pair id per example from its config's pool; a pair id once per batch by default."""
    picks = np.empty(len(choices), np.int64)
    seen = set()
    for slot, (c, u) in enumerate(zip(choices, rng.random(len(choices)))):
      pool = configs[c].pool
      pick = pool[int(u * len(pool))]
      key = (pick, c) if self.allow_parallel_duplicates else pick
      for _ in range(_MAX_REDRAWS):
        if key not in seen:
          break
        pick = pool[rng.integers(len(pool))]
        key = (pick, c) if self.allow_parallel_duplicates else pick
      else:
        left = [p for p in pool if ((p, c) if self.allow_parallel_duplicates else p) not in seen]
        if not left:
          raise ValueError(f"step batch needs more distinct pair ids than the {len(pool)} of "
                           f"({configs[c].query_language}, {configs[c].passage_language}); "
                           "lower batch_size")
        pick = left[rng.integers(len(left))]
        key = (pick, c) if self.allow_parallel_duplicates else pick
      seen.add(key)
      picks[slot] = pick
    return picks

  def global_batch(self, step: int) -> BatchSpec:
    """The whole batch at `step`, over all hosts."""
    if not isinstance(step, (int, np.integer)) or step < 0:
      raise ValueError(f"step must be a non-negative integer, found {step!r}")
    if self._last_global is not None and self._last_global.step == step:
      return self._last_global
    rng = np.random.default_rng([self.seed, int(step)])
    kind = 0 if rng.random() < self.alpha_mono else 1
    configs, cumulative = ((self._mono, self._mono_cumulative) if kind == 0 else
                           (self._cross, self._cross_cumulative))
    if (self.mono_mixed_languages, self.cross_mixed_pairs)[kind]:
      choices = np.searchsorted(cumulative, rng.random(self.batch_size), side="right")
      indices = self._draw_mixed(rng, configs, choices)
      query_language = passage_language = MIXED
      query_languages = tuple(configs[c].query_language for c in choices)
      passage_languages = tuple(configs[c].passage_language for c in choices)
    else:
      choice = int(np.searchsorted(cumulative, rng.random(), side="right"))
      indices = self._epoch_slice(kind, choice, int(step))
      query_language = configs[choice].query_language
      passage_language = configs[choice].passage_language
      query_languages = (query_language,) * self.batch_size
      passage_languages = (passage_language,) * self.batch_size
    spec = BatchSpec(int(step), (MONO, CROSS)[kind], query_language, passage_language,
                     tuple(self._pair_ids[indices]), query_languages, passage_languages)
    self._last_global = spec
    return spec

  def batch(self, step: int, host_index: int = 0, host_count: int = 1) -> BatchSpec:
    """This host's share of the batch at `step`: slice `host_index` of the global batch."""
    if host_count < 1 or not 0 <= host_index < host_count:
      raise ValueError(f"host_index must be in [0, host_count), found {host_index} of "
                       f"{host_count}")
    if self.batch_size % host_count:
      raise ValueError(f"batch_size {self.batch_size} is not divisible by host_count "
                       f"{host_count}")
    spec = self.global_batch(step)
    if host_count == 1:
      return spec
    share = self.batch_size // host_count
    part = slice(host_index * share, (host_index + 1) * share)
    return dataclasses.replace(spec, pair_ids=spec.pair_ids[part],
                               query_languages=spec.query_languages[part],
                               passage_languages=spec.passage_languages[part])
