"""MIRACL v1.0 dev (Zhang et al., 2023): published sizes, the study's languages, the public files.

The public files are the Hugging Face datasets miracl/miracl (topics, qrels) and
miracl/miracl-corpus (each corpus as gzip JSON-lines shards), copied as downloaded under one
root, local or gs:// (README, "MIRACL in the study"):

  ROOT/miracl/miracl-v1.0-{lang}/topics/topics.miracl-v1.0-{lang}-dev.tsv
  ROOT/miracl/miracl-v1.0-{lang}/qrels/qrels.miracl-v1.0-{lang}-dev.tsv
  ROOT/miracl-corpus/miracl-corpus-v1.0-{lang}/docs-*.jsonl.gz
"""
import dataclasses

from hybridir.data import corpora
from hybridir import fs

# Dev queries and corpus passages per language, as published (MIRACL's paper; MTEB's descriptive
# statistics of MIRACLRetrieval).
DEV_SIZES = {
    "ar": (2896, 2061414), "bn": (411, 297265), "en": (799, 32893221),
    "es": (648, 10373953), "fa": (632, 2207172), "fi": (1271, 1883509),
    "fr": (343, 14636953), "hi": (350, 506264), "id": (960, 1446315),
    "ja": (860, 6953614), "ko": (213, 1486752), "ru": (1252, 9543918),
    "sw": (482, 131924), "te": (828, 518079), "th": (733, 542166),
    "zh": (393, 4934368), "de": (305, 15866222), "yo": (119, 49043),
}
SURPRISE_LANGUAGES = ("de", "yo")  # Dev and test only: MIRACL has no training data for them.
# The study's languages: the 16 with training data. The paper reports 15 languages (corpora from
# sw's 132k passages to en's 32.9M) without naming them, so this is one more than its count.
STUDY_LANGUAGES = tuple(x for x in DEV_SIZES if x not in SURPRISE_LANGUAGES)


@dataclasses.dataclass(frozen=True)
class LanguageFiles:
  """One language's public dev files under a root; `corpus` is the glob of its shards."""
  language: str
  topics_tsv: str
  qrels_trec: str
  corpus: str


def language_files(root: str, language: str) -> LanguageFiles:
  """The public dev files of `language` under `root` (local or gs://), as laid out above."""
  corpora.check_language(language, f"MIRACL language under {root}")
  root, name = root.rstrip("/"), f"miracl-v1.0-{language}"
  return LanguageFiles(
      language=language,
      topics_tsv=f"{root}/miracl/{name}/topics/topics.{name}-dev.tsv",
      qrels_trec=f"{root}/miracl/{name}/qrels/qrels.{name}-dev.tsv",
      corpus=f"{root}/miracl-corpus/miracl-corpus-v1.0-{language}/docs-*.jsonl.gz")


def check_files(files: LanguageFiles) -> None:
  """Fails naming every public file (or shard glob) of the language that is not there."""
  missing = [p for p in (files.topics_tsv, files.qrels_trec) if not fs.isfile(p)]
  if not fs.glob(files.corpus):
    missing.append(files.corpus)
  if missing:
    raise FileNotFoundError(f"MIRACL {files.language}: no {', '.join(missing)} (copy the public "
                            "files as README's 'MIRACL in the study' shows)")


def check_published_counts(language: str, topics_tsv: str, num_queries: int, corpus: str,
                           num_passages: int) -> None:
  """Fails, in one line naming the file and both counts, unless a language of the table has its
  published numbers of dev queries and passages: an incomplete copy never gives a number."""
  if language not in DEV_SIZES:
    return
  for what, path, found, published in (
      ("queries", topics_tsv, num_queries, DEV_SIZES[language][0]),
      ("passages", corpus, num_passages, DEV_SIZES[language][1])):
    if found != published:
      raise corpora.CorpusError(
          f"{path}: {found} {what} where MIRACL {language} dev has {published} (an incomplete "
          "or altered copy? to evaluate a subset on purpose, set ALLOW_SUBSET = True)")
