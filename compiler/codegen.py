"""Numeric code generation: a typed expression -> a straight-line Python function on tensors.

Rollouts evaluate dynamics and costs once per stage, per line-search trial, per iteration, so
walking the IR each time would dominate. Shapes are static, so broadcasting alignments, matmul
cases and indices are decided here once; the generated function only calls torch. Every line
carries a comment with the source span of the node it computes (`as_source()` shows the code).

Common sub-expressions are computed once, and constant integer powers become products.
Values are batch-first tensors (B, *shape); B may be 1 and broadcasts.
"""
from __future__ import annotations

from typing import Callable

import torch

from compiler.ir import Expr, Op, VarRef

_BINARY = {Op.ADD: "{} + {}", Op.SUB: "{} - {}", Op.MUL: "{} * {}", Op.DIV: "{} / {}",
           Op.POW: "torch.pow({}, {})"}


class NumericFunction:
    """`fn(values: dict[VarRef, Tensor]) -> Tensor` compiled from one typed expression.

    `stacked` makes it a function of stacked decision vectors instead (see `StackedFunction`).
    """

    def __init__(self, expr: Expr | tuple[Expr, ...], name: str = "expr",
                 stacked: tuple[dict[VarRef, str], tuple[int, ...]] | None = None):
        self.expr = expr
        exprs = expr if isinstance(expr, tuple) else (expr,)
        found: set = set().union(*(e.variables() for e in exprs))
        found |= {e.attr.ref for x in exprs for e in x.walk() if e.op is Op.CALL and e.attr.is_block}
        decision = {} if stacked is None else stacked[0]
        self.variables: list = sorted(found - set(decision), key=str)      # VarRefs and BlockRefs
        self._decision = {ref: code for ref, code in decision.items() if ref in found}
        self._consts: list[torch.Tensor] = []
        self._calls: list[Callable] = []
        self._lines: list[str] = []
        self._memo: dict[tuple, str] = {}
        results = [self._emit(e) for e in exprs]
        args = [f"v{i}" for i in range(len(self.variables))]
        if stacked is None:
            result = results[0]
        else:
            args = ["x", "u"] + args
            rows = [f"{r}.reshape({r}.shape[0], -1).expand(x.shape[0], {size})"
                    for r, size in zip(results, stacked[1])]
            result = f"torch.cat(({', '.join(rows)},), 1)"
        body = "\n".join(self._lines + [f"    return {result}"])
        self.source = f"def {name}({', '.join(args + ['K', 'CALL'])}):\n{body}\n"
        scope = {"torch": torch}
        exec(compile(self.source, f"<planlang:{name}>", "exec"), scope)
        self._fn = scope[name]
        self._cache: dict[tuple, tuple] = {}

    def __call__(self, values: dict[VarRef, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        return self._fn(*[values[v] for v in self.variables], self.constants(like), self._calls)

    def constants(self, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The folded constants in `like`'s dtype and device (cached), batch-first (1, ...)."""
        key = (like.dtype, like.device)
        consts = self._cache.get(key)
        if consts is None:
            consts = self._cache[key] = tuple(c.to(dtype=like.dtype, device=like.device).unsqueeze(0)
                                              for c in self._consts)
        return consts

    def as_source(self) -> str:
        return self.source

    # ------------------------------------------------------------------ emission
    def _emit(self, e: Expr) -> str:
        if e.op is Op.VAR:
            if e.attr in self._decision:
                key = (Op.VAR, e.attr)
                if key not in self._memo:
                    self._memo[key] = self._line(self._decision[e.attr], e)
                return self._memo[key]
            return f"v{self.variables.index(e.attr)}"
        if e.op is Op.CONST:
            key = (Op.CONST, e.shape, tuple(e.attr.flatten().tolist()))
            if key not in self._memo:
                self._consts.append(e.attr)
                self._memo[key] = f"K[{len(self._consts) - 1}]"
            return self._memo[key]
        args = [self._emit(a) for a in e.args]
        key = (e.op, e.shape, _attr_key(e), tuple(args))
        if key not in self._memo:
            self._memo[key] = self._compute(e, args)
        return self._memo[key]

    def _compute(self, e: Expr, args: list[str]) -> str:
        exponent = e.args[1] if e.op is Op.POW else None
        if exponent is not None and exponent.op is Op.CONST and exponent.attr.numel() == 1:
            p = float(exponent.attr)
            base = self._pad(args[0], e.args[0].shape, len(e.shape))
            if p == int(p) and 1 <= p <= 4:
                return self._line(" * ".join([base] * int(p)), e)
            return self._line(f"{base} ** {p!r}", e)
        if e.op in _BINARY:
            a, b = (self._pad(x, arg.shape, len(e.shape)) for x, arg in zip(args, e.args))
            return self._line(_BINARY[e.op].format(a, b), e)
        if e.op is Op.NEG:
            return self._line(f"-{args[0]}", e)
        if e.op is Op.MATMUL:
            return self._line(_matmul(args, e.args[0].shape, e.args[1].shape), e)
        if e.op is Op.INDEX:
            parts = [f"{s.start}:{s.stop}" if isinstance(s, slice) else str(s) for s in e.attr]
            return self._line(f"{args[0]}[:, {', '.join(parts)}]", e)
        if e.op is Op.STACK:
            return self._line(f"torch.stack(torch.broadcast_tensors({', '.join(args)}), dim=1)", e)
        if e.op is Op.CALL and e.attr.is_block:
            self._calls.append(e.attr.apply)
            module = f"v{self.variables.index(e.attr.ref)}"
            return self._line(f"CALL[{len(self._calls) - 1}]({', '.join([module] + args)})", e)
        if e.op is Op.CALL and e.attr.name in _SELECTS and len(args) == len(_SELECTS[e.attr.name]) + 1:
            return self._selects(e, args)
        if e.op is Op.CALL:
            self._calls.append(e.attr.evaluate)
            return self._line(f"CALL[{len(self._calls) - 1}]({', '.join(args)})", e)
        raise NotImplementedError(f"no code generation rule for op {e.op.name}")

    def _selects(self, e: Expr, args: list[str]) -> str:
        """Elementwise min/max/clip inline, as compiler.functions evaluates them on tensors:
        max(a, b) = where(a >= b, a, b), min(a, b) = where(a <= b, a, b), clip = min(max(v, lo), hi)."""
        a, *bounds = (self._pad(x, arg.shape, len(e.shape)) for x, arg in zip(args, e.args))
        for cmp, b in zip(_SELECTS[e.attr.name], bounds):
            a = self._line(f"torch.where({a} {cmp} {b}, {a}, {b})", e)
        return a

    def _line(self, code: str, e: Expr) -> str:
        name = f"t{len(self._lines)}"
        self._lines.append(f"    {name} = {code}  # {e.span}")
        return name

    @staticmethod
    def _pad(name: str, shape: tuple, rank: int) -> str:
        missing = rank - len(shape)
        if missing <= 0:
            return name
        return f"{name}.reshape({name}.shape[:1] + {(1,) * missing + tuple(shape)})"


# builtins generated inline on tensors: the comparisons of their successive selections
_SELECTS = {"max": (">=",), "min": ("<=",), "clip": (">=", "<=")}


def _attr_key(e: Expr):
    """What besides op, shape and arguments identifies a node's value."""
    if e.op is Op.CALL:
        return e.attr.name
    if e.op is Op.INDEX:
        return tuple((s.start, s.stop) if isinstance(s, slice) else s for s in e.attr)
    return None


def _matmul(args: list[str], a: tuple, b: tuple) -> str:
    x, y = args
    if len(a) == 1 and len(b) == 1:
        return f"({x} * {y}).sum(-1)"
    if len(a) == 2 and len(b) == 1:
        return f"torch.matmul({x}, {y}.unsqueeze(-1)).squeeze(-1)"
    if len(a) == 1 and len(b) == 2:
        return f"torch.matmul({x}.unsqueeze(-2), {y}).squeeze(-2)"
    return f"torch.matmul({x}, {y})"


class StackedFunction:
    """`fn(x (B, n), u (B, m), env) -> (B, sum(sizes))`: several expressions of the states and
    controls generated as ONE straight-line function (common sub-expressions shared across them)
    that slices the stacked decision vectors itself and returns the results side by side, each
    flattened and broadcast to (B, size). Hot loops (rollouts) call it without building a dict
    of named values per call.

    slices: VarRef -> ("x" | "u", slice, scalar) locating every decision variable.
    """

    def __init__(self, exprs: tuple[Expr, ...], sizes: tuple[int, ...],
                 slices: dict[VarRef, tuple[str, slice, bool]], name: str = "stacked"):
        decision = {ref: f"{vec}[:, {s.start}]" if scalar else f"{vec}[:, {s.start}:{s.stop}]"
                    for ref, (vec, s, scalar) in slices.items()}
        self._numeric = NumericFunction(tuple(exprs), name, stacked=(decision, tuple(sizes)))
        self.variables = self._numeric.variables
        self.source = self._numeric.source

    def bind(self, env: dict[VarRef, torch.Tensor], like: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """(x, u) -> (B, sum(sizes)) with the non-decision values taken from `env` once."""
        fn, calls = self._numeric._fn, self._numeric._calls
        bound = [env[v] for v in self.variables] + [self._numeric.constants(like), calls]
        return lambda x, u: fn(x, u, *bound)
