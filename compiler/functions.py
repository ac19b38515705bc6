"""Builtin functions of the expression language: a registry keyed by name.

Each `Function` states its own shape rule, how it preserves polynomial degree in the decision
variables (for the compositional classification), whether it is smooth, and how it evaluates on
values (plain tensors or `QuadForm`s). A missing rule is an error that names the function.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import math

import torch

from compiler import quadform as qf
from compiler.ir import Shape


class ShapeError(Exception):
    """A shape rule failed; the shape pass attaches the span."""


@dataclass(frozen=True)
class Function:
    name: str
    min_args: int
    max_args: int
    shape: Callable[[Sequence[Shape], Sequence], Shape]      # (arg shapes, const arg values) -> shape
    degree: Callable[[Sequence[int | None]], int | None]   # arg degrees -> degree (None: not polynomial)
    evaluate: Callable[..., qf.Value] | None               # (*arg values) -> value
    smooth: bool = True
    fold: Callable[..., torch.Tensor] | None = None        # int args -> constant (folded at compile time)
    fold_reals: int = 0                                     # leading fold args that are any real numbers
    doc: str = ""
    is_block = False                                        # builtins are stateless (see compiler.blocks)


def broadcast(*shapes: Shape) -> Shape:
    """NumPy broadcasting of static shapes; raises ShapeError on mismatch."""
    rank = max(len(s) for s in shapes)
    out = []
    for axis in range(rank):
        sizes = {s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0} - {1}
        if len(sizes) > 1:
            raise ShapeError("shapes " + ", ".join(format_shape(s) for s in shapes) + " do not broadcast")
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def format_shape(shape: Shape) -> str:
    return "scalar" if not shape else "[" + ", ".join(map(str, shape)) + "]"


# ----------------------------------------------------------------- degree rules

def _const_only(degrees):
    return 0 if all(d == 0 for d in degrees) else None


def _same(degrees):
    return degrees[0]


def _total(degrees):
    return None if any(d is None for d in degrees) else sum(degrees)


def _max(degrees):
    return None if any(d is None for d in degrees) else max(degrees)


# ------------------------------------------------------------------ shape rules

def _elementwise(shapes, _consts):
    return broadcast(*shapes)


def _scalar(shapes, _consts):
    return ()


def _vector_pair(shapes, _consts):
    if len(shapes[0]) != 1 or shapes[0] != shapes[1]:
        raise ShapeError(f"dot expects two vectors of the same length, got {format_shape(shapes[0])} and {format_shape(shapes[1])}")
    return ()


def _quad_shape(shapes, _consts):
    v, M = shapes
    if len(v) != 1 or M != (v[0], v[0]):
        raise ShapeError(f"quad(v, M) expects v[k] and M[k, k], got {format_shape(v)} and {format_shape(M)}")
    return ()


def _diag_shape(shapes, _consts):
    if len(shapes[0]) != 1:
        raise ShapeError(f"diag expects a vector, got {format_shape(shapes[0])}")
    return (shapes[0][0], shapes[0][0])


def _sized(shapes, consts):
    sizes = tuple(int(c) for c in consts)
    if any(s <= 0 for s in sizes):
        raise ShapeError("sizes must be positive integers")
    return sizes if len(sizes) > 1 or sizes else ()


def _transpose_shape(shapes, _consts):
    if len(shapes[0]) != 2:
        raise ShapeError(f"transpose expects a matrix, got {format_shape(shapes[0])}")
    return shapes[0][::-1]


def _transpose(m):
    """Of data (a tensor (B, r, c)); a transposed jet of a state or control has no rule (the
    degree rule makes it non-polynomial and `smooth=False` keeps derivative solvers away)."""
    if isinstance(m, qf.QuadForm):
        raise TypeError("transpose() of a state or control has no jet rule")
    return m.transpose(-1, -2)


def _eye_shape(shapes, consts):
    (n,) = consts
    return (int(n), int(n))


def _cat_shape(shapes, _consts):
    if any(len(s) > 1 for s in shapes):
        raise ShapeError("cat joins scalars and vectors, got " + ", ".join(format_shape(s) for s in shapes))
    return (sum(s[0] if s else 1 for s in shapes),)


def _minmax_shape(shapes, consts):
    return () if len(shapes) == 1 else broadcast(*shapes)


# --------------------------------------------------------------- evaluations

def _aligned(args):
    if len(args) == 1:
        return args
    r = max(qf.rank(a) for a in args)
    return [qf.pad_rank(a, r) for a in args]


def _jet_fn(f, df, d2f):
    """An elementwise function with its first and second derivatives: extends jets by the chain rule."""
    def evaluate(v):
        if not isinstance(v, qf.QuadForm):
            return f(v)
        return qf.apply_elementwise(v, f(v.c), df(v.c), d2f(v.c))
    return evaluate


def _select(cond, a, b):
    """Elementwise `a if cond else b` on values (jets select their coefficients)."""
    a, b = _aligned((a, b))
    if not isinstance(a, qf.QuadForm) and not isinstance(b, qf.QuadForm):
        return torch.where(cond, a, b)
    nz = next(v.L.shape[1] for v in (a, b) if isinstance(v, qf.QuadForm) and v.L is not None)
    (ac, aL, aH), (bc, bL, bH) = qf.coefficients(a, nz), qf.coefficients(b, nz)
    c = torch.where(cond, ac, bc)
    L = torch.where(cond.unsqueeze(1), aL, bL)
    H = torch.where(cond.unsqueeze(1).unsqueeze(1), aH, bH)
    return qf.QuadForm(c, L, H)


def _constant(v):
    return v.c if isinstance(v, qf.QuadForm) else v


def _sum(v):
    return qf.sum_axes(v, tuple(range(qf.rank(v))))


def _dot(a, b):
    return qf.sum_axes(qf.mul(a, b), (0,))


def _quad(v, M):
    return qf.sum_axes(qf.mul(v, qf.matmul(M, v)), (0,))


def _norm(v):
    """||v||_2 = sqrt(sum(v * v)) (a jet through sqrt; not differentiable at 0)."""
    return _SQRT(_sum(qf.mul(v, v)))


def _minmax(pick_first, arg_best):
    """min/max of one value (over all elements) or of two (elementwise); jets follow the winner."""
    def evaluate(*args):
        if len(args) == 2:
            a, b = _aligned(args)
            ac, bc = _constant(a), _constant(b)
            return _select(pick_first(ac, bc), a, b)
        (v,) = args
        if qf.rank(v) == 0:
            return v
        c = _constant(v).flatten(1)
        winner = arg_best(c, dim=1)
        flat = qf.map_value_axes(v, lambda t: t.flatten(t.dim() - qf.rank(v)))
        return qf.map_value_axes(flat, lambda t: t.gather(-1, winner.reshape((-1,) + (1,) * (t.dim() - 1))
                                                           .expand(t.shape[:-1] + (1,)))[..., 0])
    return evaluate


def _clip(v, lo, hi):
    return _MIN(_MAX(v, lo), hi)


def _cat(*args):
    items = [qf.pad_rank(a, 1) for a in args]
    if all(qf.degree(a) == 0 for a in items):
        batch = max(a.shape[0] for a in items)
        return torch.cat([a.expand(batch, a.shape[1]) for a in items], dim=1)
    return qf.stack([qf.index(item, (i,)) for item in items for i in range(_length(item))])


def _length(v: qf.Value) -> int:
    return (v.c if isinstance(v, qf.QuadForm) else v).shape[-1]


def _binary_jet(f, fa, fb, faa, fab, fbb):
    """g(a, b) elementwise, extended to jets by the second-order chain rule:
    g + g_a da + g_b db + 1/2 (g_aa da^2 + 2 g_ab da db + g_bb db^2), derivatives at the constants."""
    def evaluate(a, b):
        if not isinstance(a, qf.QuadForm) and not isinstance(b, qf.QuadForm):
            return f(*torch.broadcast_tensors(*_aligned((a, b))))
        a, b = _aligned((a, b))
        ca, cb = torch.broadcast_tensors(_constant(a), _constant(b))
        da, db = qf.sub(a, _constant(a)), qf.sub(b, _constant(b))
        total: qf.Value = f(ca, cb)
        for coefficient, term in ((fa(ca, cb), da), (fb(ca, cb), db), (0.5 * faa(ca, cb), qf.mul(da, da)),
                                  (fab(ca, cb), qf.mul(da, db)), (0.5 * fbb(ca, cb), qf.mul(db, db))):
            total = qf.add(total, qf.mul(coefficient, term))
        return total
    return evaluate


def _atan2_parts():
    """atan2(y, x) and its derivatives: g_y = x/r2, g_x = -y/r2, g_yy = -2xy/r4 = -g_xx, g_xy = (y2 - x2)/r4."""
    r2 = lambda y, x: x * x + y * y
    return (torch.atan2, lambda y, x: x / r2(y, x), lambda y, x: -y / r2(y, x),
            lambda y, x: -2 * x * y / r2(y, x) ** 2, lambda y, x: (y * y - x * x) / r2(y, x) ** 2,
            lambda y, x: 2 * x * y / r2(y, x) ** 2)


def _wrap(c: torch.Tensor) -> torch.Tensor:
    return torch.remainder(c + math.pi, 2 * math.pi) - math.pi


def _zero(a, b):
    return torch.zeros_like(a)


def _elementwise_function(name, f, df, d2f, smooth=True):
    """A builtin g applied elementwise, with g' and g'' for jets (a.e. for non-smooth ones)."""
    return Function(name, 1, 1, _elementwise, _const_only, _jet_fn(f, df, d2f), smooth=smooth)


