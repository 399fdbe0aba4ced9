"""The package's layers: every import points down the layer order, and no module
imports itself round a circle.

The order, from the ground floor up::

    core (and the root package, which imports nothing of its own)
    io
    inputs
    nn
    stages
    review | report          (peers: neither imports the other)
    plugin
    cli, __main__, weights, bioimageio   (the top-level modules)

A module may import its own layer or a lower one. Every import counts, those
inside functions too: a lazy import keeps ``import unetpipe`` light but is a
dependency all the same. A subpackage's ``__init__.py`` importing its own
children is not an edge, nor is a module importing itself (redundant, but
harmless). The checker is plain functions on the source text
(``ast``), so it needs nothing imported and checks the files as they are.
"""

from __future__ import annotations

import ast
import shutil
import textwrap
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "unetpipe"

# low to high; layers in one set are peers and may not import one another
ORDER = [{"core"}, {"io"}, {"inputs"}, {"nn"}, {"stages"}, {"review", "report"}, {"plugin"},
         {"top"}]
RANK = {layer: rank for rank, layers in enumerate(ORDER) for layer in layers}
TOP_MODULES = {"cli", "__main__", "weights", "bioimageio"}


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. "unetpipe.core.progress"
    path: Path
    is_package: bool  # an __init__.py

    @property
    def package(self) -> str:
        """The package that relative imports in this module start from."""
        return self.name if self.is_package else self.name.rpartition(".")[0]


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    path: Path
    line: int

    def __str__(self):
        return f"{self.source} -> {self.target}  ({self.path}:{self.line})"


def find_modules(package_dir: Path) -> dict[str, Module]:
    """Every ``.py`` file under ``package_dir``, by dotted module name."""
    root = package_dir.name
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir).with_suffix("").parts
        if "__pycache__" in parts:
            continue
        is_package = parts[-1] == "__init__"
        name = ".".join((root, *(parts[:-1] if is_package else parts)))
        modules[name] = Module(name, path, is_package)
    return modules


def _absolute(module: Module, base: str | None, level: int) -> str:
    """The absolute name of ``from {'.' * level}{base} import ...`` in ``module``."""
    if level == 0:
        return base or ""
    parts = module.package.split(".")
    if level - 1 >= len(parts):
        raise ValueError(f"{module.path}: relative import beyond the top package")
    prefix = ".".join(parts[: len(parts) - (level - 1)])
    return f"{prefix}.{base}" if base else prefix


def raw_imports(module: Module) -> list[tuple[str, int, bool]]:
    """Every module name that ``module`` imports, anywhere in its body, with the
    line and whether the last part may be an attribute rather than a module:
    ``from pkg import name`` yields ``pkg.name``, which :func:`resolve` turns
    into the submodule ``pkg.name`` where there is one, else into ``pkg``."""
    tree = ast.parse(module.path.read_text(encoding="utf-8"), filename=str(module.path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, False) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node.module, node.level)
            found += [(f"{base}.{alias.name}", node.lineno, True) if alias.name != "*"
                      else (base, node.lineno, False) for alias in node.names]
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Name) and node.func.id == "__import__")
                   or (isinstance(node.func, ast.Attribute)
                       and node.func.attr == "import_module"))):
            found.append((node.args[0].value, node.lineno, False))
    return found


def resolve(name: str, modules: dict[str, Module]) -> str | None:
    """The module of the package that importing ``name`` loads: ``name`` itself,
    or for ``pkg.attribute`` the longest existing prefix; None when ``name``
    is outside the package."""
    root = next(iter(modules)).split(".")[0]
    if name != root and not name.startswith(root + "."):
        return None
    while name not in modules:
        name = name.rpartition(".")[0]
    return name


def dangling(modules: dict[str, Module]) -> list[str]:
    """Imports of the package's modules that do not exist (``from .gone import f``,
    ``import unetpipe.gone``), as ``path:line: name``."""
    out = []
    for module in modules.values():
        for name, line, may_be_attribute in raw_imports(module):
            target = resolve(name, modules)
            if target is None or target == name:
                continue
            if may_be_attribute and target == name.rpartition(".")[0]:
                continue  # ``from module import attribute``
            out.append(f"{module.path}:{line}: {name}")
    return out


def edges(modules: dict[str, Module]) -> list[Edge]:
    """Every import of one of the package's modules by another."""
    out = set()
    for module in modules.values():
        for name, line, _ in raw_imports(module):
            target = resolve(name, modules)
            if target is None:
                continue
            if module.is_package and target.startswith(module.name + ".") \
                    and "." in module.name:
                continue  # a subpackage's __init__ gathering its children
            if target == module.name:
                continue  # a module importing itself: redundant, but no circle
            out.add(Edge(module.name, target, module.path, line))
    return sorted(out, key=lambda e: (e.source, e.line, e.target))


def layer_of(name: str) -> str | None:
    """The layer of a module name, or None when it belongs to none."""
    parts = name.split(".")
    if len(parts) == 1:
        return "core"  # the root package
    if len(parts) == 2 and parts[1] in TOP_MODULES:
        return "top"
    return parts[1] if parts[1] in RANK else None


