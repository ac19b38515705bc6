"""The public API: load, loads, compile, check."""
from __future__ import annotations

import torch

from planlang.errors import PlanError
from planlang.plan import Plan, load, loads


def compile(plan: Plan, dtype: torch.dtype = torch.float32, options: dict | None = None):
    """Check `plan` and lower it to a differentiable `torch.nn.Module` (`PlanModule`).

    `options` override the plan's solver options (e.g. `{"tol": 1e-10}`), validated like the
    plan's own. Raises `PlanError` (with file:line:col, the line and a caret) when the plan is
    malformed or its solver cannot take it.
    """
    from compiler.lower.module import PlanModule
    from compiler.pipeline import run_passes

    try:
        graph = run_passes(plan.graph)
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
