"""Compiler passes: each a small module with a `run(graph) -> PassResult`."""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx


@dataclass(frozen=True)
class PassResult:
    graph: nx.DiGraph
    modified: bool


def annotate(graph: nx.DiGraph, node: str, key: str, value, fingerprint=repr) -> bool:
    """Set `graph.nodes[node][key] = value`; True when that changed what the node says."""
    data = graph.nodes[node]
    old = data.get(key, _MISSING)
    if old is not _MISSING and fingerprint(old) == fingerprint(value):
        return False
    data[key] = value
    return True


_MISSING = object()
