"""Invariants of the graph IR after each pass (the tests run this after every pass)."""
from __future__ import annotations

import networkx as nx

from compiler.ir import Expr
from compiler.passes import classify, eligibility, lower, resolve, shapes
from planlang.graph import NodeKind
from planlang.source import Span


class VerificationError(AssertionError):
    """An IR invariant is broken: a compiler bug, never a user error."""


def _expect(cond: bool, message: str) -> None:
    if not cond:
        raise VerificationError(message)


def verify(graph: nx.DiGraph, after: str) -> None:
    order = (resolve.NAME, shapes.NAME, classify.NAME, eligibility.NAME, lower.NAME)
    stage = order.index(after)
    for node, data in graph.nodes(data=True):
        _expect(isinstance(data.get("kind"), NodeKind), f"{node}: kind missing")
        _expect(isinstance(data.get("span"), Span), f"{node}: span missing")
        _expect(not data.get("unresolved"), f"{node}: unresolved names after resolve")
        has_expr = data["kind"] in (NodeKind.DYNAMICS, NodeKind.COST, NodeKind.CONSTRAINT)
        if stage >= 1 and has_expr:
            ir = data.get("ir")
            _expect(isinstance(ir, Expr), f"{node}: typed IR missing after shapes")
            _expect(all(isinstance(s, int) for e in ir.walk() for s in e.shape), f"{node}: non-static shape")
            if data["kind"] is NodeKind.COST:
                _expect(ir.shape == (), f"{node}: cost is not scalar")
        if stage >= 2 and has_expr:
            _expect("degree" in data and "smooth" in data, f"{node}: classification missing")
    for u, v, data in graph.edges(data=True):
        _expect(bool(data.get("spans")), f"edge {u}->{v}: no use spans")
    if stage >= 1:
        info = graph.graph.get("plan_info")
        _expect(info is not None and (info.horizon >= 1 or info.grid is not None), "plan_info missing after shapes")
    if stage >= 3:
        _expect(graph.graph["plan_info"].solver != "", "solver not set after eligibility")
    if stage >= 4:
        _expect(hasattr(graph.graph.get("lowered"), "as_text"), "no backend after lower")
