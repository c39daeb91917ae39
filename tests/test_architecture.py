"""The shape of the code, checked from its source: imports point one way between the layers, the
facade has no import cycle, and its functions and modules stay small (or say why not)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"envs": "latentplan.envs", "worldmodels": "latentplan.worldmodels", "planners": "latentplan.planners",
          "latentplan": "latentplan"}


def _module_name(path: Path) -> str:
    layer, *rest = path.relative_to(ROOT).with_suffix("").parts
    parts = [LAYERS[layer], *rest]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """The latentplan modules `path` imports at module level or in functions (relative ones resolved)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("latentplan")}
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            mod = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
            if mod.startswith("latentplan"):
                out.add(mod)
                out |= {f"{mod}.{a.name}" for a in node.names}
    return out


def _files(layer: str) -> list[Path]:
    return sorted((ROOT / layer).rglob("*.py"))


@pytest.mark.parametrize("layer, allowed", [
    ("envs", ("latentplan.envs",)),
    ("worldmodels", ("latentplan.worldmodels",)),
    ("planners", ("latentplan.planners", "latentplan.worldmodels")),
])
def test_imports_point_one_way(layer, allowed):
    for path in _files(layer):
        bad = sorted(m for m in _imports(path) if not m.startswith(allowed))
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_the_facade_has_no_import_cycle():
    modules = {_module_name(p): p for p in _files("latentplan")}
    graph = {m: {i for i in _imports(p) if i in modules and i != m and not m.startswith(i + ".")}
             for m, p in modules.items()}
    graph = {m: deps - {"latentplan"} for m, deps in graph.items() if m != "latentplan"}  # the lazy facade
    done, path = set(), []

    def visit(m):
        if m in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
        if m in done:
            return
        path.append(m)
        for d in graph.get(m, ()):
            visit(d)
        path.pop()
        done.add(m)

    for m in graph:
        visit(m)


def test_facade_functions_and_modules_are_small():
    for path in _files("latentplan"):
        text = path.read_text()
        tree = ast.parse(text)
        lines = len(text.splitlines())
        doc = ast.get_docstring(tree) or ""
        assert lines <= 500 or "Why this module is" in doc, f"{path.relative_to(ROOT)}: {lines} lines, no reason given"
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= 80, f"{path.relative_to(ROOT)}:{node.lineno} {node.name} is {length} lines"


def test_importing_the_planners_loads_no_facade_and_no_environment():
    import subprocess
    import sys

    code = ("import sys, latentplan.planners; print(sorted(m for m in ('gymnasium', 'dm_control', 'numba', "
            "'latentplan.training', 'latentplan.compare', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_every_package_is_in_the_wheel():
    """pyproject's explicit package list names every folder with an __init__.py, so a plain (non-editable)
    `pip install .` ships the CLI and the control package too (it once shipped neither)."""
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    on_disk = {_module_name(p) for layer in LAYERS for p in (ROOT / layer).rglob("__init__.py")
               if "__pycache__" not in p.parts}
    assert on_disk - listed == set(), f"packages missing from pyproject.toml: {sorted(on_disk - listed)}"
    assert listed - on_disk == set(), f"pyproject.toml lists packages that do not exist: {sorted(listed - on_disk)}"


def test_dir_of_the_facade_lists_what_it_exports_and_each_name_resolves():
    import latentplan as lp

    names = dir(lp)
    assert not {"importlib", "Any", "annotations"} & set(names)  # the module's own imports stay private
    assert set(lp.__all__) <= set(names) and "envs" in names and "__version__" in names
    for name in names:
        assert getattr(lp, name) is not None, name
