"""Builtin functions of the expression language: a registry keyed by name.

Each `Function` states its own shape rule, how it preserves polynomial degree in the decision
variables (for the compositional classification), whether it is smooth, and how it evaluates on
values (plain tensors or `QuadForm`s). A missing rule is an error that names the function.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

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
    doc: str = ""


def broadcast(*shapes: Shape) -> Shape:
    """NumPy broadcasting of static shapes; raises ShapeError on mismatch."""
    try:
        return tuple(torch.broadcast_shapes(*[torch.Size(s) for s in shapes]))
    except RuntimeError:
        raise ShapeError("shapes " + ", ".join(_fmt(s) for s in shapes) + " do not broadcast") from None


def _fmt(shape: Shape) -> str:
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
        raise ShapeError(f"dot expects two vectors of the same length, got {_fmt(shapes[0])} and {_fmt(shapes[1])}")
    return ()


def _quad_shape(shapes, _consts):
    v, M = shapes
    if len(v) != 1 or M != (v[0], v[0]):
        raise ShapeError(f"quad(v, M) expects v[k] and M[k, k], got {_fmt(v)} and {_fmt(M)}")
    return ()


def _diag_shape(shapes, _consts):
    if len(shapes[0]) != 1:
        raise ShapeError(f"diag expects a vector, got {_fmt(shapes[0])}")
    return (shapes[0][0], shapes[0][0])


def _sized(shapes, consts):
    sizes = tuple(int(c) for c in consts)
    if any(s <= 0 for s in sizes):
        raise ShapeError("sizes must be positive integers")
    return sizes if len(sizes) > 1 or sizes else ()


def _eye_shape(shapes, consts):
    (n,) = consts
    return (int(n), int(n))


def _cat_shape(shapes, _consts):
    if any(len(s) > 1 for s in shapes):
        raise ShapeError("cat joins scalars and vectors, got " + ", ".join(_fmt(s) for s in shapes))
    return (sum(s[0] if s else 1 for s in shapes),)


def _minmax_shape(shapes, consts):
    return () if len(shapes) == 1 else broadcast(*shapes)


# --------------------------------------------------------------- evaluations

def _value_dims(v: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(1, v.dim()))


def _tensor_fn(fn):
    """An elementwise torch function: defined on degree-0 values only."""
    def evaluate(*args):
        if any(isinstance(a, qf.QuadForm) for a in args):
            raise ValueError("nonlinear function of a decision variable in a polynomial lowering")
        if len(args) > 1:
            r = max(a.dim() for a in args)
            args = [qf.pad_rank(a, r - 1) for a in args]
        return fn(*args)
    return evaluate


def _sum(v):
    return qf.sum_axes(v, tuple(range(qf.rank(v))))


def _dot(a, b):
    return qf.sum_axes(qf.mul(a, b), (0,))


def _quad(v, M):
    return qf.sum_axes(qf.mul(v, qf.matmul(M, v)), (0,))


def _norm(v):
    return torch.linalg.vector_norm(v, dim=_value_dims(v)) if v.dim() > 1 else v.abs()


def _minmax(reduce, pairwise):
    def evaluate(*args):
        if len(args) == 1:
            (v,) = args
            return reduce(v.flatten(1), dim=1).values if v.dim() > 1 else v
        return _tensor_fn(pairwise)(*args)
    return evaluate


def _clip(v, lo, hi):
    return _tensor_fn(lambda a, b, c: torch.minimum(torch.maximum(a, b), c))(v, lo, hi)


def _cat(*args):
    items = [qf.pad_rank(a, 1) for a in args]
    if all(qf.degree(a) == 0 for a in items):
        batch = max(a.shape[0] for a in items)
        return torch.cat([a.expand(batch, a.shape[1]) for a in items], dim=1)
    return qf.stack([qf.index(item, (i,)) for item in items for i in range(_length(item))])


def _length(v: qf.Value) -> int:
    return (v.c if isinstance(v, qf.QuadForm) else v).shape[-1]


def _elementwise_function(name, fn, smooth=True, doc=""):
    return Function(name, 1, 1, _elementwise, _const_only, _tensor_fn(fn), smooth=smooth, doc=doc)


FUNCTIONS: dict[str, Function] = {f.name: f for f in [
    _elementwise_function("sin", torch.sin),
    _elementwise_function("cos", torch.cos),
    _elementwise_function("tan", torch.tan),
    _elementwise_function("exp", torch.exp),
    _elementwise_function("log", torch.log),
    _elementwise_function("sqrt", torch.sqrt),
    _elementwise_function("tanh", torch.tanh),
    _elementwise_function("sigmoid", torch.sigmoid),
    _elementwise_function("softplus", torch.nn.functional.softplus),
    _elementwise_function("abs", torch.abs, smooth=False),
    _elementwise_function("relu", torch.relu, smooth=False),
    Function("sum", 1, 1, _scalar, _same, _sum, doc="sum of all elements"),
    Function("norm", 1, 1, _scalar, _const_only, _tensor_fn(_norm), doc="Euclidean norm"),
    Function("dot", 2, 2, _vector_pair, _total, _dot),
    Function("quad", 2, 2, _quad_shape, lambda d: _total([d[0], d[0], d[1]]), _quad, doc="v' M v"),
    Function("diag", 1, 1, _diag_shape, _same, qf.diag),
    Function("eye", 1, 1, _eye_shape, lambda d: 0, None, fold=lambda n: torch.eye(n, dtype=torch.float64)),
    Function("zeros", 1, 2, _sized, lambda d: 0, None, fold=lambda *s: torch.zeros(*s, dtype=torch.float64)),
    Function("ones", 1, 2, _sized, lambda d: 0, None, fold=lambda *s: torch.ones(*s, dtype=torch.float64)),
    Function("min", 1, 2, _minmax_shape, _const_only, _minmax(torch.min, torch.minimum), smooth=False),
    Function("max", 1, 2, _minmax_shape, _const_only, _minmax(torch.max, torch.maximum), smooth=False),
    Function("clip", 3, 3, _elementwise, _const_only, _clip, smooth=False),
    Function("cat", 1, 16, _cat_shape, _max, _cat, doc="concatenate scalars and vectors"),
]}
