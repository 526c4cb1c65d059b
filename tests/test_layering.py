"""Layers point one way: no import cycle between modules, no import from a higher layer.

Every module has a layer, and every import names a module that exists. Imports are read
with ``ast`` (nothing is imported), including the ones inside functions: a lazy import
is still a dependency, it only moves the failure to run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "cookie", "baselines")
USER_DIRS = ("tests", "bench", "scripts")

# Bottom to top; a module may import its own layer and the ones below it. Each module gets
# the layer of the longest prefix below that names it; "harness" names only the package's
# __init__, so a new top-level module must be placed here on purpose. The order is the
# direction of knowledge: a run record is written by execution and read by analysis, so
# analysis sits above what writes records (eval, train) and below what plans and runs grids
# (launch), which it must never need.
LAYERS: tuple[tuple[str, ...], ...] = (
    # Foundation: atomic files, run records and grid manifests, seeds, world/rank, signals,
    # names, protocols.
    ("harness", "harness.atomic", "harness.record", "harness.manifest", "harness.seeding",
     "harness.dist", "harness.procs", "harness.registry", "harness.interfaces",
     "harness.resources"),
    # Inputs and models: datasets, model families, and the config tree that names them.
    ("harness.data", "harness.models", "cookie", "baselines", "harness.config"),
    # Measuring a model: features, retrieval, costs, the run record's writer.
    ("harness.eval",),
    # Training a model.
    ("harness.train",),
    # Tables and figures from run records.
    ("harness.analysis",),
    # The run store one stage writes into (locks, stage directories, provenance). Below
    # harness.stage, which writes there; the rest of launch plans and runs whole grids.
    ("harness.launch.lock", "harness.launch.store", "harness.launch.provenance",
     "harness.launch.snapshot"),
    # One stage, end to end.
    ("harness.stage",),
    # Grids: planning and executors (local, SLURM).
    ("harness.launch",),
    # Entry points.
    ("harness.run", "harness.report", "harness.model_check"),
)

# Pairs the order alone would allow but that must stay apart: analysis reads run records and
# never needs the code that trained the runs.
INDEPENDENT: tuple[tuple[str, str], ...] = (("harness.analysis", "harness.train"),)

# Known exceptions to the layer order, with the reason for each. None today: analysis reads
# run records and manifests, not the planner; table cells and paper joins sit below the table
# builders; the two executors share a job module. Each entry must still be needed
# (the edge exists and points up, joins independent packages or closes a cycle): the
# stale-entry test below fails otherwise, so the list only ever shrinks.
ALLOWED: frozenset[tuple[str, str]] = frozenset()


def module_files(root: Path = REPO) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the checked packages."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    # "harness.data.synthetic.render" -> itself; "harness.eval.features.feature_key" (an
    # attribute) -> "harness.eval.features": the longest prefix that is a module.
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The checked modules ``module`` imports, anywhere in its file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node)
            # ``from pkg import mod`` imports the submodule; ``from mod import name`` the module.
            names.update(f"{base}.{alias.name}" for alias in node.names)
    found = {_owner(name, modules) for name in names}
    return {name for name in found if name is not None and name != module}


def missing_modules(root: Path = REPO) -> list[str]:
    """``file: name`` for each import of a checked package's module that does not exist.

    ``import a.b`` and ``from a.b import x`` both need a module ``a.b``; after a module
    moves, an import of its old place would otherwise count as an import of the parent
    package and pass the layer checks unnoticed.
    """
    modules = module_files(root)
    # Tests and benchmarks import the packages too (a stale one would only fail when run).
    users = [(name, path) for name, path in modules.items()] + [
        (path.stem, path) for folder in USER_DIRS for path in sorted((root / folder).rglob("*.py"))]
    missing = []
    for module, path in users:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                wanted = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.level == 0 or module in modules):
                wanted = [_resolve(module, path.name == "__init__.py", node)]
            else:
                continue
            missing += [f"{path.relative_to(root)}:{node.lineno}: {name}" for name in wanted
                        if name.split(".")[0] in PACKAGES and name not in modules]
    return missing


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    """Module -> the checked modules it imports."""
    modules = module_files(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer_of(module: str) -> int | None:
    """Index in :data:`LAYERS` of the longest prefix naming ``module`` (None: unplaced)."""
    best: tuple[int, int] | None = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or (prefix != "harness" and module.startswith(prefix + ".")):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), index)
    return None if best is None else best[1]


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Edges from a module to one in a higher layer."""
    return sorted((a, b) for a, targets in graph.items() for b in targets
                  if layer_of(a) is not None and layer_of(b) is not None
                  and layer_of(b) > layer_of(a))  # type: ignore[operator]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def _without_allowed(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {a: {b for b in targets if (a, b) not in ALLOWED} for a, targets in graph.items()}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_every_module_has_a_layer(graph: dict[str, set[str]]) -> None:
    unplaced = sorted(m for m in graph if layer_of(m) is None)
    assert not unplaced, f"tests/test_layering.py LAYERS places no layer for: {unplaced}"


