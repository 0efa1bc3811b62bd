"""Vocabularies: seqio SentencePiece vocabularies for mT5 and XLM-R, tokenisation, SPM training.

mT5 uses its SentencePiece ids directly (pad 0, eos 1, unk 2) and appends EOS. XLM-R uses
fairseq's ids: <s>=0, <pad>=1, </s>=2, <unk>=3, every other SentencePiece id shifted by one,
<mask> last; texts are wrapped as <s> ... </s>.
"""
import os
from typing import Iterable, Sequence

import numpy as np
import seqio
import tensorflow as tf

from hybridir import fs

# The public mT5 SentencePiece model (reachable on Cloud TPU).
MT5_SPM_PATH = "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model"
# fairseq's special tokens, in id order.
XLMR_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")


class XLMRVocabulary(seqio.SentencePieceVocabulary):
  """XLM-R's vocabulary: a SentencePiece model read through fairseq's id mapping."""

  BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

  def __init__(self, sentencepiece_model_file: str):
    super().__init__(sentencepiece_model_file, extra_ids=0)

  @property
  def _base_vocab_size(self) -> int:
    return self.tokenizer.GetPieceSize() + 1  # Four specials replace SPM's three, shifting by one.

  @property
  def vocab_size(self) -> int:
    return self._base_vocab_size + 1  # <mask>.

  @property
  def pad_id(self) -> int:
    return self.PAD_ID

  @property
  def eos_id(self) -> int:
    return self.EOS_ID

  @property
  def unk_id(self) -> int:
    return self.UNK_ID

  def _to_fairseq(self, ids):
    spm_unk, spm_bos, spm_eos = (self.tokenizer.unk_id(), self.tokenizer.bos_id(),
                                 self.tokenizer.eos_id())
    ids = np.asarray(ids, np.int64)
    out = ids + 1
    out[ids == spm_unk] = self.UNK_ID
    out[ids == spm_bos] = self.BOS_ID
    out[ids == spm_eos] = self.EOS_ID
    return out

  def _encode(self, s: str) -> Sequence[int]:
    return self._to_fairseq(self.tokenizer.EncodeAsIds(s)).tolist()

  def _decode(self, ids: Iterable[int]) -> str:
    ids = [i - 1 for i in ids if i > self.UNK_ID and i < self._base_vocab_size]
    return self.tokenizer.DecodeIds(ids)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    ids = self.tf_tokenizer.tokenize(s)
    spm_unk = self.tokenizer.unk_id()
    return tf.where(tf.equal(ids, spm_unk), tf.cast(self.UNK_ID, ids.dtype), ids + 1)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    spm_eos = self.tokenizer.eos_id()
    # Specials decode to nothing: map them to SPM's EOS, which detokenizes to an empty string.
    ids = tf.where(ids > self.UNK_ID, ids - 1, tf.cast(spm_eos, ids.dtype))
    return self.tf_tokenizer.detokenize(ids)

def get_vocabulary(family: str, sentencepiece_model_file: str) -> seqio.SentencePieceVocabulary:
  """The seqio vocabulary of an encoder family ('t5' or 'xlmr')."""
  sentencepiece_model_file = fs.local_copy(sentencepiece_model_file)  # seqio reads via gfile.
  if family == "t5":
    return seqio.SentencePieceVocabulary(sentencepiece_model_file, extra_ids=0)
  if family == "xlmr":
    return XLMRVocabulary(sentencepiece_model_file)
  raise ValueError(f"unknown encoder family {family!r}; expected 't5' or 'xlmr'")


def tokenize(vocabulary: seqio.Vocabulary, family: str, text: str, max_length: int) -> list[int]:
  """Ids as the checkpoint's own tokenizer gives them: T5 appends EOS, XLM-R adds <s> ... </s>."""
  ids = list(vocabulary.encode(text))
  if family == "t5":
    return ids[:max_length - 1] + [vocabulary.eos_id]
  if family == "xlmr":
    return [XLMRVocabulary.BOS_ID] + ids[:max_length - 2] + [XLMRVocabulary.EOS_ID]
  raise ValueError(f"unknown encoder family {family!r}; expected 't5' or 'xlmr'")


def train_sentencepiece(texts: Iterable[str], model_prefix: str, vocab_size: int,
                        family: str = "t5", character_coverage: float = 0.9995) -> str:
  """Trains a unigram SentencePiece model with the family's special ids; returns the model path.

  t5: pad 0, eos 1, unk 2 (as mT5). xlmr: unk 0, bos 1, eos 2 (as XLM-R's model; fairseq adds pad).
  """
  import sentencepiece as spm  # Imported here: only training needs the trainer.
  ids = {"t5": dict(pad_id=0, eos_id=1, unk_id=2, bos_id=-1),
         "xlmr": dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1)}
  if family not in ids:
    raise ValueError(f"unknown encoder family {family!r}; expected 't5' or 'xlmr'")
  os.makedirs(os.path.dirname(os.path.abspath(model_prefix)), exist_ok=True)
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(t for t in texts if t.strip()), model_prefix=model_prefix,
      vocab_size=vocab_size, model_type="unigram", character_coverage=character_coverage,
      hard_vocab_limit=False, minloglevel=2, **ids[family])
  return model_prefix + ".model"