def _sigmoid_d2(c):
    s = torch.sigmoid(c)
    return s * (1 - s) * (1 - 2 * s)


_SQRT = _jet_fn(torch.sqrt, lambda c: 0.5 / torch.sqrt(c), lambda c: -0.25 * c.pow(-1.5))
RECIPROCAL = _jet_fn(torch.reciprocal, lambda c: -c.pow(-2), lambda c: 2 * c.pow(-3))
_MIN = _minmax(torch.less_equal, torch.argmin)
_MAX = _minmax(torch.greater_equal, torch.argmax)


def power(base: qf.Value, p: torch.Tensor) -> qf.Value:
    """base ** p for a degree-0 exponent: repeated products for small integers (exact), else the chain rule."""
    if not isinstance(base, qf.QuadForm):
        b, e = _aligned((base, p))
        return torch.pow(b, e)
    if p.numel() == 1 and float(p) == int(p) and 0 <= int(p) <= 8:
        result: qf.Value = torch.ones_like(base.c)
        for _ in range(int(p)):
            result = qf.mul(result, base)
        return result
    c, e = _aligned((base.c, p))
    return qf.apply_elementwise(base, torch.pow(c, e), e * torch.pow(c, e - 1), e * (e - 1) * torch.pow(c, e - 2))


FUNCTIONS: dict[str, Function] = {f.name: f for f in [
    _elementwise_function("sin", torch.sin, torch.cos, lambda c: -torch.sin(c)),
    _elementwise_function("cos", torch.cos, lambda c: -torch.sin(c), lambda c: -torch.cos(c)),
    _elementwise_function("tan", torch.tan, lambda c: 1 / torch.cos(c) ** 2,
                          lambda c: 2 * torch.tan(c) / torch.cos(c) ** 2),
    _elementwise_function("exp", torch.exp, torch.exp, torch.exp),
    _elementwise_function("log", torch.log, torch.reciprocal, lambda c: -c.pow(-2)),
    Function("sqrt", 1, 1, _elementwise, _const_only, _SQRT),
    _elementwise_function("tanh", torch.tanh, lambda c: 1 - torch.tanh(c) ** 2,
                          lambda c: -2 * torch.tanh(c) * (1 - torch.tanh(c) ** 2)),
    _elementwise_function("sigmoid", torch.sigmoid, lambda c: torch.sigmoid(c) * (1 - torch.sigmoid(c)), _sigmoid_d2),
    _elementwise_function("softplus", torch.nn.functional.softplus, torch.sigmoid,
                          lambda c: torch.sigmoid(c) * (1 - torch.sigmoid(c))),
    _elementwise_function("abs", torch.abs, torch.sign, torch.zeros_like, smooth=False),
    _elementwise_function("relu", torch.relu, lambda c: (c > 0).to(c.dtype), torch.zeros_like, smooth=False),
    Function("sum", 1, 1, _scalar, _same, _sum, doc="sum of all elements"),
    Function("norm", 1, 1, _scalar, _const_only, _norm, doc="Euclidean norm"),
    Function("dot", 2, 2, _vector_pair, _total, _dot),
    Function("quad", 2, 2, _quad_shape, lambda d: _total([d[0], d[0], d[1]]), _quad, doc="v' M v"),
    Function("diag", 1, 1, _diag_shape, _same, qf.diag),
    Function("eye", 1, 1, _eye_shape, lambda d: 0, None, fold=lambda n: torch.eye(n, dtype=torch.float64)),
    Function("zeros", 1, 2, _sized, lambda d: 0, None, fold=lambda *s: torch.zeros(*s, dtype=torch.float64)),
    Function("ones", 1, 2, _sized, lambda d: 0, None, fold=lambda *s: torch.ones(*s, dtype=torch.float64)),
    Function("transpose", 1, 1, _transpose_shape, _const_only, _transpose, smooth=False,
             doc="the transpose of a matrix of data (e.g. a [T, 2] reference from two rows)"),
    Function("range", 1, 1, _sized, lambda d: 0, None, fold=lambda n: torch.arange(n, dtype=torch.float64),
             doc="[0, 1, ..., n-1]"),
    Function("linspace", 3, 3, _sized, lambda d: 0, None, fold_reals=2,
             fold=lambda a, b, n: torch.linspace(a, b, n, dtype=torch.float64), doc="n points from a to b"),
    Function("min", 1, 2, _minmax_shape, _const_only, _MIN, smooth=False),
    Function("max", 1, 2, _minmax_shape, _const_only, _MAX, smooth=False),
    Function("clip", 3, 3, _elementwise, _const_only, _clip, smooth=False),
    Function("cat", 1, 16, _cat_shape, _max, _cat, doc="concatenate scalars and vectors"),
    Function("atan2", 2, 2, _elementwise, _const_only, _binary_jet(*_atan2_parts()), doc="angle of (x, y): atan2(y, x)"),
    _elementwise_function("wrap", _wrap, torch.ones_like, torch.zeros_like, smooth=False),
    Function("mod", 2, 2, _elementwise, _const_only,
             _binary_jet(torch.remainder, lambda a, b: torch.ones_like(a), lambda a, b: -torch.floor(a / b),
                         _zero, _zero, _zero), smooth=False, doc="a - b floor(a / b) (the sign of b)"),
]}
