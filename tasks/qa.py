"""SeqIO registrations of a parallel QA corpus: mono/cross-lingual tasks and their mixtures.

`register_parallel_qa("xquad", path, family, spm, splits=...)` registers, for languages l, x != y:

  xquad_mono_{l}       query_l, passage_l          xquad_mono_mix   mono tasks, rates by size
  xquad_cross_{x}_{y}  query_x, passage_y          xquad_cross_mix  cross tasks, rates by size
                                                   xquad_all_mix    both, rates by size
  xquad_hybrid         the corpus's record, a `HybridMixture`: a seqio Mixture of every task
                       whose batches are drawn whole, mono or cross (`HybridMixture.sampler`)

seqio's registries are the only ones: each task (`ParallelQATask`) knows its languages and its
corpus's `HybridMixture`, which holds data only, as seqio's tasks do: the corpus, its vocabulary
and text format. A corpus is registered once: its articles are parted into seqio splits (`train`,
and e.g. `validation` and `test`, drawn by `corpora.ParallelCorpus.select_articles`), and every
task and mixture serves each split. How batches are drawn (`hybrid.HybridSchedule`: alpha,
temperatures, batch size, seed) is the input's, not the registration's.

Every example holds `query` and `passage` (token ids of `hybridir.data.text.tokenize`: prefixes, the
passage unit, truncation and the vocabulary's special tokens (T5's EOS, XLM-R's <s> ... </s>,
BERT's [CLS] ... [SEP]), as `encoder.Encoder.encode` gives them; the strings the model reads are
kept as `*_pretokenized`), `pair_id` (the index of the string pair
id in the sorted ids of the whole corpus, so the same in every language and split) and
`query_language` / `passage_language`.
"""
import functools
from typing import Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from hybridir.data import corpora
from hybridir.data import hybrid
from hybridir.data import text as text_lib
from hybridir.data import vocab
from hybridir import fs

TRAIN = "train"  # The split a corpus trains on; every registration has it.


@functools.lru_cache(maxsize=None)
def get_vocabulary(family: str, spm_path: str) -> seqio.Vocabulary:
  """The family's seqio vocabulary (the kind its file is, among those the family registered with
  hybridir.data.vocab), loaded once per (family, path)."""
  vocab.family_kinds(family)  # An unknown family fails before a missing file.
  if not fs.isfile(spm_path):
    raise FileNotFoundError(f"spm_path {spm_path}: no such vocabulary file")
  return vocab.family_vocabulary(family, str(spm_path))


def output_features(family: str, spm_path: str, required: bool = True) -> dict[str, seqio.Feature]:
  """`query` and `passage` token ids ending in the family's end token (EOS, </s>, [SEP]).

  Evaluation tasks hold one of the two (`required=False`): a seqio Mixture needs equal features.
  """
  vocabulary = get_vocabulary(family, spm_path)
  return {name: seqio.Feature(vocabulary, add_eos=True, required=required, dtype=tf.int32)
          for name in ("query", "passage")}


def _tokenize_texts(dataset, sequence_length, output_features, text_format: text_lib.TextFormat):
  """`query`, and `passage` with its `passage_context`, to ids through text.tokenize."""

  def tokenize(role, length, vocabulary, text, context):
    string = text_lib.model_input(role, text.decode(), context.decode(), text_format)
    ids = text_lib.tokenize(vocabulary, role, text.decode(), context.decode(), length,
                            text_format)
    return np.asarray(ids, np.int32), np.asarray(string.encode())

  def map_fn(example):
    out = dict(example)
    for role in text_lib.ROLES:
      if role not in example:
        continue
      context = out.pop(f"{role}_context", tf.constant(""))
      length = (sequence_length or {}).get(role)
      ids, string = tf.numpy_function(
          functools.partial(tokenize, role, length, output_features[role].vocabulary),
          [example[role], context], [tf.int32, tf.string], stateful=False)
      ids.set_shape([None])
      string.set_shape([])
      out[role], out[f"{role}_pretokenized"] = ids, string
    return out

  return dataset.map(map_fn, num_parallel_calls=tf.data.AUTOTUNE)


