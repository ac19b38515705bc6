"""Pass 4, eligibility: the named solver exists, its options are valid, and it can take the plan.

A plan that the named solver cannot take gets one error per offending expression, naming the
sub-expression, where it is, and which solver would take the plan. Each solver states what it
accepts (`compiler.solvers.base.Solver.accepts`) and its options schema.
"""
from __future__ import annotations

import networkx as nx

from compiler.context import PlanInfo
from compiler.passes import PassResult
from compiler.passes.shapes import constant_lookup
from compiler.solvers import PREFERENCE, SOLVERS
from planlang import ast
from planlang.errors import Collector, did_you_mean

NAME = "eligibility"


def run(graph: nx.DiGraph) -> PassResult:
    info: PlanInfo = graph.graph["plan_info"]
    decl: ast.SolveDecl = graph.nodes["solve"]["decl"]
    errors = Collector()
    solver = SOLVERS.get(decl.solver)
    if solver is None:
        errors.add(decl.span, f"unknown solver '{decl.solver}'",
                   did_you_mean(decl.solver, SOLVERS) or "solvers: " + ", ".join(SOLVERS))
        errors.raise_if_any()
    if decl.positional:
        errors.add(decl.positional[0].span, "solver options are given by name", "e.g. `solve ilqr(iters=50)`")
    if solver.family != info.family:
        what = {"grid": "a grid (`grid H x W`)", "joint": "several agents (`agents N`)"}.get(
            solver.family, "states, controls and dynamics over a horizon")
        takers = [n for n in PREFERENCE if SOLVERS[n].family == info.family]
        errors.add(decl.span, f"solve {solver.name} plans over {what}; this is a {info.family} plan",
                   "solvers for it: " + ", ".join(takers))
        errors.raise_if_any()
    options = solver.options.parse(decl.options, constant_lookup(info), errors, owner=f"solve {solver.name}")
    if not errors.diagnostics:
        for message in solver.validate(options, info):
            errors.add(decl.span, message)
    problems = solver.accepts(graph, info)
    if problems:
        takers = [name for name in PREFERENCE if name != solver.name and SOLVERS[name].family == info.family
                  and not SOLVERS[name].accepts(graph, info)]
        suggestion = f"`solve {takers[0]}` would take this plan" if takers else ""
        for span, message, hint in problems:
            errors.add(span, message, "; ".join(h for h in (hint, suggestion) if h))
    errors.raise_if_any()
    modified = (info.solver, info.options) != (solver.name, options)
    info.solver, info.options = solver.name, options
    return PassResult(graph, modified)


def accepting_solvers(graph: nx.DiGraph) -> list[str]:
    """The solvers that take a plan (graph after classify), in order of preference."""
    info: PlanInfo = graph.graph["plan_info"]
    return [name for name in PREFERENCE if SOLVERS[name].family == info.family and not SOLVERS[name].accepts(graph, info)]
