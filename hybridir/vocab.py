"""Vocabularies: seqio SentencePiece and WordPiece vocabularies, tokenisation, their training.

mT5 uses its SentencePiece ids directly (pad 0, eos 1, unk 2) and appends EOS. XLM-R uses
fairseq's ids: <s>=0, <pad>=1, </s>=2, <unk>=3, every other SentencePiece id shifted by one,
<mask> last; texts are wrapped as <s> ... </s>. BERT uses a WordPiece vocab.txt, texts wrapped as
[CLS] ... [SEP]. Which family uses which is the family record's business (hybridir.models).
"""
import collections
import json
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
  start_id = BOS_ID  # Before every text (`tokenize`).

  def __init__(self, sentencepiece_model_file: str):
    # seqio reads via gfile, which cannot reach a GCS emulator: a local copy.
    super().__init__(fs.local_copy(sentencepiece_model_file), extra_ids=0)

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

# BERT's special tokens, which every WordPiece vocab.txt holds.
WORDPIECE_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _wordpiece_tokenizer(ids: dict[str, int] | None = None):
  """The `tokenizers` pipeline of transformers' BertTokenizer (cased): BERT's normaliser (clean
  text, spaces around CJK characters, no lower-casing or accent stripping), pre-tokeniser
  (whitespace and punctuation) and WordPiece with `##` continuations."""
  import tokenizers  # Imported here: only WordPiece vocabularies need it.
  tokenizer = tokenizers.Tokenizer(tokenizers.models.WordPiece(
      ids, unk_token="[UNK]", max_input_chars_per_word=100) if ids is not None else
      tokenizers.models.WordPiece(unk_token="[UNK]"))
  tokenizer.normalizer = tokenizers.normalizers.BertNormalizer(
      clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=False)
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
  tokenizer.decoder = tokenizers.decoders.WordPiece(prefix="##")
  if ids is not None:  # As transformers does: a special token in a text is that token.
    tokenizer.add_special_tokens(list(WORDPIECE_SPECIALS))
  return tokenizer


def _wordpiece_tokens(vocab_file: str) -> list[str]:
  """The tokens, in id order, of a vocab.txt (one a line) or a `tokenizers` tokenizer.json."""
  with fs.open(vocab_file, encoding="utf-8") as f:
    if not vocab_file.endswith(".json"):
      return [line.rstrip("\n") for line in f]
    tokenizer = json.load(f)
  model, normalizer = tokenizer.get("model") or {}, tokenizer.get("normalizer") or {}
  if model.get("type") != "WordPiece":
    raise ValueError(f"{vocab_file}: model type {model.get('type')!r}, expected WordPiece")
  if normalizer.get("lowercase"):
    raise ValueError(f"{vocab_file}: the normalizer lower-cases; hybridir reads cased WordPiece "
                     "vocabularies only (LaBSE, mBERT cased)")
  return sorted(model["vocab"], key=model["vocab"].get)


def _as_str(text) -> str:
  """A numpy_function's string argument: bytes inside tf.data, a 0-d array when eager."""
  return (text.item() if isinstance(text, np.ndarray) else text).decode("utf-8")