def preprocessors(text_format: text_lib.TextFormat | None = None) -> list:
  """Tokenise through `text.tokenize` (prefixes, passage unit, truncation, special tokens)."""
  return [functools.partial(_tokenize_texts, text_format=text_format or text_lib.TextFormat())]


def function_source(examples_fn, num_examples: dict[str, int]) -> seqio.FunctionDataSource:
  """A seqio source of the splits `num_examples` names, from `examples_fn(split) -> dict of
  equal-length lists`."""

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed  # In-memory, ordered; shuffling is the input pipeline's job.
    return tf.data.Dataset.from_tensor_slices(examples_fn(split))

  return seqio.FunctionDataSource(dataset_fn, splits=tuple(num_examples),
                                  num_input_examples=dict(num_examples))


def registered(registry, kind: type) -> dict:
  """{name: provider} of the providers in a seqio registry (TaskRegistry, MixtureRegistry) that
  are `kind`s, e.g. every HybridMixture."""
  providers = {name: registry.get(name) for name in registry.names()}
  return {name: provider for name, provider in providers.items() if isinstance(provider, kind)}


def _rates_by_size(tasks: Sequence["ParallelQATask"]) -> list[tuple["ParallelQATask", int]]:
  """Each task with its number of training examples as its mixing rate (at least 1)."""
  return [(task, max(len(task.pair_ids[TRAIN]), 1)) for task in tasks]


def remove_providers(names: Sequence[str]) -> None:
  """Forgets tasks and mixtures (seqio raises on duplicate names)."""
  for name in names:
    seqio.MixtureRegistry.remove(name)
    seqio.TaskRegistry.remove(name)


class ParallelQATask(seqio.Task):
  """One (query language, passage language) task of a parallel QA corpus, e.g. `xquad_cross_de_en`.

  `hybrid` is the corpus's `HybridMixture`: the record the task's examples come from;
  `pair_ids[split]` are the string pair ids of each split's examples, in order.
  """

  def __init__(self, name: str, hybrid: "HybridMixture", query_language: str,
               passage_language: str, features: dict[str, seqio.Feature]):
    self.hybrid, self.query_language, self.passage_language = (hybrid, query_language,
                                                               passage_language)
    self.pair_ids = {split: hybrid.task_pair_ids(query_language, passage_language, split)
                     for split in hybrid.splits}
    sizes = {split: len(ids) for split, ids in self.pair_ids.items()}
    super().__init__(name, function_source(self._examples, sizes),
                     output_features=features, preprocessors=preprocessors(hybrid.text_format))

  def _examples(self, split: str) -> dict:
    hybrid, pair_ids = self.hybrid, self.pair_ids[split]
    queries = hybrid.corpus.pairs[self.query_language]
    passages = [text_lib.passage_parts(hybrid.corpus.pairs[self.passage_language][i],
                                       hybrid.text_format.passage_unit) for i in pair_ids]
    return {"query": [queries[i].question for i in pair_ids],
            "passage": [text for text, _ in passages],
            "passage_context": [context for _, context in passages],
            "pair_id": tf.constant(hybrid.rows(pair_ids), tf.int32),
            "query_language": [self.query_language] * len(pair_ids),
            "passage_language": [self.passage_language] * len(pair_ids)}


