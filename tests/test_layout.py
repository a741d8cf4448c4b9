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


VARIANT_NAMES = {"temporal", "seq_len", "is_temporal_state"}  # what a branch on the frame/window variant reads


def variant_branches(path: Path) -> set[str]:
    """The functions of `path` (by name; "<module>" outside any) with an if, conditional expression or filter that
    reads the model's variant (model.temporal, seq_len, a temporal file) rather than asking `mtl.family`."""
    found = set()

    def reads_variant(node) -> bool:
        return any((isinstance(n, ast.Attribute) and n.attr in VARIANT_NAMES)
                   or (isinstance(n, ast.Name) and n.id in VARIANT_NAMES)
                   or (isinstance(n, ast.Constant) and n.value in VARIANT_NAMES) for n in ast.walk(node))

    def visit(node, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            tests = ([child.test] if isinstance(child, (ast.If, ast.IfExp, ast.While)) else
                     child.ifs if isinstance(child, ast.comprehension) else [])
            if any(reads_variant(test) for test in tests):
                found.add(name)
            visit(child, name)

    visit(ast.parse(path.read_text()), "<module>")
    return found


def test_few_places_branch_on_the_frame_or_window_variant_outside_the_family():
    places = {f"{module_name(p)}.{f}" for p in MTL.rglob("*.py") if p.name != "family.py"
              for f in variant_branches(p)}
    assert len(places) <= 5, sorted(places)  # a feature of both families is a `mtl.family.ModelFamily` method


def test_few_functions_take_an_optional_protocol():
    optional = []
    for path in MTL.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.args + node.args.kwonlyargs
                defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + [*node.args.defaults,
                                                                                      *node.args.kw_defaults]
                optional += [f"{module_name(path)}.{node.name}" for arg, default in zip(args, defaults)
                             if "protocol" in arg.arg and isinstance(default, ast.Constant) and default.value is None]
    assert len(optional) <= 3, sorted(optional)  # None meant ABAW 2020: the protocol travels with the data now


def test_the_variant_checker_finds_a_branch(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f(cfg):\n    return 1 if cfg.model.temporal else 2\n\ndef g(x):\n    return x\n")
    assert variant_branches(source) == {"f"}
