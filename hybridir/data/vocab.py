"""Vocabularies: seqio SentencePiece and WordPiece vocabularies, tokenisation, their training.

Three kinds (`KINDS`): 'sentencepiece' uses mT5's SentencePiece ids directly (pad 0, eos 1, unk 2)
and appends EOS. 'fairseq_sentencepiece' is XLM-R's: <s>=0, <pad>=1, </s>=2, <unk>=3, every other
SentencePiece id shifted by one, <mask> last; texts are wrapped as <s> ... </s>. 'wordpiece' is
BERT's vocab.txt (cased or uncased), texts wrapped as [CLS] ... [SEP]. The kinds each encoder
family reads are a table (hybridir.data.vocab_families), so code before the models (tasks) asks this
module, by family name, without importing them.
"""
import collections
import dataclasses
import functools
import json
import os
from typing import Callable, Iterable, Sequence

import numpy as np
import seqio
import tensorflow as tf

from hybridir.data import vocab_families
from hybridir import fs

# The public mT5 SentencePiece model (reachable on Cloud TPU).
MT5_SPM_PATH = "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model"
# fairseq's special tokens, in id order.
XLMR_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")


class XLMRVocabulary(seqio.SentencePieceVocabulary):
  """XLM-R's vocabulary: a SentencePiece model read through fairseq's id mapping."""

  BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
  start_id = BOS_ID  # Before every text (`tokenize`).
  # What transformers needs beside the file to read it (a BERT body may use this tokenizer).
  hf_tokenizer_config = {"tokenizer_class": "XLMRobertaTokenizer"}

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


@dataclasses.dataclass(frozen=True)
class WordPieceOptions:
  """BertTokenizer's text normalisation: do_lower_case, strip_accents (None: as do_lower_case)
  and tokenize_chinese_chars (spaces around CJK characters)."""
  lowercase: bool = False
  strip_accents: bool | None = None
  chinese_chars: bool = True

  def hf_tokenizer_config(self) -> dict:
    """transformers' tokenizer_config.json for BertTokenizer with these options."""
    return {"tokenizer_class": "BertTokenizer", "do_lower_case": self.lowercase,
            "strip_accents": self.strip_accents, "tokenize_chinese_chars": self.chinese_chars}


def _wordpiece_tokenizer(ids: dict[str, int] | None = None,
                         options: WordPieceOptions = WordPieceOptions()):
  """The `tokenizers` pipeline of transformers' BertTokenizer: BERT's normaliser (clean text,
  optionally spaces around CJK characters, lower-casing and accent stripping), pre-tokeniser
  (whitespace and punctuation) and WordPiece with `##` continuations."""
  import tokenizers  # Imported here: only WordPiece vocabularies need it.
  tokenizer = tokenizers.Tokenizer(tokenizers.models.WordPiece(
      ids, unk_token="[UNK]", max_input_chars_per_word=100) if ids is not None else
      tokenizers.models.WordPiece(unk_token="[UNK]"))
  tokenizer.normalizer = tokenizers.normalizers.BertNormalizer(
      clean_text=True, handle_chinese_chars=options.chinese_chars,
      strip_accents=options.strip_accents, lowercase=options.lowercase)
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
  tokenizer.decoder = tokenizers.decoders.WordPiece(prefix="##")
  if ids is not None:  # As transformers does: a special token in a text is that token.
    tokenizer.add_special_tokens(list(WORDPIECE_SPECIALS))
  return tokenizer


def _wordpiece_file(vocab_file: str) -> tuple[list[str], WordPieceOptions]:
  """The tokens, in id order, and the normalisation of a vocab.txt (one token a line; options
  from a tokenizer_config.json beside it, as BertTokenizer reads them, else cased) or of a
  `tokenizers` tokenizer.json (its BertNormalizer)."""
  with fs.open(vocab_file, encoding="utf-8") as f:
    if not vocab_file.endswith(".json"):
      return [line.rstrip("\n") for line in f], _tokenizer_config_options(vocab_file)
    tokenizer = json.load(f)
  model, normalizer = tokenizer.get("model") or {}, tokenizer.get("normalizer") or {}
  if model.get("type") != "WordPiece":
    raise ValueError(f"{vocab_file}: model type {model.get('type')!r}, expected WordPiece")
  if normalizer and normalizer.get("type") != "BertNormalizer":
    raise ValueError(f"{vocab_file}: normalizer {normalizer.get('type')!r}, expected "
                     "BertNormalizer (BertTokenizer's)")
  options = WordPieceOptions(lowercase=bool(normalizer.get("lowercase", False)),
                             strip_accents=normalizer.get("strip_accents"),
                             chinese_chars=bool(normalizer.get("handle_chinese_chars", True)))
  return sorted(model["vocab"], key=model["vocab"].get), options


