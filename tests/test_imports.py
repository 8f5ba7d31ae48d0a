"""The package's shape: no dependency cycle between its modules (imports inside functions count too), and the
plugin's runtime path (main.py, tools, endpoints, provider) never reaches the laboratory subpackage."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "crossmodal"
LAB = "crossmodal.lab"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in (ROOT / PACKAGE).rglob("*.py")}


def owner(name: str) -> str | None:
    """The package module that an imported dotted name lives in (a module, or the package above a name)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(path: Path) -> set[str]:
    """Every crossmodal module a file imports, at any depth of its code."""
    here = module_name(path) if path.is_relative_to(ROOT / PACKAGE) else ""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {owner(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = here if path.name == "__init__.py" else here.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}".strip(".")
            if base == PACKAGE or base.startswith(PACKAGE + "."):
                found |= {owner(f"{base}.{alias.name}") or owner(base) for alias in node.names}
    found.discard(None)
    found.discard(here)
    return found


GRAPH = {name: imports_of(path) for name, path in MODULES.items()}
# The plugin's runtime path: both packages' entry point and handlers.
ENTRY_FILES = [ROOT / "main.py", *(ROOT / "tools").glob("*.py"), *(ROOT / "endpoints").glob("*.py"),
               *(ROOT / "provider").glob("*.py"), *(ROOT / "model_provider").rglob("*.py")]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
    return found


def reachable(starts: set[str]) -> set[str]:
    seen, todo = set(), list(starts)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += GRAPH.get(name, ())
        todo += [p for p in _parents(name) if p in MODULES]  # importing a.b runs a/__init__.py
    return seen


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts))]


def test_no_dependency_cycle_inside_the_package():
    assert cycles(GRAPH) == []


def test_the_checker_sees_cycles_through_function_level_imports(tmp_path):
    """The check can fail: a cycle closed by an import inside a function is found."""
    graph = {"crossmodal.a": {"crossmodal.b"}, "crossmodal.b": {"crossmodal.c"}, "crossmodal.c": {"crossmodal.a"}}
    assert cycles(graph) == [["crossmodal.a", "crossmodal.b", "crossmodal.c"]]
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from crossmodal.encoders import models\n    import crossmodal.lab.scenes\n")
    assert imports_of(module) == {"crossmodal.encoders.models", "crossmodal.lab.scenes"}


def test_the_plugin_runtime_path_never_imports_the_laboratory():
    starts = set().union(*(imports_of(path) for path in ENTRY_FILES))
    runtime = reachable(starts)
    assert "crossmodal.service" in runtime and "crossmodal.api.http" in runtime
    leaks = sorted(name for name in runtime if name == LAB or name.startswith(LAB + "."))
    paths = {leak: sorted(n for n in runtime if leak in GRAPH.get(n, ())) for leak in leaks}
    assert not leaks, f"runtime modules import the laboratory: {paths}"


def test_the_runtime_needs_no_laboratory_libraries():
    """matplotlib and scikit-learn serve calibrate / eval only: requirements.txt leaves them to
    requirements-lab.txt, and no module on the runtime path imports them."""
    runtime = reachable(set().union(*(imports_of(path) for path in ENTRY_FILES)))
    lab_libraries = ("matplotlib", "sklearn")
    for name in runtime:
        tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(m.split(".")[0] in lab_libraries for m in modules), (name, modules)
    assert not {"matplotlib", "scikit-learn"} & requirement_names("requirements.txt")
    assert {"matplotlib", "scikit-learn"} <= requirement_names("requirements-lab.txt")


def requirement_names(file: str) -> set[str]:
    import re

    lines = (ROOT / file).read_text().splitlines()
    return {re.split(r"[<>=!~\[; ]", line.strip(), maxsplit=1)[0].lower() for line in lines
            if line.strip() and not line.strip().startswith("#")}
