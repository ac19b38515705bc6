"""`Plan`: a parsed `.plan` file and its declaration graph."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx

from planlang.ast import PlanAST
from planlang.errors import PlanError
from planlang.graph import build_graph
from planlang.parser import parse
from planlang.source import Source


@dataclass(frozen=True)
class Plan:
    """A loaded plan: its source, AST and graph (`plan.graph`, a `networkx.DiGraph`)."""

    source: Source
    ast: PlanAST
    graph: nx.DiGraph = field(repr=False)

    @property
    def name(self) -> str:
        return self.ast.name or Path(self.source.filename).stem


def loads(text: str, filename: str = "<string>") -> Plan:
    """Parse `.plan` text; raises `PlanError` (rendered with file:line:col) on bad input."""
    source = Source(text, filename)
    tree = parse(source)
    try:
        graph = build_graph(tree)
    except PlanError as err:
        raise err.with_source(source) from None
    return Plan(source, tree, graph)


def load(path: str | Path) -> Plan:
    """Read and parse a `.plan` file."""
    path = Path(path)
    return loads(path.read_text(), str(path))