def unplaced(modules: dict[str, Module]) -> list[str]:
    """Modules in no known layer."""
    return [f"{m.name}  ({m.path})" for m in modules.values() if layer_of(m.name) is None]


def upward(modules: dict[str, Module]) -> list[str]:
    """Imports against the layer order, and any import made by the root package."""
    root = next(iter(modules)).split(".")[0]
    bad = []
    for edge in edges(modules):
        if edge.source == root:
            bad.append(f"{edge}: the root package imports nothing of its own")
            continue
        src, dst = layer_of(edge.source), layer_of(edge.target)
        if src is None or dst is None or src == dst:
            continue  # unplaced modules are reported on their own
        if RANK[dst] > RANK[src]:
            bad.append(f"{edge}: {src} may not import the higher layer {dst}")
        elif RANK[dst] == RANK[src]:
            bad.append(f"{edge}: {src} may not import its peer {dst}")
    return bad


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph`` (node -> successors)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []

    def visit(v):
        # recursion depth is bounded by the number of modules (~60)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
            out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _one_cycle(component: list[str], by_pair: dict[tuple[str, str], Edge]) -> list[Edge]:
    """A shortest circle through the first module of a strongly connected component."""
    members = set(component)
    start = component[0]
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for (a, b) in by_pair:
                if a != v or b not in members:
                    continue
                if b == start:
                    path = [b, v]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    path.reverse()
                    return [by_pair[p] for p in pairwise(path)]
                if b not in came_from:
                    came_from[b] = v
                    nxt.append(b)
        frontier = nxt
    raise AssertionError(f"no circle through {start}")


def circles(modules: dict[str, Module]) -> list[str]:
    """Every circle of imports, one per strongly connected component, written out as
    its edges with their lines."""
    all_edges = edges(modules)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    by_pair: dict[tuple[str, str], Edge] = {}
    for e in all_edges:
        graph[e.source].add(e.target)
        by_pair.setdefault((e.source, e.target), e)
    out = []
    for component in sorted(strongly_connected(graph)):
        if len(component) > 1:
            cycle = _one_cycle(component, by_pair)
            out.append(f"circle among {', '.join(component)}:\n    "
                       + "\n    ".join(map(str, cycle)))
    return out


def _report(title: str, problems: list[str]) -> str:
    return f"{title}:\n  " + "\n  ".join(problems)


# --- the real package ---------------------------------------------------------------


def test_the_checker_sees_the_package():
    modules = find_modules(PACKAGE)
    # guards against a walk that silently finds nothing (and so passes everything)
    assert {"unetpipe", "unetpipe.core.progress", "unetpipe.stages.predict", "unetpipe.cli",
            "unetpipe.plugin.review_widget"} <= set(modules)
    pairs = {(e.source, e.target) for e in edges(modules)}
    assert ("unetpipe.__main__", "unetpipe.cli") in pairs
    assert ("unetpipe.weights", "unetpipe.stages.weights") in pairs
    assert ("unetpipe.nn.checkpoint", "unetpipe.core.errors") in pairs  # top-level import
    assert ("unetpipe.nn.checkpoint", "unetpipe.io.images") in pairs  # inside a function


def test_no_import_points_up_the_layers():
    problems = upward(find_modules(PACKAGE))
    assert not problems, _report("imports against the layer order "
                                 + " -> ".join("|".join(sorted(s)) for s in ORDER), problems)


def test_no_circle_of_imports():
    problems = circles(find_modules(PACKAGE))
    assert not problems, _report("circular imports", problems)


def test_every_module_is_in_a_known_layer():
    # a new top-level folder or module is added to ORDER / TOP_MODULES on purpose
    problems = unplaced(find_modules(PACKAGE))
    assert not problems, _report("modules in no layer (add them to ORDER in "
                                 "tests/test_layering.py)", problems)


def test_every_import_of_the_package_names_a_module_that_exists():
    problems = dangling(find_modules(PACKAGE))
    assert not problems, _report("imports of modules that do not exist", problems)


