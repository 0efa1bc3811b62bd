"""TFDS builders of XQuAD-R and MLQA-R, prepared from the shared data as a manual folder."""
import pytest
import tensorflow_datasets as tfds

from hybridir import tfds_lareqa

OFFLINE = dict(try_download_gcs=False)


def test_xquad_r_builds_from_manual_dir_with_1190_questions(data_dir, tmp_path):
  builder = tfds_lareqa.XquadR(config="de", data_dir=tmp_path)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=data_dir / "xquad-r", **OFFLINE))
  assert builder.info.splits["test"].num_examples == 1190
  example = next(iter(builder.as_dataset(split="test").take(1)))
  sentences = [s.decode() for s in example["sentences"].numpy()]
  assert sentences[int(example["answer_sentence_index"])] in example["context"].numpy().decode()
  assert (tmp_path / "xquad_r" / "de" / "1.0.0").is_dir()


def test_every_lareqa_language_is_a_config():
  assert [c.name for c in tfds_lareqa.XquadR.BUILDER_CONFIGS] == [
      "ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh"]
  assert [c.name for c in tfds_lareqa.MlqaR.BUILDER_CONFIGS] == [
      "ar", "de", "en", "es", "hi", "vi", "zh"]


def test_downloads_are_pinned_to_lareqa_commits():
  assert tfds_lareqa.MlqaR._URL.format(language="hi") == (
      "https://raw.githubusercontent.com/google-research-datasets/lareqa/"
      "354d67d1cd066854cdfbf5ad0e6105528976141d/mlqa-r/hi.json")


def test_manual_dir_without_the_language_file_is_named(data_dir, tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "README").write_text("not the data")
  builder = tfds_lareqa.MlqaR(config="hi", data_dir=tmp_path / "tfds")
  with pytest.raises(FileNotFoundError, match="manual.*no hi.json"):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual, **OFFLINE))