def _tokenizer_config_options(vocab_file: str) -> WordPieceOptions:
  """BertTokenizer's options from the tokenizer_config.json beside a vocab.txt, with
  BertTokenizer's defaults (do_lower_case=True) for keys it lacks; cased without the file."""
  path = os.path.join(os.path.dirname(vocab_file), "tokenizer_config.json")
  if not fs.exists(path):
    return WordPieceOptions()
  with fs.open(path) as f:
    config = json.load(f)
  options = WordPieceOptions(lowercase=config.get("do_lower_case", True),
                             strip_accents=config.get("strip_accents"),
                             chinese_chars=config.get("tokenize_chinese_chars", True))
  for name, value in dataclasses.asdict(options).items():
    if not (isinstance(value, bool) or (name == "strip_accents" and value is None)):
      raise ValueError(f"{path}: {name} must be true or false, found {value!r}")
  return options


def _as_str(text) -> str:
  """A numpy_function's string argument: bytes inside tf.data, a 0-d array when eager."""
  return (text.item() if isinstance(text, np.ndarray) else text).decode("utf-8")


class WordPieceVocabulary(seqio.Vocabulary):
  """BERT's WordPiece vocabulary from a vocab.txt (one token a line, ids by line number; cased
  unless a tokenizer_config.json beside it says otherwise) or the tokenizer.json transformers
  writes for it: ids equal transformers' BertTokenizer on the same file with the same options
  (do_lower_case, strip_accents, tokenize_chinese_chars). Texts are framed as [CLS] ... [SEP]
  (`start_id`, `eos_id`); padding is [PAD]."""

  def __init__(self, vocab_file: str, options: WordPieceOptions | None = None):
    self.vocab_file = vocab_file
    tokens, found = _wordpiece_file(vocab_file)
    self.options = options or found
    self.tokens = tuple(tokens)
    self._ids = {token: i for i, token in enumerate(tokens)}
    missing = [token for token in WORDPIECE_SPECIALS if token not in self._ids]
    if missing:
      raise ValueError(f"{vocab_file}: not a BERT vocab.txt; it lacks {missing}")
    self._size = len(tokens)
    self._specials = {self._ids[token] for token in WORDPIECE_SPECIALS}
    self.tokenizer = _wordpiece_tokenizer(self._ids, self.options)
    super().__init__(extra_ids=0)

  @property
  def hf_tokenizer_config(self) -> dict:
    return self.options.hf_tokenizer_config()

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
    return (isinstance(other, WordPieceVocabulary) and other.vocab_file == self.vocab_file
            and other.options == self.options)

  def __hash__(self):
    return hash((self.vocab_file, self.options))


def lowercased(vocabulary: seqio.Vocabulary, where: str) -> seqio.Vocabulary:
  """The vocabulary lower-casing texts before it reads them, as sentence-transformers'
  do_lower_case does: a WordPiece one lower-cases, keeping accents unless it stripped them; other
  kinds raise, naming `where` (the setting's file)."""
  if not isinstance(vocabulary, WordPieceVocabulary):
    raise ValueError(f"{where}: do_lower_case=true is not supported (hybridir lower-cases only "
                     f"WordPiece vocabularies, not {type(vocabulary).__name__})")
  if vocabulary.options.lowercase:
    return vocabulary
  return WordPieceVocabulary(vocabulary.vocab_file, dataclasses.replace(
      vocabulary.options, lowercase=True, strip_accents=vocabulary.options.strip_accents is True))


def train_wordpiece(texts: Iterable[str], prefix: str, vocab_size: int,
                    character_coverage: float = 0.9995, lowercase: bool = False) -> str:
  """Trains a WordPiece vocabulary (BERT's specials first) on texts; writes prefix.txt, or for
  an uncased one (`lowercase`: lower-cased, accents stripped) prefix.json, the tokenizer.json
  that records its normalisation.

  The alphabet is the most frequent characters covering `character_coverage` of all characters,
  as SentencePiece's option of that name; rarer characters become [UNK].
  """
  import tokenizers  # Imported here: only training needs the trainer.
  options = WordPieceOptions(lowercase=lowercase)
  tokenizer = _wordpiece_tokenizer(options=options)
  texts = [t for t in texts if t.strip()]
  normalized = [tokenizer.normalizer.normalize_str(t) for t in texts] if lowercase else texts
  counts = collections.Counter(c for t in normalized for c in t if not c.isspace())
  total, covered, alphabet = sum(counts.values()), 0, 0
  for _, count in counts.most_common():
    if total and covered >= character_coverage * total:
      break
    covered, alphabet = covered + count, alphabet + 1
  trainer = tokenizers.trainers.WordPieceTrainer(
      vocab_size=vocab_size, special_tokens=list(WORDPIECE_SPECIALS),
      limit_alphabet=max(alphabet, 1), show_progress=False)
  tokenizer.train_from_iterator(texts, trainer)
  ids = tokenizer.get_vocab()
  if lowercase:
    fs.write_text_atomically(prefix + ".json", tokenizer.to_str())
    return prefix + ".json"
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


# ---------------------------------------------------------------------------------------------
# Vocabulary kinds, and the kinds each encoder family reads.

