"""SeqIO registrations of the zero-shot evaluation sets: LAReQA (XQuAD-R, MLQA-R) and MIRACL.

Per dataset and language a queries task (`query`, `question_id`, `language`) and a candidates task
(`passage`, `candidate_id`, `language`; the candidate's context joins `passage` as
`text.TextFormat()` says), e.g. `xquad_r_de_queries` and `xquad_r_de_candidates`,
grouped into evaluation mixtures: `lareqa_xquad_r`, `lareqa_mlqa_r`, `lareqa` (both) and `miracl`
(every registered language); a LAReQA-style set built from a corpus split (`register_lareqa_split`,
e.g. the study's `in_domain`) has its own `lareqa_{name}`, and `register_evaluation_mixture` groups
registered datasets in a given order (the study's). An evaluation run names a mixture;
`evaluation_mixture_datasets(name)` gives the questions, relevance and languages behind it.

seqio's registries are the only ones: each task (`RetrievalTask`) holds the dataset it belongs
to, each mixture (`EvaluationMixture`) the order of its datasets.
"""
import dataclasses
from typing import Sequence

import numpy as np
import seqio

from hybridir.data import corpora
from hybridir.data import retrieval_data
from hybridir import fs
from tasks import qa

SPLIT = "test"  # The seqio split of every evaluation task.
LAREQA_MIXTURE = "lareqa"
MIRACL_MIXTURE = "miracl"


def _queries_fn(questions: Sequence[retrieval_data.Question]):
  return lambda _split: {"query": [q.text for q in questions],
                         "question_id": [q.question_id for q in questions],
                         "language": [q.language for q in questions]}


def _candidates_fn(candidates: Sequence[retrieval_data.Candidate]):
  return lambda _split: {"passage": [c.text for c in candidates],
                         "candidate_id": [c.candidate_id for c in candidates],
                         "passage_context": [c.context for c in candidates],
                         "language": [c.language for c in candidates]}


class RetrievalTask(seqio.Task):
  """The queries or the candidates of one language of an evaluation dataset, e.g.
  `xquad_r_de_queries`; `dataset` is the whole `RetrievalDataset` it belongs to."""

  def __init__(self, name: str, dataset: retrieval_data.RetrievalDataset, language: str,
               kind: str, features: dict[str, seqio.Feature]):
    self.dataset, self.language, self.kind = dataset, language, kind
    if kind == "queries":
      items = dataset.questions.get(language, [])
      examples_fn = _queries_fn(items)
    else:
      items = dataset.candidates.get(language, [])
      examples_fn = _candidates_fn(items)
    super().__init__(name, qa.function_source(examples_fn, {SPLIT: len(items)}),
                     output_features=features, preprocessors=qa.preprocessors())


class EvaluationMixture(seqio.Mixture):
  """Every task of `datasets` (rate 1 each); evaluation reads the datasets in this order."""

  def __init__(self, name: str, datasets: Sequence[str]):
    self.dataset_names = list(datasets)
    super().__init__(name, [t for d in self.dataset_names for t in _dataset_tasks(d)],
                     default_rate=1.0)


def _registered_tasks() -> list[RetrievalTask]:
  return list(qa.registered(seqio.TaskRegistry, RetrievalTask).values())


def _dataset_tasks(dataset_name: str) -> list[RetrievalTask]:
  return [task for task in _registered_tasks() if task.dataset.name == dataset_name]


def _register_dataset(prefix: str, dataset: retrieval_data.RetrievalDataset, family: str,
                      spm_path: str) -> list[str]:
  """Registers `{prefix}_{l}_queries` and `{prefix}_{l}_candidates`; returns their names."""
  qa.remove_providers([task.name for task in _dataset_tasks(dataset.name)])
  features = qa.output_features(family, spm_path, required=False)
  names = []
  for language in sorted(set(dataset.questions) | set(dataset.candidates)):
    for kind in ("queries", "candidates"):
      name = f"{prefix}_{language}_{kind}"
      qa.remove_providers([name])
      seqio.TaskRegistry.add_provider(name, RetrievalTask(name, dataset, language, kind, features))
      names.append(name)
  return names


def _add_mixture(name: str, dataset_names: Sequence[str]) -> None:
  """(Re-)registers an evaluation mixture of every task of `dataset_names` (rate 1 each)."""
  qa.remove_providers([name])
  seqio.MixtureRegistry.add_provider(name, EvaluationMixture(name, dataset_names))


def _registered_datasets() -> set[str]:
  return {task.dataset.name for task in _registered_tasks()}


def evaluation_dataset_names() -> list[str]:
  """The registered evaluation datasets, e.g. ['miracl_de', 'xquad_r']."""
  return sorted(_registered_datasets())


def unregister_evaluation_dataset(dataset_name: str) -> None:
  """Removes a dataset's tasks and takes it out of every evaluation mixture (a mixture left
  empty is removed); no-op if it is not registered."""
  qa.remove_providers([task.name for task in _dataset_tasks(dataset_name)])
  for name, mixture in _evaluation_mixtures().items():
    if dataset_name in mixture.dataset_names:
      rest = [d for d in mixture.dataset_names if d != dataset_name]
      if rest:
        _add_mixture(name, rest)
      else:
        qa.remove_providers([name])


def unregister_miracl() -> None:
  """Removes every registered MIRACL language, and with the last of them the `miracl` mixture."""
  for name in evaluation_dataset_names():
    if name.startswith("miracl_"):
      unregister_evaluation_dataset(name)


