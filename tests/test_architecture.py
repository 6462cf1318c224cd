"""The package's import graph: no circles, and no import from a lower layer to a higher one.

The graph is read with ``ast`` (nothing is imported). Every ``import`` counts, at module level
or inside a function (a lazy import is still a dependency), except those under
``if TYPE_CHECKING:``. A module's layer is its top-level sub-package of ``cgrpo`` (or, for a
top-level module, its own name), so moving files inside a sub-package never changes a layer.
docs/ARCHITECTURE.md draws the same order and says why.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cgrpo"

# Lowest first. A module may import from its own layer or any layer below, never above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cgrpo", "registry", "extras", "image_io"),
    ("config", "grpo"),
    ("world", "data"),
    ("policies", "rewards"),
    ("sampling",),
    ("evaluation",),
    ("training",),
    ("preflight", "study", "app"),
    ("cli",),
)

# Known upward imports, each with why it is left; the test fails on any other, and on one of
# these that no longer occurs (so this list only shrinks). docs/ARCHITECTURE.md names them.
KNOWN_UPWARD = {
    "cgrpo.evaluation.run -> cgrpo.training.runs": "`cgrpo eval --adapter RUN` loads a trained "
    "run (adapter_path, build_policy_from_config); removing it means moving the reading of run "
    "folders (training/runs.py and checkpoint.py's latest_checkpoint / verify_directory) below "
    "evaluation",
}


def module_name(path: Path, root: Path) -> str:
    """``root/pkg/a/b.py`` -> ``pkg.a.b``; a package's ``__init__.py`` is the package."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST):
    """Every Import/ImportFrom in ``tree``, skipping the bodies of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package that it imports, except its own packages
    (``pkg.a.b`` importing ``pkg.a`` or ``pkg``)."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _import_nodes(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                # ``from pkg import mod`` depends on pkg.mod when that is a module.
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names
                ]
            for target in targets:
                # ``import pkg.a.b`` names pkg.a.b; keep the longest prefix that is a module.
                while target and target not in files:
                    target = target.rpartition(".")[0]
                # A module's own packages are left out: Python runs their ``__init__`` before
                # the module anyway, and ``build_*`` imports its package to register built-ins.
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def layer_of(module: str, layers=LAYERS) -> int:
    """The rank of ``pkg.<top>...``'s top-level part ``<top>`` (``pkg`` itself for the root)."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else parts[0]
    for rank, names in enumerate(layers):
        if top in names:
            return rank
    raise AssertionError(f"module {module} is in no layer: add {top!r} to LAYERS")


def upward_imports(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    """``a -> b`` for every import of a module ``b`` in a higher layer than ``a``."""
    return [
        f"{a} -> {b}"
        for a in sorted(graph)
        for b in sorted(graph[a])
        if layer_of(b, layers) > layer_of(a, layers)
    ]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(SRC)


def test_every_module_has_a_layer(graph):
    tops = {m.split(".")[1] if "." in m else m for m in graph}
    named = {n for names in LAYERS for n in names}
    assert sorted(tops - named) == [], "add these sub-packages to LAYERS"
    assert sorted(named - tops) == [], "LAYERS names sub-packages that no longer exist"


def test_no_import_circles(graph):
    found = circles(graph)
    assert found == [], "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_import_from_a_lower_layer_to_a_higher_one(graph):
    found = upward_imports(graph)
    new = [edge for edge in found if edge not in KNOWN_UPWARD]
    assert new == [], "upward imports:\n" + "\n".join(new)
    gone = sorted(set(KNOWN_UPWARD) - set(found))
    assert gone == [], f"no longer imported, remove from KNOWN_UPWARD: {gone}"


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_walker_finds_a_circle_and_an_upward_import(tmp_path):
    pkg = _write(
        tmp_path / "fake",
        {
            "__init__.py": "",
            "low/__init__.py": "",
            "low/a.py": "def f():\n    from fake.low import b  # lazy, still a dependency\n",
            "low/b.py": "from .a import f\nimport fake.low  # its own package: not an edge\n",
            "low/c.py": "import fake.high.top\n",
            "high/__init__.py": "",
            "high/top.py": "from ..low import a\n",
        },
    )
    g = import_graph(pkg)
    assert g["fake.low.a"] == {"fake.low.b"}
    assert g["fake.low.b"] == {"fake.low.a"}
    assert g["fake.high.top"] == {"fake.low.a"}
    assert circles(g) == [["fake.low.a", "fake.low.b"]]
    layers = (("fake", "low"), ("high",))
    assert upward_imports(g, layers) == ["fake.low.c -> fake.high.top"]


def test_the_walker_ignores_type_checking_imports_and_outside_packages(tmp_path):
    pkg = _write(
        tmp_path / "fake",
        {
            "__init__.py": "",
            "a.py": "import os\nimport typing\nif typing.TYPE_CHECKING:\n    from fake import b\n",
            "b.py": "from typing import TYPE_CHECKING\nimport fake.a\n"
            "if TYPE_CHECKING:\n    from fake import a\nelse:\n    from . import c\n",
            "c.py": "",
        },
    )
    g = import_graph(pkg)
    assert g == {"fake": set(), "fake.a": set(), "fake.b": {"fake.a", "fake.c"}, "fake.c": set()}
    assert circles(g) == []


def test_the_architecture_page_shows_these_layers_and_the_recipes_registration_lines():
    page = (SRC.parents[1] / "docs" / "ARCHITECTURE.md").read_text()
    table = page.split("| layer (low to high) |")[1].split("\n\n")[0].splitlines()[2:]
    shown = [tuple(cell.strip("` ") for cell in row.split("|")[1].split(",")) for row in table]
    assert shown == [tuple(n for n in names if n != "cgrpo") for names in LAYERS]
    for edge in KNOWN_UPWARD:
        assert all(f"`{m.removeprefix('cgrpo.')}`" in page for m in edge.split(" -> ")), edge
    for recipe in sorted((SRC.parents[1] / "tests" / "recipes").glob("recipe_*.py")):
        last = recipe.read_text().strip().splitlines()[-1]
        assert last in page, f"docs/ARCHITECTURE.md does not show {recipe.name}'s {last!r}"
