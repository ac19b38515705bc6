"""The public API: load, loads, compile, check."""
from __future__ import annotations

import os

import torch

from planlang import ast
from planlang.errors import Diagnostic, PlanError, did_you_mean
from planlang.plan import Plan, load, loads


def compile(plan: Plan | str | os.PathLike, dtype: torch.dtype = torch.float32, options: dict | None = None,
            solver: str | None = None, allow_imports: bool = False, weights=None):
    """Check `plan` and lower it to a differentiable `torch.nn.Module` (`PlanModule`).

    `plan` is a loaded `Plan` (`planlang.load`, `planlang.loads`) or the path of a `.plan` file.

    `dtype` is the dtype of the learnables (and of a solve given no floating-point tensors); the
    plan's literal values stay float64 and are cast to the dtype of each solve's inputs, so a
    float32 module called with float64 tensors solves in float64 from the exact constants.
    `solver` replaces the plan's `solve` line (its options then start from their defaults);
    `options` override solver options (e.g. `{"tol": 1e-10}`), validated like the plan's own.
    `allow_imports=True` lets `block f = python("package.module:Class", ...)` import and run the
    named code; without it such a plan is refused, so that opening a plan never runs code by surprise.
    `weights` is a checkpoint written by `planlang train -o CKPT` (or `planlang.train`): its
    state_dict is loaded, and a checkpoint of another plan is refused (it stores the plan's hash).
    Raises `PlanError` (with file:line:col, the line and a caret) when the plan is malformed or
    its solver cannot take it.
    """
    from compiler.blocks import BlockError
    from compiler.lower.module import PlanModule
    from compiler.passes import lower
    from compiler.pipeline import run_passes
    from compiler.solvers import SOLVERS

    if isinstance(plan, (str, os.PathLike)):
        plan = load(plan)
    elif not isinstance(plan, Plan):
        raise TypeError(f"compile takes a Plan or the path of a .plan file, not {type(plan).__name__}")
    graph = plan.graph
    if solver is not None:
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
        graph = run_passes(graph, until="eligibility")
    except PlanError as err:
        raise err.with_source(plan.source) from None
    if options:
        info = graph.graph["plan_info"]
        info.options.update(_checked_options(info.solver, options))
        problems = SOLVERS[info.solver].validate(info.options, info)
        if problems:
            raise ValueError("; ".join(problems))
    try:
        graph = lower.run(graph).graph
    except PlanError as err:             # a backend that refuses the plan (e.g. kernels=native)
        raise err.with_source(plan.source) from None
    if not allow_imports:
        _refuse_imports(graph, plan)
    try:
        module = PlanModule(graph, dtype=dtype)
    except BlockError as err:            # a block that cannot be built (bad import path, kernel size)
        raise PlanError(Diagnostic(graph.nodes[f"block:{err.block}"]["span"], str(err)), plan.source) from None
    if weights is not None:
        from planlang.training import load_weights
        load_weights(module, weights, plan)
    return module


def _refuse_imports(graph, plan: Plan) -> None:
    for name, callee in graph.graph["plan_info"].blocks.items():
        if callee.kind.imports_code:
            raise PlanError(Diagnostic(
                graph.nodes[f"block:{name}"]["span"],
                f"block '{name}' imports and runs Python code ('{callee.options['path']}')",
                "allow it explicitly: planlang.compile(plan, allow_imports=True), or --allow-imports on the command line"),
                plan.source)


def _checked_options(solver: str, options: dict) -> dict:
    from compiler.solvers import SOLVERS

    return SOLVERS[solver].options.coerce_all(options, owner=f"solve {solver}")


def check(plan: Plan, **options):
    """Solve `plan` with the compiled module and an independent reference; see `planlang.check`."""
    from planlang.checks import check_plan

    return check_plan(plan, **options)


__all__ = ["check", "compile", "load", "loads"]