class WordPieceVocabulary(seqio.Vocabulary):
  """BERT's cased WordPiece vocabulary from a vocab.txt (one token a line, ids by line number)
  or the tokenizer.json transformers writes for it:
  ids equal transformers' BertTokenizer(do_lower_case=False) on the same file. Texts are framed
  as [CLS] ... [SEP] (`start_id`, `eos_id`); padding is [PAD]."""

  def __init__(self, vocab_file: str):
    self.vocab_file = vocab_file
    tokens = _wordpiece_tokens(vocab_file)
    self._ids = {token: i for i, token in enumerate(tokens)}
    missing = [token for token in WORDPIECE_SPECIALS if token not in self._ids]
    if missing:
      raise ValueError(f"{vocab_file}: not a BERT vocab.txt; it lacks {missing}")
    self._size = len(tokens)
    self._specials = {self._ids[token] for token in WORDPIECE_SPECIALS}
    self.tokenizer = _wordpiece_tokenizer(self._ids)
    super().__init__(extra_ids=0)

  @property
  def start_id(self) -> int:
    return self._ids["[CLS]"]

  @property
  def eos_id(self) -> int:
    return self._ids["[SEP]"]

  @property
  def pad_id(self) -> int:
    return self._ids["[PAD]"]

  @property
  def unk_id(self) -> int:
    return self._ids["[UNK]"]

  @property
  def _base_vocab_size(self) -> int:
    return self._size

  def _encode(self, s: str) -> Sequence[int]:
    return self.tokenizer.encode(s, add_special_tokens=False).ids

  def _decode(self, ids: Iterable[int]) -> str:
    return self.tokenizer.decode([int(i) for i in ids if int(i) not in self._specials],
                                 skip_special_tokens=False)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    if s.shape.rank != 0:
      raise ValueError(f"{self.vocab_file}: WordPiece encode_tf takes one string, got shape "
                       f"{s.shape}")
    ids = tf.numpy_function(
        lambda text: np.asarray(self._encode(_as_str(text)), np.int32), [s], tf.int32,
        stateful=False)
    ids.set_shape([None])
    return ids

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    text = tf.numpy_function(lambda x: self._decode(x.tolist()).encode("utf-8"), [ids],
                             tf.string, stateful=False)
    text.set_shape([])
    return text

  def __eq__(self, other):
    return isinstance(other, WordPieceVocabulary) and other.vocab_file == self.vocab_file

  def __hash__(self):
    return hash(self.vocab_file)


def train_wordpiece(texts: Iterable[str], prefix: str, vocab_size: int,
                    character_coverage: float = 0.9995) -> str:
  """Trains a cased WordPiece vocabulary (BERT's specials first) on texts; writes prefix.txt.

  The alphabet is the most frequent characters covering `character_coverage` of all characters,
  as SentencePiece's option of that name; rarer characters become [UNK].
  """
  import tokenizers  # Imported here: only training needs the trainer.
  texts = [t for t in texts if t.strip()]
  counts = collections.Counter(c for t in texts for c in t if not c.isspace())
  total, covered, alphabet = sum(counts.values()), 0, 0
  for _, count in counts.most_common():
    if total and covered >= character_coverage * total:
      break
    covered, alphabet = covered + count, alphabet + 1
  tokenizer = _wordpiece_tokenizer()
  trainer = tokenizers.trainers.WordPieceTrainer(
      vocab_size=vocab_size, special_tokens=list(WORDPIECE_SPECIALS),
      limit_alphabet=max(alphabet, 1), show_progress=False)
  tokenizer.train_from_iterator(texts, trainer)
  ids = tokenizer.get_vocab()
  path = prefix + ".txt"
  fs.write_text_atomically(path, "".join(token + "\n" for token in sorted(ids, key=ids.get)))
  return path


def tokenize(vocabulary: seqio.Vocabulary, text: str, max_length: int) -> list[int]:
  """Ids as the checkpoint's own tokenizer gives them: the vocabulary's start id if it has one
  (XLM-R's <s>, BERT's [CLS]), the text's ids truncated to fit, its end id (EOS, </s>, [SEP])."""
  start = start_ids(vocabulary)
  ids = list(vocabulary.encode(text))
  return start + ids[:max_length - 1 - len(start)] + [vocabulary.eos_id]


def start_ids(vocabulary: seqio.Vocabulary) -> list[int]:
  """[the id put before every text] for XLM-R and BERT vocabularies, [] for T5's."""
  start = getattr(vocabulary, "start_id", None)
  return [] if start is None else [start]


def train_sentencepiece(texts: Iterable[str], model_prefix: str, vocab_size: int,
                        special_ids: dict[str, int], character_coverage: float = 0.9995) -> str:
  """Trains a unigram SentencePiece model with the given special ids (the family record's, e.g.
  pad_id=0, eos_id=1, unk_id=2, bos_id=-1 for mT5); returns the model path."""
  import sentencepiece as spm  # Imported here: only training needs the trainer.
  os.makedirs(os.path.dirname(os.path.abspath(model_prefix)), exist_ok=True)
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(t for t in texts if t.strip()), model_prefix=model_prefix,
      vocab_size=vocab_size, model_type="unigram", character_coverage=character_coverage,
      hard_vocab_limit=False, minloglevel=2, **special_ids)
  return model_prefix + ".model"
