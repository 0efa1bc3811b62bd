"""Which vocabulary kinds (`hybridir.data.vocab.KINDS`) each encoder family reads, by family name.

Plain data, read on demand: hybridir.data.vocab and tasks, which come before the models in the data
flow, build a family's vocabulary from it without importing any model. A new family (a module of
hybridir/models) adds its line here. No seqio or TensorFlow here.
"""

# Family name -> the kinds it reads (a vocabulary file's ending picks one); it trains the first.
FAMILY_KINDS: dict[str, tuple[str, ...]] = {
    "t5": ("sentencepiece",),
    "xlmr": ("fairseq_sentencepiece",),
    # WordPiece (LaBSE, mBERT cased or uncased); XLM-R's SentencePiece tokenizer for multilingual
    # MiniLM-style models (a BERT body distilled from XLM-R; pad_id 1, as that tokenizer pads).
    "bert": ("wordpiece", "fairseq_sentencepiece"),
}


def kinds(family: str) -> tuple[str, ...]:
  """The names of the kinds family `family` reads, else a ValueError listing the families."""
  if family not in FAMILY_KINDS:
    raise ValueError(f"unknown encoder family {family!r}; expected one of {sorted(FAMILY_KINDS)}")
  return FAMILY_KINDS[family]
