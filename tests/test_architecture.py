"""The import rules of docs/ARCHITECTURE.md hold in the code.

The rules are read from the document's two tables ("What may import what" and the outside
packages that only some modules may import), so the document and this test cannot disagree:
every import statement of tinysparse/ and cuda_kernels/ (top level or inside a function) is
resolved to a module name and checked against the row of the longest matching module name.
"""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "ARCHITECTURE.md"
PROJECT = ("tinysparse", "cuda_kernels", "lessons", "tests")


def _table_after(heading_text, text):
    """Rows (first cell, second cell) of the first markdown table after a line containing
    heading_text; backticks stripped."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if heading_text in ln)
    rows, in_table = [], False
    for ln in lines[start + 1:]:
        if ln.startswith("|"):
            in_table = True
            cells = [c.strip() for c in ln.strip().strip("|").split("|")]
            if set(cells[0]) <= {"-", ":"}:
                continue
            rows.append((cells[0].strip("`"), cells[1]))
        elif in_table:
            break
    return rows[1:]                                   # drop the header row


def _names(cell):
    return [] if cell.strip() == "—" else re.findall(r"`([\w.]+)`", cell)


def import_rules():
    text = DOC.read_text()
    may = {module: _names(cell) for module, cell in _table_after("## What may import what", text)}
    only = {pkg: _names(cell) for pkg, cell in _table_after("Outside packages that only some", text)}
    return may, only


def module_name(path, root=ROOT):
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(name):
    """True when `name` is a module or package of this repository (not a name inside one)."""
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or path.is_dir()


def imports_of(path, root=ROOT):
    """Every module `path` imports, relative imports resolved: {(name, line)}."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            # `from . import nn` imports the module tinysparse.nn: name each imported submodule
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add((sub if _is_module(sub) else module, node.lineno))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", ""))
              in LOADERS and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            # a module imported by name (engine/compiled.py's load, importlib.import_module):
            # absolute, or relative to the file's package
            name = node.args[0].value
            if name.startswith("."):
                name = ".".join(package) + name
            found.add((name, node.lineno))
    return found


LOADERS = {"load", "import_module", "gpu", "kernels", "compiled_kernels", "gpu_kernels"}


def covered_by(name, prefixes):
    """True when `name` is one of prefixes or inside one. `tinysparse` alone means the package's
    own names (`from tinysparse import Tensor`, `__version__`), not its submodules."""
    def within(p):
        if p == "tinysparse":
            return name == p or (name.startswith(p + ".") and not _is_module(name))
        return name == p or name.startswith(p + ".")
    return any(within(p) for p in prefixes)


def rule_for(module, table):
    """The row of the longest key that is `module` or a package containing it. The top-level
    `tinysparse` row is the package's own __init__.py: it covers nothing below it."""
    keys = [k for k in table if module == k or (module.startswith(k + ".") and k != "tinysparse")]
    return max(keys, key=len) if keys else None


def broken_imports(path, root=ROOT):
    """The imports of `path` that break a rule, one message each (empty when it follows them)."""
    may, only = import_rules()
    module = module_name(path, root)
    rule = rule_for(module, may)
    if rule is None:
        return [f"{module} has no row in docs/ARCHITECTURE.md's import table"]
    broken = []
    for name, line in sorted(imports_of(path, root)):
        top = name.split(".")[0]
        if top in PROJECT:
            if not covered_by(name, may[rule]):
                broken.append(f"line {line}: imports {name}, but {rule} may import only "
                              f"{', '.join(may[rule]) or 'nothing of the project'}")
        elif top in only and not covered_by(module, only[top]):
            broken.append(f"line {line}: imports {top}, which only {', '.join(only[top])} may")
    return broken


LIBRARY_FILES = sorted([*ROOT.glob("tinysparse/**/*.py"), *ROOT.glob("cuda_kernels/**/*.py")])


def test_the_document_has_both_tables():
    may, only = import_rules()
    assert "tinysparse.engine" in may and may["tinysparse.engine"] == ["tinysparse.engine"]
    assert may["cuda_kernels"] == ["cuda_kernels"] and may["tinysparse.lesson"] == []
    assert only["cupy"] == ["tinysparse.engine.backend"]


@pytest.mark.parametrize("path", LIBRARY_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_import_follows_the_rules(path):
    broken = broken_imports(path)
    assert not broken, f"{path.relative_to(ROOT)}:\n  " + "\n  ".join(broken)


def _fake_tree(tmp_path, relpath, source):
    path = tmp_path / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    return path


@pytest.mark.parametrize("relpath, source, expected", [
    ("tinysparse/engine/ops.py", "from .. import nn\n", "imports tinysparse.nn"),
    ("tinysparse/moe/layer.py", "def f():\n    from ..gpt import GPT\n", "imports tinysparse.gpt"),
    ("tinysparse/moe/numba_kernels.py", "from ..engine import backend\n", "nothing of the project"),
    ("cuda_kernels/plan.py", "from tinysparse.engine import backend\n", "imports tinysparse.engine"),
    ("tinysparse/training/loop.py", "import lessons\n", "imports lessons"),
    ("tinysparse/gpt.py", "import cupy\n", "which only tinysparse.engine.backend may"),
    ("tinysparse/training/loop.py", "import torch\n", "which only tinysparse.bench may"),
    ("tinysparse/training/sampling.py", "import pickle\n", "which only tinysparse.training.convert"),
    ("tinysparse/newthing.py", "import numpy\n", "has no row"),
    ("tinysparse/bench/dense.py", "from tinysparse import lesson\n", "imports tinysparse.lesson"),
])
def test_the_rules_catch_a_broken_import(tmp_path, relpath, source, expected):
    """The checker itself, on files that break a rule (a checker that cannot fail proves nothing)."""
    broken = broken_imports(_fake_tree(tmp_path, relpath, source), root=tmp_path)
    assert any(expected in message for message in broken), broken


def test_a_file_that_follows_the_rules_passes(tmp_path):
    path = _fake_tree(tmp_path, "tinysparse/moe/layer.py",
                      "import numpy as np\nfrom .. import nn\nfrom ..engine.backend import to_numpy\n")
    assert broken_imports(path, root=tmp_path) == []


def test_relative_imports_resolve_to_module_names(tmp_path):
    src = _fake_tree(tmp_path, "tinysparse/moe/layer.py",
                     "from .. import nn\nfrom ..engine.backend import to_numpy\nfrom . import router\n"
                     "def f():\n    import cupy\n")
    names = {name for name, _ in imports_of(src, root=tmp_path)}
    assert names == {"tinysparse.nn", "tinysparse.engine.backend", "tinysparse.moe.router", "cupy"}


def test_bench_suites_do_not_import_each_other():
    """bench/: suites import common, profile and torch_twins, never another suite (no cycle)."""
    suites = {"dense", "moe", "layer", "grouped", "sampling", "gpu_check"}
    for path in (ROOT / "tinysparse" / "bench").glob("*.py"):
        if path.stem == "__init__":
            continue
        others = {name.split(".")[2] for name, _ in imports_of(path)
                  if name.startswith("tinysparse.bench.") and name.count(".") >= 2}
        assert not (others & suites), f"bench/{path.name} imports the suite(s) {others & suites}"
