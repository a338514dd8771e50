"""The package's import graph: data flows one way (ARCHITECTURE.md).

Every import counts, including those inside functions; ``schedules/`` is packaged as
``hwcomp.schedules``."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Cycles still open in the restructure issue, each as the sorted set of its modules.
KNOWN_CYCLES: list[set[str]] = []


def import_graph() -> dict[str, set[str]]:
    mods: dict[str, tuple[Path, bool]] = {}
    for base, pkg in ((ROOT / "hwcomp", "hwcomp"), (ROOT / "schedules", "hwcomp.schedules")):
        for p in base.rglob("*.py"):
            parts = list(p.relative_to(base).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            mods[".".join([pkg, *(parts[:-1] if is_pkg else parts)])] = (p, is_pkg)

    def resolve(cur: str, is_pkg: bool, level: int, module: str | None) -> str:
        if level == 0:
            return module or ""
        base = cur.split(".") if is_pkg else cur.split(".")[:-1]
        base = base[: len(base) - (level - 1)]
        return ".".join(base + ([module] if module else []))

    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, (p, is_pkg) in mods.items():
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                src = resolve(m, is_pkg, node.level, node.module)
                targets = [f"{src}.{a.name}" if f"{src}.{a.name}" in mods else src for a in node.names]
            for t in targets:
                while t and t not in mods and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != m:
                    edges[m].add(t)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[set[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.add(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(comp)
    return out


def test_no_import_cycles_beyond_the_known_ones():
    found = cycles(import_graph())
    assert [c for c in found if c not in KNOWN_CYCLES] == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_nothing_below_tune_imports_tune_and_nothing_outside_cli_imports_cli():
    edges = import_graph()
    below = ("hwcomp.build", "hwcomp.passes", "hwcomp.artifact", "hwcomp.policy", "hwcomp.quantize",
             "hwcomp.schedules", "hwcomp.records", "hwcomp.frontend", "hwcomp.runtime")
    up = [(a, b) for a in edges for b in edges[a] if a.startswith(below) and b.startswith("hwcomp.tune")]
    cli = [(a, b) for a in edges for b in edges[a]
           if b.startswith("hwcomp.cli") and not a.startswith("hwcomp.cli")]
    assert up == [] and cli == []
