"""Which vocabulary kinds (`hybridir.vocab.KINDS`) each encoder family reads, by family name.

The family records (hybridir.models) fill this table when imported; hybridir.vocab and tasks,
which come before the models in the data flow, read it to build a family's vocabulary without
importing them. No seqio or TensorFlow here: the encoders import it and must run without either.
"""
from typing import Sequence

_KINDS: dict[str, tuple[str, ...]] = {}


def register(family: str, kinds: Sequence[str]) -> None:
  """Records the vocabulary kinds an encoder family reads; it trains the first."""
  if not kinds or not all(isinstance(kind, str) for kind in kinds):
    raise ValueError(f"family {family!r}: vocabulary kinds must be names, found {kinds!r}")
  _KINDS[family] = tuple(kinds)


def kinds(family: str) -> tuple[str, ...]:
  """The names of the kinds family `family` reads, else a ValueError listing the families."""
  if family not in _KINDS:
    raise ValueError(f"unknown encoder family {family!r}; expected one of {sorted(_KINDS)} (a "
                     "family registers its vocabularies when its hybridir.models module is "
                     "imported)")
  return _KINDS[family]
