"""Compositional classification of typed expressions.

One rule per op says how the polynomial degree in the decision variables (states and controls at
the current stage) combines; `degree(e) <= 1` means affine, `<= 2` quadratic, `None` not
polynomial. Builtins state their own rule (`Function.degree`) and smoothness. `culprit` finds the
smallest sub-expression that breaks a bound, so an error can point at it.
"""
from __future__ import annotations

from typing import Callable

from compiler.ir import Expr, Op

Degree = int | None


def _pow_degree(expr: Expr, degrees: list[Degree]) -> Degree:
    base, exponent = degrees
    if exponent != 0 or base is None:
        return None
    if base == 0:
        return 0
    k = expr.args[1].attr if expr.args[1].op is Op.CONST else None
    if k is None or k.numel() != 1 or k.item() != int(k.item()) or k.item() < 0:
        return None
    return base * int(k.item())


def _total(_, degrees):
    return None if None in degrees else sum(degrees)


def _max(_, degrees):
    return None if None in degrees else max(degrees)


RULES: dict[Op, Callable[[Expr, list[Degree]], Degree]] = {
    Op.CONST: lambda e, d: 0,
    Op.VAR: lambda e, d: 1 if e.attr.is_decision else 0,
    Op.ADD: _max,
    Op.SUB: _max,
    Op.NEG: _max,
    Op.MUL: _total,
    Op.MATMUL: _total,
    Op.DIV: lambda e, d: d[0] if d[1] == 0 else None,
    Op.POW: _pow_degree,
    Op.INDEX: _max,
    Op.STACK: _max,
    Op.CALL: lambda e, d: e.attr.degree(d),
}


def degrees(expr: Expr) -> dict[Expr, Degree]:
    """Degree of every sub-expression (identity-keyed)."""
    out: dict[Expr, Degree] = {}
    for node in expr.walk():
        out[node] = RULES[node.op](node, [out[a] for a in node.args])
    return out


def degree(expr: Expr) -> Degree:
    return degrees(expr)[expr]


def culprit(expr: Expr, limit: int) -> Expr | None:
    """The first (innermost, leftmost) sub-expression whose degree exceeds `limit`, or None."""
    table = degrees(expr)
    for node in expr.walk():
        d = table[node]
        if d is None or d > limit:
            return node
    return None


def nonsmooth(expr: Expr) -> Expr | None:
    """The first call of a non-smooth builtin (abs, relu, min, max, clip) on a decision variable."""
    table = degrees(expr)
    for node in expr.walk():
        if node.op is Op.CALL and not node.attr.smooth and any(table[a] != 0 for a in node.args):
            return node
    return None


def first_block(expr: Expr) -> Expr | None:
    """The first call of a neural block on decision variables (no exact polynomial form), or None."""
    table = degrees(expr)
    return next((n for n in expr.walk() if n.op is Op.CALL and n.attr.is_block and table[n] != 0), None)
