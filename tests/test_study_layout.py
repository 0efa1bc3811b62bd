"""Run names in one place (hybridir.study.study_layout): the demo, the gather and
launch/study_sweep.sh name and read runs alike; its command line needs only the standard library."""
import pathlib
import subprocess
import sys

import pytest

from hybridir.study import demo
from hybridir.study import study_gather
from hybridir.study import study_layout

ROOT = pathlib.Path(__file__).resolve().parent.parent
LAYOUT = ROOT / "hybridir" / "study" / "study_layout.py"


@pytest.mark.parametrize("model, kind, seed, name", [
    ("mt5_base", "hybrid", 0, "mt5_base_hybrid_seed0"),
    ("xlmr_large", "X-Y", 2, "xlmr_large_cross_seed2"),
    ("t5", "X-X-mono", 1, "t5_mono_seed1"),
    ("minilm", "zero-shot", 0, "minilm_zeroshot_seed0"),
])
def test_names_round_trip(model, kind, seed, name):
  assert study_layout.run_name(model, kind, seed) == name
  assert study_layout.parse_run_name(name) == (model, kind, seed)


def test_other_folder_names_are_not_runs_and_bad_parts_are_named():
  for name in ("logs", "mt5_base_hybrid", "mt5_base_hybrid_seedX", "_hybrid_seed0", "export"):
    assert study_layout.parse_run_name(name) is None
  with pytest.raises(ValueError, match="unknown strategy 'both'"):
    study_layout.run_name("mt5_base", "both", 0)
  with pytest.raises(ValueError, match="model 'mt5 base'"):
    study_layout.run_name("mt5 base", "hybrid", 0)


def test_the_demo_and_the_gather_read_names_from_the_layout():
  assert demo.run_name("mT5", "hybrid", 1) == "t5_hybrid_seed1"
  assert demo.run_name("MiniLM", "zero-shot", 0) == "minilm_zeroshot_seed0"
  assert demo.STRATEGIES is study_layout.STRATEGIES
  assert study_gather.model_name("t5") == "mT5" and study_gather.model_name("mt5_base") == "mT5 base"


def test_the_command_line_prints_name_and_alpha_without_hybridirs_dependencies():
  # -S -I: no site-packages, no user paths: only the standard library is importable.
  result = subprocess.run([sys.executable, "-S", "-I", str(LAYOUT), "--model", "labse",
                           "--strategy", "cross", "--seed", "2"],
                          capture_output=True, text=True, timeout=60)
  assert (result.returncode, result.stdout, result.stderr) == (0, "labse_cross_seed2 0.0\n", "")
  for strategy, alpha in (("mono", "1.0"), ("hybrid", "0.5"), ("X-X-mono", "1.0")):
    out = subprocess.run([sys.executable, "-S", "-I", str(LAYOUT), "--model", "m", "--strategy",
                          strategy, "--seed", "0"], capture_output=True, text=True, timeout=60)
    assert out.stdout.split()[1] == alpha


@pytest.mark.parametrize("options, message", [
    (["--strategy", "both", "--seed", "0"], "unknown strategy 'both'"),
    (["--strategy", "zeroshot", "--seed", "0"], "--strategy zeroshot"),
    (["--strategy", "hybrid", "--seed", "one"], "--seed: invalid int value"),
    (["--strategy", "hybrid"], "the following arguments are required: --seed"),
])
def test_command_line_mistakes_end_in_one_line(options, message):
  result = subprocess.run([sys.executable, "-S", "-I", str(LAYOUT), "--model", "mt5_base",
                           *options], capture_output=True, text=True, timeout=60)
  assert result.returncode == 1 and result.stdout == ""
  assert result.stderr.startswith("error: ") and message in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1
