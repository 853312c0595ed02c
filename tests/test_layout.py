"""The package's shape (issue 25): subpackages by stage that import downward only, no import cycle, no module
over 500 lines. Every import counts, function-level ones too; importing a package counts as importing what its
``__init__`` imports; imports under ``if TYPE_CHECKING:`` may point anywhere."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "cpt_harness"

# The import order, lowest first (docs/architecture.md): a module may import its own layer and the ones below.
LAYERS = [
    ["cpt_harness", "cpt_harness.errors"],
    ["cpt_harness.config"],  # schema, load, names, explain, sweep_files (not validate: layer 9)
    ["cpt_harness.infra"],
    ["cpt_harness.data"],
    ["cpt_harness.model"],
    ["cpt_harness.evaluate"],
    ["cpt_harness.train"],
    ["cpt_harness.search"],
    ["cpt_harness.analysis"],
    ["cpt_harness.config.validate"],
    ["cpt_harness.reporting"],
    ["cpt_harness.run"],
    ["cpt_harness.cli", "cpt_harness.__main__"],
]
MAX_LINES = 500


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def layer(module: str) -> int:
    best, depth = None, -1
    for i, names in enumerate(LAYERS):
        for n in names:
            if (
                (module == n or module.startswith(n + "."))
                and len(n) > depth
                and not (n == "cpt_harness" and module != n)
            ):
                best, depth = i, len(n)
    assert best is not None, f"{module} is in no layer of tests/test_layout.py"
    return best


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def imports(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """The cpt_harness modules that ``name`` imports anywhere in its file, outside ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    skip = {
        id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _type_checking(node) for n in ast.walk(node)
    }
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("cpt_harness")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cpt_harness"):
            for a in node.names:  # "from pkg import mod" imports the module; "from mod import name" the module
                full = f"{node.module}.{a.name}"
                out.add(full if full in known else node.module)
    return {m for m in out if m != name}


def graph() -> dict[str, set[str]]:
    """Module -> the modules it imports, a package standing for its __init__ (and the parent packages an import
    runs, whose __init__s execute first)."""
    known = modules()
    g = {}
    for name, path in known.items():
        targets = set()
        for m in imports(path, name, known):
            parts = m.split(".")
            targets |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)} & set(known)
        g[name] = {t for t in targets if t != name and not name.startswith(t + ".")}
    return g


def test_every_import_runs_down_the_layers():
    upward = [
        f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
        for a, bs in graph().items()
        for b in sorted(bs)
        if layer(b) > layer(a)
    ]
    assert not upward, "imports that run up the order:\n" + "\n".join(upward)


def test_no_import_cycle():
    g = graph()
    seen, stack, cycles = set(), [], []

    def visit(n):
        if n in stack:
            cycles.append(stack[stack.index(n) :] + [n])
            return
        if n in seen:
            return
        seen.add(n)
        stack.append(n)
        for m in sorted(g.get(n, ())):
            visit(m)
        stack.pop()

    for n in sorted(g):
        visit(n)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_module_over_500_lines():
    long = {n: len(p.read_text().splitlines()) for n, p in modules().items()}
    assert not {n: k for n, k in long.items() if k > MAX_LINES}, {n: k for n, k in long.items() if k > MAX_LINES}


def test_every_subpackage_says_what_it_owns():
    for name, path in modules().items():
        if path.name == "__init__.py" and name.count(".") == 1:
            assert ast.get_docstring(ast.parse(path.read_text())), f"{name}/__init__.py has no docstring"


def test_the_checker_sees_function_level_and_package_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text(
        "import os\n\ndef f():\n    from cpt_harness.run import sweep\n    from cpt_harness import data\n"
        "if TYPE_CHECKING:\n    from cpt_harness.cli import main\n"
    )
    found = imports(src, "cpt_harness.x", modules())
    assert found == {"cpt_harness.run.sweep", "cpt_harness.data"}
