"""TFDS builders of LAReQA's XQuAD-R and MLQA-R, one config per language.

Each example is one question with its paragraph split into sentences (the LAReQA candidates) and
the index of the sentence holding its answer. Files come from the LAReQA repository (pinned
commits; MLQA-R was removed there after 354d67d), or from a manual folder of `<lang>.json`:

  builder = tfds_lareqa.XquadR(config="de", data_dir=DATA_DIR)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir="../shared/data/xquad-r", try_download_gcs=False))
  builder.as_dataset(split="test")
"""
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from hybridir import corpora
from hybridir import retrieval_data

_RAW = "https://raw.githubusercontent.com/google-research-datasets/lareqa"
XQUAD_R_COMMIT = "9bc8c7fb6dd8d01d72a05a93c2cb96882b0d299c"
MLQA_R_COMMIT = "354d67d1cd066854cdfbf5ad0e6105528976141d"
_CITATION = """@inproceedings{roy-etal-2020-lareqa,
  title = {{LAReQA}: Language-Agnostic Answer Retrieval from a Multilingual Pool},
  author = {Roy, Uma and Constant, Noah and Al-Rfou, Rami and Barua, Aditya and Phillips, Aaron
            and Yang, Yinfei},
  booktitle = {Proceedings of EMNLP 2020},
  year = {2020}}"""


class _LareqaBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared by XquadR and MlqaR: `_DATASET` names the corpora.LAREQA_* entry, `_URL` the files."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  _DATASET = ""
  _URL = ""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """Optional: a folder holding `<lang>.json` (SQuAD format with
  `sentences` and `sentence_breaks`), e.g. a copy of the LAReQA repository's data folder. Without
  one, the files are downloaded."""

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=f"LAReQA {self._DATASET}: questions with their paragraph's sentences.",
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "title": tfds.features.Text(),
            "question": tfds.features.Text(),
            "context": tfds.features.Text(),
            "sentences": tfds.features.Sequence(tfds.features.Text()),
            "answer_sentence_index": tfds.features.Scalar(dtype=np.int32),
        }),
        homepage="https://github.com/google-research-datasets/lareqa",
        citation=_CITATION,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    language = self.builder_config.name
    path = self._manual_file(dl_manager, language)
    if path is None:
      path = dl_manager.download(self._URL.format(language=language))
    return {"test": self._generate_examples(pathlib.Path(path))}

  def _manual_file(self, dl_manager, language: str) -> pathlib.Path | None:
    """`<manual_dir>/<lang>.json` (or under the dataset's folder), else None to download."""
    try:
      manual_dir = pathlib.Path(dl_manager.manual_dir)
    except AssertionError:  # TFDS's way of saying no manual folder was given or it is empty.
      return None
    for folder in (manual_dir, manual_dir / retrieval_data.LAREQA_FOLDERS[self._DATASET]):
      if (folder / f"{language}.json").is_file():
        return folder / f"{language}.json"
    raise FileNotFoundError(f"manual_dir {manual_dir}: no {language}.json there or in "
                            f"{retrieval_data.LAREQA_FOLDERS[self._DATASET]}/")

  def _generate_examples(self, path: pathlib.Path):
    # The validating reader of corpora (one per repository); it raises naming file and record.
    for paragraph in corpora.read_squad_paragraphs(path):
      for question in paragraph.questions:
        yield question.qid, {
            "id": question.qid,
            "title": paragraph.article_id,
            "question": question.text,
            "context": paragraph.context,
            "sentences": list(paragraph.sentences),
            "answer_sentence_index": question.sentence_index,
        }


def _configs(dataset: str) -> list[tfds.core.BuilderConfig]:
  return [tfds.core.BuilderConfig(name=language, description=f"{dataset}, language {language}")
          for language in retrieval_data.LAREQA_LANGUAGES[dataset]]


class XquadR(_LareqaBuilder):
  """XQuAD-R: 11-way parallel, 1190 questions per language."""

  _DATASET = "xquad_r"
  _URL = f"{_RAW}/{XQUAD_R_COMMIT}/xquad-r/{{language}}.json"
  BUILDER_CONFIGS = _configs("xquad_r")


class MlqaR(_LareqaBuilder):
  """MLQA-R: the MLQA dev split, partly parallel (7 languages)."""

  _DATASET = "mlqa_r"
  _URL = f"{_RAW}/{MLQA_R_COMMIT}/mlqa-r/{{language}}.json"
  BUILDER_CONFIGS = _configs("mlqa_r")
