"""Random well-formed plans for the property tests of the shapes pass and the classification.

`random_expressions` (a session fixture) draws, inside a hypothesis test (`st.data()`), a plan
that declares states, controls, params, inputs and consts of random shapes, and one random
expression over them of a random target shape, well-formed by construction (NumPy broadcasting,
`@` with matching inner sizes, indices in range, ...). The expression is the left side of a
`constraint` line, so the real front end and passes type it. Each drawn expression comes with an
independent reference evaluator written directly in torch on one (unbatched) sample.

Modes: "poly" uses polynomial constructs on decision variables (nonlinear builtins only of
decision-free arguments); "smooth" adds smooth builtins of anything (on safe domains); "any"
adds the non-smooth ones (abs, relu, min, max, clip, norm).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch
from hypothesis import strategies as st

import planlang
from compiler import quadform as qf
from compiler.ir import Expr, VarRef
from compiler.pipeline import run_passes
from planlang.ast import VarKind
from planlang.graph import NodeKind

Shape = tuple[int, ...]
Ref = Callable[[dict], torch.Tensor]
NUMBERS = ("0.5", "2", "3", "1.5", "0.25")
_SMOOTH = {"sin": torch.sin, "cos": torch.cos, "tan": torch.tan, "exp": torch.exp, "tanh": torch.tanh,
           "sigmoid": torch.sigmoid, "softplus": torch.nn.functional.softplus}
_F64 = torch.float64


@dataclass
class Node:
    text: str
    shape: Shape
    ref: Ref                      # env (name -> unbatched float64 tensor) -> value
    decision: bool                # involves a state or control


@dataclass
class Decl:
    kind: VarKind | None          # None: a const
    name: str
    shape: Shape
    value: torch.Tensor | None = None     # consts only


@dataclass
class Drawn:
    text: str                     # the whole plan
    expr: Node
    decls: list[Decl]
    ir: Expr = None               # the typed expression (after classify)
    graph: object = None
    info: object = None

    def refs(self) -> dict[str, VarRef]:
        return {d.name: VarRef(d.kind, d.name) for d in self.decls if d.kind is not None}


def _shape_text(shape: Shape) -> str:
    return "" if not shape else "[" + ", ".join(map(str, shape)) + "]"


def _literal(shape: Shape, values: list[str]) -> str:
    if not shape:
        return values.pop(0)
    return "[" + ", ".join(_literal(shape[1:], values) for _ in range(shape[0])) + "]"


def _partners(shape: Shape) -> list[Shape]:
    """Shapes that broadcast into `shape` (strictly smaller or with ones)."""
    out = {()}
    for k in range(1, len(shape) + 1):
        suffix = shape[len(shape) - k:]
        out.add(suffix)
        out.add(tuple(1 for _ in suffix))
        if len(suffix) == 2:
            out.add((1, suffix[1]))
            out.add((suffix[0], 1))
    return sorted(out)


@dataclass
class _Gen:
    draw: Callable
    decls: list[Decl]
    mode: str
    max_depth: int
    names: dict = field(default_factory=dict)

    def __post_init__(self):
        for d in self.decls:
            self.names.setdefault(d.shape, []).append(d)

    # --------------------------------------------------------------- leaves
    def leaf(self, shape: Shape, decision_ok: bool) -> Node:
        options = [d for d in self.names.get(shape, [])
                   if decision_ok or d.kind not in (VarKind.STATE, VarKind.CONTROL)]
        decisions = [d for d in options if d.kind in (VarKind.STATE, VarKind.CONTROL)]
        options += decisions * 3                  # favour states and controls: they make the degree
        kinds = ["name"] * (6 if options else 0) + ["literal", "literal"]
        if shape == ():
            kinds.append("pi")
        if len(shape) in (1, 2):
            kinds.append("filled")
        if len(shape) == 2 and shape[0] == shape[1]:
            kinds.append("eye")
        kind = self.draw(st.sampled_from(kinds))
        if kind == "name":
            d = self.draw(st.sampled_from(options))
            if d.kind is None:
                value = d.value
                return Node(d.name, shape, lambda env: value, False)
            return Node(d.name, shape, lambda env, n=d.name: env[n],
                        d.kind in (VarKind.STATE, VarKind.CONTROL))
        if kind == "pi":
            return Node("pi", (), lambda env: torch.tensor(torch.pi, dtype=_F64), False)
        if kind == "eye":
            k = shape[0]
            return Node(f"eye({k})", shape, lambda env: torch.eye(k, dtype=_F64), False)
        if kind == "filled":
            fill = self.draw(st.sampled_from(["ones", "zeros"]))
            value = (torch.ones if fill == "ones" else torch.zeros)(shape, dtype=_F64)
            return Node(f"{fill}({', '.join(map(str, shape))})", shape, lambda env: value, False)
        count = 1
        for s in shape:
            count *= s
        values = self.draw(st.lists(st.sampled_from(NUMBERS), min_size=count, max_size=count))
        text = _literal(shape, list(values))
        value = torch.tensor([float(v) for v in values], dtype=_F64).reshape(shape)
        return Node(text, shape, lambda env: value, False)

    # ----------------------------------------------------------- compounds
    def expr(self, shape: Shape, depth: int = 0, decision_ok: bool = True) -> Node:
        if depth >= self.max_depth or (depth > 0 and self.draw(st.sampled_from([False, False, True]))):
            return self.leaf(shape, decision_ok)
        kinds = ["arith", "arith", "matmul", "index", "call", "neg", "div", "pow"]
        if shape:
            kinds += ["stack"]
        kind = self.draw(st.sampled_from(kinds))
        return getattr(self, "_" + kind)(shape, depth + 1, decision_ok)

    def _neg(self, shape, depth, ok):
        a = self.expr(shape, depth, ok)
        return Node(f"-({a.text})", shape, lambda env: -a.ref(env), a.decision)

    def _pair(self, shape):
        pairs = [(shape, shape)] + [(shape, p) for p in _partners(shape)] + [(p, shape) for p in _partners(shape)]
        if len(shape) == 2:
            r, c = shape
            pairs += [((r, 1), (1, c)), ((r, 1), (c,))]
        return self.draw(st.sampled_from(pairs))

    def _arith(self, shape, depth, ok):
        op = self.draw(st.sampled_from("+-*"))
        sa, sb = self._pair(shape)
        a, b = self.expr(sa, depth, ok), self.expr(sb, depth, ok)
        fn = {"+": torch.add, "-": torch.sub, "*": torch.mul}[op]
        return Node(f"({a.text}) {op} ({b.text})", shape, lambda env: fn(a.ref(env), b.ref(env)),
                    a.decision or b.decision)

    def _positive(self, shape, depth, ok) -> Node:
        """(1 + e^2): a denominator or a log/sqrt/fractional-power argument that is never near 0."""
        e = self.expr(shape, depth, ok)
        return Node(f"(1 + ({e.text})^2)", shape, lambda env: 1 + e.ref(env) ** 2, e.decision)

    def _div(self, shape, depth, ok):
        decision_names = ok and self.mode != "poly"       # division by a decision variable: not polynomial
        names = [d for d in self.decls if d.kind is not None and d.shape in [shape] + _partners(shape)
                 and (decision_names or d.kind not in (VarKind.STATE, VarKind.CONTROL))]
        kind = self.draw(st.sampled_from(["number", "positive"] + (["name"] if names else [])))
        if kind == "number":
            a = self.expr(shape, depth, ok)
            text = self.draw(st.sampled_from(NUMBERS))
            b = Node(text, (), lambda env: torch.tensor(float(text), dtype=_F64), False)
        elif kind == "name":
            d = self.draw(st.sampled_from(names))
            a = self.expr(shape, depth, ok)
            b = Node(d.name, d.shape, lambda env, n=d.name: env[n], d.kind in (VarKind.STATE, VarKind.CONTROL))
        else:
            sa, sb = self._pair(shape)
            a, b = self.expr(sa, depth, ok), self._positive(sb, depth, decision_names)
        return Node(f"({a.text}) / ({b.text})", shape, lambda env: a.ref(env) / b.ref(env),
                    a.decision or b.decision)

    def _pow(self, shape, depth, ok):
        if self.mode == "poly":
            k = self.draw(st.sampled_from(["0", "1", "2", "3"]))
            a = self.expr(shape, depth, ok)
        else:
            k = self.draw(st.sampled_from(["0", "1", "2", "3", "4", "9", "-1", "0.5", "1.5", "x"]))
            if k == "x":                  # a decision variable in the exponent: 2 ^ e
                e = self.expr(shape, depth, ok)
                return Node(f"2 ^ ({e.text})", shape, lambda env: torch.pow(torch.tensor(2.0, dtype=_F64), e.ref(env)),
                            e.decision)
            a = self._positive(shape, depth, ok) if k in ("-1", "0.5", "1.5") else self.expr(shape, depth, ok)
        p = float(k)
        return Node(f"({a.text}) ^ {k}" if p >= 0 else f"({a.text}) ^ ({k})", shape,
                    lambda env: torch.pow(a.ref(env), torch.tensor(p, dtype=_F64)), a.decision)

    def _matmul(self, shape, depth, ok):
        k = self.draw(st.integers(1, 3))
        if len(shape) == 0:
            sa, sb = (k,), (k,)
        elif len(shape) == 1:
            sa, sb = self.draw(st.sampled_from([((shape[0], k), (k,)), ((k,), (k, shape[0]))]))
        else:
            sa, sb = (shape[0], k), (k, shape[1])
        a, b = self.expr(sa, depth, ok), self.expr(sb, depth, ok)
        return Node(f"({a.text}) @ ({b.text})", shape, lambda env: torch.matmul(a.ref(env), b.ref(env)),
                    a.decision or b.decision)

    def _index(self, shape, depth, ok):
        """A point index (dropping an axis), M[i, j], or slices; bases have rank <= 2."""
        if not shape and self.draw(st.booleans()):              # M[i, j] of a matrix
            r, c = self.draw(st.integers(1, 3)), self.draw(st.integers(1, 3))
            i, j = self.draw(st.integers(-r, r - 1)), self.draw(st.integers(0, c - 1))
            base = self.expr((r, c), depth, ok)
            return Node(f"({base.text})[{i}, {j}]", (), lambda env: base.ref(env)[i, j], base.decision)
        if len(shape) <= 1 and (not shape or self.draw(st.booleans())):     # v[i] or M[i]
            size = self.draw(st.integers(1, 3))
            i = self.draw(st.integers(-size, size - 1))
            base = self.expr((size,) + shape, depth, ok)
            return Node(f"({base.text})[{i}]", shape, lambda env: base.ref(env)[i], base.decision)
        slices, texts, base_shape = [], [], []
        for n in shape:                                         # a slice on every axis
            extra = self.draw(st.integers(0, 2))
            start = self.draw(st.integers(0, extra))
            stop, size = start + n, n + extra
            forms = [f"{start}:{stop}"] + ([f":{stop}"] if start == 0 else []) + ([f"{start}:"] if stop == size else [])
            forms += [":"] if start == 0 and stop == size else []
            texts.append(self.draw(st.sampled_from(forms)))
            slices.append(slice(start, stop))
            base_shape.append(size)
        base = self.expr(tuple(base_shape), depth, ok)
        index = tuple(slices)
        return Node(f"({base.text})[{', '.join(texts)}]", shape, lambda env: base.ref(env)[index], base.decision)

    def _stack(self, shape, depth, ok):
        items = [self.expr(shape[1:], depth, ok) for _ in range(shape[0])]
        return Node("[" + ", ".join(i.text for i in items) + "]", shape,
                    lambda env: torch.stack([i.ref(env) for i in items]), any(i.decision for i in items))

    def _call(self, shape, depth, ok):
        poly = self.mode == "poly"
        kinds = []
        if shape == ():
            kinds += ["sum", "dot", "quad"] + (["norm", "min1", "max1"] if self.mode == "any" else [])
        if len(shape) == 1:
            kinds += ["cat"]
        if len(shape) == 2 and shape[0] == shape[1]:
            kinds += ["diag"]
        kinds += ["elementwise", "sqrtlog"]
        if self.mode == "any":
            kinds += ["nonsmooth", "min2", "max2", "clip"]
        kind = self.draw(st.sampled_from(kinds))
        inner_ok = ok and not poly                # nonlinear builtins of decision variables
        if kind == "elementwise":
            name = self.draw(st.sampled_from(sorted(_SMOOTH)))
            a = self.expr(shape, depth, inner_ok)
            fn = _SMOOTH[name]
            return Node(f"{name}({a.text})", shape, lambda env: fn(a.ref(env)), a.decision)
        if kind == "sqrtlog":
            name = self.draw(st.sampled_from(["sqrt", "log"]))
            a = self._positive(shape, depth, inner_ok)
            fn = torch.sqrt if name == "sqrt" else torch.log
            return Node(f"{name}{a.text}", shape, lambda env: fn(a.ref(env)), a.decision)
        if kind == "nonsmooth":
            name = self.draw(st.sampled_from(["abs", "relu"]))
            a = self.expr(shape, depth, inner_ok)
            fn = torch.abs if name == "abs" else torch.relu
            return Node(f"{name}({a.text})", shape, lambda env: fn(a.ref(env)), a.decision)
        if kind == "sum":
            inner = self.draw(st.sampled_from([(), (2,), (3,), (2, 3), (1, 2)]))
            a = self.expr(inner, depth, ok)
            return Node(f"sum({a.text})", (), lambda env: a.ref(env).sum(), a.decision)
        if kind == "norm":
            inner = self.draw(st.sampled_from([(2,), (3,), (2, 2)]))
            a = self.expr(inner, depth, inner_ok)
            return Node(f"norm({a.text})", (), lambda env: torch.linalg.vector_norm(a.ref(env)), a.decision)
        if kind in ("min1", "max1"):
            inner = self.draw(st.sampled_from([(), (2,), (2, 3)]))
            a = self.expr(inner, depth, inner_ok)
            fn = (lambda t: t.min()) if kind == "min1" else (lambda t: t.max())
            return Node(f"{kind[:3]}({a.text})", (), lambda env: fn(a.ref(env)), a.decision)
        if kind in ("min2", "max2"):
            sa, sb = self._pair(shape)
            a, b = self.expr(sa, depth, inner_ok), self.expr(sb, depth, inner_ok)
            fn = torch.minimum if kind == "min2" else torch.maximum
            return Node(f"{kind[:3]}({a.text}, {b.text})", shape, lambda env: fn(a.ref(env), b.ref(env)),
                        a.decision or b.decision)
        if kind == "clip":
            v = self.expr(shape, depth, inner_ok)
            lo, hi = (self.expr(self.draw(st.sampled_from(_partners(shape) + [shape])), depth, inner_ok)
                      for _ in range(2))
            return Node(f"clip({v.text}, {lo.text}, {hi.text})", shape,
                        lambda env: torch.minimum(torch.maximum(v.ref(env), lo.ref(env)), hi.ref(env)),
                        v.decision or lo.decision or hi.decision)
        if kind == "dot":
            k = self.draw(st.integers(1, 3))
            a, b = self.expr((k,), depth, ok), self.expr((k,), depth, ok)
            return Node(f"dot({a.text}, {b.text})", (), lambda env: torch.dot(a.ref(env), b.ref(env)),
                        a.decision or b.decision)
        if kind == "quad":
            k = self.draw(st.integers(1, 3))
            v, M = self.expr((k,), depth, ok), self.expr((k, k), depth, ok)
            return Node(f"quad({v.text}, {M.text})", (), lambda env: v.ref(env) @ M.ref(env) @ v.ref(env),
                        v.decision or M.decision)
        if kind == "diag":
            a = self.expr((shape[0],), depth, ok)
            return Node(f"diag({a.text})", shape, lambda env: torch.diag(a.ref(env)), a.decision)
        if kind == "cat":
            cut = self.draw(st.integers(0, shape[0]))
            parts = [p for p in (cut, shape[0] - cut) if p > 0]
            items = [self.expr(() if p == 1 and self.draw(st.booleans()) else (p,), depth, ok) for p in parts]
            return Node("cat(" + ", ".join(i.text for i in items) + ")", shape,
                        lambda env: torch.cat([i.ref(env).reshape(-1) for i in items]),
                        any(i.decision for i in items))
        raise AssertionError(kind)


_SHAPES = [(), (1,), (2,), (3,), (2, 2), (2, 3), (3, 2), (1, 3), (3, 3)]


@st.composite
def _draw_plan(draw, mode: str, max_depth: int = 3, target: Shape | None = None, product: bool = False) -> Drawn:
    decls: list[Decl] = []
    for i in range(draw(st.integers(1, 2))):
        decls.append(Decl(VarKind.STATE, f"s{i}", draw(st.sampled_from([(), (1,), (2,), (3,)]))))
    for i in range(draw(st.integers(1, 2))):
        decls.append(Decl(VarKind.CONTROL, f"c{i}", draw(st.sampled_from([(), (1,), (2,)]))))
    for i in range(draw(st.integers(1, 3))):
        decls.append(Decl(VarKind.PARAM, f"p{i}", draw(st.sampled_from(_SHAPES))))
    for i in range(draw(st.integers(0, 2))):
        decls.append(Decl(VarKind.INPUT, f"i{i}", draw(st.sampled_from(_SHAPES))))
    decls.append(Decl(None, "K", (2, 2), torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=_F64)))
    decls.append(Decl(None, "h", (), torch.tensor(0.5, dtype=_F64)))
    small = [(), (), (1,), (2,), (3,), (2, 2), (2, 3)]       # where states and controls live
    shape = target if target is not None else draw(st.sampled_from(_SHAPES if mode == "any" else small))
    gen = _Gen(draw, decls, mode, max_depth)
    if product:                   # (a) * (b): most often degree 2 when a and b are affine
        a, b = gen.expr(shape, 1), gen.expr(shape, 1)
        expr = Node(f"({a.text}) * ({b.text})", shape, lambda env: a.ref(env) * b.ref(env), a.decision or b.decision)
    else:
        expr = gen.expr(shape)
    lines = ["plan random", "horizon 2", "const K = [[1, 2], [3, 4]]", "const h = 0.5"]
    for d in decls:
        if d.kind is None:
            continue
        init = " = 1" if d.kind is VarKind.PARAM else ""
        lines.append(f"{d.kind.value} {d.name}{_shape_text(d.shape)}{init}")
        if d.kind is VarKind.STATE:
            lines.append(f"dynamics {d.name}' = {d.name}")
    lines += [f"constraint {expr.text} <= 0", "solve qp"]
    return Drawn("\n".join(lines) + "\n", expr, decls)


def typed(drawn: Drawn) -> Drawn:
    """Run the real front end and passes (up to classify, verified) and keep the typed expression."""
    plan = planlang.loads(drawn.text, "random.plan")
    graph = run_passes(plan.graph, until="classify", check=True)
    (node,) = [d for _, d in graph.nodes(data=True) if d["kind"] is NodeKind.CONSTRAINT]
    drawn.ir = node["ir"].args[0]                 # constraint ir is lhs - rhs
    drawn.graph, drawn.info = graph, graph.graph["plan_info"]
    return drawn


def random_values(drawn: Drawn, batch: int, draw, decision: bool = True) -> dict[str, torch.Tensor]:
    """name -> (B or 1, *shape) float64, entries in +-[0.5, 1.5] (never near zero)."""
    out = {}
    for d in drawn.decls:
        if d.kind is None or (not decision and d.kind in (VarKind.STATE, VarKind.CONTROL)):
            continue
        b = batch if draw(st.booleans()) else 1
        gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
        magnitude = 0.5 + torch.rand((b,) + d.shape, generator=gen, dtype=_F64)
        sign = torch.where(torch.rand((b,) + d.shape, generator=gen) < 0.5, -1.0, 1.0).to(_F64)
        out[d.name] = magnitude * sign
    return out


def reference(drawn: Drawn, values: dict[str, torch.Tensor], batch: int) -> torch.Tensor:
    """The reference evaluator on each sample, stacked: (B, *shape)."""
    outs = []
    for b in range(batch):
        env = {name: v[b if v.shape[0] > 1 else 0] for name, v in values.items()}
        value = drawn.expr.ref(env)
        assert tuple(value.shape) == drawn.expr.shape and value.dtype == _F64, drawn.expr.text
        outs.append(value)
    return torch.stack(outs)


def at(v, z: torch.Tensor) -> torch.Tensor:
    """The value of a QuadForm (or plain tensor) at z (B, nz): c + sum_i L_i z_i + sum_ij H_ij z_i z_j."""
    if not isinstance(v, qf.QuadForm):
        return v
    c, L, H = qf.coefficients(v, z.shape[1])
    extra = (1,) * (c.dim() - 1)
    zi = z.reshape(z.shape + extra)
    zij = (z.unsqueeze(2) * z.unsqueeze(1)).reshape(z.shape + (z.shape[1],) + extra)
    return c + (L * zi).sum(1) + (H * zij).sum((1, 2))


def taylor(fn: Callable[[torch.Tensor], torch.Tensor], zbar: torch.Tensor):
    """Value, gradient and Hessian of fn (z (B, nz) -> (B, *S), samples independent) at zbar, by autograd.

    Returns (value (B, K), grad (B, nz, K), hessian (B, nz, nz, K)) with K the flattened value size.
    """
    batch, nz = zbar.shape
    z = zbar.detach().clone().requires_grad_(True)
    out = fn(z)
    out = out.expand((batch,) + out.shape[1:]).reshape(batch, -1)
    grads = torch.zeros(batch, nz, out.shape[1], dtype=z.dtype)
    hessians = torch.zeros(batch, nz, nz, out.shape[1], dtype=z.dtype)
    for k in range(out.shape[1]):
        if not out.requires_grad:
            break
        (grad,) = torch.autograd.grad(out[:, k].sum(), z, create_graph=True, allow_unused=True)
        if grad is None:
            continue
        grads[:, :, k] = grad.detach()
        for i in range(nz):
            if grad.requires_grad:
                (row,) = torch.autograd.grad(grad[:, i].sum(), z, retain_graph=True, allow_unused=True)
                if row is not None:
                    hessians[:, i, :, k] = row
    return out.detach(), grads, hessians


def flat_coefficients(v, nz: int, batch: int):
    """qf.coefficients of v, expanded to the batch and flattened: (B, K), (B, nz, K), (B, nz, nz, K)."""
    c, L, H = qf.coefficients(v, nz)
    return (c.expand((batch,) + c.shape[1:]).reshape(batch, -1),
            L.expand((batch,) + L.shape[1:]).reshape(batch, nz, -1),
            H.expand((batch,) + H.shape[1:]).reshape(batch, nz, nz, -1))


class RandomExpressions:
    """What the property tests use: `plan(data, mode)` draws and types one random expression."""

    random_values = staticmethod(random_values)
    reference = staticmethod(reference)
    at = staticmethod(at)
    taylor = staticmethod(taylor)
    flat_coefficients = staticmethod(flat_coefficients)

    @staticmethod
    def plan(data, mode: str, max_depth: int = 3, target: Shape | None = None, product: bool = False) -> Drawn:
        drawn = data.draw(_draw_plan(mode, max_depth, target, product), label="plan")
        return typed(drawn)


@pytest.fixture(scope="session")
def random_expressions() -> RandomExpressions:
    return RandomExpressions()
