"""A second lowering of a checked plan, to cvxpy: the independent reference of `planlang check`.

The typed IR that `compiler.evaluate` lowers to torch is lowered here again, rule by rule (a
registry keyed by `Op`; a missing rule names the op), to one cvxpy problem vectorized over time:

    X = Variable((T+1, n)),  U = Variable((T, m))         row t of X is x_t, row t of U is u_t
    minimize    sum_{t<T} stage(x_t, u_t) + final(x_T)
    subject to  X[0] = x0
                x_{t+1} = phi(x_t, u_t)                           t = 0..T-1  (X[1:] vs X[:-1], U)
                g(x_t, u_t) <= 0  or  == 0                        constraints with a control, t = 0..T-1
                g(x_{t+1}) <= 0  or  == 0                         state-only constraints, x_1..x_T
                lo <= u_t <= hi,  lo <= x_{t+1} <= hi             boxes (`in [lo, hi]`), same stages

Values during lowering are either numpy float64 arrays (constants, params, inputs, learnables:
no time axis) or `Rows`: a cvxpy expression (R, k) whose row r is the value at one stage,
flattened in C order from its static value shape S (k = prod(S)); every `Rows` of one lowering
has the same R (T for stage terms, 1 for the final cost). Linear maps on the value axes (index,
broadcast, sum, matmul by a constant, diag, stack) never touch the time axis: each acts as a
right-multiplication by a constant (k, k') matrix, built by applying the numpy op to an identity
basis. A product of two decision-dependent values is taken only as a square (`v^2`, `v * v`,
`dot(v, v)`, `quad(v, M)` with M = L L' PSD), so a convex quadratic plan lowers to a DCP problem;
anything else raises `Unrepresentable` naming the op and where it is. phi is the dynamics
(`x' = e`), or one step of this module's own euler/rk4 for continuous dynamics (`dot(x) = e by ...`).

Stage values (the index `t` and rows `ref[t]` of time-indexed data) are constant `Rows`: row r
holds the value at the row's stage (t for stage terms, t+1 for terms placed at x_{t+1}). They
multiply decision-dependent values elementwise, and elementwise builtins apply to them row by row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import cvxpy as cp
import networkx as nx
import numpy as np
import torch

from compiler.context import PlanInfo
from compiler.ir import STAGE, STAGE_INDEX, Expr, Op, Shape, VarRef
from compiler.layout import Layout
from compiler.problem import Placement, box_placement, placement
from planlang.ast import Cmp, VarKind, When
from planlang.graph import NodeKind


class Unrepresentable(Exception):
    """The plan (or one of its expressions) has no convex cvxpy form here; says which and where."""


@dataclass(frozen=True)
class Rows:
    """A decision-dependent value: `expr` (R, k) holds one stage per row, flattened from `shape`."""

    expr: cp.Expression
    shape: Shape

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=int))


Value = np.ndarray | Rows
Env = Mapping[VarRef, Value]


def _where(expr: Expr) -> str:
    return f"line {expr.span.line}, column {expr.span.col}"


def _unrepresentable(expr: Expr, what: str) -> Unrepresentable:
    return Unrepresentable(f"{what} at {_where(expr)}: `{expr.as_text()}`")


# ------------------------------------------------------------------ value helpers

def _linear(v: Rows, fn: Callable[[np.ndarray], np.ndarray], shape: Shape) -> Rows:
    """Apply a linear map of the value axes (vectorized over a leading axis) to every row."""
    k = v.size
    basis = np.eye(k).reshape((k,) + v.shape)
    matrix = np.asarray(fn(basis), dtype=np.float64).reshape(k, -1)
    if matrix.shape == (k, k) and np.array_equal(matrix, np.eye(k)):
        return Rows(v.expr, shape)
    return Rows(v.expr @ matrix, shape)


def _broadcast(v: Value, shape: Shape) -> Value:
    """NumPy broadcasting of a value to `shape`."""
    if not isinstance(v, Rows):
        return np.broadcast_to(v, shape)
    if v.shape == shape:
        return v
    pad = (1,) * (len(shape) - len(v.shape))
    return _linear(v, lambda a: np.broadcast_to(a.reshape((a.shape[0],) + pad + v.shape), (a.shape[0],) + shape), shape)


def _tiled(c: np.ndarray, shape: Shape, rows: int) -> np.ndarray:
    """A constant broadcast to `shape`, flattened and repeated on `rows` rows: (rows, k)."""
    flat = np.broadcast_to(c, shape).reshape(1, -1)
    return np.repeat(flat, rows, axis=0)


def _rows_count(*values: Value) -> int:
    return next(v.expr.shape[0] for v in values if isinstance(v, Rows))


def _same(a: Expr, b: Expr) -> bool:
    """Structural equality of two typed expressions (constants compared by value)."""
    if a.op is not b.op or a.shape != b.shape or len(a.args) != len(b.args):
        return False
    if a.op is Op.CONST:
        if not torch.equal(a.attr, b.attr):
            return False
    elif a.attr != b.attr:
        return False
    return all(_same(x, y) for x, y in zip(a.args, b.args))


def _square(v: Rows) -> Rows:
    return Rows(cp.square(v.expr), v.shape)


def _sum_rows(v: Rows) -> Rows:
    """Sum over the value axes (a (R, 1) scalar per stage)."""
    return Rows(v.expr @ np.ones((v.size, 1)), ())


def psd_factor(M: np.ndarray, expr: Expr | None = None) -> np.ndarray:
    """L with L L' = (M + M')/2; raises `Unrepresentable` when M is not positive semidefinite."""
    S = 0.5 * (M + M.T)
    w, V = np.linalg.eigh(S)
    if w.min() < -1e-10 * max(1.0, float(np.abs(w).max())):
        where = f" in {_where(expr)}" if expr is not None else ""
        raise Unrepresentable(f"quad(v, M) with an indefinite M (eigenvalue {w.min():.3g}){where}")
    return V * np.sqrt(np.clip(w, 0.0, None))


# -------------------------------------------------------------------- op rules

def _const(expr: Expr, args, env: Env) -> Value:
    return expr.attr.detach().cpu().numpy().astype(np.float64)


def _var(expr: Expr, args, env: Env) -> Value:
    return env[expr.attr]


def _add(expr: Expr, args, env: Env, sign: float = 1.0) -> Value:
    a, b = args
    if not isinstance(a, Rows) and not isinstance(b, Rows):
        return a + sign * b
    rows = _rows_count(a, b)
    parts = [_broadcast(v, expr.shape).expr if isinstance(v, Rows) else _tiled(v, expr.shape, rows) for v in (a, b)]
    return Rows(parts[0] + sign * parts[1], expr.shape)


def _sub(expr: Expr, args, env: Env) -> Value:
    return _add(expr, args, env, sign=-1.0)


def _scale(v: Rows, c: np.ndarray, shape: Shape) -> Rows:
    v = _broadcast(v, shape)
    return Rows(cp.multiply(_tiled(c, shape, v.expr.shape[0]), v.expr), shape)


def _constant(v: Value) -> bool:
    """A stage value: constant rows (no decision variable in it)."""
    return isinstance(v, Rows) and v.expr.is_constant()


def _values(v: Rows) -> np.ndarray:
    """The numbers of constant rows: (R, *shape)."""
    return np.asarray(v.expr.value, dtype=np.float64).reshape((-1,) + v.shape)


def _constant_rows(values: np.ndarray, shape: Shape) -> Rows:
    return Rows(cp.Constant(values.reshape(values.shape[0], -1)), shape)


def _mul(expr: Expr, args, env: Env) -> Value:
    a, b = args
    if isinstance(a, Rows) and isinstance(b, Rows) and (_constant(a) or _constant(b)):
        return Rows(cp.multiply(_broadcast(a, expr.shape).expr, _broadcast(b, expr.shape).expr), expr.shape)
    if isinstance(a, Rows) and isinstance(b, Rows):
        if not _same(*expr.args):
            raise _unrepresentable(expr, "a product of two different decision-dependent values")
        return _square(_broadcast(a, expr.shape))
    if isinstance(a, Rows):
        return _scale(a, b, expr.shape)
    if isinstance(b, Rows):
        return _scale(b, a, expr.shape)
    return a * b


def _div(expr: Expr, args, env: Env) -> Value:
    a, b = args
    if _constant(b):
        inverse = _constant_rows(1.0 / np.broadcast_to(_values(b), (_values(b).shape[0],) + expr.shape), expr.shape)
        return _mul(expr, [a, inverse], env)
    if isinstance(b, Rows):
        raise _unrepresentable(expr, "a division by a decision-dependent value")
    if isinstance(a, Rows):
        return _scale(a, 1.0 / b, expr.shape)
    return a / b


def _pow(expr: Expr, args, env: Env) -> Value:
    base, exponent = args
    if (_constant(base) or not isinstance(base, Rows)) and (_constant(exponent) or not isinstance(exponent, Rows)):
        values = [_values(v) if isinstance(v, Rows) else v for v in (base, exponent)]
        if any(isinstance(v, Rows) for v in (base, exponent)):
            return _constant_rows(np.power(*_aligned(values, (base, exponent), expr.shape)), expr.shape)
    if isinstance(exponent, Rows):
        raise _unrepresentable(expr, "a decision-dependent exponent")
    if not isinstance(base, Rows):
        return np.power(base, exponent)
    p = float(exponent) if np.size(exponent) == 1 else None
    if p == 1.0:
        return _broadcast(base, expr.shape)
    if p == 2.0:
        return _square(_broadcast(base, expr.shape))
    raise _unrepresentable(expr, "a power other than 1 or 2 of a decision-dependent value")


def _neg(expr: Expr, args, env: Env) -> Value:
    (a,) = args
    return Rows(-a.expr, a.shape) if isinstance(a, Rows) else -a


def _matmul(expr: Expr, args, env: Env) -> Value:
    a, b = args
    if _constant(a) or _constant(b):
        raise _unrepresentable(expr, "a matrix product with a stage value (the reference takes time-varying "
                                     "data elementwise)")
    if isinstance(a, Rows) and isinstance(b, Rows):
        raise _unrepresentable(expr, "a matrix product of two decision-dependent values")
    if isinstance(a, Rows):                          # (rows, *Sa) @ B: matmul broadcasts the basis axis
        return _linear(a, lambda basis: np.matmul(basis, b), expr.shape)
    if isinstance(b, Rows):                          # A @ (rows, *Sb)
        return _linear(b, lambda basis: _left_matmul(a, basis), expr.shape)
    return np.matmul(a, b)


def _left_matmul(A: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """A @ v for each v = basis[i] (A: (k,) or (n, k); v: (k,) or (k, m))."""
    spec = {(1, 1): "k,bk->b", (2, 1): "nk,bk->bn", (1, 2): "k,bkm->bm", (2, 2): "nk,bkm->bnm"}
    return np.einsum(spec[(A.ndim, basis.ndim - 1)], A, basis)


def _index(expr: Expr, args, env: Env) -> Value:
    (a,) = args
    if isinstance(a, Rows):
        return _linear(a, lambda basis: basis[(slice(None),) + tuple(expr.attr)], expr.shape)
    return np.asarray(a[tuple(expr.attr)])


def _stack(expr: Expr, args, env: Env) -> Value:
    if not any(isinstance(a, Rows) for a in args):
        return np.stack([np.asarray(a) for a in args])
    rows = _rows_count(*args)
    item = expr.shape[1:]
    parts = [_broadcast(a, item).expr if isinstance(a, Rows) else _tiled(a, item, rows) for a in args]
    return Rows(cp.hstack(parts), expr.shape)


def _call(expr: Expr, args, env: Env) -> Value:
    rule = FUNCTION_RULES.get(expr.attr.name)
    if rule is None:
        raise Unrepresentable(f"no cvxpy rule for builtin '{expr.attr.name}' ({_where(expr)})")
    return rule(expr, args)


RULES: dict[Op, Callable[[Expr, list, Env], Value]] = {
    Op.CONST: _const,
    Op.VAR: _var,
    Op.ADD: _add,
    Op.SUB: _sub,
    Op.MUL: _mul,
    Op.DIV: _div,
    Op.POW: _pow,
    Op.MATMUL: _matmul,
    Op.NEG: _neg,
    Op.INDEX: _index,
    Op.STACK: _stack,
    Op.CALL: _call,
}


# ------------------------------------------------------------- builtin rules

def _aligned(values: list, args: tuple, shape: Shape) -> list[np.ndarray]:
    """Numbers (S) and rows (R, S) broadcast together to (R, *shape)."""
    rows = next(v.shape[0] for v, a in zip(values, args) if isinstance(a, Rows))
    return [np.broadcast_to(v if isinstance(a, Rows) else np.asarray(v)[None], (rows,) + shape)
            if isinstance(a, Rows) or np.ndim(v) <= len(shape) else v for v, a in zip(values, args)]


_ELEMENTWISE = {"sin", "cos", "tan", "exp", "log", "sqrt", "tanh", "sigmoid", "softplus", "abs", "relu", "clip",
                "atan2", "wrap", "mod"}


def _numeric(fn: Callable[..., np.ndarray]):
    """A builtin defined on numeric values only (nonlinear in a decision variable: unrepresentable);
    elementwise ones also apply row by row to stage values."""
    def rule(expr: Expr, args):
        if any(isinstance(a, Rows) and not _constant(a) for a in args):
            raise _unrepresentable(expr, f"{expr.attr.name}() of a decision-dependent value")
        if any(isinstance(a, Rows) for a in args):
            if expr.attr.name not in _ELEMENTWISE:
                raise _unrepresentable(expr, f"{expr.attr.name}() of a stage value")
            values = [_values(a) if isinstance(a, Rows) else a for a in args]
            return _constant_rows(np.asarray(fn(*_aligned(values, tuple(args), expr.shape)), dtype=np.float64),
                                  expr.shape)
        return np.asarray(fn(*args), dtype=np.float64)
    return rule


def _sum(expr: Expr, args):
    (v,) = args
    return _sum_rows(v) if isinstance(v, Rows) else np.asarray(np.sum(v))


def _dot(expr: Expr, args):
    a, b = args
    if isinstance(a, Rows) and isinstance(b, Rows):
        if not _same(*expr.args):
            raise _unrepresentable(expr, "dot() of two different decision-dependent values")
        return _sum_rows(_square(a))
    if isinstance(a, Rows) or isinstance(b, Rows):
        v, c = (a, b) if isinstance(a, Rows) else (b, a)
        return _linear(v, lambda basis: basis @ c, ())
    return np.asarray(np.dot(a, b))


def _quad(expr: Expr, args):
    v, M = args
    if isinstance(M, Rows):
        raise _unrepresentable(expr, "quad(v, M) with a decision-dependent M")
    if not isinstance(v, Rows):
        return np.asarray(v @ M @ v)
    L = psd_factor(M, expr)                                     # v' M v = |L' v|^2
    return _sum_rows(_square(_linear(v, lambda basis: basis @ L, v.shape)))


def _diag(expr: Expr, args):
    (v,) = args
    if not isinstance(v, Rows):
        return np.diag(v)
    eye = np.eye(v.shape[0])
    return _linear(v, lambda basis: basis[:, :, None] * eye, expr.shape)


def _cat(expr: Expr, args):
    if not any(isinstance(a, Rows) for a in args):
        return np.concatenate([np.atleast_1d(a) for a in args])
    rows = _rows_count(*args)
    parts = []
    for a in args:
        if isinstance(a, Rows):
            parts.append(a.expr)
        else:
            parts.append(_tiled(np.atleast_1d(a), (np.size(a),), rows))
    return Rows(cp.hstack(parts), expr.shape)


def _minmax(reduce, pairwise):
    def fn(*args):
        return reduce(args[0]) if len(args) == 1 else pairwise(*args)
    return fn


def _softplus(v):
    return np.logaddexp(0.0, v)


FUNCTION_RULES: dict[str, Callable[[Expr, list], Value]] = {
    "sin": _numeric(np.sin), "cos": _numeric(np.cos), "tan": _numeric(np.tan), "exp": _numeric(np.exp),
    "log": _numeric(np.log), "sqrt": _numeric(np.sqrt), "tanh": _numeric(np.tanh),
    "sigmoid": _numeric(lambda v: 1.0 / (1.0 + np.exp(-v))), "softplus": _numeric(_softplus),
    "abs": _numeric(np.abs), "relu": _numeric(lambda v: np.maximum(v, 0.0)),
    "norm": _numeric(lambda v: np.sqrt(np.sum(np.square(v)))),
    "min": _numeric(_minmax(np.min, np.minimum)), "max": _numeric(_minmax(np.max, np.maximum)),
    "clip": _numeric(lambda v, lo, hi: np.minimum(np.maximum(v, lo), hi)),
    "atan2": _numeric(np.arctan2), "wrap": _numeric(lambda v: np.remainder(v + np.pi, 2 * np.pi) - np.pi),
    "mod": _numeric(np.remainder), "transpose": _numeric(lambda v: np.swapaxes(v, -1, -2)),
    "sum": _sum, "dot": _dot, "quad": _quad, "diag": _diag, "cat": _cat,
}


def lower(expr: Expr, env: Env) -> Value:
    """Lower a typed expression with variables bound by `env` (numeric arrays or `Rows`)."""
    rule = RULES.get(expr.op)
    if rule is None:
        raise Unrepresentable(f"no cvxpy rule for op {expr.op.name} ({_where(expr)})")
    args = [lower(a, env) for a in expr.args]
    return rule(expr, args, env)


# ------------------------------------------------------------------ dynamics

def _axpy(x: Value, a: float, k: Value, shape: Shape) -> Value:
    """x + a k (broadcast to `shape`)."""
    if not isinstance(x, Rows) and not isinstance(k, Rows):
        return np.broadcast_to(x + a * k, shape)
    rows = _rows_count(x, k)
    parts = [_broadcast(v, shape).expr if isinstance(v, Rows) else _tiled(v, shape, rows) for v in (x, k)]
    return Rows(parts[0] + a * parts[1], shape)


def _euler(f, x: dict, dt: float, shapes: dict) -> dict:
    """x' = x + dt f(x)."""
    k1 = f(x)
    return {r: _axpy(x[r], dt, k1[r], shapes[r]) for r in x}