def test_imports_name_modules_that_exist() -> None:
    missing = missing_modules()
    assert not missing, "imports of modules that do not exist:\n" + "\n".join(missing)


def test_no_import_from_a_higher_layer(graph: dict[str, set[str]]) -> None:
    upward = upward_imports(_without_allowed(graph))
    lines = [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})" for a, b in upward]
    assert not upward, "upward imports:\n" + "\n".join(lines)


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def independent_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Edges between packages that :data:`INDEPENDENT` keeps apart."""
    return sorted((a, b) for a, targets in graph.items() for b in targets
                  for low, high in INDEPENDENT if _under(a, low) and _under(b, high))


def test_independent_packages_stay_apart(graph: dict[str, set[str]]) -> None:
    found = independent_imports(_without_allowed(graph))
    assert not found, "imports between independent packages: " + ", ".join(
        f"{a} -> {b}" for a, b in found)


def test_no_import_cycle(graph: dict[str, set[str]]) -> None:
    found = cycles(_without_allowed(graph))
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def needed(edge: tuple[str, str], graph: dict[str, set[str]]) -> bool:
    """The edge exists and one of the checks would fail on it without the allow-list."""
    a, b = edge
    if b not in graph.get(a, set()):
        return False
    in_cycle = any(a in component and b in component for component in cycles(graph))
    return in_cycle or edge in upward_imports(graph) or edge in independent_imports(graph)


def test_allowed_edges_are_still_needed(graph: dict[str, set[str]]) -> None:
    stale = sorted(edge for edge in ALLOWED if not needed(edge, graph))
    assert not stale, f"remove from ALLOWED in tests/test_layering.py (no longer needed): {stale}"


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path: Path) -> None:
    # The checks above pass on the real tree only if they can fail: a made-up tree with a
    # function-level cycle and a data -> train import must trip both.
    (tmp_path / "harness" / "data").mkdir(parents=True)
    (tmp_path / "harness" / "train").mkdir()
    for package in ("harness", "harness/data", "harness/train"):
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "harness" / "data" / "a.py").write_text(
        "def f():\n    from harness.train import loop\n")
    (tmp_path / "harness" / "train" / "loop.py").write_text(
        "from ..data.a import f\nimport harness.train.step\n")
    (tmp_path / "harness" / "train" / "step.py").write_text("from . import loop\n")
    graph = import_graph(tmp_path)
    assert graph["harness.data.a"] == {"harness.train.loop"}
    assert graph["harness.train.loop"] == {"harness.data.a", "harness.train.step"}
    assert upward_imports(graph) == [("harness.data.a", "harness.train.loop")]
    assert cycles(graph) == [["harness.data.a", "harness.train.loop", "harness.train.step"]]
    (tmp_path / "harness" / "data" / "b.py").write_text("from harness.train.gone import x\n")
    assert missing_modules(tmp_path) == ["harness/data/b.py:1: harness.train.gone"]
