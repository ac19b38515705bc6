"""The compiler pipeline: an explicit list of passes, run in order on a copy of the plan graph."""
from __future__ import annotations

from typing import Callable

import networkx as nx

from compiler.passes import PassResult, classify, eligibility, lower, resolve, shapes
from compiler.verify import verify

PASSES: tuple[tuple[str, Callable[[nx.DiGraph], PassResult]], ...] = (
    (resolve.NAME, resolve.run),
    (shapes.NAME, shapes.run),
    (classify.NAME, classify.run),
    (eligibility.NAME, eligibility.run),
    (lower.NAME, lower.run),
)
PASS_NAMES = tuple(name for name, _ in PASSES)


def run_passes(graph: nx.DiGraph, until: str | None = None, check: bool = False) -> nx.DiGraph:
    """Run the passes on a copy of `graph` (up to and including `until`); `check` verifies each stage."""
    if until is not None and until not in PASS_NAMES:
        raise ValueError(f"unknown pass '{until}'; passes: {', '.join(PASS_NAMES)}")
    graph = graph.copy()
    graph.graph = dict(graph.graph)
    for name, run in PASSES:
        graph = run(graph).graph
        if check:
            verify(graph, name)
        if name == until:
            break
    return graph
