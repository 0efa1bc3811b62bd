"""From a registered task or mixture name to host-local numpy batches for the trainer.

Every (language, pair) question and passage of a split is tokenised once, through the seqio tasks,
into padded numpy arrays kept in memory (one table for all of a corpus's splits, filled as a split
is first asked for); a batch is then fancy indexing. Batches are a pure function of
(seed, step, host): a run restarted at step N sees what an uninterrupted run would.

  hybrid mixture (`{corpus}_hybrid`): `hybrid.HybridSampler`, following the input's
    `hybrid.HybridSchedule`, picks the kind, the languages and the pair ids; hosts draw the same
    kind and languages and disjoint examples.
  seqio task: one seeded permutation of its examples per epoch, sliced by step.
  seqio mixture: each example draws its task by mixing rate, then examples without repeats.
  Both are served from the corpus's mono-task tokens (a cross task's query_x, passage_y are the
  mono tasks' query_x and passage_y).

Every example carries a passage key: examples whose positive passages are the same tokens in some
language (several questions on one paragraph or sentence), or translations of such, share it, and
the loss does not contrast them as negatives.
"""
import hashlib
import weakref
from typing import Iterator, Mapping

import numpy as np
import seqio
import tensorflow as tf

from hybridir.data import hybrid
from hybridir import errors
from tasks import qa

FEATURES = ("query", "passage")
EXAMPLE = "example"  # BatchSpec.kind of a seqio task or mixture batch (no batch-level kind).
# Hybrid mixture -> {(query length, passage length): ({(feature, language): token table},
# the splits filled in)}.
_TOKEN_CACHE = weakref.WeakKeyDictionary()
# Hybrid mixture -> {(split, passage length): passage key of each integer pair id}.
_KEY_CACHE = weakref.WeakKeyDictionary()


def _check_lengths(task_feature_lengths: Mapping[str, int]) -> dict[str, int]:
  missing = [f for f in FEATURES if f not in task_feature_lengths]
  if missing:
    raise errors.SettingError(f"task_feature_lengths must give {list(FEATURES)}, missing "
                              f"{missing} in {dict(task_feature_lengths)}")
  for feature in FEATURES:
    length = task_feature_lengths[feature]
    if not isinstance(length, (int, np.integer)) or length < 2:
      raise errors.SettingError(f"task_feature_lengths[{feature!r}] must be an integer >= 2 "
                                f"(room for a token and the end token), found {length!r}")
  return {feature: int(task_feature_lengths[feature]) for feature in FEATURES}


