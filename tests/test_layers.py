"""The house reads data -> models -> train -> jobs -> studies -> pipeline: no module imports from
a higher layer, and no two modules import each other, directly or around a circle (imports
inside functions count too: a lazy import is still an arrow)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from promu_lib.paths import project_root

PACKAGE = project_root() / "promu_lib"

# lowest first; a module belongs to the first entry whose name or package matches it
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("errors", "paths", "io", "locks", "config", "cache", "progress")),
    ("data", ("data", "metrics", "losses")),
    ("models", ("models", "teacher", "detect", "guards")),
    ("train", ("train", "mining", "detect_command")),  # a model run over a dataset
    ("jobs", ("jobs", "chat", "slurm", "slurm_task")),
    ("report", ("report", "evidence", "analysis", "plots", "predict", "grounding")),
    ("notebook", ("notebook",)),  # the notebooks' set-up: seeds through train.common
    ("studies", ("studies",)),
    ("pipeline", ("pipeline", "pages", "cli")),
)
ENTRY_POINTS = {"promu_lib.data.cli", "promu_lib.train.cli"}  # `promu` subcommands: own layer


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    rest = module.split(".")[1:] or [""]
    for i, (_, names) in enumerate(LAYERS):
        if rest[0] in names:
            return i
    raise AssertionError(f"{module}: in no layer; add it to LAYERS in {__file__}")


def imports(module: str) -> set[str]:
    """The project modules ``module`` imports anywhere in its file."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            for alias in node.names:  # `from promu_lib import plots` names a module
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    return {m for m in found if m in MODULES and m != module}


GRAPH = {m: imports(m) for m in MODULES}


def test_every_module_is_in_a_layer():
    for m in MODULES:
        if m != "promu_lib":
            layer(m)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "promu_lib"))
def test_no_import_from_a_higher_layer(module):
    mine = layer(module)
    up = sorted(d for d in GRAPH[module] if d != "promu_lib" and layer(d) > mine)
    assert not up, f"{module} ({LAYERS[mine][0]}) imports from higher layers: {up}"


def test_no_import_circle():
    """Depth-first search for a back edge; the message names the circle."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(GRAPH[m]):
            if state.get(d) == 1:
                circle = stack[stack.index(d) :] + [d]
                raise AssertionError("import circle: " + " -> ".join(circle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


def test_the_checker_sees_lazy_imports_and_circles(tmp_path):
    """The two checks can fail: a function-level import is an arrow, a circle is found."""
    src = "def f():\n    from promu_lib.studies import table1\n    return table1\n"
    tree = ast.parse(src)
    lazy = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert lazy and lazy[0].module == "promu_lib.studies"
    assert "promu_lib.studies.common" in GRAPH["promu_lib.studies.table1"]
    saved = dict(GRAPH)
    try:
        GRAPH["promu_lib.config"] = GRAPH["promu_lib.config"] | {"promu_lib.studies.table1"}
        with pytest.raises(AssertionError, match="import circle: .*promu_lib.config"):
            test_no_import_circle()
    finally:
        GRAPH.clear()
        GRAPH.update(saved)


def _sources() -> dict[str, str]:
    """Every file that imports from the project: its modules, tests, benchmarks, notebooks."""
    import json

    root = project_root()
    out = {m: p.read_text(encoding="utf-8") for m, p in MODULES.items()}
    for p in [*root.glob("tests/*.py"), *root.glob("benchmarks/*.py")]:
        out[str(p.relative_to(root))] = p.read_text(encoding="utf-8")
    for p in root.glob("notebooks/*.ipynb"):
        cells = json.loads(p.read_text(encoding="utf-8"))["cells"]
        code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
        out[str(p.relative_to(root))] = "\n".join(code)
    return out


def test_every_imported_name_exists():
    """``from promu_lib.x import y`` inside a function runs only when the function does: check
    every such name now, in the library, the tests, the benchmarks and the notebooks (a rename
    that missed a lazy import fails here, not in a notebook)."""
    import importlib

    missing = []
    for where, source in _sources().items():
        for node in ast.walk(ast.parse(source)):
            if not (
                isinstance(node, ast.ImportFrom) and (node.module or "").startswith("promu_lib")
            ):
                continue
            target = importlib.import_module(node.module)
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if not hasattr(target, alias.name) and sub not in MODULES:
                    missing.append(f"{where} line {node.lineno}: {node.module}.{alias.name}")
    assert not missing, "imports of names that do not exist:\n" + "\n".join(missing)


def test_every_attribute_of_an_imported_module_exists():
    """``plots.table_bars(...)`` after ``from promu_lib import plots``: the attribute must
    exist (a function moved to another module without updating its callers fails here)."""
    import importlib
    import types

    missing = []
    for where, source in _sources().items():
        tree = ast.parse(source)
        bound: dict[str, types.ModuleType] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("promu_lib"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    if sub in MODULES:
                        bound[alias.asname or alias.name] = importlib.import_module(sub)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in bound
                and isinstance(node.ctx, ast.Load)
                and not hasattr(bound[node.value.id], node.attr)
            ):
                missing.append(f"{where} line {node.lineno}: {node.value.id}.{node.attr}")
    assert not missing, "attributes that do not exist:\n" + "\n".join(missing)
