"""C code generation: typed expressions -> straight-line scalar C, generic in the number type.

The native iLQR kernels (`runtime.native`) evaluate the plan's dynamics and costs, and their
derivatives, with one C function per plan instead of hundreds of tensor ops per stage. Shapes
are static, so every value is scalarized here: an expression of shape (r, c) becomes r*c C
scalars (row-major), broadcasting, matmuls, indices and stacks are resolved at generation, and
common sub-expressions are emitted once.

The body is written once over an abstract number type `NUM` with operations `OP_add`, `OP_sin`,
... and instantiated by `instantiate` for plain doubles (values), first-order duals (Jacobians)
and second-order duals (Hessians): forward-mode differentiation of the same straight-line code,
exact to rounding. Inputs: the states `x[i]` and controls `u[i]` (NUM), the per-element
parameters `p[k]` (double, see `CBody.params`); constants are literals.

`NotNative` says why an expression has no C form (a neural block, a stage value, an op without
a rule); the plan then runs on the torch kernels.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from compiler.ir import STAGE, Expr, Op, VarRef


class NotNative(Exception):
    """An expression outside what the C generator covers; the message says what."""


_UNARY = {"sin", "cos", "tan", "exp", "log", "sqrt", "tanh", "sigmoid", "softplus", "abs", "relu",
          "wrap"}
_BINARY_CALLS = {"atan2", "mod"}
_ARITH = {Op.ADD: "add", Op.SUB: "sub", Op.MUL: "mul", Op.DIV: "div"}


class CBody:
    """Straight-line C statements computing the flattened values of several expressions.

    decision: VarRef -> (array name "x" | "u", offset) of the decision variables;
    everything else an expression reads (params, inputs, learnables) becomes a slot of `p`,
    listed in `params` in slot order as (VarRef, size). A stage value (`t`, `name[t]`) is read
    from its whole table (rows[ref] rows) in `p` at the row of the clock, the C value `clock`
    (see `compiler.lower.stages`)."""

    def __init__(self, exprs: tuple[Expr, ...], decision: dict[VarRef, tuple[str, int]],
                 params: list[tuple[VarRef, int]] | None = None, clock: str | None = None,
                 rows: dict[VarRef, int] | None = None):
        self._decision, self._clock, self._rows = decision, clock, rows or {}
        self.params: list[tuple[VarRef, int]] = [] if params is None else params
        self._lines: list[str] = []
        self._memo: dict[str, str] = {}
        self.results = [self._emit(e).reshape(-1).tolist() for e in exprs]

    @property
    def lines(self) -> list[str]:
        return list(self._lines)

    # ------------------------------------------------------------------ emission
    def _emit(self, e: Expr) -> np.ndarray:
        """The C names of e's elements, as an object array of e's shape."""
        if e.op is Op.CONST:
            values = e.attr.detach().double().reshape(e.shape).numpy()
            return _array([f"OP_c({_literal(float(v))})" for v in values.reshape(-1)], e.shape)
        if e.op is Op.VAR:
            return self._variable(e)
        args = [self._emit(a) for a in e.args]
        if e.op in _ARITH:
            a, b = np.broadcast_arrays(*args)
            return self._map(lambda p, q: f"OP_{_ARITH[e.op]}({p}, {q})", a, b)
        if e.op is Op.NEG:
            return self._map(lambda p: f"OP_neg({p})", args[0])
        if e.op is Op.POW:
            return self._power(e, args)
        if e.op is Op.MATMUL:
            return self._matmul(*args)
        if e.op is Op.INDEX:
            index = tuple(s if isinstance(s, slice) else int(s) for s in e.attr)
            return _array(list(np.asarray(args[0][index], dtype=object).reshape(-1)), e.shape)
        if e.op is Op.STACK:
            return np.stack(np.broadcast_arrays(*args))
        if e.op is Op.CALL:
            return self._call(e, args)
        raise NotNative(f"no C rule for op {e.op.name}")

    def _variable(self, e: Expr) -> np.ndarray:
        ref = e.attr
        if ref in self._decision:
            vec, start = self._decision[ref]
            size = math.prod(e.shape)
            return _array([f"{vec}[{start + i}]" for i in range(size)], e.shape)
        if ref.is_decision:
            raise NotNative(f"{ref.name} is not an argument here (a control in a final cost)")
        size = math.prod(e.shape)
        rows = self._rows.get(ref, 1) if ref.kind is STAGE else 1
        if ref.kind is STAGE and (self._clock is None or ref not in self._rows):
            raise NotNative(f"stage value {ref.name} outside a clocked stage expression")
        offset = 0
        for known, slot in self.params:
            if known == ref:
                break
            offset += slot
        else:
            self.params.append((ref, rows * size))
        if ref.kind is not STAGE:
            return _array([f"OP_c(p[{offset + i}])" for i in range(size)], e.shape)
        row = self._value(f"{offset} + pl_row(OP_val({self._clock}), {rows}) * {size}", "long", "i")
        return _array([f"OP_c(p[{row} + {i}])" for i in range(size)], e.shape)

    def _power(self, e: Expr, args: list[np.ndarray]) -> np.ndarray:
        exponent = e.args[1]
        if exponent.op is not Op.CONST or exponent.attr.numel() != 1:
            raise NotNative("a power whose exponent is not a constant number")
        p = float(exponent.attr)
        base = np.broadcast_to(args[0], e.shape) if args[0].shape != e.shape else args[0]
        if p == int(p) and 1 <= p <= 4:
            def product(name):
                out = name
                for _ in range(int(p) - 1):
                    out = self._value(f"OP_mul({out}, {name})")
                return out
            return _array([product(v) for v in base.reshape(-1)], e.shape)
        return self._map(lambda v: f"OP_powc({v}, {_literal(p)})", base)

    def _matmul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        vector_a, vector_b = a.ndim == 1, b.ndim == 1
        A = a[None, :] if vector_a else a
        Bm = b[:, None] if vector_b else b
        out = np.empty((A.shape[0], Bm.shape[1]), dtype=object)
        for i in range(A.shape[0]):
            for j in range(Bm.shape[1]):
                out[i, j] = self._sum([self._value(f"OP_mul({A[i, k]}, {Bm[k, j]})")
                                       for k in range(A.shape[1])])
        if vector_a:
            out = out[0]
        if vector_b:
            out = out[..., 0]
        return out

    def _call(self, e: Expr, args: list[np.ndarray]) -> np.ndarray:
        fn = e.attr
        if fn.is_block:
            raise NotNative(f"a call of block {fn.ref.name!r} (neural blocks run on the torch kernels)")
        name = fn.name
        if name in _UNARY:
            return self._map(lambda v: f"OP_{name}({v})", args[0])
        if name in _BINARY_CALLS:
            a, b = np.broadcast_arrays(*args)
            return self._map(lambda p, q: f"OP_{name}({p}, {q})", a, b)
        if name == "sum":
            return _scalar(self._sum(list(args[0].reshape(-1))))
        if name == "norm":
            squares = [self._value(f"OP_mul({v}, {v})") for v in args[0].reshape(-1)]
            return _scalar(self._value(f"OP_sqrt({self._sum(squares)})"))
        if name == "dot":
            a, b = args
            return _scalar(self._sum([self._value(f"OP_mul({p}, {q})") for p, q in zip(a, b)]))
        if name == "quad":
            v, M = args
            Mv = self._matmul(M, v)
            return _scalar(self._sum([self._value(f"OP_mul({p}, {q})") for p, q in zip(v, Mv)]))
        if name in ("min", "max"):
            select = "OP_min2" if name == "min" else "OP_max2"
            if len(args) == 1:
                items = list(args[0].reshape(-1))
                out = items[0]
                for item in items[1:]:
                    out = self._value(f"{select}({out}, {item})")
                return _scalar(out)
            a, b = np.broadcast_arrays(*args)
            return self._map(lambda p, q: f"{select}({p}, {q})", a, b)
        if name == "clip":
            v, lo, hi = np.broadcast_arrays(*args)
            low = self._map(lambda p, q: f"OP_max2({p}, {q})", v, lo)
            return self._map(lambda p, q: f"OP_min2({p}, {q})", low, hi)
        if name == "cat":
            return _array([v for a in args for v in a.reshape(-1)], e.shape)
        if name == "diag":
            (v,) = args
            zero = "OP_c(0.0)"
            return _array([v[i] if i == j else zero for i in range(len(v)) for j in range(len(v))], e.shape)
        if name == "transpose":
            return args[0].T.copy()
        raise NotNative(f"no C rule for the builtin {name}()")

    # ------------------------------------------------------------------ helpers
    def _sum(self, items: list[str]) -> str:
        if not items:
            return "OP_c(0.0)"
        out = items[0]
        for item in items[1:]:
            out = self._value(f"OP_add({out}, {item})")
        return out

    def _map(self, fmt: Callable[..., str], *arrays: np.ndarray) -> np.ndarray:
        shape = arrays[0].shape
        flat = [a.reshape(-1) for a in arrays]
        return _array([self._value(fmt(*items)) for items in zip(*flat)], shape)

    def _value(self, code: str, ctype: str = "NUM", prefix: str = "t") -> str:
        """A temporary holding `code`, emitted once per distinct code."""
        name = self._memo.get(code)
        if name is None:
            name = self._memo[code] = f"{prefix}{len(self._lines)}"
            self._lines.append(f"{ctype} {name} = {code};")
        return name


def instantiate(template: str, number: str, prefix: str) -> str:
    """The generic source `template` (over NUM and OP_*) for one number type."""
    return template.replace("NUM", number).replace("OP_", prefix)


def _literal(v: float) -> str:
    if math.isnan(v) or math.isinf(v):
        return "NAN" if math.isnan(v) else ("INFINITY" if v > 0 else "-INFINITY")
    return repr(float(v))


def _array(items: list, shape: tuple[int, ...]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out.reshape(shape)


def _scalar(name: str) -> np.ndarray:
    return _array([name], ())
