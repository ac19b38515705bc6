"""A solver plugin: what it accepts (cvxpy's `accepts`), its options, and how it lowers.

A solver is one class: `name`, `doc`, an options `Schema`, the requirements `accepts` checks
(polynomial degrees, smoothness, which constraints, convexity, neural blocks) and `backend`, which
builds the runtime backend from the checked graph. `compiler.solvers.SOLVERS` lists them; adding
a solver is one new module and one line there.
"""
from __future__ import annotations

import math
from enum import Enum

import networkx as nx
import torch

from compiler import classify
from compiler.context import PlanInfo
from compiler.convexity import nonconvex_term
from compiler.defaults import default_value
from compiler.ir import Expr
from compiler.layout import Layout
from compiler.lower.stages import StageValues
from compiler.options import Schema
from planlang.ast import VarKind, When
from planlang.graph import NodeKind

Problem = tuple        # (span, message, hint): one thing in a plan that a solver cannot take


class ConstraintSupport(Enum):
    NONE = "no constraints"
    CONTROL_BOX = "box bounds on controls"
    AFFINE = "affine constraints and boxes"
    NONLINEAR = "smooth nonlinear constraints and box bounds on controls"


class Solver:
    """Base class of solver plugins; subclasses set the class attributes and `backend`."""

    name: str = ""
    doc: str = ""
    family: str = "trajectory"             # the problem family it plans in (compiler.problem)
    options: Schema = Schema()
    dynamics_degree: int | None = None     # max polynomial degree of the dynamics (None: any)
    cost_degree: int | None = None
    constraints: ConstraintSupport = ConstraintSupport.CONTROL_BOX
    convex: bool = False                   # convex quadratic costs (checked numerically)
    smooth: bool = True                    # needs derivatives: no abs/relu/min/max/clip of decisions
    takes_blocks: bool = True              # neural blocks inside expressions
    exact: bool = True                     # converges to a (local) optimum to tight tolerance: cross-checked
    state_guess: bool = False              # takes `guess STATE = ...` (the nodes of multiple shooting)

    def accepts(self, graph: nx.DiGraph, info: PlanInfo) -> list[Problem]:
        """Everything in the plan this solver cannot take; empty when it takes the plan."""
        out = []
        for _, data in sorted(graph.nodes(data=True), key=lambda nd: (nd[1]["span"].line, nd[1]["span"].col)):
            ir: Expr | None = data.get("ir")
            kind = data["kind"]
            if kind in (NodeKind.DYNAMICS, NodeKind.COST) and ir is not None:
                blocks = self._block_problem(ir)
                if blocks:
                    out += blocks
                elif kind is NodeKind.DYNAMICS:
                    out += self._degree_problem(ir, self.dynamics_degree, f"dynamics of '{data['defines']}' is not "
                                                "affine in the states and controls")
                else:
                    out += self._degree_problem(ir, self.cost_degree, "cost is not quadratic in the states and controls")
                out += [] if blocks else self._smooth_problem(ir)
            elif kind is NodeKind.CONSTRAINT:
                out += self._block_problem(data["ir"]) or self._constraint_problem(data, info)
            elif kind is NodeKind.GUESS and not self.state_guess and \
                    info.variables[data["decl"].target].ref.kind is VarKind.STATE:
                out.append((data["decl"].target_span, f"solve {self.name} takes no guess of a state",
                            "a state guess sets the nodes of `solve ilqr(shooting=multiple)`"))
        for var in info.variables.values():
            if var.lower is None:
                continue
            if self.constraints is ConstraintSupport.NONE or (self.constraints in (
                    ConstraintSupport.CONTROL_BOX, ConstraintSupport.NONLINEAR) and var.ref.kind is not VarKind.CONTROL):
                span = graph.nodes[var.node]["decl"].bounds[0].span
                out.append((span, f"solve {self.name} takes no bounds on {var.ref.kind.value} '{var.ref.name}'", ""))
        if self.convex and not out:
            out += _convexity_problems(graph, info)
        return out

    def validate(self, options: dict, info: PlanInfo) -> list[str]:
        """What is wrong with a combination of options, or of options and the plan (each option
        alone is checked by its type)."""
        return []

    def backend(self, graph: nx.DiGraph, info: PlanInfo, layout: Layout):
        raise NotImplementedError(f"solve {self.name} has no backend")

    def check_options(self, options: dict) -> dict | None:
        """Options for `planlang check` (tighter tolerances for iterative solvers); None: as is."""
        return None

    # ------------------------------------------------------------ requirements
    def _block_problem(self, ir: Expr) -> list[Problem]:
        if self.takes_blocks:
            return []
        block = classify.first_block(ir)
        if block is None:
            return []
        return [(block.span, f"block '{block.attr.name}' is a neural network; solve {self.name} needs "
                             "polynomial expressions it can extract exactly", "")]

    def _degree_problem(self, ir: Expr, limit, message: str) -> list[Problem]:
        if limit is None:
            return []
        bad = classify.culprit(ir, limit)
        if bad is None:
            return []
        what = "affine" if limit == 1 else "quadratic"
        return [(bad.span, message + f": this sub-expression is not {what}", f"solve {self.name} needs {what} terms")]

    def _smooth_problem(self, ir: Expr) -> list[Problem]:
        if not self.smooth or self.dynamics_degree is not None:
            return []          # polynomial solvers already reject every non-polynomial call
        bad = classify.nonsmooth(ir)
        if bad is None:
            return []
        return [(bad.span, f"{bad.attr.name}() of a state or control is not smooth; solve {self.name} needs "
                           "derivatives", "use a smooth surrogate such as softplus, or a sampling solver (mppi, cem)")]

    def _constraint_problem(self, data, info: PlanInfo) -> list[Problem]:
        decl = data["decl"]
        if self.constraints is ConstraintSupport.NONE:
            return [(decl.span, f"solve {self.name} takes no constraints", "")]
        if self.constraints is ConstraintSupport.CONTROL_BOX:
            return [(decl.span, f"solve {self.name} takes only box bounds on controls (`control u[m] in [lo, hi]`)", "")]
        ir = data["ir"]
        if not ir.variables() & {v.ref for v in info.variables.values() if v.ref.is_decision}:
            return [(decl.span, "constraint does not involve any state or control", "remove it or fix the names")]
        if self.constraints is ConstraintSupport.NONLINEAR:
            return self._smooth_problem(ir)
        bad = classify.culprit(ir, 1)
        if bad is not None:
            return [(bad.span, "constraint is not affine in the states and controls", "write it as a smooth penalty cost")]
        return []


