"""Pass 4, eligibility: the named solver exists, its options are valid, and it can take the plan.

A plan that the named solver cannot take gets one error per offending expression, naming the
sub-expression, where it is, and which solver would take the plan.
"""
from __future__ import annotations

import math

import networkx as nx
import torch

from compiler import classify
from compiler.context import PlanInfo
from compiler.convexity import nonconvex_term
from compiler.defaults import default_value
from compiler.ir import Expr
from compiler.layout import Layout
from compiler.passes import PassResult
from compiler.solvers import PREFERENCE, SOLVERS, ConstraintSupport, SolverSpec
from planlang import ast
from planlang.ast import VarKind, When
from planlang.errors import Collector, did_you_mean
from planlang.graph import NodeKind

NAME = "eligibility"


def run(graph: nx.DiGraph) -> PassResult:
    info: PlanInfo = graph.graph["plan_info"]
    decl: ast.SolveDecl = graph.nodes["solve"]["decl"]
    errors = Collector()
    spec = SOLVERS.get(decl.solver)
    if spec is None:
        errors.add(decl.span, f"unknown solver '{decl.solver}'",
                   did_you_mean(decl.solver, SOLVERS) or "solvers: " + ", ".join(SOLVERS))
        errors.raise_if_any()
    options = _options(spec, decl, errors)
    problems = _problems(graph, info, spec)
    if problems:
        takers = [name for name in PREFERENCE if name != spec.name and not _problems(graph, info, SOLVERS[name])]
        suggestion = f"`solve {takers[0]}` would take this plan" if takers else ""
        for span, message, hint in problems:
            errors.add(span, message, "; ".join(h for h in (hint, suggestion) if h))
    errors.raise_if_any()
    modified = (info.solver, info.options) != (spec.name, options)
    info.solver, info.options = spec.name, options
    return PassResult(graph, modified)


MAX_INT_OPTION = 10**6            # iteration counts: beyond this a solve is a hang, not a plan


def accepting_solvers(graph: nx.DiGraph) -> list[str]:
    """The solvers that take a plan (graph after classify), in order of preference."""
    info: PlanInfo = graph.graph["plan_info"]
    return [name for name in PREFERENCE if not _problems(graph, info, SOLVERS[name])]


def _options(spec: SolverSpec, decl: ast.SolveDecl, errors: Collector) -> dict:
    values = {name: opt.default for name, opt in spec.options.items()}
    if decl.positional:
        errors.add(decl.positional[0].span, "solver options are given by name", "e.g. `solve ilqr(iters=50)`")
    for kw in decl.options:
        opt = spec.options.get(kw.name)
        if opt is None:
            known = ", ".join(spec.options) or "none"
            errors.add(kw.span, f"unknown option '{kw.name}' for solve {spec.name}",
                       did_you_mean(kw.name, spec.options) or f"options of {spec.name}: {known}")
            continue
        if opt.choices:
            value = kw.value.id if isinstance(kw.value, ast.Name) else None
            if value not in opt.choices:
                errors.add(kw.value.span, f"option '{kw.name}' must be one of: {', '.join(opt.choices)}")
                continue
        else:
            value = _number(kw.value)
            if value is None or (opt.kind is int and (value != int(value) or value > MAX_INT_OPTION)) or \
                    (opt.minimum is not None and value < opt.minimum):
                what = "an integer" if opt.kind is int else "a number"
                bound = f" >= {opt.minimum:g}" if opt.minimum is not None else ""
                bound += f" and <= {MAX_INT_OPTION:.0e}" if opt.kind is int else ""
                errors.add(kw.value.span, f"option '{kw.name}' must be {what}{bound}")
                continue
            value = opt.kind(value)
        values[kw.name] = value
    return values


def _number(e: ast.Expr) -> float | None:
    """A (signed) finite number literal, else None."""
    if isinstance(e, ast.Number):
        value = e.value
    elif isinstance(e, ast.Unary) and isinstance(e.operand, ast.Number):
        value = -e.operand.value if e.op is ast.UnOp.NEG else e.operand.value
    else:
        return None
    return value if math.isfinite(value) else None


