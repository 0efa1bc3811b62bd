"""The code's shape matches ARCHITECTURE.md: imports flow one way, and only partitioning names mesh
axes. Pure `ast` over the source files: nothing is imported, so a module that fails to import is
still checked."""
import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("hybridir", "tasks") + tuple(
    f"hybridir/{p}" for p in ("data", "translation", "models", "training", "export",
                              "evaluation", "study", "cloud"))
PARTITIONING = "hybridir.training.partitioning"
# The gin edge: the entry point, its parser and its runner. The library is gin-free (issue 21).
GIN_MODULES = frozenset({"hybridir.main", "hybridir.gin_utils", "hybridir.gin_run"})

# (importer, imported) pairs against the stage order in files being rewritten elsewhere: being
# removed (issue 21). None today. A new pair fails the test; a pair that disappears must leave here.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()

# What builds meshes, specs or named shardings, or names mesh axes (jax.P is PartitionSpec).
SHARDING_NAMES = frozenset({
    "PartitionSpec", "P", "NamedSharding", "PositionalSharding", "Mesh", "AbstractMesh",
    "make_mesh", "mesh_utils", "create_device_mesh", "create_hybrid_device_mesh",
    "DATA_AXIS", "MODEL_AXIS", "MESH_AXES"})
# Calls that take mesh axis names; a literal "data" or "model" in their arguments names one.
AXIS_CALLS = frozenset({
    "with_sharding_constraint", "shard_map", "axis_index", "axis_size", "psum", "pmean", "pmax",
    "pmin", "psum_scatter", "all_gather", "all_to_all", "ppermute", "pbroadcast", "pmap",
    "device_put", "reshard", "set_mesh", "use_mesh"})
MESH_AXIS_NAMES = frozenset({"data", "model"})


