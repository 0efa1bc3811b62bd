"""The model's input: one function from (role, text, context) to token ids, for every path.

Training (tasks.qa's seqio tasks, hence the input pipeline's token tables), `encoder.Encoder.encode`
and evaluation all tokenise through `tokenize`, so a passage is the same tokens wherever built:

  query     `{query_prefix}{question}`                 e.g. `Query: Who wrote Faust?`
  passage   `{passage_prefix}{sentence} {paragraph}`   passage_unit 'sentence_with_context'

The prefixes are the paper's (after E5). The passage is LAReQA's candidate: the answer sentence
with its paragraph as context. The sentence comes first and truncation cuts the end, so the answer
sentence survives whenever it fits the passage length, however long its paragraph (a context
window around the sentence would survive the same way but would give a sentence's tokens a
position that depends on where it sits in its paragraph; LAReQA's baselines also put the sentence
first).
"""
import dataclasses
import sys

import seqio

from hybridir.data import corpora
from hybridir.data import vocab

ROLES = ("query", "passage")
# sentence_with_context: the answer sentence, then its paragraph (LAReQA's candidates);
# sentence: the answer sentence alone; paragraph: the whole paragraph (training), the bare
# candidate sentence (evaluation).
PASSAGE_UNITS = ("sentence_with_context", "sentence", "paragraph")


@dataclasses.dataclass(frozen=True)
class TextFormat:
  """How texts become model inputs; recorded in an exported encoder's manifest."""
  query_prefix: str = "Query: "
  passage_prefix: str = "Passage: "
  passage_unit: str = "sentence_with_context"

  def __post_init__(self):
    for name in ("query_prefix", "passage_prefix"):
      if not isinstance(getattr(self, name), str):
        raise ValueError(f"TextFormat.{name} must be a string (empty for none), found "
                         f"{getattr(self, name)!r}")
    if self.passage_unit not in PASSAGE_UNITS:
      raise ValueError(f"TextFormat.passage_unit must be one of {PASSAGE_UNITS}, found "
                       f"{self.passage_unit!r}")

  @property
  def uses_context(self) -> bool:
    return self.passage_unit == "sentence_with_context"

  def prefix(self, role: str) -> str:
    if role not in ROLES:
      raise ValueError(f"role must be one of {ROLES}, found {role!r}")
    return self.query_prefix if role == "query" else self.passage_prefix

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, record: object, where: str) -> "TextFormat":
    """The format a manifest records, else a ValueError naming `where`."""
    fields = {field.name for field in dataclasses.fields(cls)}
    if not isinstance(record, dict) or set(record) != fields:
      raise ValueError(f"{where}: text_format must be an object with exactly {sorted(fields)}, "
                       f"found {record!r}")
    try:
      return cls(**record)
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from e


# Encoders whose artifact or checkpoint records no format: bare texts, as before prefixes existed.
UNFORMATTED = TextFormat(query_prefix="", passage_prefix="", passage_unit="sentence")


def passage_parts(pair: corpora.QAPair, passage_unit: str) -> tuple[str, str]:
  """(text, context) of a training record's passage, `pair.passage` being its paragraph.

  A record without an answer sentence (a paragraph-only corpus) is its passage alone.
  """
  if passage_unit not in PASSAGE_UNITS:
    raise ValueError(f"passage_unit must be one of {PASSAGE_UNITS}, found {passage_unit!r}")
  if passage_unit == "paragraph" or pair.answer_sentence is None:
    return pair.passage, ""
  return pair.answer_sentence, pair.passage


def model_input(role: str, text: str, context: str = "",
                text_format: TextFormat | None = None, prefix: str | None = None) -> str:
  """The string the model reads: prefix (the role's in text_format unless given: an encoder's
  prompt), text, then the context where the passage unit uses it."""
  text_format = text_format or TextFormat()
  out = (text_format.prefix(role) if prefix is None else prefix) + text
  if role == "passage" and context and text_format.uses_context:
    out += " " + context
  return out


def tokenize(vocabulary: seqio.Vocabulary, role: str, text: str, context: str,
             max_length: int | None, text_format: TextFormat | None = None,
             prefix: str | None = None) -> list[int]:
  """Token ids of `model_input(...)` with the vocabulary's special tokens, cut to max_length.

  The end is cut, so the prefix and text (the answer sentence) stay whole when they fit.
  max_length None: no cut.
  """
  string = model_input(role, text, context, text_format, prefix)
  return vocab.tokenize(vocabulary, string, sys.maxsize if max_length is None else max_length)
