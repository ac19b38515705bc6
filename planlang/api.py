"""The public API: load, loads, compile, check."""
from __future__ import annotations

import torch

from planlang.errors import PlanError
from planlang.plan import Plan, load, loads


def compile(plan: Plan, dtype: torch.dtype = torch.float32):
    """Check `plan` and lower it to a differentiable `torch.nn.Module` (`PlanModule`).

    Raises `PlanError` (with file:line:col, the line and a caret) when the plan is malformed or
    its solver cannot take it.
    """
    from compiler.lower.module import PlanModule
    from compiler.pipeline import run_passes

    try:
        graph = run_passes(plan.graph)
    except PlanError as err:
        raise err.with_source(plan.source) from None
    return PlanModule(graph, dtype=dtype)


def check(plan: Plan, **options):
    """Solve `plan` with the compiled module and an independent reference; see `planlang.check`."""
    from planlang.checking import check_plan

    return check_plan(plan, **options)


__all__ = ["check", "compile", "load", "loads"]