def module_name(path: pathlib.Path) -> str:
  """hybridir/models/t5.py -> hybridir.models.t5; a package's __init__.py -> the package."""
  parts = list(path.relative_to(ROOT).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_files() -> dict[str, pathlib.Path]:
  return {module_name(path): path
          for package in PACKAGES for path in sorted((ROOT / package).glob("*.py"))}


def architecture_stages(text: str) -> dict[str, int]:
  """{module: stage number} from ARCHITECTURE.md's stage table: rows `| N name | `path` | ... |`,
  a blank stage cell continuing the stage above. A module listed twice raises."""
  stages, stage = {}, None
  for line in text.splitlines():
    cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
    if len(cells) < 3 or not re.fullmatch(r"`[\w/]+\.py`", cells[1]):
      continue
    if cells[0]:
      stage = int(re.match(r"(\d+) ", cells[0]).group(1))
    path = ROOT / cells[1].strip("`")
    name = module_name(path)
    if name in stages:
      raise ValueError(f"ARCHITECTURE.md lists {cells[1]} twice (stages {stages[name]}, {stage})")
    stages[name] = stage
  return stages


def imported_modules(source: str, name: str, known: set[str]) -> set[str]:
  """The project modules `source` (module `name`) imports, at any depth (functions included):
  `from hybridir import x` counts as hybridir.x when that is a module, else as the package."""
  package = name if (ROOT / name.replace(".", "/") / "__init__.py").exists() else (
      name.rpartition(".")[0])
  found = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # Relative: from the module's package, up level - 1.
        anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      for alias in node.names:
        child = f"{base}.{alias.name}"
        found.add(child if child in known else base)
  return {module for module in found
          if module.split(".")[0] in ("hybridir", "tasks") and module != name}


def stage_violations(stages: dict[str, int], imports: dict[str, set[str]]) -> set[tuple[str, str]]:
  """(importer, imported) pairs where the imported module sits in a later stage. A module missing
  from `stages` (either side) raises, naming it."""
  named = set(imports) | {dep for deps in imports.values() for dep in deps}
  missing = sorted(named - set(stages))
  if missing:
    raise ValueError(f"not in ARCHITECTURE.md's stage table: {', '.join(missing)}")
  return {(module, dep) for module, deps in imports.items() for dep in deps
          if stages[dep] > stages[module]}


def _annotation_nodes(tree: ast.AST) -> set[int]:
  """ids of every node inside a type annotation (naming a type there shards nothing)."""
  roots = []
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      roots.append(node.returns)
      arguments = node.args
      roots += [a.annotation for a in (arguments.posonlyargs + arguments.args +
                                        arguments.kwonlyargs + [arguments.vararg, arguments.kwarg])
                if a is not None]
    elif isinstance(node, ast.AnnAssign):
      roots.append(node.annotation)
  return {id(inner) for root in roots if root is not None for inner in ast.walk(root)}


def _called_name(call: ast.Call) -> str:
  func = call.func
  return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def sharding_violations(source: str, filename: str) -> list[str]:
  """Where `source` builds a mesh, a PartitionSpec or a NamedSharding, or names a mesh axis.

  The rule, outside hybridir/training/partitioning.py: (1) no name or attribute in SHARDING_NAMES
  (`jax.sharding.PartitionSpec(...)`, `P(...)`, `Mesh(...)`, `mesh_utils`,
  `partitioning.DATA_AXIS`, ...) and no import of one, except inside type annotations
  (`mesh: jax.sharding.Mesh`); (2) no string "data" or "model" among the arguments of a call in
  AXIS_CALLS (`jax.lax.psum(x, "data")`) or of any `axis_name=` keyword.
  """
  tree = ast.parse(source)
  in_annotation = _annotation_nodes(tree)
  found = []
  for node in ast.walk(tree):
    if id(node) in in_annotation:
      continue
    where = f"{filename}:{getattr(node, 'lineno', '?')}"
    if isinstance(node, ast.Attribute) and node.attr in SHARDING_NAMES:
      found.append(f"{where}: .{node.attr}")
    elif isinstance(node, ast.Name) and node.id in SHARDING_NAMES - {"P"}:
      found.append(f"{where}: {node.id}")
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      found += [f"{where}: imports {alias.name}" for alias in node.names
                if alias.name.split(".")[-1] in SHARDING_NAMES]
    elif isinstance(node, ast.Call):
      arguments = list(node.args) + [k.value for k in node.keywords]
      if _called_name(node) not in AXIS_CALLS:
        arguments = [k.value for k in node.keywords if k.arg in ("axis_name", "axis_names")]
      found += [f"{where}: mesh axis {inner.value!r} in {_called_name(node)}()"
                for argument in arguments for inner in ast.walk(argument)
                if isinstance(inner, ast.Constant) and inner.value in MESH_AXIS_NAMES]
  return found


def _project_imports() -> dict[str, set[str]]:
  files = source_files()
  return {name: imported_modules(path.read_text(), name, set(files))
          for name, path in files.items()}


def _stages() -> dict[str, int]:
  return architecture_stages((ROOT / "ARCHITECTURE.md").read_text())


def test_architecture_lists_every_module_once_and_nothing_else():
  listed, files = _stages(), source_files()
  assert sorted(set(files) - set(listed)) == [], "modules missing from ARCHITECTURE.md"
  assert sorted(set(listed) - set(files)) == [], "ARCHITECTURE.md lists modules that do not exist"


def test_no_module_imports_a_later_stage():
  violations = stage_violations(_stages(), _project_imports())
  assert sorted(violations - KNOWN_VIOLATIONS) == [], "imports against the data flow"
  assert sorted(KNOWN_VIOLATIONS - violations) == [], "fixed: remove them from KNOWN_VIOLATIONS"


def import_cycles(imports: dict[str, set[str]]) -> list[list[str]]:
  """Every group of modules that import each other, directly or through others (the strongly
  connected components with more than one module, or a module importing itself), sorted."""
  index, low, stack, on_stack, cycles = {}, {}, [], set(), []

  def visit(module):  # Tarjan's algorithm; the graph has ~70 modules, so recursion is fine.
    index[module] = low[module] = len(index)
    stack.append(module)
    on_stack.add(module)
    for dep in imports.get(module, ()):
      if dep not in index:
        visit(dep)
        low[module] = min(low[module], low[dep])
      elif dep in on_stack:
        low[module] = min(low[module], index[dep])
    if low[module] == index[module]:
      group = []
      while not group or group[-1] != module:
        group.append(stack.pop())
        on_stack.discard(group[-1])
      if len(group) > 1 or module in imports.get(module, ()):
        cycles.append(sorted(group))

  for module in sorted(imports):
    if module not in index:
      visit(module)
  return sorted(cycles)


# The training loop and step: what evaluation and export never need, directly or through others.
TRAINING_MODULES = frozenset({"hybridir.training.optim", "hybridir.training.train_step",
                              "hybridir.training.trainer", "hybridir.training.flops",
                              "hybridir.training.summaries"})


def reachable(imports: dict[str, set[str]], module: str) -> set[str]:
  """Every module `module` imports, directly or through others."""
  seen, todo = set(), [module]
  while todo:
    for dep in imports.get(todo.pop(), ()):
      if dep not in seen:
        seen.add(dep)
        todo.append(dep)
  return seen


def test_no_module_imports_itself_through_others():
  """Stage order allows imports within a stage; a cycle there still breaks the one-way flow."""
  assert import_cycles(_project_imports()) == []


def test_cycle_checker_catches_a_cycle_inside_a_stage():
  imports = {"hybridir.evaluation.evaluate": {"hybridir.evaluation.beir_eval",
                                              "hybridir.evaluation.metrics"},
             "hybridir.evaluation.beir_eval": {"hybridir.evaluation.retrieval"},
             "hybridir.evaluation.retrieval": {"hybridir.fs"},
             "hybridir.evaluation.metrics": set(), "hybridir.fs": set()}
  assert import_cycles(imports) == []
  imports["hybridir.evaluation.retrieval"].add("hybridir.evaluation.evaluate")  # evaluate -> beir_eval -> retrieval -> evaluate
  assert import_cycles(imports) == [["hybridir.evaluation.beir_eval",
                                     "hybridir.evaluation.evaluate",
                                     "hybridir.evaluation.retrieval"]]
  assert import_cycles({"hybridir.fs": {"hybridir.fs"}}) == [["hybridir.fs"]]


def test_export_and_evaluation_do_not_import_training_code():
  stages, imports = _stages(), _project_imports()
  reached = {module: sorted(reachable(imports, module) & TRAINING_MODULES)
             for module in imports if stages[module] in (8, 9)}  # 8 export, 9 evaluation.
  assert {module: found for module, found in reached.items() if found} == {}
  assert TRAINING_MODULES <= {module for module, stage in stages.items() if stage == 7}


def test_stage_checker_catches_an_import_of_a_later_stage():
  stages = {"hybridir.fs": 0, "hybridir.data.corpora": 1, "hybridir.training.trainer": 7}
  source = "def f():\n  from hybridir.training import trainer\n"  # Inside a function still counts.
  imports = {"hybridir.data.corpora": imported_modules(source, "hybridir.data.corpora",
                                                       set(stages)),
             "hybridir.fs": set()}
  assert stage_violations(stages, imports) == {("hybridir.data.corpora",
                                                "hybridir.training.trainer")}


@pytest.mark.parametrize("source, imported", [
    ("import hybridir.fs", "hybridir.fs"),
    ("from hybridir.models import t5", "hybridir.models.t5"),
    ("from hybridir.export.encoder import Encoder", "hybridir.export.encoder"),
    ("import tasks", "tasks"),
    ("from tasks import qa", "tasks.qa"),
    ("from hybridir import __version__", "hybridir"),
])
def test_every_import_form_is_counted(source, imported):
  known = {"hybridir", "hybridir.fs", "hybridir.models.t5", "hybridir.export.encoder", "tasks",
           "tasks.qa"}
  assert imported_modules(source, "hybridir.data.corpora", known) == {imported}


def test_stage_checker_names_an_unlisted_module():
  imports = {"hybridir.data.corpora": {"hybridir.newcomer"}}
  with pytest.raises(ValueError, match="hybridir.newcomer"):
    stage_violations({"hybridir.data.corpora": 1}, imports)


def test_only_partitioning_names_mesh_axes():
  paths = [path for name, path in source_files().items() if name != PARTITIONING]
  paths += sorted((ROOT / "bench").glob("*.py"))
  found = [v for path in paths
           for v in sharding_violations(path.read_text(), str(path.relative_to(ROOT)))]
  assert found == []


def test_sharding_checker_catches_a_partition_spec_added_to_the_trainer(tmp_path):
  trainer = (ROOT / "hybridir" / "training" / "trainer.py").read_text()
  assert sharding_violations(trainer, "hybridir/training/trainer.py") == []
  edited = tmp_path / "trainer.py"
  edited.write_text(trainer + '\n\nBATCH_SPEC = jax.sharding.PartitionSpec("data")\n')
  found = sharding_violations(edited.read_text(), "hybridir/training/trainer.py")
  assert len(found) == 1 and ".PartitionSpec" in found[0], found


@pytest.mark.parametrize("source", [
    "from jax.sharding import PartitionSpec as P\nspec = P('data')",
    "import jax\nspec = jax.P('model')",
    "from jax.experimental import mesh_utils",
    "import jax\nmesh = jax.sharding.Mesh(devices, ('x',))",
    "from hybridir import partitioning\naxis = partitioning.DATA_AXIS",
    "import jax\ntotal = jax.lax.psum(x, 'data')",
    "import jax\nf = jax.pmap(g, axis_name='model')",
    "import jax\ny = jax.lax.with_sharding_constraint(x, sharding_of('data'))",
])
def test_sharding_checker_catches_each_form(source):
  assert sharding_violations(source, "synthetic.py")


def test_sharding_checker_allows_type_annotations_and_partitioning_helpers():
  source = ("import jax\nfrom hybridir import partitioning\n"
            "def f(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:\n"
            "  data = {'data': 1, 'model': 2}\n"
            "  return partitioning.batch_sharding(mesh)\n")
  assert sharding_violations(source, "synthetic.py") == []


def imports_gin(source: str) -> bool:
  """Whether `source` imports gin (gin-config) at any depth."""
  for node in ast.walk(ast.parse(source)):
    names = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
             [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
    if any(name.split(".")[0] == "gin" for name in names):
      return True
  return False


def test_only_the_entry_point_imports_gin():
  paths = source_files()
  paths.update({f"bench.{p.stem}": p for p in sorted((ROOT / "bench").glob("*.py"))})
  importers = sorted(name for name, path in paths.items() if imports_gin(path.read_text()))
  assert set(importers) <= GIN_MODULES, importers


@pytest.mark.parametrize("source, expected", [
    ("import gin", True), ("import gin.config", True), ("from gin import config", True),
    ("def f():\n  import gin\n", True), ("import ginkgo", False), ("from hybridir import gin_utils", False)])
def test_gin_checker_sees_every_import_form(source, expected):
  assert imports_gin(source) is expected


def test_nothing_imports_the_demo():
  """The demo (hybridir.study.demo) is imported by nothing; the gather and the study's run take run
  names from study_layout."""
  importers = {module for module, deps in _project_imports().items()
               if "hybridir.study.demo" in deps}
  assert importers == set()


def test_nothing_imports_the_gin_entry_point():
  """hybridir.main is a command line only: importing it defines its absl flags (--gin_file, ...);
  the study and the gather run configs through gin_run."""
  importers = {module for module, deps in _project_imports().items() if "hybridir.main" in deps}
  assert importers == set()


def gin_private_names(source: str) -> list[str]:
  """The private names of gin (`gin.config._CONFIG`, `from gin.config import _CONFIG`) that
  `source` uses: gin may change them in any release; its public API says the same."""
  found = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
      root = node.value
      while isinstance(root, ast.Attribute):
        root = root.value
      if isinstance(root, ast.Name) and root.id == "gin":
        found.append(f"line {node.lineno}: .{node.attr}")
    elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "gin":
      found += [f"line {node.lineno}: imports {alias.name}" for alias in node.names
                if alias.name.startswith("_") and alias.name != "__gin__"]
  return found


def test_no_module_uses_gin_private_names():
  paths = source_files()
  paths.update({f"bench.{p.stem}": p for p in sorted((ROOT / "bench").glob("*.py"))})
  found = {name: gin_private_names(path.read_text()) for name, path in paths.items()}
  assert {name: names for name, names in found.items() if names} == {}


@pytest.mark.parametrize("source, expected", [
    ("import gin\nnames = gin.config._CONFIG", True),
    ("import gin\ngin.config._LOCATION_PREFIXES.append('x')", True),
    ("from gin.config import _CONFIG", True),
    ("import gin\ngin.config_str()", False),
    ("import gin\nx = gin.config.ConfigurableReference", False),
    ("from __gin__ import dynamic_registration", False), ("x = other._private", False)])
def test_gin_private_name_checker_sees_each_form(source, expected):
  assert bool(gin_private_names(source)) is expected