class DualEncoderFeatureConverter(seqio.FeatureConverter):
  """Task features `query`, `passage` (token ids) to the model's `query_tokens`, `passage_tokens`.

  As seqio's converters do, it checks the task features (present, int32, rank 1, no longer than
  `task_feature_lengths`) and the model features (exactly their lengths); each text is padded with
  `pad_id`, never packed: a dual encoder embeds every text alone.
  """
  TASK_FEATURES = {feature: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)
                   for feature in FEATURES}
  MODEL_FEATURES = {f"{feature}_tokens": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)
                    for feature in FEATURES}
  PACKING_FEATURE_DTYPES = {}

  def __init__(self, pad_id: int = 0, pack: bool = False, **kwargs):
    if pack:
      raise ValueError("DualEncoderFeatureConverter: pack must be False (a dual encoder embeds "
                       "each text alone)")
    super().__init__(pack=False, **kwargs)
    self.pad_id = int(pad_id)

  def _convert_features(self, ds: tf.data.Dataset,
                        task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    def pad(example):  # (Longer texts were refused by the input validation before.)
      return {f"{feature}_tokens": tf.pad(
          example[feature],
          [[0, tf.maximum(task_feature_lengths[feature] - tf.size(example[feature]), 0)]],
          constant_values=self.pad_id) for feature in FEATURES}
    return ds.map(pad, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict[str, int]:
    return {f"{feature}_tokens": task_feature_lengths[feature] for feature in FEATURES}


def task_to_numpy(task: seqio.Task, task_feature_lengths: Mapping[str, int],
                  split: str | None = None) -> dict[str, np.ndarray]:
  """A QA task's examples, in order, as the model's padded `query_tokens` and `passage_tokens`
  ([examples, length] int32), through `DualEncoderFeatureConverter`."""
  lengths = _check_lengths(task_feature_lengths)
  converter = DualEncoderFeatureConverter(task.output_features[FEATURES[0]].vocabulary.pad_id)
  dataset = converter(task.get_dataset(lengths, split=split or task.splits[0], shuffle=False),
                      lengths)
  chunks = list(dataset.batch(1024).as_numpy_iterator())
  return {name: np.concatenate([c[name] for c in chunks]) if chunks else
          np.zeros((0, length), np.int32)
          for name, length in converter.get_model_feature_lengths(lengths).items()}


class HybridInput:
  """Host-local numpy batches of a hybrid mixture, seqio task or seqio mixture.

  Args:
    mixture_or_task_name: a `{corpus}_hybrid` mixture, or a task or mixture of one corpus's QA
      tasks (`{corpus}_mono_de`, `{corpus}_all_mix`, ...); see `tasks.register_parallel_qa`.
    task_feature_lengths: {'query': query_length, 'passage': passage_length}.
    schedule: how batches are drawn (checked when it was made): its batch_size is GLOBAL, each
      host gets batch_size // host_count examples. A seqio task or mixture uses only its
      batch_size and seed; the rest (alpha, temperatures, ...) is a hybrid mixture's.
    host_index, host_count: this host and the number of hosts.
    split: the seqio split of the corpus to serve ('train', 'validation', ...).
  """

  def __init__(self, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
               schedule: hybrid.HybridSchedule, host_index: int = 0, host_count: int = 1,
               split: str = qa.TRAIN):
    self.task_feature_lengths = _check_lengths(task_feature_lengths)
    if not isinstance(schedule, hybrid.HybridSchedule):
      raise errors.SettingError(f"schedule must be a hybrid.HybridSchedule, found {schedule!r}")
    hybrid.check_hosts(schedule.batch_size, host_index, host_count)
    self.name, self.split, self.schedule = mixture_or_task_name, split, schedule
    self.batch_size, self.seed = schedule.batch_size, schedule.seed
    self.host_index, self.host_count = int(host_index), int(host_count)
    self.local_batch_size = self.batch_size // self.host_count
    if self.name in qa.hybrid_mixture_names():
      self._corpus = qa.get_hybrid_mixture(self.name)
      self._check_split(self._corpus)
      self._sampler = self._corpus.sampler(schedule, split)
    else:
      self._corpus = self._load_seqio(self.name)
      self._sampler = None
    self.vocabulary, self.family = self._corpus.vocabulary, self._corpus.family
    self.vocabulary_path = self._corpus.spm_path  # The file a run copies (run_dir.describe).
    self.text_format = self._corpus.text_format  # What an encoder of this training must apply.
    self._tokens = _token_tables(self._corpus, self.task_feature_lengths, split)
    self.passage_keys = _passage_keys(self._corpus, self._tokens,
                                      self.task_feature_lengths["passage"], split)

  def _check_split(self, corpus: qa.HybridMixture) -> None:
    if self.split not in corpus.splits:
      raise errors.SettingError(f"split must be one of {list(corpus.splits)} (the splits "
                                f"{self.name!r} was registered with), found {self.split!r}")

  def _load_seqio(self, name: str) -> qa.HybridMixture:
    """Checks a seqio task or mixture and notes its tasks; returns the corpus they come from."""
    try:
      provider = seqio.get_mixture_or_task(name)
    except ValueError:
      raise errors.SettingError(f"unknown task or mixture {name!r}; hybrid mixtures: "
                                f"{qa.hybrid_mixture_names()} (register a corpus with "
                                "tasks.register_parallel_qa first)") from None
    subtasks = seqio.get_subtasks(provider)
    for task in subtasks:
      if not isinstance(task, qa.ParallelQATask):
        raise ValueError(f"task {task.name!r} (in {name!r}) is not a parallel QA task: "
                         "HybridInput needs query, passage and pair_id examples from "
                         "tasks.register_parallel_qa")
    owners = {task.hybrid for task in subtasks}
    if len(owners) > 1:
      raise ValueError(f"{name!r} mixes tasks of {len(owners)} corpora "
                       f"({sorted(o.name for o in owners)}); HybridInput serves one")
    corpus = owners.pop()
    self._check_split(corpus)
    # (query language, passage language, integer pair ids in the task's order) per task.
    self._tasks = [(task.query_language, task.passage_language,
                    corpus.rows(task.pair_ids[self.split])) for task in subtasks]
    self._sizes = np.array([len(rows) for _, _, rows in self._tasks])
    self._rates = None
    if isinstance(provider, seqio.Mixture):
      rates = np.array([provider.get_rate(task) for task in subtasks], np.float64)
      self._rates = rates / rates.sum()
    if self.batch_size > self._sizes.sum():
      raise errors.SettingError(f"batch_size {self.batch_size} is larger than the "
                                f"{self._sizes.sum()} examples of {name!r}, split "
                                f"{self.split!r}")
    return corpus

  def _seqio_global(self, step: int) -> list[tuple[int, int]]:
    """(task index, example index) of each example of the global batch at `step`."""
    sizes = self._sizes
    if self._rates is None:  # One task: seeded epochs without repeats.
      epoch, slot = divmod(step, sizes[0] // self.batch_size)
      order = np.random.default_rng([self.seed, epoch, 2]).permutation(sizes[0])
      return [(0, int(i)) for i in order[slot * self.batch_size:(slot + 1) * self.batch_size]]
    rng = np.random.default_rng([self.seed, step, 2])
    counts = rng.multinomial(self.batch_size, self._rates)
    while np.any(counts > sizes):  # A small task cannot give more than it has: move the excess.
      over = int(np.argmax(counts - sizes))
      counts[over] -= 1
      counts[int(rng.choice(np.flatnonzero(counts < sizes)))] += 1
    picks = [(t, int(i)) for t, count in enumerate(counts)
             for i in rng.choice(sizes[t], size=count, replace=False)]
    return [picks[i] for i in rng.permutation(len(picks))]

  def batch_spec(self, step: int) -> hybrid.BatchSpec:
    """This host's batch at `step`: kind, languages and string pair ids (for logging)."""
    if not isinstance(step, (int, np.integer)) or step < 0:
      raise errors.SettingError(f"step must be a non-negative integer, found {step!r}")
    step = int(step)
    if self._sampler is not None:
      return self._sampler.batch(step, self.host_index, self.host_count)
    share = self.local_batch_size
    picks = self._seqio_global(step)[self.host_index * share:(self.host_index + 1) * share]
    query_languages = [self._tasks[t][0] for t, _ in picks]
    passage_languages = [self._tasks[t][1] for t, _ in picks]
    query_language = query_languages[0] if len(set(query_languages)) == 1 else hybrid.MIXED
    passage_language = passage_languages[0] if len(set(passage_languages)) == 1 else hybrid.MIXED
    pair_ids = tuple(self._corpus.pair_ids[self._tasks[t][2][i]] for t, i in picks)
    sources = {self._corpus.corpus.pairs[x][i].source for x, i in zip(query_languages, pair_ids)}
    return hybrid.BatchSpec(step, EXAMPLE, query_language, passage_language, pair_ids,
                            tuple(query_languages), tuple(passage_languages),
                            sources.pop() if len(sources) == 1 else hybrid.MIXED)

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """{query_tokens [local, Lq], passage_tokens [local, Lp], pair_ids [local],
    passage_keys [local]}, int32."""
    spec = self.batch_spec(step)
    rows = self._corpus.rows(spec.pair_ids)
    return {"query_tokens": self._gather("query", spec.query_languages, rows),
            "passage_tokens": self._gather("passage", spec.passage_languages, rows),
            "pair_ids": rows.astype(np.int32),
            "passage_keys": self.passage_keys[rows]}

  def _gather(self, feature: str, languages: tuple[str, ...], rows: np.ndarray) -> np.ndarray:
    if len(set(languages)) == 1:
      return self._tokens[feature, languages[0]][rows]
    out = np.empty((len(rows), self.task_feature_lengths[feature]), np.int32)
    languages = np.asarray(languages)
    for language in set(languages.tolist()):
      mask = languages == language
      out[mask] = self._tokens[feature, language][rows[mask]]
    return out

  def identity(self) -> dict:
    """What defines this data stream (stored with a run's checkpoints; see trainer.train)."""
    settings = self._sampler.settings() if self._sampler is not None else {}
    vocabulary = getattr(self.vocabulary, "sp_model", None)
    identity = {"input": self.name, "batch_size": self.batch_size, "seed": self.seed,
                "languages": sorted(self._corpus.languages), "sampler": settings,
                "vocabulary_sha256": hashlib.sha256(vocabulary).hexdigest() if vocabulary else None}
    if self.split != qa.TRAIN:  # Named when not the default, so earlier runs resume unchanged.
      identity["split"] = self.split
    return identity

  def iterate(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Batches from `start_step` on, forever."""
    step = start_step
    while True:
      yield self.batch(step)
      step += 1

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self.iterate(0)


def _token_tables(corpus: qa.HybridMixture, task_feature_lengths: Mapping[str, int], split: str):
  """{(feature, language): [num pair ids, length] int32}, rows by integer pair id, padded.

  One table per corpus and lengths for all its splits: a split's rows are tokenised through the
  corpus's mono seqio tasks the first time it is asked for.
  """
  lengths = (task_feature_lengths["query"], task_feature_lengths["passage"])
  pad, size = corpus.vocabulary.pad_id, len(corpus.pair_ids)
  tokens, filled = _TOKEN_CACHE.setdefault(corpus, {}).setdefault(lengths, ({}, set()))
  if split not in filled:
    for language, task in corpus.mono_tasks.items():
      arrays = task_to_numpy(task, task_feature_lengths, split)
      rows = corpus.rows(task.pair_ids[split])
      for feature in FEATURES:
        table = tokens.setdefault((feature, language), np.full(
            (size, task_feature_lengths[feature]), pad, np.int32))
        table.flags.writeable = True
        table[rows] = arrays[f"{feature}_tokens"]
        table.flags.writeable = False
    filled.add(split)
  return tokens


def _passage_keys(corpus: qa.HybridMixture, tokens, passage_length: int,
                  split: str) -> np.ndarray:
  """[num pair ids] int32: the passage key of each integer pair id of a split, cached per split
  and passage length.

  Pair ids are linked when, in some language, their passages are the same tokens (what the
  encoder sees); a key is the smallest pair id of its linked group, so it is language-independent
  and every translation of an item has it.
  """
  cached = _KEY_CACHE.setdefault(corpus, {})
  if (split, passage_length) not in cached:
    keys = np.arange(len(corpus.pair_ids), dtype=np.int64)
    groups = []  # (rows of one language, the group of identical passages of each row).
    for language in corpus.mono_tasks:
      rows = corpus.rows(corpus.corpora[split].pairs[language])
      if not len(rows):
        continue
      _, group = np.unique(tokens["passage", language][rows], axis=0, return_inverse=True)
      groups.append((rows, group.reshape(-1)))
    while True:  # Each group takes its smallest key, until no key changes (linked groups agree).
      before = keys.copy()
      for rows, group in groups:
        smallest = np.full(group.max() + 1, len(keys), np.int64)
        np.minimum.at(smallest, group, keys[rows])
        keys[rows] = smallest[group]
      if np.array_equal(keys, before):
        break
    keys = keys.astype(np.int32)
    keys.flags.writeable = False
    cached[split, passage_length] = keys
  return cached[split, passage_length]