def _rk4(f, x: dict, dt: float, shapes: dict) -> dict:
    """x' = x + dt/6 (k1 + 2 k2 + 2 k3 + k4), the classical Runge-Kutta step."""
    k1 = f(x)
    k2 = f({r: _axpy(x[r], dt / 2, k1[r], shapes[r]) for r in x})
    k3 = f({r: _axpy(x[r], dt / 2, k2[r], shapes[r]) for r in x})
    k4 = f({r: _axpy(x[r], dt, k3[r], shapes[r]) for r in x})
    out = x
    for weight, k in ((dt / 6, k1), (dt / 3, k2), (dt / 3, k3), (dt / 6, k4)):
        out = {r: _axpy(out[r], weight, k[r], shapes[r]) for r in x}
    return out


INTEGRATORS: dict[str, Callable] = {"euler": _euler, "rk4": _rk4}


def transition(graph: nx.DiGraph, layout: Layout, env: Env) -> dict:
    """x_{t+1} of every state (VarRef -> value of its shape) from `env` binding x_t, u_t and the data.

    Discrete dynamics (`x' = e`) lower e directly; continuous ones (`dot(x) = e by rk4(dt)`)
    integrate e over one step with this module's own integrators.
    """
    by_state = {d["defines"]: d for _, d in graph.nodes(data=True) if d["kind"] is NodeKind.DYNAMICS}
    shapes = {var.ref: var.shape for var in layout.states}
    exprs = {var.ref: by_state[var.ref.name]["ir"] for var in layout.states}
    method = by_state[layout.states[0].ref.name].get("integrator") if layout.states else None

    def derivative(states: dict) -> dict:
        scope = {**env, **states}
        return {r: _broadcast(lower(e, scope), shapes[r]) for r, e in exprs.items()}

    if method is None:
        nxt = derivative({})
    else:
        name, dt = method
        if name not in INTEGRATORS:
            raise Unrepresentable(f"no cvxpy rule for the integrator '{name}'")
        nxt = INTEGRATORS[name](derivative, {r: env[r] for r in exprs}, dt, shapes)
    return nxt


