"""SeqIO registrations of the zero-shot evaluation sets: LAReQA (XQuAD-R, MLQA-R) and MIRACL.

Per dataset and language a queries task (`query`, `question_id`, `language`) and a candidates task
(`passage`, `candidate_id`, `language`; the candidate's context joins `passage` as
`text.TextFormat()` says), e.g. `xquad_r_de_queries` and `xquad_r_de_candidates`,
grouped into evaluation mixtures: `lareqa_xquad_r`, `lareqa_mlqa_r`, `lareqa` (both) and `miracl`
(every registered language). An evaluation run names a mixture;
`evaluation_mixture_datasets(name)` gives the questions, relevance and languages behind it.
"""
from typing import Sequence

import seqio

from hybridir import corpora
from hybridir import fs
from hybridir import retrieval_data
from tasks import qa

SPLIT = "test"  # The seqio split of every evaluation task.
LAREQA_MIXTURE = "lareqa"
MIRACL_MIXTURE = "miracl"

_DATASETS: dict[str, retrieval_data.RetrievalDataset] = {}  # Dataset name -> its questions, candidates.
_MIXTURES: dict[str, list[str]] = {}  # Evaluation mixture -> dataset names.
_TASKS: dict[str, list[str]] = {}  # Dataset name -> its task names.


def _queries_fn(questions: Sequence[retrieval_data.Question]):
  return lambda: {"query": [q.text for q in questions],
                  "question_id": [q.question_id for q in questions],
                  "language": [q.language for q in questions]}


def _candidates_fn(candidates: Sequence[retrieval_data.Candidate]):
  return lambda: {"passage": [c.text for c in candidates],
                  "candidate_id": [c.candidate_id for c in candidates],
                  "passage_context": [c.context for c in candidates],
                  "language": [c.language for c in candidates]}


def _register_dataset(prefix: str, dataset: retrieval_data.RetrievalDataset, family: str,
                      spm_path: str) -> list[str]:
  """Registers `{prefix}_{l}_queries` and `{prefix}_{l}_candidates`; returns their names."""
  qa.remove_providers(_TASKS.pop(dataset.name, []))
  names = []
  for language in sorted(set(dataset.questions) | set(dataset.candidates)):
    questions = dataset.questions.get(language, [])
    candidates = dataset.candidates.get(language, [])
    for kind, examples_fn, count in (("queries", _queries_fn(questions), len(questions)),
                                     ("candidates", _candidates_fn(candidates), len(candidates))):
      name = f"{prefix}_{language}_{kind}"
      qa.remove_providers([name])
      seqio.TaskRegistry.add(name, qa.function_source(examples_fn, SPLIT, count),
                             output_features=qa.output_features(family, spm_path, required=False),
                             preprocessors=qa.preprocessors())
      names.append(name)
  _DATASETS[dataset.name] = dataset
  _TASKS[dataset.name] = names
  return names


def _add_mixture(name: str, dataset_names: Sequence[str]) -> None:
  """(Re-)registers an evaluation mixture of every task of `dataset_names` (rate 1 each)."""
  qa.remove_providers([name])
  _MIXTURES[name] = list(dataset_names)
  seqio.MixtureRegistry.add(name, [t for d in dataset_names for t in _TASKS[d]], default_rate=1.0)


def _split_titles(data_dir, dataset: str, split) -> Sequence[str] | None:
  """Article titles of the QA split of the same name ("train"/"test"), else `split` itself."""
  if split not in ("train", "test"):
    return split
  folder = fs.path(data_dir) / retrieval_data.LAREQA_FOLDERS[dataset]
  corpus = corpora.load_parallel_corpus(folder if folder.is_dir() else data_dir)
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
  data = retrieval_data.load_lareqa(data_dir, dataset, languages, _split_titles(data_dir, dataset, split))
  names = _register_dataset(dataset, data, family, str(spm_path))
  _add_mixture(f"lareqa_{dataset}", [dataset])
  _add_mixture(LAREQA_MIXTURE, [d for d in retrieval_data.LAREQA_FOLDERS if d in _DATASETS])
  return names


def register_miracl(language: str, topics_tsv: str, qrels_trec: str, corpus_jsonl: str,
                    family: str, spm_path: str) -> list[str]:
  """Registers one MIRACL language (`miracl_{l}_queries`, `..._candidates`) and `miracl`."""
  data = retrieval_data.load_miracl(topics_tsv, qrels_trec, corpus_jsonl, language)
  names = _register_dataset("miracl", data, family, str(spm_path))
  _add_mixture(MIRACL_MIXTURE, sorted(d for d in _DATASETS if d.startswith("miracl_")))
  return names


def evaluation_mixture_names() -> list[str]:
  return sorted(_MIXTURES)


def evaluation_mixture_datasets(name: str) -> list[tuple[str, retrieval_data.RetrievalDataset]]:
  """(dataset name, RetrievalDataset) behind an evaluation mixture, e.g. [('xquad_r', ...)]."""
  if name not in _MIXTURES:
    raise ValueError(f"no evaluation mixture {name!r}; registered: {evaluation_mixture_names()} "
                     "(call tasks.register_lareqa / register_miracl first)")
  return [(dataset, _DATASETS[dataset]) for dataset in _MIXTURES[name]]


def dataset_tasks(dataset_name: str) -> list[str]:
  """The queries and candidates task names of a registered dataset, e.g. 'xquad_r'."""
  if dataset_name not in _TASKS:
    raise ValueError(f"no evaluation dataset {dataset_name!r}; registered: {sorted(_TASKS)}")
  return list(_TASKS[dataset_name])