def _split_titles(data_dir, dataset: str, split) -> Sequence[str] | None:
  """Article titles of the QA split of the same name ("train"/"test"), else `split` itself."""
  if split not in ("train", "test"):
    return split
  corpus = corpora.load_parallel_corpus(retrieval_data.lareqa_folder(data_dir, dataset))
  return sorted(corpus.select_articles(split).article_ids())


def register_lareqa(dataset: str, data_dir: str, family: str, spm_path: str,
                    languages: Sequence[str] | None = None, split=None) -> list[str]:
  """Registers a LAReQA dataset ('xquad_r' or 'mlqa_r'), `lareqa_{dataset}` and `lareqa`.

  `split` as in `register_parallel_qa`: None, "train"/"test" (the same article split) or titles.
  Returns the task names.
  """
  if dataset not in retrieval_data.LAREQA_FOLDERS:
    raise ValueError(f"dataset must be one of {sorted(retrieval_data.LAREQA_FOLDERS)}, "
                     f"found {dataset!r}")
  data = retrieval_data.load_lareqa(data_dir, dataset, languages,
                                    _split_titles(data_dir, dataset, split))
  return _add_lareqa(data, family, str(spm_path))


def register_lareqa_split(name: str, hybrid_mixture: str, split: str = "test",
                          max_items: int | None = None, seed: int = 0) -> list[str]:
  """Registers a LAReQA-style evaluation set `name` (and `lareqa_{name}`) from a split of a
  registered corpus record, e.g. the study's in-domain set: the test split of its training corpus.

  A corpus of LAReQA's files (`<lang>.json`, e.g. XQuAD-R) is read as `load_lareqa` reads it on the
  split's articles; any other (a translated corpus's JSONL) as `retrieval_data.from_parallel_corpus`
  builds it. Questions and candidates are in the corpus's languages, tokenised with its
  vocabulary. max_items: at most that many of the split's QA items (a seeded sample, `seed`), with
  the candidates of their passages (LAReQA's files: of their articles). Returns the task names.
  """
  corpus = qa.get_hybrid_mixture(hybrid_mixture)
  part = corpus.corpora[corpus.check_split(split)]
  pair_ids = part.pair_ids()
  if max_items is not None and len(pair_ids) > max_items:
    chosen = np.random.default_rng(seed).choice(len(pair_ids), max_items, replace=False)
    part = part.restrict({pair_ids[i] for i in chosen})
  folder = fs.path(corpus.corpus_path)
  if all((folder / f"{language}.json").is_file() for language in corpus.languages):
    data = retrieval_data.load_lareqa(folder, "xquad_r", corpus.languages,
                                      sorted(part.article_ids()))
    kept = set(part.pair_ids())
    data = dataclasses.replace(data, name=name, questions={
        language: [q for q in items if q.question_id in kept]
        for language, items in data.questions.items()})
  else:
    data = retrieval_data.from_parallel_corpus(part, name)
  return _add_lareqa(data, corpus.family, corpus.spm_path)


def register_evaluation_mixture(name: str, dataset_names: Sequence[str]) -> None:
  """(Re-)registers an evaluation mixture of registered datasets, in the order given (e.g. the
  study's: in-domain first, then its out-of-domain sets)."""
  absent = [d for d in dataset_names if d not in _registered_datasets()]
  if absent:
    raise ValueError(f"evaluation mixture {name!r}: datasets {absent} are not registered; "
                     f"registered: {evaluation_dataset_names()}")
  _add_mixture(name, dataset_names)


def _add_lareqa(data: retrieval_data.RetrievalDataset, family: str, spm_path: str) -> list[str]:
  names = _register_dataset(data.name, data, family, spm_path)
  _add_mixture(f"lareqa_{data.name}", [data.name])
  datasets = _registered_datasets()
  lareqa = [d for d in retrieval_data.LAREQA_FOLDERS if d in datasets]  # LAReQA's own sets.
  if lareqa:
    _add_mixture(LAREQA_MIXTURE, lareqa)
  return names


def register_miracl(language: str, topics_tsv: str, qrels_trec: str, corpus_jsonl: str,
                    family: str, spm_path: str) -> list[str]:
  """Registers one MIRACL language (`miracl_{l}_queries`, `..._candidates`) and `miracl`."""
  data = retrieval_data.load_miracl(topics_tsv, qrels_trec, corpus_jsonl, language)
  names = _register_dataset("miracl", data, family, str(spm_path))
  _add_mixture(MIRACL_MIXTURE, sorted(d for d in _registered_datasets()
                                      if d.startswith("miracl_")))
  return names


def _evaluation_mixtures() -> dict[str, EvaluationMixture]:
  return qa.registered(seqio.MixtureRegistry, EvaluationMixture)


def evaluation_mixture_names() -> list[str]:
  return sorted(_evaluation_mixtures())


def evaluation_mixture_datasets(name: str) -> list[tuple[str, retrieval_data.RetrievalDataset]]:
  """(dataset name, RetrievalDataset) behind an evaluation mixture, e.g. [('xquad_r', ...)]."""
  mixture = _evaluation_mixtures().get(name)
  if mixture is None:
    raise ValueError(f"no evaluation mixture {name!r}; registered: {evaluation_mixture_names()} "
                     "(call tasks.register_lareqa / register_miracl first)")
  datasets = {task.dataset.name: task.dataset for task in mixture.tasks}
  return [(dataset, datasets[dataset]) for dataset in mixture.dataset_names]


def dataset_tasks(dataset_name: str) -> list[str]:
  """The queries and candidates task names of a registered dataset, e.g. 'xquad_r'."""
  names = [task.name for task in _dataset_tasks(dataset_name)]
  if not names:
    raise ValueError(f"no evaluation dataset {dataset_name!r}; registered: "
                     f"{sorted(_registered_datasets())}")
  return names