def _convexity_problems(graph: nx.DiGraph, info: PlanInfo) -> list[Problem]:
    """Check each cost's Hessian at the default values of params, inputs and learnables."""
    like = torch.zeros((), dtype=torch.float64)
    layout = Layout.of(info)
    env = dict(layout.symbolic(like))
    for var in info.variables.values():
        if not var.ref.is_decision:
            value = default_value(var)
            env[var.ref] = (torch.zeros(var.shape, dtype=torch.float64) if value is None else value).unsqueeze(0)
    for callee in info.blocks.values():        # blocks of constants: their value at initialization
        env[callee.ref] = callee.build().to(torch.float64)
    costs = [d["ir"] for _, d in graph.nodes(data=True) if d["kind"] is NodeKind.COST]
    env = StageValues(info, costs).flat(env, like, 1)          # every stage's values (`t`, `ref[t]`)
    nz = layout.n + layout.m
    out = []
    for _, data in graph.nodes(data=True):
        if data["kind"] is not NodeKind.COST:
            continue
        block = slice(0, layout.n) if data["when"] is When.FINAL else slice(0, nz)
        found = nonconvex_term(data["ir"], env, nz, like, block)
        if found is not None:
            term, eig = found
            if math.isnan(eig):
                out.append((term.span, "cost's Hessian at the default values is not finite (or too "
                                       "ill-conditioned to check its convexity)", "scale the weights down"))
                continue
            out.append((term.span, f"cost is not convex: its Hessian has eigenvalue {eig:.3g} < 0",
                        "weights of squares must be nonnegative (mark learnables `positive`)"))
    return out