@dataclasses.dataclass(frozen=True)
class VocabularyKind:
  """A kind of vocabulary file: its names in a model folder, how to read and train it."""
  name: str
  files: tuple[str, ...]  # As the hub names it, in search order; files[0] is written on export.
  suffixes: tuple[str, ...]  # Endings of the files this kind reads (and its trainer writes).
  tokenizer_classes: tuple[str, ...]  # transformers' tokenizer_class names of this kind.
  read: Callable[[str], seqio.Vocabulary]
  train: Callable[..., str]  # (texts, prefix, vocab_size, **options) -> the trained file.


def _read_sentencepiece(path: str) -> seqio.SentencePieceVocabulary:
  return seqio.SentencePieceVocabulary(fs.local_copy(path), extra_ids=0)  # seqio reads via gfile.


KINDS = {kind.name: kind for kind in (
    VocabularyKind("sentencepiece", ("spiece.model",), (".model",),
                   ("T5Tokenizer", "T5TokenizerFast", "MT5Tokenizer", "MT5TokenizerFast"),
                   _read_sentencepiece,
                   functools.partial(train_sentencepiece,
                                     special_ids=dict(pad_id=0, eos_id=1, unk_id=2, bos_id=-1))),
    # Trained with XLM-R's SentencePiece ids (unk 0, bos 1, eos 2); fairseq adds <pad>.
    VocabularyKind("fairseq_sentencepiece", ("sentencepiece.bpe.model", "spiece.model"),
                   (".model",), ("XLMRobertaTokenizer", "XLMRobertaTokenizerFast"),
                   XLMRVocabulary,
                   functools.partial(train_sentencepiece,
                                     special_ids=dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1))),
    VocabularyKind("wordpiece", ("vocab.txt", "tokenizer.json"), (".txt", ".json"),
                   ("BertTokenizer", "BertTokenizerFast"), WordPieceVocabulary, train_wordpiece),
)}


def family_kinds(family: str) -> tuple[VocabularyKind, ...]:
  """The kinds family `family` reads (hybridir.data.vocab_families), else a ValueError."""
  names = vocab_families.kinds(family)
  unknown = [name for name in names if name not in KINDS]
  if unknown:
    raise ValueError(f"family {family!r} reads unknown vocabulary kinds {unknown}; expected "
                     f"some of {sorted(KINDS)}")
  return tuple(KINDS[name] for name in names)


def kind_of(family: str, path: str) -> VocabularyKind:
  """The kind of the family's vocabulary file `path`, by its ending."""
  kinds = family_kinds(family)
  for kind in kinds:
    if str(path).endswith(kind.suffixes):
      return kind
  raise ValueError(f"{path}: not a vocabulary file of family {family!r}; expected a file ending "
                   f"in {sorted({s for kind in kinds for s in kind.suffixes})}")


def family_vocabulary(family: str, path: str) -> seqio.Vocabulary:
  """The seqio vocabulary of family `family` from its vocabulary file."""
  return kind_of(family, path).read(str(path))


def train_family_vocabulary(family: str, texts: Iterable[str], prefix: str, vocab_size: int,
                            **options) -> str:
  """Trains the family's first kind of vocabulary on texts; returns the vocabulary file."""
  return family_kinds(family)[0].train(texts, prefix, vocab_size, **options)


def find_vocabulary_file(model_dir: str, family: str) -> str:
  """The vocabulary file of a model folder: of the kind its tokenizer_config.json's
  tokenizer_class names when that is one of the family's, else the first file found in the
  family's kinds' order."""
  kinds = family_kinds(family)
  config_path = os.path.join(model_dir, "tokenizer_config.json")
  if fs.exists(config_path):
    with fs.open(config_path) as f:
      named = json.load(f).get("tokenizer_class")
    kinds = tuple(k for k in kinds if named in k.tokenizer_classes) or kinds
  names = [name for kind in kinds for name in kind.files]
  for name in names:
    if fs.exists(os.path.join(model_dir, name)):
      return os.path.join(model_dir, name)
  raise FileNotFoundError(
      f"{model_dir}: no vocabulary file ({' or '.join(names)}); hybridir tokenises with it: copy "
      "the model's file there or pass vocabulary=PATH")


def write_vocabulary(vocabulary: seqio.Vocabulary, source: str, destination: str) -> None:
  """Writes a vocabulary into a model folder as `destination` (a WordPiece one as vocab.txt
  lines, whatever its source) and, beside it, the tokenizer_config.json transformers needs to
  read it with the same options (when the kind has one)."""
  if isinstance(vocabulary, WordPieceVocabulary):
    fs.write_text_atomically(destination, "".join(t + "\n" for t in vocabulary.tokens))
  else:
    fs.copy_file(source, destination)
  config = getattr(vocabulary, "hf_tokenizer_config", None)
  if config:
    fs.write_text_atomically(os.path.join(os.path.dirname(destination), "tokenizer_config.json"),
                             json.dumps(config, indent=2, sort_keys=True))
