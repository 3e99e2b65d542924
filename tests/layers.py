"""The project's import graph, read with ast, and the layers it must respect (tests/test_layers.py).

Every import statement counts, top level or inside a function: an import hidden in a function to
dodge a cycle is still a cycle in the design (as ../shared/tools/import_cycles.py counts them).
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

PACKAGES = ("retinabench", "backends")

# Bottom to top: a module may import its own layer and the layers below, never one above.
LAYERS: List[Tuple[str, ...]] = [
    ("retinabench.errors", "retinabench.records"),                  # records: standard library only
    ("retinabench.store",),                                          # the run folder, atomic writes
    ("retinabench.graph", "retinabench.defaults"),                   # the IR, converters; default model
    ("retinabench.model",),                                          # families, incl. their device stages
    ("retinabench.datasets",),                                       # images + ground truth; calibration sets
    ("backends",),                                                   # one runtime per file
    ("retinabench.config",),                                         # scenarios (validated against backends)
    ("retinabench.harness",),                                        # loop, worker, runner
    ("retinabench.report",),                                         # summaries, tables, README, plots
    ("retinabench.cli", "retinabench"),                              # the command line on top
]


def modules(root: Path) -> Dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in sorted((root / pkg).rglob("*.py")):
            if p.name.endswith("_pb2.py"):
                continue
            name = ".".join(p.relative_to(root).with_suffix("").parts)
            out[name[: -len(".__init__")] if name.endswith(".__init__") else name] = p
    return out


def import_graph(root: Path) -> Dict[str, Set[str]]:
    """module -> the project's modules it imports (a package's own parents excluded)."""
    mods = modules(root)

    def resolve(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    graph: Dict[str, Set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        pkg = m if path.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: List[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in node.names] + [base]
            for n in names:
                t = resolve(n)
                if t and t != m and not m.startswith(t + ".") and t.split(".")[0] in PACKAGES:
                    graph[m].add(t)
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    out: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer_of(module: str) -> int:
    """The index of the most specific layer prefix that names `module`."""
    best, depth = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and p.count(".") > depth:
                best, depth = i, p.count(".")
    if best < 0:
        raise KeyError(f"{module} is in no layer: add it to tests/layers.py LAYERS")
    return best


def upward_imports(graph: Dict[str, Set[str]]) -> List[str]:
    """'a -> b' for every import of a module in a higher layer."""
    return sorted(f"{m} -> {t}" for m, ts in graph.items() for t in ts if layer_of(t) > layer_of(m))
