"""Parsing gin files the way T5X does: includes resolve against the cwd, then hybridir's own
`gin_configs/` (installed inside the package by setup.py, or the checkout's); data paths written
`$HYBRIDIR_DATA_DIR/...` read the shared data folder (fs.data_root)."""
import contextlib
import dataclasses
import difflib
import logging
import os
import pathlib
import re
import tokenize
from typing import Sequence

import gin

from hybridir import errors
from hybridir import fs

# The training run's selector (RUN = @trainer.train): aot compiles it.
TRAINING_RUN = "hybridir.training.trainer.train"

_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent
# Folders holding gin_configs/: the installed package (hybridir/gin_configs), else the checkout.
GIN_ROOTS = tuple(str(p) for p in (_PACKAGE_DIR, _PACKAGE_DIR.parent)
                  if (p / "gin_configs").is_dir())
_DATA_DIR = re.compile(r"\$" + fs.DATA_DIR_VARIABLE + r"\b")
# The folders `parse` has added to gin's file search path (gin has no public reader of it): each
# is added once.
_SEARCH_PATHS: set[str] = set()


_MACRO_BINDING = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=")


def declared_macros() -> set[str]:
  """Names of the gin macros (`NAME = value`) parsed so far, read from gin.config_str()."""
  config = LiteralConfig()
  for statement in _binding_statements(gin.config_str()):
    config.bind(statement, "gin.config_str()")
  return config.macros()


class UnknownMacroError(errors.SettingError):
  """A binding names a macro that no parsed gin file declares."""


def check_macro_bindings(gin_bindings: list[str], known: set[str]) -> None:
  """Fails on a binding to a macro no parsed file declares: gin would define a new, unused one.

  `TRAIN_STEP = 3` after files that declare `TRAIN_STEPS` would otherwise train the default.
  """
  for binding in gin_bindings:
    match = _MACRO_BINDING.match(binding)
    if match and match.group(1) not in known:
      name = match.group(1)
      close = difflib.get_close_matches(name, sorted(known), n=3)
      hint = f"; did you mean {', '.join(close)}?" if close else ""
      raise UnknownMacroError(f"gin binding {binding.strip()!r}: no included file declares the "
                              f"macro {name}{hint}")


def _not_a_search_miss(record: logging.LogRecord) -> bool:
  return not (record.module == "resource_reader" and str(record.msg).startswith("Path not found"))


@contextlib.contextmanager
def _quiet_search():
  """Drops the error line gin logs for each search path a file is not in before the one it is."""
  logging.getLogger().addFilter(_not_a_search_miss)
  try:
    yield
  finally:
    logging.getLogger().removeFilter(_not_a_search_miss)


def parse(gin_files: list[str], gin_bindings: list[str] = (), finalize: bool = True) -> None:
  """Parses files then bindings (later wins); a missing file, a syntax error, an unknown name or
  a macro no file declares fails here, with the file and line, before anything is computed."""
  written = read_literal(gin_files, gin_bindings)  # Its messages name the file, line or binding.
  for path in (os.getcwd(), *GIN_ROOTS):
    if path not in _SEARCH_PATHS:
      gin.add_config_file_search_path(path)
      _SEARCH_PATHS.add(path)
  with _quiet_search():
    gin.parse_config_files_and_bindings(list(gin_files), [], finalize_config=False)
  check_macro_bindings(list(gin_bindings), declared_macros())
  gin.parse_config_files_and_bindings([], list(gin_bindings), finalize_config=False)
  _expand_data_dir(written)
  if finalize:
    gin.finalize()


def _expand_data(value):
  """`value` with `$HYBRIDIR_DATA_DIR` in its strings (in lists, tuples, dicts too) replaced by
  fs.data_root()."""
  if isinstance(value, str):
    return _DATA_DIR.sub(lambda _: fs.data_root(), value)
  if type(value) in (list, tuple):
    return type(value)(_expand_data(item) for item in value)
  if type(value) is dict:
    return {key: _expand_data(item) for key, item in value.items()}
  return value


def _expand_data_dir(written: "LiteralConfig") -> None:
  """Rebinds every parsed value (macros and parameters) written with `$HYBRIDIR_DATA_DIR` to the
  real path, so the run and its written config.gin show the folder actually read."""
  macros = written.macros()
  for key in written.naming_data_dir:
    binding_key = f"{key}/gin.macro.value" if key in macros else key
    gin.bind_parameter(binding_key, _expand_data(gin.query_parameter(binding_key)))


_REQUIRED = object()


