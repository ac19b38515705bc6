"""Pass 5, lower: build the solver's backend from the checked graph (`Solver.backend`).

The backend holds the plan's lowered callables (generated straight-line torch code for the
dynamics and costs, exact-extraction rules, runtime options) and no tensors; a `PlanModule`
binds values to it per call. `planlang graph FILE --after lower` prints it (`as_text`).
"""
from __future__ import annotations

import networkx as nx

from compiler.layout import Layout
from compiler.passes import PassResult
from compiler.solvers import SOLVERS

NAME = "lower"


def run(graph: nx.DiGraph) -> PassResult:
    info = graph.graph["plan_info"]
    backend = SOLVERS[info.solver].backend(graph, info, Layout.of(info))
    old = graph.graph.get("lowered")
    graph.graph["lowered"] = backend
    return PassResult(graph, old is None or old.as_text() != backend.as_text())
