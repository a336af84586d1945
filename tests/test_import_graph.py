"""The package's import graph: no cycle, and no module imports one above it.

Read from the source with `ast`, so every import counts wherever it is written: at module
level, inside a function, under `if TYPE_CHECKING:`. A deferred or type-only import still
couples the two modules, and a cycle hidden inside a function is a cycle a reader has to
untangle all the same (docs/design-notes.md, "Layers" and "Wiring").
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "hashmesh"

# Lowest first; a module takes the rank of its longest listed prefix and may import only
# modules of its own rank or lower (same rank: only while acyclic).
LAYERS: list[tuple[str, ...]] = [
    ("hashmesh.protocol",),
    # limits: a pure in-memory rate limiter (clock passed in), shared by net.peers and
    # web.selfreport; it imports nothing of the node.
    (
        "hashmesh.node.errors",
        "hashmesh.node.runtime",
        "hashmesh.node.progress",
        "hashmesh.node.limits",
    ),
    ("hashmesh.node.config", "hashmesh.node.keys"),
    ("hashmesh.node.hashing",),
    ("hashmesh.node.store", "hashmesh.node.tokens"),
    ("hashmesh.node.matching",),
    ("hashmesh.node.lists",),
    # batching: the running node's publisher, coalescing adds into NodeService.publish
    # statements and authority: the node's statements (issue 22) and the accept decision
    # built on them, which service and replication consult
    # membership and witness: followed collections' documents and this node's cosigns
    # identity: who answers for each configured peer now (successions, revocations)
    (
        "hashmesh.node.statements",
        "hashmesh.node.authority",
        "hashmesh.node.identity",
        "hashmesh.node.membership",
        "hashmesh.node.witness",
    ),
    # intake: the own logs' sequencer and the journal of adds not yet stored
    ("hashmesh.node.intake",),
    ("hashmesh.node.service", "hashmesh.node.batching"),
    # bridges: following central hash APIs (NCMEC, StopNCII) into a collection
    ("hashmesh.node.bridges",),
    ("hashmesh.node.net",),
    ("hashmesh.node.web",),
    # replica: the matcher replica process (hashmesh matcher), a peer of the daemon
    # workers, worker: the node's matcher worker processes (pool and process), ditto
    (
        "hashmesh.node.daemon",
        "hashmesh.node.replica",
        "hashmesh.node.workers",
        "hashmesh.node.worker",
    ),
    # testing: the harness that starts node processes (for `hashmesh demo`, the tests and
    # the benchmarks); it drives nodes from outside, as the CLI does, so it ranks with it.
    ("hashmesh.node.cli", "hashmesh.testing"),
    ("hashmesh.__main__",),  # `python -m hashmesh`
]
# Package docstrings only: they import nothing and nothing needs a rank for them.
UNRANKED = {"hashmesh", "hashmesh.node"}
# Imported by nothing of ours, and importing nothing of ours (only stdlib and third party).
ISOLATED = "hashmesh.integrations"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The hashmesh module an import names: itself, else its nearest existing parent."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every hashmesh module `name` imports, anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from pkg import mod` imports the module pkg.mod; `from mod import f`, mod.
            targets = [
                f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in known else prefix
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            if target == "hashmesh" or target.startswith("hashmesh."):
                resolved = _resolve(target, known)
                if resolved is not None and resolved != name:
                    found.add(resolved)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def rank(name: str) -> int | None:
    best: tuple[int, int] | None = None
    for level, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            matches = name == prefix or name.startswith(prefix + ".")
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), level)
    return None if best is None else best[1]


def components(edges: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module: each holds cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan; the graph has ~100 nodes, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return components


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a path back to its start) per component."""
    return [_one_cycle(edges, component) for component in components(edges)]


def _one_cycle(edges: dict[str, set[str]], component: set[str]) -> list[str]:
    """The shortest cycle through the component's first module (breadth-first)."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(edges[v] & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in parents:
                    parents[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"no cycle found in component {sorted(component)}")


def test_every_module_has_a_rank() -> None:
    unranked = [
        name
        for name in modules()
        if name not in UNRANKED
        and rank(name) is None
        and not (name == ISOLATED or name.startswith(ISOLATED + "."))
    ]
    assert not unranked, f"modules with no layer (add them to LAYERS): {unranked}"


def test_no_import_cycle() -> None:
    edges = graph()
    found = [
        f"  {', '.join(sorted(c))}\n    e.g. {' -> '.join(_one_cycle(edges, c))}"
        for c in components(edges)
    ]
    assert not found, "modules that import each other, in a cycle:\n" + "\n".join(found)


def test_no_upward_import() -> None:
    upward = []
    for source, targets in sorted(graph().items()):
        low = rank(source)
        for target in sorted(targets):
            high = rank(target)
            if low is not None and high is not None and high > low:
                upward.append(f"  {source} (layer {low}) -> {target} (layer {high})")
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)


def test_protocol_imports_nothing_of_the_node() -> None:
    bad = [
        f"  {source} -> {target}"
        for source, targets in sorted(graph().items())
        if source.startswith("hashmesh.protocol")
        for target in sorted(targets)
        if not target.startswith("hashmesh.protocol")
    ]
    assert not bad, "the sans-IO core imports outside itself:\n" + "\n".join(bad)


def test_integrations_stand_alone() -> None:
    edges = graph()
    isolated = {n for n in edges if n == ISOLATED or n.startswith(ISOLATED + ".")}
    bad = [f"  {s} -> {t}" for s in sorted(isolated) for t in sorted(edges[s])]
    bad += [
        f"  {s} -> {t}"
        for s, ts in sorted(edges.items())
        if s not in isolated
        for t in sorted(ts & isolated)
    ]
    assert not bad, "hashmesh.integrations must neither import nor be imported:\n" + "\n".join(bad)


def test_the_reader_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The graph's own check: a relative, a function-level and a TYPE_CHECKING import are
    all edges, so the tests above cannot pass by not seeing an import."""
    package = tmp_path / "hashmesh" / "pkg"
    package.mkdir(parents=True)
    (tmp_path / "hashmesh" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("")
    (package / "mid.py").write_text("def f():\n    from . import low\n")
    (package / "high.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .mid import f\n"
        "from ..pkg.low import x\n"
    )
    known = {
        "hashmesh": tmp_path / "hashmesh" / "__init__.py",
        "hashmesh.pkg": package / "__init__.py",
        **{f"hashmesh.pkg.{n}": package / f"{n}.py" for n in ("low", "mid", "high")},
    }
    assert imports_of("hashmesh.pkg.mid", known["hashmesh.pkg.mid"], known) == {"hashmesh.pkg.low"}
    assert imports_of("hashmesh.pkg.high", known["hashmesh.pkg.high"], known) == {
        "hashmesh.pkg.mid",
        "hashmesh.pkg.low",
    }
    loop = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(loop) == [["a", "b", "c", "a"]]
