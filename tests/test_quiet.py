"""Quiet by default: without an accelerator, jax gets its CPU platform before it loads (no CUDA or
TPU probing, no libtpu lines), TensorFlow's load-time lines are dropped, and other libraries'
INFO lines stay hidden unless HYBRIDIR_VERBOSE=1. `library_lines` is what the command-line tests
(tests/test_readme_chain.py, tests/test_study.py) find empty in each command's output."""
import logging
import os
import re
import subprocess
import sys

import pytest

from hybridir import console
from tests.conftest import REPO_ROOT

# hybridir's own files: their log lines are the commands' own.
OWN_FILES = {path.name for folder in ("hybridir", "tasks")
             for path in (REPO_ROOT / folder).rglob("*.py")}
# absl's log line, from C++ (`I0000 00:00:1796653833.76 21532 port.cc:153]`) or Python.
_LOG_LINE = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ ([\w.]+):\d+\]")
_PROBING = re.compile(r"cuInit|CUDA|libtpu|TPU_|determine TPU|TPU initialization|InitGoogle|"
                      r"absl::InitializeLog|oneDNN|orbax")
# What a user's shell does not set: the test session's platform and logging settings.
SESSION_SETTINGS = ("JAX_PLATFORMS", "TPU_SKIP_MDS_QUERY", "TF_CPP_MIN_LOG_LEVEL",
                    "HYBRIDIR_VERBOSE")


def user_env(**settings) -> dict[str, str]:
  """This environment without SESSION_SETTINGS, plus `settings`: a user's shell's."""
  env = {key: value for key, value in os.environ.items() if key not in SESSION_SETTINGS}
  return {**env, **settings}


def library_lines(stderr: str) -> list[str]:
  """The lines of another library: a log line from a file that is not hybridir's, or a line of
  CUDA or TPU probing or of orbax."""
  return [line for line in stderr.splitlines()
          if ((match := _LOG_LINE.match(line)) and match.group(1) not in OWN_FILES)
          or _PROBING.search(line)]


def python(code: str, **settings) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=user_env(**settings),
                        capture_output=True, text=True, timeout=300)


def test_library_lines_are_told_from_hybridirs_own():
  stderr = ("I1207 14:30:39.840650 140609253841792 spm.py:54] reusing the vocabulary\n"
            "I1207 14:37:44.232039 140367557069696 abstract_checkpointer.py:35] orbax 0.12.8\n"
            "E0000 00:00:1796653837.100303   21532 cuda_platform.cc:52] failed call to cuInit\n"
            "Failed to find host bounds for accelerator type: WARNING: could not determine TPU\n"
            "wrote the encoder /tmp/x/export; next: python -m hybridir.evaluate\n")
  assert library_lines(stderr) == stderr.splitlines()[1:4]


def test_without_an_accelerator_jax_runs_on_cpu_without_probing_or_libtpu_lines():
  assert not console.accelerator_present()  # This machine: no GPU, no TPU.
  result = python("import os, hybridir, jax; "
                  "print(os.environ['JAX_PLATFORMS'], jax.devices()[0].platform)")
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ["cpu", "cpu"]
  assert library_lines(result.stderr) == [], result.stderr


def test_an_accelerator_or_a_users_platform_choice_is_left_to_jax():
  code = "import os, hybridir; print(os.environ.get('JAX_PLATFORMS'))"
  assert python(code, TPU_ACCELERATOR_TYPE="v4-8").stdout.split() == ["None"]
  assert python(code, JAX_PLATFORMS="cpu,tpu").stdout.split() == ["cpu,tpu"]


@pytest.mark.slow
def test_tensorflow_loads_without_its_lines_unless_verbose():
  quiet = python("import hybridir, tensorflow")
  assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
  verbose = python("import hybridir, tensorflow", HYBRIDIR_VERBOSE="1")
  assert verbose.returncode == 0 and library_lines(verbose.stderr), verbose.stderr


def test_only_the_noise_is_dropped_from_what_a_library_prints_while_it_loads(capfd):
  noise = re.compile("cudart_stub")
  with console._stderr_without(noise):  # pylint: disable=protected-access
    os.write(2, b"I0000 00:00:1.5 1 cudart_stub.cc:31] Could not find cuda drivers\n")
    os.write(2, b"a real problem\n")
  assert capfd.readouterr().err == "a real problem\n"


def test_other_libraries_info_and_handled_warnings_are_hidden_not_their_other_warnings():
  def passes(path: str, level: int, message: str) -> bool:
    return console.OwnInfoOnly().filter(logging.LogRecord("absl", level, path, 1, message, (),
                                                          None))
  orbax = "/venv/site-packages/orbax/checkpoint/checkpoint_manager.py"
  seqio = "/venv/site-packages/seqio/vocabularies.py"
  assert passes(str(REPO_ROOT / "hybridir" / "trainer.py"), logging.INFO, "step 5/40")
  assert not passes(orbax, logging.INFO, "Saving checkpoint at step 3")
  assert passes(orbax, logging.WARNING, "Checkpoint directory is not empty")
  assert not passes(seqio, logging.WARNING, "T5 library uses PAD_ID=0, which is different from "
                    "the sentencepiece vocabulary, which defines pad_id=-1")