class HybridMixture(seqio.Mixture):
  """A parallel QA corpus registered for hybrid batches: the one record of the corpus.

  A seqio Mixture, `{corpus name}_hybrid`, of the corpus's mono and cross tasks
  (`ParallelQATask`s, rates by training size: as a seqio Mixture it serves examples as
  `{name}_all_mix` does). Every task serves the record's splits. Batches of a split are drawn
  whole by `sampler(schedule, split)`, with the schedule the input pipeline is given.

  Args:
    corpus_name: the name the corpus is registered under (task names start with it).
    corpus_path: the file or folder the corpus was read from.
    corpus: the parallel corpus the splits are drawn from.
    splits: {seqio split: its part of `corpus`}, `TRAIN` first.
    family: an encoder family's name (its vocabulary kinds are registered in hybridir.data.vocab).
    spm_path: the SentencePiece model.
    text_format: prefixes and passage unit of every example (`text.TextFormat`).
  """

  def __init__(self, corpus_name: str, corpus_path: str, corpus: corpora.ParallelCorpus,
               splits: dict[str, corpora.ParallelCorpus], family: str, spm_path: str,
               text_format: text_lib.TextFormat | None = None):
    name = f"{corpus_name}_hybrid"
    if next(iter(splits), None) != TRAIN:
      raise ValueError(f"hybrid mixture {name!r}: the splits must start with {TRAIN!r}, "
                       f"found {list(splits)}")
    self.corpus_name, self.corpus_path = corpus_name, corpus_path
    self.text_format = text_format or text_lib.TextFormat()
    self.corpora = dict(splits)
    # Every split's pairs (`corpus` less the articles no split holds).
    self.corpus = corpus.restrict(frozenset().union(*(c.pair_ids() for c in splits.values())))
    self.family = family
    self.spm_path = spm_path
    # The integer `pair_id` indexes the sorted ids of the whole `corpus`: the same in every split
    # and in every registration of the corpus.
    self.pair_ids = tuple(corpus.pair_ids())
    self.pair_index = {pair_id: i for i, pair_id in enumerate(self.pair_ids)}
    features = output_features(family, str(spm_path))
    self.qa_tasks: list[ParallelQATask] = []
    for x in self.languages:
      for y in self.languages:  # Cross tasks only where translations meet.
        if x == y or any(self.task_pair_ids(x, y, split) for split in self.splits):
          task_name = f"{corpus_name}_mono_{x}" if x == y else f"{corpus_name}_cross_{x}_{y}"
          self.qa_tasks.append(ParallelQATask(task_name, self, x, y, features))
    super().__init__(name, _rates_by_size(self.qa_tasks))

  @property
  def splits(self) -> tuple[str, ...]:
    return tuple(self.corpora)

  def example_mixtures(self) -> dict[str, list[tuple[ParallelQATask, int]]]:
    """The corpus's seqio mixtures of examples: {name: [(task, rate by size)]}, non-empty ones."""
    mono = _rates_by_size([t for t in self.qa_tasks if t.query_language == t.passage_language])
    cross = _rates_by_size([t for t in self.qa_tasks if t.query_language != t.passage_language])
    mixtures = {f"{self.corpus_name}_mono_mix": mono, f"{self.corpus_name}_cross_mix": cross,
                f"{self.corpus_name}_all_mix": mono + cross}
    return {name: rates for name, rates in mixtures.items() if rates}

  @property
  def mono_tasks(self) -> dict[str, ParallelQATask]:
    """{language: its mono task}: these tokenise every question and passage once."""
    return {t.query_language: t for t in self.qa_tasks if t.query_language == t.passage_language}

  def check_split(self, split: str) -> str:
    if split not in self.corpora:
      raise ValueError(f"hybrid mixture {self.name!r} has no split {split!r}; splits: "
                       f"{list(self.splits)}")
    return split

  def task_pair_ids(self, query_language: str, passage_language: str,
                    split: str = TRAIN) -> list[str]:
    """A split's pair ids present in both languages, in integer `pair_id` order (a task's order)."""
    pairs = self.corpora[self.check_split(split)].pairs
    shared = pairs[query_language].keys() & pairs[passage_language].keys()
    return sorted(shared, key=self.pair_index.get)

  def rows(self, pair_ids) -> np.ndarray:
    """The integer pair ids (rows of the token tables) of string pair ids, int64."""
    return np.array([self.pair_index[pair_id] for pair_id in pair_ids], np.int64)

  @property
  def vocabulary(self) -> seqio.Vocabulary:
    return get_vocabulary(self.family, self.spm_path)

  @property
  def languages(self) -> tuple[str, ...]:
    return self.corpus.languages

  def sampler(self, schedule: hybrid.HybridSchedule,
              split: str = TRAIN) -> hybrid.HybridSampler:
    """The batches `schedule` draws from a split of this corpus."""
    return hybrid.HybridSampler(self.corpora[self.check_split(split)], schedule)


