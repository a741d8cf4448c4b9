"""The package's shape: no import cycle among mtl modules (imports inside functions count too), no module over
400 lines, public import paths that the README documents."""

import ast
from pathlib import Path

MTL = Path(__file__).resolve().parents[1] / "mtl"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(MTL.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in MTL.rglob("*.py")}


def imports(path: Path, known: set[str]) -> set[str]:
    """mtl modules `path` imports anywhere in its body (`from a import b` counts a.b when that is a module)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known}
    parents = {name.rsplit(".", k)[0] for name in found for k in range(1, name.count(".") + 1)}
    return {name for name in found | parents if name in known}  # a module's packages run before it


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), or a module importing itself."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_mtl_modules():
    found = modules()
    known = set(found)
    graph = {name: imports(path, known) - {name} for name, path in found.items()}
    assert cycles(graph) == []


def test_no_module_over_the_line_limit():
    long = {module_name(p): n for p in MTL.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_documented_public_imports_work():
    from mtl.metrics import au_metric, ccc, expr_metric, va_metric  # noqa: F401
    from mtl.model import create_backbone, create_model  # noqa: F401


def test_importing_mtl_changes_nothing_in_the_process():
    import subprocess
    import sys

    code = ("import os; before = dict(os.environ); import mtl, mtl.cli, mtl.model, mtl.metrics, mtl.train.loop; "
            "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())")
    env = {k: v for k, v in __import__("os").environ.items() if k not in __import__("mtl").OFFLINE_DEFAULTS}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
