"""Lowering rules keyed by `Op`: evaluate typed expressions on batched values.

Values are plain tensors `(B, *shape)` (B may be 1 and broadcasts) or `QuadForm`s when decision
variables are bound to second-order jets; the same rules serve the exact data extraction of
polynomial plans (LQR/QP), exact first and second derivatives (iLQR), and plain numerical
evaluation (rollouts, sampling planners).
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch

from compiler import quadform as qf
from compiler.functions import FUNCTIONS, RECIPROCAL, power
from compiler.ir import Expr, Op, VarRef

Env = Mapping[VarRef, qf.Value]


class MissingRule(Exception):
    """No lowering rule for an op: an internal error that names the op."""


def _const(expr: Expr, args, env: Env, like: torch.Tensor) -> qf.Value:
    return expr.attr.to(dtype=like.dtype, device=like.device).unsqueeze(0)


def _var(expr: Expr, args, env: Env, like: torch.Tensor) -> qf.Value:
    return env[expr.attr]


def _pow(expr: Expr, args, env: Env, like: torch.Tensor) -> qf.Value:
    base, exponent = args
    if isinstance(exponent, qf.QuadForm):                   # a^b = exp(b log a)
        return FUNCTIONS["exp"].evaluate(qf.mul(exponent, FUNCTIONS["log"].evaluate(base)))
    return power(base, exponent)


def _div(expr: Expr, args, env: Env, like: torch.Tensor) -> qf.Value:
    a, b = args
    return qf.mul(a, RECIPROCAL(b))


def _call(expr: Expr, args, env: Env, like: torch.Tensor) -> qf.Value:
    if expr.attr.is_block:
        if any(isinstance(a, qf.QuadForm) for a in args):
            raise MissingRule(f"block '{expr.attr.name}' has no second-order jets (differentiate it by autodiff)")
        return expr.attr.apply(env[expr.attr.ref], *args)
    if expr.attr.evaluate is None:
        raise MissingRule(f"builtin '{expr.attr.name}' has no evaluation rule (it should have been folded)")
    return expr.attr.evaluate(*args)


RULES: dict[Op, Callable] = {
    Op.CONST: _const,
    Op.VAR: _var,
    Op.ADD: lambda e, a, env, like: qf.add(*a),
    Op.SUB: lambda e, a, env, like: qf.sub(*a),
    Op.MUL: lambda e, a, env, like: qf.mul(*a),
    Op.DIV: _div,
    Op.POW: _pow,
    Op.MATMUL: lambda e, a, env, like: qf.matmul(*a),
    Op.NEG: lambda e, a, env, like: qf.neg(a[0]),
    Op.INDEX: lambda e, a, env, like: qf.index(a[0], e.attr),
    Op.STACK: lambda e, a, env, like: qf.stack(list(a)),
    Op.CALL: _call,
}


def evaluate(expr: Expr, env: Env, like: torch.Tensor) -> qf.Value:
    """Evaluate `expr` with variables bound by `env`; constants follow `like`'s dtype and device."""
    rule = RULES.get(expr.op)
    if rule is None:
        raise MissingRule(f"no lowering rule for op {expr.op.name}")
    args = [evaluate(a, env, like) for a in expr.args] if expr.op is not Op.CONST else []
    return rule(expr, args, env, like)
