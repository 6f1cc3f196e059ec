"""The import graph of `synthgen/` and `flows/`: no cycles (imports inside functions count
too), `synthgen/` never imports `flows/` (the command-line entry point `synthgen.cli` aside)
nor prefect. Imports under `if TYPE_CHECKING:` are left out: they never execute (annotations
only), so they cannot make a cycle at run time."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOTS = ("synthgen", "flows")
# The one module of the library allowed to call the flows: the `synthgen` command.
ENTRY_POINTS = ("synthgen.cli",)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    out = {}
    for root in ROOTS:
        for path in (REPO / root).rglob("*.py"):
            out[_module_name(path)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every project module `name` imports, at any depth of the file (functions included).
    `from pkg import mod` counts as an import of `pkg.mod` when that is a module, else of
    `pkg`; an import of `a.b.c` also runs the `__init__` of `a` and `a.b`, which counts."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in (
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        ):
            type_only.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join([*pkg, base] if base else pkg)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in known else base)
        for t in targets:
            if t.split(".")[0] not in (*ROOTS, "prefect", "prefect_dask"):
                continue
            found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _project_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    known = set(graph)
    edges: dict[str, set[str]] = {}
    for name, targets in graph.items():
        out = set()
        for t in targets:
            parts = t.split(".")
            # importing a.b.c imports a, a.b and a.b.c: the package __init__s run too
            for i in range(1, len(parts) + 1):
                mod = ".".join(parts[:i])
                if mod in known and mod != name and not name.startswith(mod + "."):
                    out.add(mod)
        edges[name] = out
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_found() -> None:
    graph = _graph()
    assert "synthgen.stages.generate" in graph and "flows.run" in graph
    assert "synthgen.io.store" in _project_edges(graph)["synthgen.stages.generate"]


def test_no_import_cycles() -> None:
    cycles = _cycles(_project_edges(_graph()))
    assert not cycles, "import cycles (imports inside functions count):\n" + "\n".join(
        " <-> ".join(c) for c in cycles
    )


def test_library_never_imports_flows_or_prefect() -> None:
    bad = []
    for name, targets in _graph().items():
        if not name.startswith("synthgen") or name in ENTRY_POINTS:
            continue
        for t in sorted(targets):
            if t.split(".")[0] in ("flows", "prefect", "prefect_dask"):
                bad.append(f"{name} imports {t}")
    assert not bad, "synthgen/ must not import flows/ or prefect:\n" + "\n".join(bad)


def test_cycle_finder_finds_a_planted_cycle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(edges) == [["a", "b", "c"]]


# Every import inside a function, with why it is not at the module top. A new one fails the
# test below until it is listed here with its reason (an optional or heavy dependency, a
# measured start-up cost, a platform module); one moved to the top must leave the list.
_CLI = "measured `synthgen --help` cost (synthgen/cli/__init__.py docstring)"
_ENV = "Prefect is imported after flows.prefect_env set its environment (module comment)"
_LEAD = "no reason: to move to the module top (synthgen/engines/ is another helper's, issue 13)"
FUNCTION_IMPORTS: dict[tuple[str, str], str] = {
    **{
        ("synthgen/cli/__init__.py", m): _CLI
        for m in (
            "synthgen.cluster.preflight",
            "synthgen.config",
            "synthgen.config.secrets",
            "synthgen.cost.summary",
            "synthgen.io.lease",
            "synthgen.io.store",
            "flows.prefect_env",
            "flows.run",
            "flows.serve",
            "flows.trigger",
            "flows.credentials",
            "synthgen.config.hub",
            "synthgen.io.hub",
        )
    },
    ("synthgen/cli/lifecycle.py", "psutil"): _CLI,
    ("synthgen/io/hub.py", "huggingface_hub"): "heavy import, only for `publish --hub`",
    ("synthgen/engines/vllm.py", "xgrammar"): "optional (ships with vLLM); guided scoring only",
    **{
        ("synthgen/cli/cost.py", m): _CLI
        for m in ("synthgen.cost.report", "synthgen.config", "synthgen.cost.estimate")
    },
    ("synthgen/cost/chart.py", "matplotlib"): "1.3 s import, paid only by the report's PNG",
    ("synthgen/cost/chart.py", "matplotlib.figure"): "as matplotlib",
    ("synthgen/cost/usage.py", "psutil"): "optional; only where /proc is not readable",
    ("synthgen/io/lease.py", "fcntl"): "POSIX only, for the local lease backend",
    ("synthgen/stages/quality/basic.py", "py3langid"): "optional; the language filter only",
    ("synthgen/engines/cache.py", "synthgen.engines.transformers"): "imports torch",
    ("synthgen/engines/cache.py", "synthgen.engines.vllm"): "optional vLLM engine",
    ("synthgen/engines/devices.py", "torch"): "optional heavy dependency",
    ("synthgen/engines/vllm.py", "vllm"): "optional heavy dependency",
    ("synthgen/engines/vllm.py", "vllm.platforms"): "optional heavy dependency",
    ("synthgen/engines/vllm.py", "synthgen.engines.transformers"): "imports torch",
    ("synthgen/engines/vllm.py", "synthgen.engines.tokenstats"): "imports torch",
    ("synthgen/engines/vllm.py", "torch"): "optional heavy dependency",
    ("synthgen/engines/base.py", "hashlib"): _LEAD,
    ("synthgen/engines/cache.py", "synthgen.engines.fake"): _LEAD,
    ("synthgen/engines/cache.py", "socket"): _LEAD,
    ("synthgen/engines/cache.py", "distributed"): _LEAD,
    ("synthgen/engines/vllm.py", "multiprocessing"): _LEAD,
    (
        "flows/prefect_env.py",
        "prefect.server.api.server",
    ): "several seconds; only without an API URL",
    ("flows/prefect_env.py", "prefect.events.worker"): _ENV,
    **{
        ("flows/warm_plugin.py", m): "imported in the warm-up's thread, not by the worker's "
        "event loop that unpickles the plugin (`register_plugin` waits for it: module docstring)"
        for m in (
            "pyarrow.dataset",
            "synthgen.config",
            "synthgen.engines.cache",
            "synthgen.io.store",
        )
    },
    ("flows/prefect_env.py", "prefect.logging.handlers"): _ENV,
}


def _function_imports() -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()

    def walk(node: ast.AST, rel: str, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if in_function and isinstance(child, ast.Import):
                found.update((rel, a.name) for a in child.names)
            elif in_function and isinstance(child, ast.ImportFrom):
                found.add((rel, child.module or ""))
            walk(child, rel, inner)

    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            walk(tree, path.relative_to(REPO).as_posix(), False)
    return found


def test_every_import_inside_a_function_has_its_reason_listed() -> None:
    found = _function_imports()
    unlisted = sorted(found - FUNCTION_IMPORTS.keys())
    assert not unlisted, (
        "imports inside functions without a listed reason (move them to the module top, or "
        "add them to FUNCTION_IMPORTS with why):\n" + "\n".join(f"{p}: {m}" for p, m in unlisted)
    )
    gone = sorted(FUNCTION_IMPORTS.keys() - found)
    assert not gone, "listed in FUNCTION_IMPORTS but no longer inside a function:\n" + "\n".join(
        f"{p}: {m}" for p, m in gone
    )
    assert "synthgen/engines/cache.py" in {p for p, _ in found}  # the walk reaches functions
