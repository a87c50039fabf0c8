"""The package's structure: imports point down the layers only (function-local imports included), so
there is no import cycle; no module reaches into another's private names; every module has its
layer; and a function-local import of an lmkit module says on its line why it is not at the top.

The layers, bottom first, are the README's "Architecture" table; the test reads them from there, so
the two cannot drift apart. Each check is also run on a small made-up package that breaks it."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "lmkit"


def module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path, package: Path):
    """``(target module, names, line, local)`` for each import of the package in ``path``: ``local``
    when it sits inside a function. Imports under ``if TYPE_CHECKING:`` (annotations only) are skipped."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    modules = {module_name(p, package) for p in package.rglob("*.py")}
    here = module_name(path, package).split(".")
    if path.name != "__init__.py":
        here = here[:-1]  # the package the module is in

    def visit(node, local):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking_only(child):
                continue
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(here[: len(here) - child.level + 1] + ([base] if base else []))
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    if sub in modules:  # from . import checkpoint
                        yield sub, [], child.lineno, inner
                    elif base in modules:
                        yield base, [alias.name], child.lineno, inner
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name in modules and alias.name != package.name:
                        yield alias.name, [], child.lineno, inner
            yield from visit(child, inner)

    yield from visit(tree, False)


def graph(package: Path) -> dict[str, set[str]]:
    edges = {module_name(p, package): set() for p in package.rglob("*.py")}
    for path in package.rglob("*.py"):
        source = module_name(path, package)
        for target, _, _, _ in imports_of(path, package):
            if target != source and target != package.name:
                edges[source].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def connect(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return found


def private_imports(package: Path) -> list[str]:
    """``from .x import _name`` across modules (dunders aside), and ``x._name`` on an imported module."""
    found = []
    for path in package.rglob("*.py"):
        source = module_name(path, package)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = {}
        for target, names, line, _ in imports_of(path, package):
            for name in names:
                if name.startswith("_") and not name.startswith("__") and target != source:
                    found.append(f"{source}:{line} imports {target}.{name}")
            if not names:
                aliases[target.rsplit(".", 1)[-1]] = target
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                found.append(f"{source}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    return sorted(set(found))


def unexplained_local_imports(package: Path) -> list[str]:
    """Function-local imports of the package without a ``#`` comment on their line saying why."""
    found = []
    for path in package.rglob("*.py"):
        lines = path.read_text(encoding="utf-8").splitlines()
        for target, _, line, local in imports_of(path, package):
            if local and "#" not in lines[line - 1]:
                found.append(f"{module_name(path, package)}:{line} imports {target} inside a function")
    return sorted(set(found))


def readme_layers() -> list[tuple[str, list[str]]]:
    """``(layer, [modules])`` from the README's Architecture table, bottom layer first."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Architecture", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) >= 2 and cells[0] and not set(cells[0]) <= set("-: ") and cells[0] != "layer":
            rows.append((cells[0], re.findall(r"`([a-z_][a-z_.0-9/]*)`", cells[1])))
    return rows[::-1]  # the table reads from the top layer down


def layer_of() -> dict[str, int]:
    found = {}
    for i, (_, modules) in enumerate(readme_layers()):
        for m in modules:
            found[f"lmkit.{m.rstrip('/').replace('/', '.')}"] = i
    return found


def placed(module: str, layers: dict[str, int]) -> int | None:
    """The layer of ``module``, or of the package it is in (``lmkit.viz.data`` is in ``viz/``'s)."""
    while module:
        if module in layers:
            return layers[module]
        module = module.rpartition(".")[0]
    return None


# ------------------------------------------------------------------------------------- the package

def test_the_package_has_no_import_cycle():
    assert cycles(graph(PACKAGE)) == []


def test_no_module_imports_another_modules_private_names():
    assert private_imports(PACKAGE) == []


def test_function_local_imports_of_lmkit_say_why():
    assert unexplained_local_imports(PACKAGE) == []


def test_every_module_has_a_layer_in_the_readme_and_imports_point_down():
    layers = layer_of()
    modules = sorted(graph(PACKAGE))
    unplaced = [m for m in modules if m != "lmkit" and placed(m, layers) is None]
    assert not unplaced, f"modules missing from the README's Architecture table: {unplaced}"
    assert not [m for m in layers if m not in modules and not any(x.startswith(m + ".") for x in modules)], \
        "the Architecture table names modules that do not exist"
    upward = [f"{a} ({readme_layers()[placed(a, layers)][0]}) -> {b} ({readme_layers()[placed(b, layers)][0]})"
              for a, targets in graph(PACKAGE).items() if a != "lmkit" for b in sorted(targets)
              if placed(b, layers) > placed(a, layers)]
    assert upward == [], "imports that point up the layers"


# ------------------------------------------------------------------ each check, on a package that breaks it

def make_package(tmp_path, files: dict[str, str]) -> Path:
    package = tmp_path / "pkg"
    for name, text in {"__init__.py": "", **files}.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    return package


def test_a_cycle_through_a_function_local_import_is_found(tmp_path):
    package = make_package(tmp_path, {
        "a.py": "from .b import f\n",
        "b.py": "def f():\n    from . import a  # late\n    return a\n",
        "c.py": "from .a import f\n",
        "sub/__init__.py": "",
        "sub/d.py": "from ..c import f\n",
    })
    assert cycles(graph(package)) == [["pkg.a", "pkg.b"]]
    assert graph(package)["pkg.sub.d"] == {"pkg.c"}


def test_type_checking_imports_are_not_a_cycle(tmp_path):
    package = make_package(tmp_path, {
        "a.py": "from .b import f\n",
        "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import X\ndef f(): ...\n",
    })
    assert cycles(graph(package)) == []


def test_private_names_across_modules_are_found(tmp_path):
    package = make_package(tmp_path, {
        "a.py": "def _helper(): ...\n",
        "b.py": "from .a import _helper\n",
        "c.py": "from . import a\nx = a._helper\ny = a.__name__\n",
    })
    assert private_imports(package) == ["pkg.b:1 imports pkg.a._helper", "pkg.c:2 uses pkg.a._helper"]


def test_a_function_local_import_without_a_reason_is_found(tmp_path):
    package = make_package(tmp_path, {
        "a.py": "def f(): ...\n",
        "b.py": "def g():\n    from .a import f\n    from .a import f as h  # seconds to import\n",
    })
    assert unexplained_local_imports(package) == ["pkg.b:2 imports pkg.a inside a function"]


def test_readme_layers_are_read_bottom_first():
    names = [name for name, _ in readme_layers()]
    assert names[0] == "foundations" and names[-1] == "orchestration", names


@pytest.mark.parametrize("module, layer", [("lmkit.viz.attention", "views"), ("lmkit.model", "model")])
def test_a_submodule_takes_its_packages_layer(module, layer):
    assert readme_layers()[placed(module, layer_of())][0] == layer
