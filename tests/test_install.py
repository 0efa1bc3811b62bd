"""A non-editable install (`pip install .`) runs the smoke run from outside the repository: the gin
files ship inside the package and data paths follow HYBRIDIR_DATA_DIR."""
import os
import shutil
import subprocess
import sysconfig
import venv

import pytest

from tests.conftest import REPO_ROOT

# A pip install and a smoke run in a fresh virtual environment.
pytestmark = pytest.mark.slow


def _fresh_venv(folder):
  """A venv whose own site-packages come first, then this venv's (the heavy dependencies) through
  a .pth path line: that folder's own .pth files (the editable install's finder) are not run."""
  venv.EnvBuilder(with_pip=False).create(folder)
  python = folder / "bin" / "python"
  site_packages = subprocess.run(
      [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
      capture_output=True, text=True, check=True).stdout.strip()
  with open(os.path.join(site_packages, "parent_venv.pth"), "w") as f:
    f.write(sysconfig.get_path("purelib") + "\n")
  return python


def test_non_editable_install_runs_the_smoke_run_outside_the_repository(tmp_path, data_dir):
  source = tmp_path / "source"  # A copy: the build leaves no build/ or *.egg-info in the project.
  source.mkdir()
  shutil.copy(REPO_ROOT / "setup.py", source)
  for name in ("hybridir", "tasks", "gin_configs"):
    shutil.copytree(REPO_ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
  python = _fresh_venv(tmp_path / "venv")
  work = tmp_path / "elsewhere"
  work.mkdir()
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
  env["HYBRIDIR_DATA_DIR"] = str(data_dir)

  install = subprocess.run(
      [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
       "--ignore-installed", "--quiet", str(source)],
      cwd=work, env=env, capture_output=True, text=True, timeout=300)
  assert install.returncode == 0, install.stderr[-3000:]
  where = subprocess.run([python, "-c", "import hybridir; print(hybridir.__file__)"], cwd=work,
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
  assert where.startswith(str(tmp_path / "venv")), where

  model_dir = tmp_path / "smoke"
  result = subprocess.run(
      [python, "-m", "hybridir.main", "--gin_file=gin_configs/runs/smoke.gin",
       f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=2", "--gin.WARMUP_STEPS=1",
       "--gin.CHECKPOINT_PERIOD=2"],
      cwd=work, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert os.listdir(model_dir / "checkpoints") == ["2"]
  # The data path was read from HYBRIDIR_DATA_DIR, and the written config says so.
  assert f"CORPUS_DIR = '{data_dir / 'xquad-r'}'" in (model_dir / "config.gin").read_text()