def macro(name: str, default=_REQUIRED):
  """The bound value of the macro `name` (references not called); `default` when no parsed file
  or binding sets it, else a ValueError naming it."""
  try:
    return gin.query_parameter(f"%{name}")
  except ValueError as e:
    if default is _REQUIRED:
      raise ValueError(f"no parsed gin file or binding sets the macro {name}") from e
    return default


def evaluate(name: str):
  """The value of the macro `name`, with configurable references (`@fn()`) called."""
  value = macro(name)
  if isinstance(value, gin.config.ConfigurableReference) and value.evaluate:
    return value.scoped_configurable_fn()
  return value


class _LiteralDelegate(gin.config_parser.ParserDelegate):
  """Reads references and macros as their names: parsing without binding anything."""

  def configurable_reference(self, scoped_name, evaluate):
    return f"@{scoped_name}{'()' * evaluate}"

  def macro(self, name):
    return f"%{name}"


def find_file(gin_file: str) -> str | None:
  """The file a gin path names, searched as `parse` has gin search it: as given (or from the
  cwd), then in GIN_ROOTS; None when there is none."""
  candidates = (gin_file, *(os.path.join(root, gin_file) for root in GIN_ROOTS))
  return next((path for path in candidates if os.path.isfile(path)), None)


@dataclasses.dataclass
class LiteralConfig:
  """Gin files and bindings as written, read without importing anything: {macro NAME or
  'scope/selector.parameter': value, with `@f()` and `%NAME` as text}, the last binding winning,
  and where each was last bound; the keys whose last value was written with
  `$HYBRIDIR_DATA_DIR`; the modules the files import, by the name they bind."""
  values: dict = dataclasses.field(default_factory=dict)
  origins: dict = dataclasses.field(default_factory=dict)
  naming_data_dir: set = dataclasses.field(default_factory=set)
  imports: dict = dataclasses.field(default_factory=dict)

  def bind(self, statement: gin.config_parser.BindingStatement, origin: str) -> None:
    key = statement.selector
    if statement.arg_name:
      key = f"{statement.scope + '/' if statement.scope else ''}{key}.{statement.arg_name}"
    self.values[key] = _expand_data(statement.value)
    self.origins[key] = origin
    if self.values[key] != statement.value:
      self.naming_data_dir.add(key)
    else:
      self.naming_data_dir.discard(key)

  def macros(self) -> set[str]:
    return {key for key in self.values if "." not in key and "/" not in key}

  def selector(self, written: str) -> str:
    """The complete selector of a configurable as a file writes it, through the files' imports
    as gin resolves it ('export.export_from_training_checkpoint' after `from hybridir import
    export`: 'hybridir.export.exporter.export_from_training_checkpoint'); else as written."""
    head, dot, rest = written.partition(".")
    return f"{self.imports[head]}.{rest}" if dot and head in self.imports else written

  def resolved(self, key: str):
    """The value bound to `key`, following `%NAME` to the macro's value; None when unbound."""
    value, seen = self.values.get(key), {key}
    while isinstance(value, str) and _MACRO_TEXT.fullmatch(value) and value[1:] not in seen:
      seen.add(value[1:])
      value = self.values.get(value[1:])
    return value


_MACRO_TEXT = re.compile(r"%[A-Za-z_][\w.]*")
_SEARCHED = "looked in the working directory" + "".join(f" and {root}" for root in GIN_ROOTS)


def _binding_statements(text: str) -> list[gin.config_parser.BindingStatement]:
  """The bindings gin text makes, references and macros as text (nothing imported or bound)."""
  return [statement for statement in gin.config_parser.ConfigParser(text, _LiteralDelegate())
          if isinstance(statement, gin.config_parser.BindingStatement)]


def _syntax_message(where: str, error: Exception) -> str:
  """gin's SyntaxError (or tokenize's) as text naming `where` and the line."""
  if isinstance(error, SyntaxError):
    return f"{where}: line {error.lineno}: {error.msg} {(error.text or '').strip()!r}"
  return f"{where}: {error.args[0] if error.args else error} (an unclosed bracket or quote?)"


def _read_file(gin_file: str, config: LiteralConfig, named_by: str) -> None:
  """Adds a gin file's bindings (its includes' where they stand) to `config`."""
  path = find_file(gin_file)
  if path is None:
    raise errors.SettingError(f"{named_by}: no such gin file ({_SEARCHED}; the run files are "
                              "gin_configs/runs/*.gin)")
  try:
    with open(path) as f:
      for statement in gin.config_parser.ConfigParser(f, _LiteralDelegate()):
        where = f"{path}: line {statement.location.line_num}"
        if isinstance(statement, gin.config_parser.IncludeStatement):
          _read_file(statement.filename, config, f"{where}: include {statement.filename!r}")
        elif isinstance(statement, gin.config_parser.ImportStatement):
          config.imports[statement.bound_name()] = statement.module
        elif isinstance(statement, gin.config_parser.BindingStatement):
          config.bind(statement, where)
  except (SyntaxError, tokenize.TokenError) as e:
    raise errors.SettingError(_syntax_message(path, e)) from None


