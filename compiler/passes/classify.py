"""Pass 3, classify: annotate each dynamics, cost and constraint with its degree and smoothness.

`degree` is the polynomial degree in the stage's decision variables (None: not polynomial);
`smooth` is False when a non-smooth builtin is applied to a decision variable.
"""
from __future__ import annotations

import networkx as nx

from compiler import classify
from compiler.passes import PassResult, annotate

NAME = "classify"


def run(graph: nx.DiGraph) -> PassResult:
    modified = False
    for node, data in graph.nodes(data=True):
        ir = data.get("ir")
        if ir is None:
            continue
        modified |= annotate(graph, node, "degree", classify.degree(ir))
        modified |= annotate(graph, node, "smooth", classify.nonsmooth(ir) is None)
    return PassResult(graph, modified)
