"""python -m hybridir.spm: a SentencePiece model from a corpus's questions and passages."""
import pytest
import sentencepiece as spm

from hybridir.data import spm as spm_cli
from hybridir.data import vocab
from hybridir.models import families


def test_trains_a_t5_model_with_mt5_special_ids(data_dir, tmp_path, capsys):
  output = tmp_path / "models" / "xquad"
  assert spm_cli.main(["--corpus", str(data_dir / "xquad-r"), "--languages", "en",
                       "--family", "t5", "--vocab_size", "600", "--output", str(output)]) == 0
  assert capsys.readouterr().out.strip() == f"{output}.model"
  model = spm.SentencePieceProcessor(model_file=f"{output}.model")
  assert (model.pad_id(), model.eos_id(), model.unk_id(), model.bos_id()) == (0, 1, 2, -1)
  assert 300 < model.get_piece_size() <= 600
  assert sorted(p.name for p in output.parent.iterdir()) == ["xquad.model", "xquad.settings.json",
                                                               "xquad.vocab"]


def test_xlmr_model_from_one_file_reads_as_fairseq_ids(data_dir, tmp_path):
  output = tmp_path / "xlmr"
  assert spm_cli.main(["--corpus", str(data_dir / "xquad-r" / "en.json"), "--family", "xlmr",
                       "--vocab_size", "400", "--output", str(output)]) == 0
  vocabulary = families.vocabulary("xlmr", f"{output}.model")
  ids = vocab.tokenize(vocabulary, "Who led the Panthers?", 16)
  assert ids[0] == 0 and ids[-1] == 2 and vocabulary.decode(ids) == "Who led the Panthers?"


def test_corpus_texts_count_each_passage_once(data_dir):
  corpus = spm_cli.corpora.load_parallel_corpus(data_dir / "xquad-r", languages=["en"])
  texts = spm_cli.corpus_texts(corpus)
  assert len(texts) == 1190 + 240  # XQuAD-R: 1190 questions, 240 paragraphs per language.


def test_missing_corpus_is_an_error_naming_it(tmp_path, capsys):
  assert spm_cli.main(["--corpus", str(tmp_path / "nowhere"), "--family", "t5",
                       "--vocab_size", "100", "--output", str(tmp_path / "m")]) == 1
  assert "nowhere: no such file or folder" in capsys.readouterr().err
  assert not (tmp_path / "m.model").exists()


def test_too_small_vocabulary_is_an_error_saying_why(data_dir, tmp_path, capsys):
  assert spm_cli.main(["--corpus", str(data_dir / "xquad-r"), "--languages", "zh",
                       "--family", "t5", "--vocab_size", "50", "--output",
                       str(tmp_path / "m")]) == 1
  assert "Vocabulary size is smaller than required_chars" in capsys.readouterr().err
  assert list(tmp_path.iterdir()) == []


def test_train_reuses_a_model_trained_with_the_same_settings_only(data_dir, tmp_path,
                                                                   monkeypatch):
  output = str(tmp_path / "spm")
  corpus = str(data_dir / "xquad-r" / "de.json")
  first = spm_cli.train(corpus, "t5", 300, output)
  trained = (tmp_path / "spm.model").read_bytes()

  def no_training(*args, **kwargs):
    raise AssertionError("trained again")
  with monkeypatch.context() as patch:
    patch.setattr(spm_cli, "train_on_corpus", no_training)
    assert spm_cli.train(corpus, "t5", 300, output) == first
    with pytest.raises(AssertionError, match="trained again"):
      spm_cli.train(corpus, "t5", 400, output)  # Another vocabulary size: not the same model.
  assert (tmp_path / "spm.model").read_bytes() == trained
