"""Numerical convexity of quadratic costs at the plan's default values.

A quadratic stage cost 1/2 z'Cz + c'z + k is convex iff C is positive semidefinite; the check
evaluates C exactly (via `QuadForm`) and, when it fails, blames the first additive term of the
cost whose own Hessian is indefinite, so the error can point at it.
"""
from __future__ import annotations

import math

import torch

from compiler import quadform as qf
from compiler.evaluate import evaluate
from compiler.ir import Expr, Op


def min_eigenvalue(expr: Expr, env, nz: int, like: torch.Tensor, block: slice) -> float:
    """Smallest eigenvalue of the Hessian of a scalar quadratic `expr` restricted to z[block]
(over all rows of the evaluation: every stage, where `env` binds stage values).

    NaN when the Hessian is not finite (e.g. weights that overflow at the default values) or
    the eigenvalue solver fails on it. It is scaled to entries <= 1 first, so that huge finite
    weights (1e308) neither overflow inside the solver nor keep it from converging.
    """
    _, _, H = qf.coefficients(evaluate(expr, env, like), nz)
    H = H[:, block, block]                     # one row per stage where stage values vary it
    if not bool(torch.isfinite(H).all()):
        return math.nan
    scale = float(H.abs().max()) if H.numel() else 0.0
    if scale == 0.0:
        return 0.0
    try:
        return float(torch.linalg.eigvalsh(H / scale).min()) * 2 * scale
    except torch.linalg.LinAlgError:
        return math.nan


def additive_terms(expr: Expr) -> list[Expr]:
    """Split `a + b - c` into its terms (a subtracted term is reported as written)."""
    if expr.op in (Op.ADD, Op.SUB):
        return additive_terms(expr.args[0]) + additive_terms(expr.args[1])
    return [expr]


def nonconvex_term(expr: Expr, env, nz: int, like: torch.Tensor, block: slice, tol: float = 1e-9) -> tuple[Expr, float] | None:
    """(culprit, eigenvalue) if the cost's Hessian is not PSD, else None; eigenvalue NaN: not finite."""
    worst = min_eigenvalue(expr, env, nz, like, block)
    if math.isnan(worst):
        return next((t for t in additive_terms(expr) if math.isnan(min_eigenvalue(t, env, nz, like, block))),
                    expr), worst
    scale = 1.0 + min(abs(worst), torch.finfo(torch.float64).max)     # -inf: an overflowing negative weight
    if worst >= -tol * scale:
        return None
    sign_flipped = _subtracted(expr)
    for term in additive_terms(expr):
        sub = Expr(Op.NEG, (term,), term.shape, term.span) if id(term) in sign_flipped else term
        if min_eigenvalue(sub, env, nz, like, block) < -tol * scale:
            return term, worst
    return expr, worst


def _subtracted(expr: Expr, negate: bool = False, out: set | None = None) -> set[int]:
    out = set() if out is None else out
    if expr.op in (Op.ADD, Op.SUB):
        _subtracted(expr.args[0], negate, out)
        _subtracted(expr.args[1], negate ^ (expr.op is Op.SUB), out)
    elif negate:
        out.add(id(expr))
    return out
