"""`hybridir.load_encoder(dir).encode(texts)` equals transformers' mean-pooled, normalised output."""
import shutil

import numpy as np
import pytest
import transformers

import hybridir
from hybridir.data import vocab as vocab_lib
from hybridir.models import families
from tests import reference_models as ref

TEXTS = [
    "Who led the Panthers in sacks?",
    "Wer führte die Panthers bei den Sacks an?",
    "谁在擒杀方面领先黑豹队？",
    "The Panthers defense gave up just 308 points, ranking sixth in the league, while also "
    "leading the NFL in interceptions with 24 and boasting four Pro Bowl selections.",
    "x",
    "  spaces   and ünïcödé  ",
]


@pytest.fixture(scope="module")
def spm_models(tmp_path_factory, data_dir):
  folder = tmp_path_factory.mktemp("spm")
  texts = ref.xquad_texts(data_dir)
  return {family: families.train_vocabulary(family, texts, str(folder / family), 300)
          for family in ("t5", "xlmr")}


@pytest.mark.slow
def test_mt5_hf_directory_encodes_like_transformers(tmp_path, spm_models):
  ref.write_spm(tmp_path, spm_models["t5"], "t5")
  tokenizer = transformers.T5Tokenizer.from_pretrained(tmp_path, extra_ids=0)
  model = ref.save_random_mt5(tmp_path, vocab_size=len(tokenizer))
  expected = ref.torch_mean_pooled(model, tokenizer, TEXTS)
  encoder = hybridir.load_encoder(str(tmp_path), batch_size=4)
  embeddings = encoder.encode(TEXTS)
  assert embeddings.shape == (len(TEXTS), 16)
  assert (np.sum(embeddings * expected, axis=-1) > 0.99999).all()


@pytest.mark.slow
def test_xlmr_hf_directory_encodes_like_transformers(tmp_path, spm_models):
  ref.write_spm(tmp_path, spm_models["xlmr"], "xlmr")
  tokenizer = transformers.XLMRobertaTokenizer.from_pretrained(tmp_path)
  model = ref.save_random_xlmr(tmp_path, vocab_size=len(tokenizer))
  expected = ref.torch_mean_pooled(model, tokenizer, TEXTS)
  embeddings = hybridir.load_encoder(str(tmp_path), batch_size=4).encode(TEXTS)
  assert (np.sum(embeddings * expected, axis=-1) > 0.99999).all()


@pytest.mark.parametrize("family", ["t5", "xlmr"])
def test_token_ids_equal_transformers_tokenizer(tmp_path, spm_models, family):
  ref.write_spm(tmp_path, spm_models[family], family)
  if family == "t5":
    tokenizer = transformers.T5Tokenizer.from_pretrained(tmp_path, extra_ids=0)
  else:
    tokenizer = transformers.XLMRobertaTokenizer.from_pretrained(tmp_path)
  vocabulary = families.vocabulary(family, spm_models[family])
  assert vocabulary.vocab_size == len(tokenizer)
  for text in TEXTS:
    assert vocab_lib.tokenize(vocabulary, text, 512) == tokenizer(text).input_ids, text


def test_xlmr_tf_tokenization_equals_python(spm_models):
  import tensorflow as tf
  vocabulary = families.vocabulary("xlmr", spm_models["xlmr"])
  for text in TEXTS:
    assert vocabulary.encode_tf(tf.constant(text)).numpy().tolist() == vocabulary.encode(text)


def test_long_texts_are_truncated_keeping_the_end_token(tmp_path, spm_models):
  ref.write_spm(tmp_path, spm_models["t5"], "t5")
  ref.save_random_mt5(tmp_path, vocab_size=300)
  encoder = hybridir.load_encoder(str(tmp_path), max_length=8)
  ids = encoder.tokenize([TEXTS[3]])[0]
  assert len(ids) == 8 and ids[-1] == 1
  assert encoder.encode([TEXTS[3]]).shape == (1, 16)


@pytest.mark.slow
def test_encoding_is_independent_of_batch_composition(tmp_path, spm_models):
  ref.write_spm(tmp_path, spm_models["t5"], "t5")
  ref.save_random_mt5(tmp_path, vocab_size=300)
  encoder = hybridir.load_encoder(str(tmp_path), batch_size=2)
  together = encoder.encode(TEXTS)
  alone = np.concatenate([encoder.encode([t]) for t in TEXTS])
  np.testing.assert_allclose(together, alone, atol=1e-6)


def test_t5x_checkpoint_needs_a_vocabulary(data_dir):
  with pytest.raises(ValueError, match="needs vocabulary="):
    hybridir.load_encoder(str(data_dir / "t5x-tiny-checkpoint/test_de_t5_tiny.checkpoint_1000"))


def test_t5x_checkpoint_with_vocabulary_encodes_texts(data_dir, spm_models):
  encoder = hybridir.load_encoder(
      str(data_dir / "t5x-tiny-checkpoint/test_de_t5_tiny.checkpoint_1000"),
      vocabulary=spm_models["t5"])
  embeddings = encoder.encode(TEXTS[:3])
  assert embeddings.shape == (3, 768) and np.isfinite(embeddings).all()
  np.testing.assert_allclose(np.linalg.norm(embeddings, axis=-1), 1.0, rtol=1e-5)


def test_directory_without_spm_file_says_what_is_missing(tmp_path):
  ref.save_random_mt5(tmp_path)
  with pytest.raises(FileNotFoundError, match="spiece.model"):
    hybridir.load_encoder(str(tmp_path))


def test_unknown_path_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="neither a Hugging Face model directory"):
    hybridir.load_encoder(str(tmp_path))


@pytest.mark.parametrize("family", ["t5", "xlmr"])
def test_sentence_transformers_folder_of_each_family_cuts_as_sentence_transformers(
    tmp_path, spm_models, family):
  """mT5 and XLM-R folders saved by sentence-transformers, with a max_seq_length of 20: the same
  ids and vectors as SentenceTransformer, texts past it included."""
  import json
  sentence_transformers = pytest.importorskip("sentence_transformers")
  ref.write_spm(tmp_path, spm_models[family], family)
  if family == "t5":
    tokenizer = transformers.T5Tokenizer.from_pretrained(tmp_path, extra_ids=0)
    ref.save_random_mt5(tmp_path, vocab_size=len(tokenizer))
  else:
    tokenizer = transformers.XLMRobertaTokenizer.from_pretrained(tmp_path)
    ref.save_random_xlmr(tmp_path, vocab_size=len(tokenizer))
  tokenizer.save_pretrained(tmp_path)
  ref.save_sentence_transformer(tmp_path, "mean", dense=False, normalize=True)
  config = json.loads((tmp_path / "sentence_bert_config.json").read_text())
  (tmp_path / "sentence_bert_config.json").write_text(json.dumps({**config, "max_seq_length": 20}))
  reference = sentence_transformers.SentenceTransformer(str(tmp_path), device="cpu")
  encoder = hybridir.load_encoder(str(tmp_path), batch_size=4)
  assert encoder.max_length == reference.max_seq_length == 20
  texts = TEXTS + [" ".join(TEXTS * 3)]
  assert encoder.tokenize(texts, None) == [
      reference.tokenizer(t, truncation=True, max_length=20)["input_ids"] for t in texts]
  expected = reference.encode(texts)
  assert (np.sum(encoder.encode(texts) * expected, axis=-1) > 0.99999).all()
