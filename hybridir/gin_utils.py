"""Parsing gin files the way T5X does: includes resolve against the repository and the cwd."""
import os
import pathlib

import gin

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def parse(gin_files: list[str], gin_bindings: list[str] = (), finalize: bool = True) -> None:
  """Parses files then bindings (later wins); a syntax error or unknown name fails here, with
  the file and line, before anything is computed."""
  for path in (os.getcwd(), str(REPO_ROOT)):
    if path not in gin.config._LOCATION_PREFIXES:  # Keep the search path free of duplicates.
      gin.add_config_file_search_path(path)
  gin.parse_config_files_and_bindings(list(gin_files), list(gin_bindings), finalize_config=finalize)


def evaluate(macro: str):
  """The value of a macro, with configurable references (`@fn()`) called."""
  value = gin.query_parameter(f"%{macro}")
  if isinstance(value, gin.config.ConfigurableReference) and value.evaluate:
    return value.scoped_configurable_fn()
  return value
