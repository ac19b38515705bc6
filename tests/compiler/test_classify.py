"""Classification: the polynomial degree in the decision variables, and what it promises.

The key property of the exact LQR/QP data extraction: when `classify.degree(e) <= 2`, evaluating e
with the states and controls bound to `Layout.symbolic` forms gives a `QuadForm` of exactly that
degree whose value at any z equals the plain numerical evaluation at z. A second property checks
the jets the iLQR lowering relies on: bound to `Layout.jets(x, u)`, any smooth expression evaluates
to its second-order Taylor expansion at (x, u) (value, gradient and Hessian, against autograd).
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, note, settings
from hypothesis import strategies as st

import planlang
from compiler import classify
from compiler import quadform as qf
from compiler.convexity import additive_terms, nonconvex_term
from compiler.evaluate import evaluate
from compiler.ir import Op, VarRef
from compiler.layout import Layout
from compiler.pipeline import run_passes
from planlang.ast import VarKind

F64 = torch.zeros((), dtype=torch.float64)

HEADER = """plan t
const dt = 0.5
horizon 4
state x[2] = [1, 2]
state s = 0
control u[2]
param A[2, 2] = [[1, dt], [0, 1]]
input r = 2
dynamics x' = x
dynamics s' = s
solve qp
"""


def graph_with(extra: str):
    return run_passes(planlang.loads(HEADER + extra, "t.plan").graph, until="classify", check=True)


def typed(text: str):
    return graph_with(f"constraint {text} <= 0\n").nodes["constraint#1"]["ir"].args[0]


# ------------------------------------------------------------------ rules

@pytest.mark.parametrize("text, degree", [
    ("dt", 0), ("r", 0), ("A", 0), ("sin(r) * A", 0),
    ("x", 1), ("A @ x + u * r", 1), ("-x", 1), ("x - x", 1), ("sum(x)", 1), ("x[0]", 1), ("x[0:1]", 1),
    ("[s, u[0]]", 1), ("cat(x, u)", 1), ("diag(x)", 1), ("x / r", 1), ("x / 2", 1), ("x^1", 1),
    ("x * u", 2), ("x^2", 2), ("s * s", 2), ("quad(x, A)", 2), ("dot(x, u)", 2), ("x @ (A @ x)", 2),
    ("[x[0] * u[1], s]", 2), ("(x * u) * 0", 2), ("sum(x^2) + r * sum(u^2)", 2),
    ("x^3", 3), ("x * x * u", 3), ("(x^2)^2", 4), ("dot(x, x) * s^2", 4),
    ("x^0", 0), ("(x^3)^0", 0), ("(sin(x))^0", None),           # conservative: a non-polynomial base
    ("sin(x)", None), ("exp(s)", None), ("norm(x)", None), ("abs(u)", None), ("max(x, 0)", None),
    ("clip(u, -1, 1)", None), ("r / s", None), ("x^r", None), ("x^2.5", None), ("x^-1", None),
    ("2^s", None), ("sqrt(s)", None),
])
def test_degree(text, degree):
    assert classify.degree(typed(text)) == degree


@pytest.mark.parametrize("text, limit, culprit", [
    ("A @ x + [0, dt] * sin(u)", 1, "sin"),
    ("sum(x^2) + u[0]^3", 2, "pow"),
    ("x * x * u", 2, "mul"),
    ("sum(x^2) + sum(u^2)", 2, None),
    ("x * u + s", 1, "mul"),
])
def test_culprit_is_the_innermost_leftmost_offender(text, limit, culprit):
    ir = typed(text)
    bad = classify.culprit(ir, limit)
    if culprit is None:
        assert bad is None
        return
    name = bad.attr.name if bad.op is Op.CALL else bad.op.name.lower()
    assert name == culprit
    degrees = classify.degrees(ir)
    assert degrees[bad] is None or degrees[bad] > limit
    assert all(degrees[a] is not None and degrees[a] <= limit for a in bad.args)     # innermost


def test_culprit_span_points_into_the_source():
    graph = graph_with("constraint sum(x^2) + u[0]^3 <= 0\n")
    bad = classify.culprit(graph.nodes["constraint#1"]["ir"], 2)
    assert (bad.span.line, bad.span.col, bad.span.end_col) == (12, 23, 29)      # `u[0]^3`


@pytest.mark.parametrize("text, offender", [
    ("abs(u)", "abs"), ("sum(x) + max(x, 1)[0]", "max"), ("clip(u, -1, 1)", "clip"), ("relu(s)", "relu"),
    ("abs(r) * x", None), ("sin(x)", None), ("min(A)", None),
])
def test_nonsmooth(text, offender):
    bad = classify.nonsmooth(typed(text))
    assert (bad.attr.name if bad is not None else None) == offender


def test_classify_pass_annotates_every_expression_node():
    graph = graph_with("cost stage = sum(x^2) + sum(abs(u))\ncost final = sum(x^2)\nconstraint x[0] <= r\n")
    assert graph.nodes["dynamics:x"]["degree"] == 1 and graph.nodes["dynamics:x"]["smooth"]
    assert graph.nodes["cost:stage#1"]["degree"] is None and not graph.nodes["cost:stage#1"]["smooth"]
    assert graph.nodes["cost:final#1"]["degree"] == 2
    assert graph.nodes["constraint#1"]["degree"] == 1


# ------------------------------------------------------------- convexity

def test_nonconvex_term_blames_the_subtracted_square():
    graph = graph_with("cost stage = sum(x^2) + sum(u^2) - 3 * x[0]^2\n")
    info = graph.graph["plan_info"]
    layout = Layout.of(info)
    env = {**layout.symbolic(F64), VarRef(VarKind.PARAM, "A"): torch.eye(2, dtype=torch.float64)[None],
           VarRef(VarKind.INPUT, "r"): torch.ones(1, dtype=torch.float64)}
    ir = graph.nodes["cost:stage#1"]["ir"]
    assert len(additive_terms(ir)) == 3
    term, eig = nonconvex_term(ir, env, layout.n + layout.m, F64, slice(0, layout.n + layout.m))
    assert term is additive_terms(ir)[2] and eig == pytest.approx(-4.0)
    convex = graph_with("cost stage = sum(x^2) - (-3) * x[0]^2\n").nodes["cost:stage#1"]["ir"]
    assert nonconvex_term(convex, env, layout.n + layout.m, F64, slice(0, layout.n + layout.m)) is None


# ------------------------------------------------------------- properties

def _stage_point(layout: Layout, z: torch.Tensor):
    return z[:, :layout.n], z[:, layout.n:]


def _random_z(data, batch: int, nz: int) -> torch.Tensor:
    seed = data.draw(st.integers(0, 2**31 - 1), label="z seed")
    gen = torch.Generator().manual_seed(seed)
    magnitude = 0.5 + torch.rand(batch, nz, generator=gen, dtype=torch.float64)
    return magnitude * torch.where(torch.rand(batch, nz, generator=gen) < 0.5, -1.0, 1.0).to(torch.float64)


def _non_decision_env(drawn, values):
    refs = drawn.refs()
    return {refs[name]: v for name, v in values.items() if not refs[name].is_decision}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                  HealthCheck.filter_too_much])
@given(data=st.data(), product=st.booleans())
def test_quadratic_expressions_evaluate_exactly(data, product, random_expressions):
    drawn = random_expressions.plan(data, "poly", product=product)
    degree = classify.degree(drawn.ir)
    note(f"{drawn.expr.text}  (degree {degree})")
    assert degree is not None                         # poly mode: every construct is polynomial
    event(f"degree {degree}")
    assume(degree <= 2)
    batch = 2
    layout = Layout.of(drawn.info)
    nz = layout.n + layout.m
    values = random_expressions.random_values(drawn, batch, data.draw, decision=False)
    params = _non_decision_env(drawn, values)
    form = evaluate(drawn.ir, {**layout.symbolic(F64), **params}, F64)

    assert qf.degree(form) == degree                   # the form has exactly the classified degree
    if degree == 0:
        assert not isinstance(form, qf.QuadForm)
    else:
        c, L, H = form.c, form.L, form.H
        assert L is not None and L.shape[1] == nz and tuple(L.shape[2:]) == drawn.ir.shape
        assert (H is None) == (degree < 2)
        if H is not None:
            torch.testing.assert_close(H, H.transpose(1, 2))
        assert tuple(c.shape[1:]) == drawn.ir.shape

    z = _random_z(data, batch, nz)
    numeric_env = {**layout.numeric(*_stage_point(layout, z)), **params}
    direct = evaluate(drawn.ir, numeric_env, F64)
    value = random_expressions.at(form, z)
    c, L, H = random_expressions.flat_coefficients(form, nz, batch)     # rounding scales with the terms
    zmax = float(z.abs().max())
    scale = 1 + max(float(c.abs().max()), float(L.abs().max()) * zmax, float(H.abs().max()) * zmax ** 2)
    torch.testing.assert_close(value.expand_as(direct.expand((batch,) + direct.shape[1:])),
                               direct.expand((batch,) + direct.shape[1:]), rtol=1e-9, atol=1e-10 * scale)
    # and the same against the independent torch reference
    names = {ref: name for name, ref in drawn.refs().items()}
    all_values = {**values, **{names[ref]: v for ref, v in layout.numeric(*_stage_point(layout, z)).items()}}
    expected = random_expressions.reference(drawn, all_values, batch)
    torch.testing.assert_close(value.expand_as(expected), expected, rtol=1e-9, atol=1e-10 * scale)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                  HealthCheck.filter_too_much])
@given(data=st.data())
def test_jets_are_second_order_taylor_expansions(data, random_expressions):
    drawn = random_expressions.plan(data, "smooth")
    note(drawn.expr.text)
    assert classify.nonsmooth(drawn.ir) is None
    event(f"degree {classify.degree(drawn.ir)}")
    batch = 2
    layout = Layout.of(drawn.info)
    nz = layout.n + layout.m
    params = _non_decision_env(drawn, random_expressions.random_values(drawn, batch, data.draw, decision=False))
    zbar = _random_z(data, batch, nz)

    jet = evaluate(drawn.ir, {**layout.jets(*_stage_point(layout, zbar)), **params}, F64)
    c, L, H = random_expressions.flat_coefficients(jet, nz, batch)
    assume(bool(torch.isfinite(c).all() and torch.isfinite(L).all() and torch.isfinite(H).all()))

    def numeric(z):
        return evaluate(drawn.ir, {**layout.numeric(*_stage_point(layout, z)), **params}, F64)

    value, grad, hessian = random_expressions.taylor(numeric, zbar)
    assume(bool(torch.isfinite(grad).all() and torch.isfinite(hessian).all()))   # e.g. autograd of 0^0
    scale = 1 + max(float(t.abs().max()) if t.numel() else 0.0 for t in (c, L, H))
    tol = dict(rtol=1e-7, atol=1e-9 * scale)
    torch.testing.assert_close(c, value, **tol)
    torch.testing.assert_close(L, grad, **tol)
    torch.testing.assert_close(2 * H, hessian, **tol)
