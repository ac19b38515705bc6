"""The problem model: what a checked plan asks the solver to do, gathered once after the passes.

A plan belongs to a problem family. The trajectory family (every plan today) is

    minimize   sum_{t<T} l(x_t, u_t) + l_T(x_T)
    subject to x_{t+1} = phi(x_t, u_t),  x_0 given,  g(.) <= 0,  h(.) == 0,  boxes

and `TrajectoryProblem` holds its parts: the layout of x and u, the transition, the stage and
final costs, and the constraints with their placement in time. The placement rule lives here
only, and serves the torch lowering and the cvxpy reference alike: a constraint (or box) that
involves a control holds at (x_t, u_t) for t = 0..T-1; one on states only holds at x_{t+1} for
t = 0..T-1, i.e. at x_1..x_T (x_0 is given). Grid and multi-agent families are the next ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import networkx as nx

from compiler.context import VarInfo
from compiler.ir import Expr, Op
from compiler.layout import Layout
from compiler.lower.transition import Transition
from planlang.ast import Cmp, VarKind, When
from planlang.graph import NodeKind


class Placement(Enum):
    """Where in time a constraint holds."""

    STAGE = "at (x_t, u_t), t = 0..T-1"
    NEXT = "at x_{t+1}, t = 0..T-1"


def placement(ir: Expr) -> Placement:
    """STAGE for a constraint that involves a control, NEXT for one on states only."""
    return Placement.STAGE if any(r.kind is VarKind.CONTROL for r in ir.variables()) else Placement.NEXT


def box_placement(var: VarInfo) -> Placement:
    """Boxes `in [lo, hi]` follow the same rule: controls at t, states at t+1."""
    return Placement.STAGE if var.ref.kind is VarKind.CONTROL else Placement.NEXT


@dataclass(frozen=True)
class TrajectoryProblem:
    """The parts lowering evaluates, gathered once at compile time (in node-id order)."""

    layout: Layout
    transition: Transition
    stage_costs: tuple[Expr, ...]
    final_costs: tuple[Expr, ...]
    constraints: tuple[tuple[Expr, Cmp, Placement], ...]      # (ir, LE or EQ, where it holds)

    family = "trajectory"

    @staticmethod
    def of(graph: nx.DiGraph, layout: Layout) -> "TrajectoryProblem":
        nodes = [d for _, d in sorted(graph.nodes(data=True), key=lambda item: item[0])]
        costs = [d for d in nodes if d["kind"] is NodeKind.COST]
        constraints = tuple((d["ir"], d["sense"], placement(d["ir"])) for d in nodes if d["kind"] is NodeKind.CONSTRAINT)
        return TrajectoryProblem(layout, Transition(graph, layout),
                                 tuple(d["ir"] for d in costs if d["when"] is When.STAGE),
                                 tuple(d["ir"] for d in costs if d["when"] is When.FINAL), constraints)

    @property
    def has_jets(self) -> bool:
        """Every callee has second-order jets (no neural blocks): exact derivatives apply."""
        exprs = [*self.transition.exprs.values(), *self.stage_costs, *self.final_costs,
                 *(c[0] for c in self.constraints)]
        return not any(e.op is Op.CALL and e.attr.is_block for expr in exprs for e in expr.walk())