# ------------------------------------------------------------------ the problem

@dataclass
class Reference:
    """The reference solution: x (T+1, n), u (T, m), cost (the optimal objective) and the status."""

    x: np.ndarray
    u: np.ndarray
    cost: float
    status: str
    residual: float                  # largest constraint violation at (x, u)

    @property
    def ok(self) -> bool:
        return self.status == cp.OPTIMAL


class ReferenceProblem:
    """The cvxpy problem of a plan at fixed numeric values of everything but states and controls."""

    def __init__(self, graph: nx.DiGraph, values: Mapping[str, np.ndarray]):
        info: PlanInfo = graph.graph["plan_info"]
        self.layout = layout = Layout.of(info)
        T, n, m = info.horizon, layout.n, layout.m
        self.X = cp.Variable((T + 1, n), name="x")
        self.U = cp.Variable((T, m), name="u") if m else None
        numeric: dict[VarRef, np.ndarray] = {}
        x0 = []
        for name, var in info.variables.items():
            if var.ref.is_decision:
                if var.ref.kind is VarKind.STATE:
                    x0.append(np.broadcast_to(np.asarray(values[name], dtype=np.float64), var.shape).reshape(-1))
                continue
            numeric[var.ref] = np.broadcast_to(np.asarray(values[name], dtype=np.float64), var.shape).copy()

        now = self._bind(numeric, self.X[:-1], self.U, self._stage_rows(info, numeric, 0))      # x_t, u_t
        after = self._bind(numeric, self.X[1:], None, self._stage_rows(info, numeric, 1))      # x_{t+1}
        final = self._bind(numeric, self.X[-1:], None, {})           # x_T           (1 row)
        nodes = sorted(graph.nodes(data=True), key=lambda item: item[0])

        objective = 0.0
        for _, data in nodes:
            if data["kind"] is NodeKind.COST:
                stage = data["when"] is When.STAGE
                value = lower(data["ir"], now if stage else final)
                objective = objective + (cp.sum(value.expr) if isinstance(value, Rows)
                                         else float(value) * (T if stage else 1))
        constraints = [self.X[0] == np.concatenate(x0)]
        offsets = layout.offsets()
        for var, value in zip(layout.states, transition(graph, layout, now).values()):
            rhs = value.expr if isinstance(value, Rows) else _tiled(value, var.shape, T)
            constraints.append(self.X[1:, offsets[var.ref]] == rhs)
        for _, data in nodes:
            if data["kind"] is NodeKind.CONSTRAINT:
                value = lower(data["ir"], now if placement(data["ir"]) is Placement.STAGE else after)
                if not isinstance(value, Rows):
                    raise Unrepresentable(f"constraint at {_where(data['ir'])} does not involve a state or control")
                constraints.append(value.expr == 0 if data["sense"] is Cmp.EQ else value.expr <= 0)
        for var in layout.states + layout.controls:
            if var.lower is None:
                continue
            env = now if box_placement(var) is Placement.STAGE else after
            value = env[var.ref]
            for bound, sign in ((var.lower, -1.0), (var.upper, 1.0)):
                limit = _tiled(lower(bound, env), var.shape, T)
                constraints.append(sign * (value.expr - limit) <= 0)
        self.problem = cp.Problem(cp.Minimize(objective), constraints)
        if not self.problem.is_dcp():
            raise Unrepresentable("the cost is not convex in a form cvxpy can verify (not DCP)")

    @staticmethod
    def _stage_rows(info: PlanInfo, numeric: dict[VarRef, np.ndarray], shift: int) -> dict[VarRef, Rows]:
        """Stage values as constant rows t + shift, t = 0..T-1: the index t and the rows of every
        time-indexed variable long enough (T + shift rows)."""
        T = info.horizon
        out = {VarRef(STAGE, STAGE_INDEX): _constant_rows(np.arange(shift, T + shift, dtype=np.float64), ())}
        for var in info.variables.values():
            if var.ref in numeric and var.shape and var.shape[0] >= T + shift:
                out[VarRef(STAGE, var.ref.name)] = _constant_rows(numeric[var.ref][shift:T + shift], var.shape[1:])
        return out

    def _bind(self, numeric: dict[VarRef, np.ndarray], X: cp.Expression, U: cp.Expression | None,
              stage: dict[VarRef, Rows]) -> dict:
        env: dict[VarRef, Value] = {**numeric, **stage}
        n = self.layout.n
        for ref, s in self.layout.offsets().items():
            shape = next(v.shape for v in self.layout.states + self.layout.controls if v.ref == ref)
            if ref.kind is VarKind.STATE:
                env[ref] = Rows(X[:, s], shape)
            elif U is not None:
                env[ref] = Rows(U[:, s.start - n:s.stop - n], shape)
        return env

    def solve(self, tol: float = 1e-10, solver: str = "CLARABEL") -> Reference:
        settings = _tolerances(solver, tol)
        try:
            self.problem.solve(solver=solver, **settings)
        except cp.SolverError as err:
            return Reference(np.full(self.X.shape, np.nan), np.full(self._u_shape, np.nan), float("nan"),
                             f"solver error: {err}", float("inf"))
        if self.X.value is None:
            return Reference(np.full(self.X.shape, np.nan), np.full(self._u_shape, np.nan), float("nan"),
                             str(self.problem.status), float("inf"))
        x, u = self.X.value.copy(), self._u_value()
        return Reference(x, u, float(self.problem.value), str(self.problem.status), self.violation(x, u))

    @property
    def _u_shape(self) -> tuple[int, int]:
        return (self.X.shape[0] - 1, self.layout.m)

    def _u_value(self) -> np.ndarray:
        return np.zeros(self._u_shape) if self.U is None else self.U.value.copy()

    def _assign(self, x: np.ndarray, u: np.ndarray) -> None:
        self.X.value = np.asarray(x, dtype=np.float64)
        if self.U is not None:
            self.U.value = np.asarray(u, dtype=np.float64)

    def objective(self, x: np.ndarray, u: np.ndarray) -> float:
        """The plan's cost at a given trajectory (x (T+1, n), u (T, m))."""
        self._assign(x, u)
        return float(self.problem.objective.value)

    def violation(self, x: np.ndarray, u: np.ndarray) -> float:
        """The largest constraint violation (dynamics, x_0, constraints, boxes) at a trajectory."""
        self._assign(x, u)
        return max((float(np.max(c.violation())) for c in self.problem.constraints), default=0.0)


def _tolerances(solver: str, tol: float) -> dict:
    if solver == cp.CLARABEL:
        return dict(tol_gap_abs=tol, tol_gap_rel=tol, tol_feas=tol, tol_ktratio=min(1e-6, tol * 1e2),
                    max_iter=400)
    if solver == cp.OSQP:
        return dict(eps_abs=tol, eps_rel=tol, max_iter=200000, polish=True)
    if solver == cp.SCS:
        return dict(eps_abs=tol, eps_rel=tol, max_iters=200000)
    return {}


def solve(graph: nx.DiGraph, values: Mapping[str, np.ndarray], tol: float = 1e-10,
          solver: str = "CLARABEL") -> tuple[ReferenceProblem, Reference]:
    """Build and solve the reference problem at `values` (every non-control variable, by name)."""
    problem = ReferenceProblem(graph, values)
    return problem, problem.solve(tol=tol, solver=solver)
