"""Test set-up: 8 virtual CPU devices (set before jax is imported) and the shared data folder."""
import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# CPU only, even where libtpu is installed (the aot extra): TPU programs are compiled for
# libtpu's compile-only devices, never run.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def shared_data_dir() -> pathlib.Path:
  """The read-only data folder: $HYBRIDIR_DATA_DIR, else ../shared/data beside the project."""
  return pathlib.Path(os.environ.get("HYBRIDIR_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
  path = shared_data_dir()
  if not path.is_dir():
    pytest.fail(f"shared data folder {path} not found; set HYBRIDIR_DATA_DIR")
  return path