def get_hybrid_mixture(name: str) -> HybridMixture:
  """The registered hybrid mixture `name`, else a ValueError listing those registered."""
  provider = seqio.MixtureRegistry.get(name) if name in seqio.MixtureRegistry.names() else None
  if not isinstance(provider, HybridMixture):
    raise ValueError(f"no hybrid mixture {name!r}; registered: {hybrid_mixture_names()}")
  return provider


def hybrid_mixture_names() -> list[str]:
  """The registered hybrid mixtures (one per registered corpus)."""
  return sorted(registered(seqio.MixtureRegistry, HybridMixture))


def register_parallel_qa(name: str, corpus_path: str, family: str, spm_path: str,
                         languages: Sequence[str] | None = None,
                         splits: Mapping[str, object] | None = None,
                         text_format: text_lib.TextFormat | None = None) -> HybridMixture:
  """Registers a corpus's mono and cross tasks, mixtures and `{name}_hybrid`; returns the last.

  splits: {seqio split: the articles it holds, as `ParallelCorpus.select_articles` takes them
  (None: all; "train"/"test": the held-out split; a list of article titles)}, `train` first;
  default {"train": None}, the whole corpus. Splits must not share an article.
  Registering `name` again replaces what the earlier call registered. `text_format` (default:
  `text.TextFormat()`) gives prefixes and passage unit. Only data is registered: how batches are
  drawn is the input's `hybrid.HybridSchedule` (`input_pipeline.HybridInput`).
  """
  where = f"register_parallel_qa({name!r}, {str(corpus_path)!r})"
  try:
    vocab.family_kinds(family)
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from e
  output_features(family, str(spm_path))  # A missing vocabulary fails before the corpus is read.
  text_format = text_format or text_lib.TextFormat()
  splits = {TRAIN: None} if splits is None else dict(splits)
  # Passages as paragraphs, with their answer sentences: text_format's unit chooses from both.
  full = corpora.load_parallel_corpus(corpus_path, "paragraph", languages)
  parts = {split: full.select_articles(selection, f"{where}, split {split!r}")
           for split, selection in splits.items()}
  seen = {}
  for split, part in parts.items():
    for article in part.article_ids():
      if seen.setdefault(article, split) != split:
        raise ValueError(f"{where}: article {article!r} is in splits {seen[article]!r} and "
                         f"{split!r}; splits must not share an article")
  mixture = HybridMixture(name, str(corpus_path), full, parts, family, str(spm_path),
                          text_format=text_format)
  unregister_parallel_qa(name)
  for task in mixture.qa_tasks:
    seqio.TaskRegistry.add_provider(task.name, task)
  for mixture_name, rates in mixture.example_mixtures().items():
    seqio.MixtureRegistry.add(mixture_name, rates)
  seqio.MixtureRegistry.add_provider(mixture.name, mixture)
  return mixture


def unregister_parallel_qa(name: str) -> None:
  """Removes what `register_parallel_qa(name, ...)` registered; no-op if nothing."""
  mixture = registered(seqio.MixtureRegistry, HybridMixture).get(f"{name}_hybrid")
  if mixture is None:
    return
  remove_providers([t.name for t in mixture.qa_tasks] + list(mixture.example_mixtures())
                   + [mixture.name])
