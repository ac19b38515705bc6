"""The public API: load, loads, compile, check."""
from __future__ import annotations

import torch

from planlang import ast
from planlang.errors import PlanError, did_you_mean
from planlang.plan import Plan, load, loads


def compile(plan: Plan, dtype: torch.dtype = torch.float32, options: dict | None = None,
            solver: str | None = None):
    """Check `plan` and lower it to a differentiable `torch.nn.Module` (`PlanModule`).

    `dtype` is the dtype of the learnables (and of a solve given no floating-point tensors); the
    plan's literal values stay float64 and are cast to the dtype of each solve's inputs, so a
    float32 module called with float64 tensors solves in float64 from the exact constants.
    `solver` replaces the plan's `solve` line (its options then start from their defaults);
    `options` override solver options (e.g. `{"tol": 1e-10}`), validated like the plan's own.
    Raises `PlanError` (with file:line:col, the line and a caret) when the plan is malformed or
    its solver cannot take it.
    """
    from compiler.lower.module import PlanModule
    from compiler.pipeline import run_passes

    graph = plan.graph
    if solver is not None:
        from compiler.solvers import SOLVERS

        if solver not in SOLVERS:
            hint = did_you_mean(solver, SOLVERS)
            raise ValueError(f"compile(solver='{solver}'): unknown solver" + (f"; {hint}" if hint else "")
                             + f" (solvers: {', '.join(SOLVERS)})")
        graph = graph.copy()
        decl = graph.nodes["solve"]["decl"] if "solve" in graph else None
        if decl is None:
            raise ValueError("the plan has no solve line to replace")
        graph.nodes["solve"]["decl"] = ast.SolveDecl(decl.span, solver, ())
        graph.nodes["solve"]["solver"] = solver
    try:
        graph = run_passes(graph)
    except PlanError as err:
        raise err.with_source(plan.source) from None
    if options:
        graph.graph["plan_info"].options.update(_checked_options(graph.graph["plan_info"].solver, options))
    return PlanModule(graph, dtype=dtype)


def _checked_options(solver: str, options: dict) -> dict:
    from compiler.solvers import SOLVERS

    spec = SOLVERS[solver]
    out = {}
    for name, value in options.items():
        opt = spec.options.get(name)
        if opt is None:
            raise ValueError(f"solve {solver} has no option '{name}' (options: {', '.join(spec.options) or 'none'})")
        if opt.choices and value not in opt.choices:
            raise ValueError(f"option '{name}' must be one of: {', '.join(opt.choices)}")
        out[name] = value if opt.choices else opt.kind(value)
    return out


def check(plan: Plan, **options):
    """Solve `plan` with the compiled module and an independent reference; see `planlang.check`."""
    from planlang.checking import check_plan

    return check_plan(plan, **options)


__all__ = ["check", "compile", "load", "loads"]