# --- the checker itself ----------------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_the_checker_reports_upward_imports_peers_and_circles(tmp_path):
    package = _write(tmp_path / "unetpipe", {
        "__init__.py": "from .core import low\n",
        "core/__init__.py": "from . import low  # gathering a child: no edge\n",
        "core/low.py": """\
            import os


            def later():
                from ..stages import high  # upward, hidden in a function
                return high
            """,
        "stages/__init__.py": "",
        "stages/high.py": "from unetpipe.core.low import later\nfrom . import ring_a\n",
        "stages/ring_a.py": "from .ring_b import f\n",
        "stages/ring_b.py": "def f():\n    import unetpipe.stages.ring_a\n",
        "review/__init__.py": "",
        "review/edit.py": "from ..report.figure import g\n",
        "report/__init__.py": "",
        "report/figure.py": "from unetpipe.review import edit\n",
        "extras/__init__.py": "",
        "cli.py": "from .stages.high import later\nfrom .report import figure\n",
    })
    modules = find_modules(package)
    assert upward(modules) == [
        f"unetpipe -> unetpipe.core.low  ({package / '__init__.py'}:1): "
        "the root package imports nothing of its own",
        f"unetpipe.core.low -> unetpipe.stages.high  ({package / 'core/low.py'}:5): "
        "core may not import the higher layer stages",
        f"unetpipe.report.figure -> unetpipe.review.edit  ({package / 'report/figure.py'}:1): "
        "report may not import its peer review",
        f"unetpipe.review.edit -> unetpipe.report.figure  ({package / 'review/edit.py'}:1): "
        "review may not import its peer report",
    ]
    found = circles(modules)
    assert len(found) == 3, found
    # the upward import closes a circle core.low -> stages.high -> core.low
    assert found[0].startswith("circle among unetpipe.core.low, unetpipe.stages.high:")
    assert f"unetpipe.stages.high -> unetpipe.core.low  ({package / 'stages/high.py'}:1)" \
        in found[0]
    assert found[1] == (
        "circle among unetpipe.report.figure, unetpipe.review.edit:\n"
        f"    unetpipe.report.figure -> unetpipe.review.edit  ({package / 'report/figure.py'}:1)\n"
        f"    unetpipe.review.edit -> unetpipe.report.figure  ({package / 'review/edit.py'}:1)")
    assert found[2] == (
        "circle among unetpipe.stages.ring_a, unetpipe.stages.ring_b:\n"
        f"    unetpipe.stages.ring_a -> unetpipe.stages.ring_b  ({package / 'stages/ring_a.py'}:1)\n"
        f"    unetpipe.stages.ring_b -> unetpipe.stages.ring_a  ({package / 'stages/ring_b.py'}:2)")
    assert unplaced(modules) == [f"unetpipe.extras  ({package / 'extras/__init__.py'})"]


def test_the_checker_passes_a_clean_package_and_keeps_peers_apart_only(tmp_path):
    package = _write(tmp_path / "unetpipe", {
        "__init__.py": '"""Nothing imported."""\n',
        "core/__init__.py": "",
        "core/a.py": "from .. import __version__\n\n\ndef f():\n    from .a import f\n",
        "io/__init__.py": "",
        "io/b.py": "from ..core import a\nimport numpy\n",
        "report/__init__.py": "from .c import x\n",
        "report/c.py": "from unetpipe.io import b\nfrom . import d\nx = 1\n",
        "report/d.py": "from unetpipe.core.a import *\n",
        "plugin/__init__.py": "",
        "plugin/e.py": "from ..report import c, d\nfrom ..report import x\n",
        "__main__.py": "from .plugin import e\n",
    })
    modules = find_modules(package)
    assert upward(modules) == [] and circles(modules) == [] and unplaced(modules) == []
    assert dangling(modules) == []
    pairs = {(e.source, e.target) for e in edges(modules)}
    assert pairs == {
        ("unetpipe.core.a", "unetpipe"), ("unetpipe.io.b", "unetpipe.core.a"),
        ("unetpipe.report.c", "unetpipe.io.b"), ("unetpipe.report.c", "unetpipe.report.d"),
        ("unetpipe.report.d", "unetpipe.core.a"), ("unetpipe.plugin.e", "unetpipe.report.c"),
        ("unetpipe.plugin.e", "unetpipe.report.d"), ("unetpipe.plugin.e", "unetpipe.report"),
        ("unetpipe.__main__", "unetpipe.plugin.e")}


def test_the_checker_reports_an_import_of_a_missing_module(tmp_path):
    package = _write(tmp_path / "unetpipe", {
        "__init__.py": "",
        "core/__init__.py": "",
        "core/a.py": "from ..core.gone.deeper import f\nfrom . import attribute\n"
                     "import unetpipe.core.gone\nfrom .gone import g\n",
    })
    a = package / "core/a.py"
    assert dangling(find_modules(package)) == [
        f"{a}:1: unetpipe.core.gone.deeper.f", f"{a}:3: unetpipe.core.gone",
        f"{a}:4: unetpipe.core.gone.g"]


def test_an_upward_import_added_to_the_real_package_is_caught(tmp_path):
    copy = tmp_path / "unetpipe"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    progress = copy / "core" / "progress.py"
    text = progress.read_text()
    progress.write_text(text + "\n\ndef _sneaky():\n    from ..stages import predict\n"
                        "    return predict\n")
    line = text.count("\n") + 4
    modules = find_modules(copy)
    assert upward(modules) == [
        f"unetpipe.core.progress -> unetpipe.stages.predict  ({progress}:{line}): "
        "core may not import the higher layer stages"]
    # and stages.predict reports progress, so the same import closes a circle
    found = circles(modules)
    assert len(found) == 1 and "unetpipe.core.progress -> unetpipe.stages.predict" in found[0]
