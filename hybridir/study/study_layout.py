"""The study's runs by name: batch kinds, their ALPHA, and run folder names, in one place for the
CPU demo (hybridir.study.demo), the TPU sweep (launch/study_sweep.sh, through this command line) and
the gather (hybridir.study.study_gather). The standard library only, so that the sweep
script runs it as a file on a machine without hybridir's dependencies
(`python3 hybridir/study/study_layout.py ...`).

A run folder is `{model}_{mono|cross|hybrid}_seed{seed}` (a pretrained model's untrained row:
`{model}_zeroshot_seed0`); `{model}` is the sweep's model file name (`mt5_base`), or for the CPU
demo its short prefix (`t5`, DEMO_PREFIXES).

  python -m hybridir.study.study_layout --model mt5_base --strategy hybrid --seed 0
  mt5_base_hybrid_seed0 0.5
"""
import argparse
import re
import sys

STRATEGIES = {"X-X-mono": 1.0, "X-Y": 0.0, "hybrid": 0.5}  # Batch kind -> ALPHA.
ZERO_SHOT = "zero-shot"  # A pretrained model evaluated untrained: one run, no seed of its own.
SLUGS = {"X-X-mono": "mono", "X-Y": "cross", "hybrid": "hybrid", ZERO_SHOT: "zeroshot"}
# The CPU demo's models -> their prefix in run names: the family for the models trained from
# scratch (as runs were always named), its own name for a pretrained one (MiniLM is a BERT).
DEMO_PREFIXES = {"mT5": "t5", "XLM-R": "xlmr", "LaBSE": "bert", "MiniLM": "minilm"}
_RUN_NAME = re.compile(r"^(?P<model>[A-Za-z0-9_.-]+?)_(?P<slug>mono|cross|hybrid|zeroshot)"
                       r"_seed(?P<seed>\d+)$")


def strategy(name_or_slug: str) -> str:
  """The batch kind ('X-Y') of a kind or its slug ('cross'); a ValueError names the choices."""
  by_slug = {slug: kind for kind, slug in SLUGS.items()}
  if name_or_slug in SLUGS:
    return name_or_slug
  if name_or_slug in by_slug:
    return by_slug[name_or_slug]
  raise ValueError(f"unknown strategy {name_or_slug!r}; expected one of {sorted(by_slug)} "
                   f"or {sorted(SLUGS)}")


def run_name(model: str, kind: str, seed: int) -> str:
  """`{model}_{slug}_seed{seed}`; model: a sweep's model file name or a demo prefix."""
  if not re.fullmatch(r"[A-Za-z0-9_.-]+", model):
    raise ValueError(f"model {model!r}: a run name takes letters, digits, '_', '.' and '-'")
  return f"{model}_{SLUGS[strategy(kind)]}_seed{int(seed)}"


def parse_run_name(name: str) -> tuple[str, str, int] | None:
  """(model, batch kind, seed) of a run folder's name, or None for any other name."""
  match = _RUN_NAME.match(name)
  if not match:
    return None
  return match["model"], strategy(match["slug"]), int(match["seed"])


class _Parser(argparse.ArgumentParser):
  """console.ArgumentParser's behaviour without importing hybridir: one line, status 1."""

  def error(self, message: str):
    print(f"error: {message} ({self.prog} --help lists the options)", file=sys.stderr)
    sys.exit(1)


def main(argv=None) -> int:
  """Prints a sweep run's folder name and its ALPHA (`NAME ALPHA`), for launch/study_sweep.sh."""
  parser = _Parser(prog="python -m hybridir.study.study_layout", description=__doc__.split("\n")[0])
  parser.add_argument("--model", required=True, help="e.g. mt5_base (gin_configs/runs/study/)")
  parser.add_argument("--strategy", required=True, help="mono, cross or hybrid (or X-X-mono, ...)")
  parser.add_argument("--seed", required=True, type=int)
  args = parser.parse_args(argv)
  try:
    kind = strategy(args.strategy)
    if kind == ZERO_SHOT:
      raise ValueError("--strategy zeroshot: the sweep trains every run (zero-shot rows are the "
                       "CPU demo's)")
    print(run_name(args.model, kind, args.seed), STRATEGIES[kind])
  except ValueError as error:
    parser.error(str(error))
  return 0


if __name__ == "__main__":
  sys.exit(main())