def _binding_message(binding: str, error: Exception) -> str:
  """Why a binding does not parse; for a bare word or path, how to quote it on a command line."""
  key, _, value = binding.partition("=")
  key, value = key.strip(), value.strip()
  if isinstance(error, SyntaxError) and error.msg.startswith("Unable to parse value") and not (
      set(value) & set("'\"[]{}()")):
    return (f"gin binding {binding.strip()!r}: {value!r} is not a gin value; a string takes "
            f"gin's quotes inside the shell's: --gin.{key}=\"'{value}'\"")
  return _syntax_message(f"gin binding {binding.strip()!r}", error)


def read_literal(gin_files: Sequence[str], gin_bindings: Sequence[str] = ()) -> LiteralConfig:
  """The files (with their includes) and then the bindings, as written (LiteralConfig); a file
  or include that does not exist, or a statement gin cannot parse, is a SettingError naming
  it."""
  config = LiteralConfig()
  for gin_file in gin_files:
    _read_file(gin_file, config, f"--gin_file={gin_file}")
  for binding in gin_bindings:
    try:
      for statement in _binding_statements(binding):
        config.bind(statement, f"gin binding {binding.strip()!r}")
    except (SyntaxError, tokenize.TokenError) as e:
      raise errors.SettingError(_binding_message(binding, e)) from None
  return config


def check_command_line(gin_files: Sequence[str], gin_bindings: Sequence[str]) -> LiteralConfig:
  """What can be checked of a config without importing anything: files and includes exist,
  every statement parses, bindings name declared macros, no macro is left `%gin.REQUIRED`."""
  check_macro_bindings(list(gin_bindings), read_literal(gin_files).macros())
  config = read_literal(gin_files, gin_bindings)
  required = [name for name, value in config.values.items() if value == "%gin.REQUIRED"]
  if required:
    raise errors.SettingError(
        f"{', '.join(required)} {'is' if len(required) == 1 else 'are'} required "
        f"({config.origins[required[0]]} sets {required[0]} to %gin.REQUIRED): bind "
        f"{'it' if len(required) == 1 else 'each'}, e.g. --gin.{required[0]}=\"'...'\"")
  return config


def file_macro(gin_file: str, name: str):
  """The literal value (`$HYBRIDIR_DATA_DIR` expanded) a gin file (with its includes, later wins)
  gives the macro `name`, read without touching the global gin config; raises ValueError when no
  file sets it."""
  config = read_literal([gin_file])
  if name not in config.values:
    raise ValueError(f"{gin_file}: sets no {name} (in it or its includes)")
  return config.values[name]


def run_selector() -> str | None:
  """The configurable RUN binds, e.g. 'hybridir.training.trainer.train'; None when
  no RUN is bound."""
  try:
    return gin.query_parameter("%RUN").configurable.selector
  except ValueError:
    return None


def run_function():
  """The function RUN binds (the library's function itself, as the gin files name it); None when
  no RUN is bound."""
  try:
    return gin.query_parameter("%RUN").configurable.wrapped
  except ValueError:
    return None


def _as_received(value):
  """A bound value as the function receives it: `@f()` and `%MACRO` called, `@f` configured."""
  if isinstance(value, gin.config.ConfigurableReference):
    return value.scoped_configurable_fn() if value.evaluate else value.scoped_configurable_fn
  return value


def bound_arguments(selector: str, names) -> dict:
  """The arguments among `names` that gin binds for `selector` ('hybridir.training.trainer.train'),
  as the function receives them; unbound ones are absent."""
  bindings = gin.get_bindings(selector, resolve_references=False)
  return {name: _as_received(bindings[name]) for name in names if name in bindings}


def referenced_arguments(selector: str, name: str, names) -> dict:
  """bound_arguments of the configurable that `selector`'s argument `name` references (`@f`);
  {} when that argument is not a reference."""
  value = gin.get_bindings(selector, resolve_references=False).get(name)
  if not isinstance(value, gin.config.ConfigurableReference):
    return {}
  return bound_arguments(value.configurable.selector, names)


def macro_values(gin_files: list[str], gin_bindings: list[str], names) -> dict:
  """The values (references called) of the macros `names` in a config parsed from scratch; gin's
  config is cleared before and after."""
  gin.clear_config()
  try:
    parse(list(gin_files), list(gin_bindings), finalize=False)
    return {name: evaluate(name) for name in names}
  finally:
    gin.clear_config()