def _problems(graph: nx.DiGraph, info: PlanInfo, spec: SolverSpec) -> list[tuple]:
    """Everything in the plan that `spec` cannot take: (span, message, hint) triples."""
    out = []
    for node, data in sorted(graph.nodes(data=True), key=lambda nd: (nd[1]["span"].line, nd[1]["span"].col)):
        ir: Expr | None = data.get("ir")
        kind = data["kind"]
        if kind is NodeKind.DYNAMICS:
            out += _degree_problem(ir, spec.dynamics_degree, f"dynamics of '{data['defines']}' is not affine "
                                   "in the states and controls", spec)
            out += _smooth_problem(ir, spec)
        elif kind is NodeKind.COST:
            out += _degree_problem(ir, spec.cost_degree, "cost is not quadratic in the states and controls", spec)
            out += _smooth_problem(ir, spec)
        elif kind is NodeKind.CONSTRAINT:
            out += _constraint_problem(graph, data, info, spec)
    for var in info.variables.values():
        if var.lower is None:
            continue
        if spec.constraints is ConstraintSupport.NONE or \
                (spec.constraints is ConstraintSupport.CONTROL_BOX and var.ref.kind is not VarKind.CONTROL):
            span = graph.nodes[var.node]["decl"].bounds[0].span
            out.append((span, f"solve {spec.name} takes no bounds on {var.ref.kind.value} '{var.ref.name}'", ""))
    if spec.convex and not out:
        out += _convexity_problems(graph, info)
    return out


def _degree_problem(ir: Expr, limit, message: str, spec: SolverSpec) -> list[tuple]:
    if limit is None:
        return []
    bad = classify.culprit(ir, limit)
    if bad is None:
        return []
    what = "affine" if limit == 1 else "quadratic"
    return [(bad.span, message + f": this sub-expression is not {what}", f"solve {spec.name} needs {what} terms")]


def _smooth_problem(ir: Expr, spec: SolverSpec) -> list[tuple]:
    if spec.dynamics_degree is not None:
        return []              # polynomial solvers already reject every non-polynomial call
    bad = classify.nonsmooth(ir)
    if bad is None:
        return []
    return [(bad.span, f"{bad.attr.name}() of a state or control is not smooth; solve {spec.name} needs "
                       "second derivatives", "use a smooth surrogate such as softplus")]


def _constraint_problem(graph, data, info: PlanInfo, spec: SolverSpec) -> list[tuple]:
    decl = data["decl"]
    if spec.constraints is ConstraintSupport.NONE:
        return [(decl.span, f"solve {spec.name} takes no constraints", "")]
    if spec.constraints is ConstraintSupport.CONTROL_BOX:
        return [(decl.span, f"solve {spec.name} takes only box bounds on controls (`control u[m] in [lo, hi]`)", "")]
    ir = data["ir"]
    if not ir.variables() & {v.ref for v in info.variables.values() if v.ref.is_decision}:
        return [(decl.span, "constraint does not involve any state or control", "remove it or fix the names")]
    bad = classify.culprit(ir, 1)
    if bad is not None:
        return [(bad.span, "constraint is not affine in the states and controls", "write it as a smooth penalty cost")]
    return []


def _convexity_problems(graph: nx.DiGraph, info: PlanInfo) -> list[tuple]:
    """Check each cost's Hessian at the default values of params, inputs and learnables."""
    like = torch.zeros((), dtype=torch.float64)
    layout = Layout.of(info)
    env = dict(layout.symbolic(like))
    for var in info.variables.values():
        if not var.ref.is_decision:
            value = default_value(var)
            env[var.ref] = (torch.zeros(var.shape, dtype=torch.float64) if value is None else value).unsqueeze(0)
    nz = layout.n + layout.m
    out = []
    for node, data in graph.nodes(data=True):
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
