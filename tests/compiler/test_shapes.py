"""The shapes pass: static shapes, constant folding, typed IR, and what it records in `plan_info`.

The property test draws random well-formed expressions (see conftest.py) and checks that the
static shape the pass infers is the shape torch produces when `compiler.evaluate` runs the typed
IR on random batched tensors, and that the values agree with an independent torch evaluation.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import planlang
from compiler.evaluate import evaluate
from compiler.ir import Op, VarRef
from compiler.pipeline import run_passes
from planlang.ast import Cmp, VarKind
from planlang.graph import NodeKind

HEADER = """plan t
const n = 3
const dt = 0.5
horizon 4
state x[2] = [1, 2]
state s = 0
control u[2]
control w
param A[2, 2] = [[1, dt], [0, 1]]
param M[2, 3] = 1
input g[3]
input r = 2
"""
FOOTER = "dynamics x' = x\ndynamics s' = s\nsolve qp\n"


def checked(extra: str):
    plan = planlang.loads(HEADER + extra + FOOTER, "t.plan")
    return run_passes(plan.graph, until="shapes", check=True)


def typed(text: str):
    """The typed IR of one expression (the left side of a constraint)."""
    graph = checked(f"constraint {text} <= 0\n")
    return graph.nodes["constraint#1"]["ir"].args[0]


# ------------------------------------------------------------- property

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_static_shape_is_the_evaluated_shape(data, random_expressions):
    drawn = random_expressions.plan(data, "any")
    assert drawn.ir.shape == drawn.expr.shape, drawn.expr.text
    batch = 3
    values = random_expressions.random_values(drawn, batch, data.draw)
    env = {drawn.refs()[name]: v for name, v in values.items()}
    out = evaluate(drawn.ir, env, torch.zeros((), dtype=torch.float64))
    assert tuple(out.shape[1:]) == drawn.ir.shape, drawn.expr.text
    assert out.shape[0] in (1, batch) and out.dtype == torch.float64
    expected = random_expressions.reference(drawn, values, batch)
    finite = expected[torch.isfinite(expected)]
    scale = 1 + (float(finite.abs().max()) if finite.numel() else 0.0)
    torch.testing.assert_close(out.expand_as(expected), expected, rtol=1e-9, atol=1e-10 * scale, equal_nan=True,
                               msg=lambda m: f"{drawn.expr.text}\n{m}")
    for node in drawn.ir.walk():              # every sub-expression has a static shape of ints
        assert all(isinstance(s, int) and s >= 1 for s in node.shape)


def test_constants_follow_the_dtype_of_like():
    ir = typed("A @ x + dt")
    for dtype in (torch.float32, torch.float64):
        env = {VarRef(VarKind.STATE, "x"): torch.ones(1, 2, dtype=dtype),
               VarRef(VarKind.PARAM, "A"): torch.eye(2, dtype=dtype).unsqueeze(0)}
        assert evaluate(ir, env, torch.zeros((), dtype=dtype)).dtype == dtype


# ------------------------------------------------------------- shape rules

@pytest.mark.parametrize("text, shape", [
    ("x + 1", (2,)),
    ("x * s", (2,)),
    ("M + g", (2, 3)),                # (2,3) + (3,)
    ("M * [[1], [2]]", (2, 3)),       # (2,3) * (2,1)
    ("[[1], [2]] + g", (2, 3)),       # (2,1) + (3,) -> (2,3)
    ("A @ x", (2,)),
    ("x @ A", (2,)),
    ("x @ x", ()),
    ("A @ M", (2, 3)),
    ("x @ M", (3,)),
    ("-x^2", (2,)),
    ("x[0]", ()),
    ("x[-1]", ()),
    ("x[0:1]", (1,)),
    ("x[:1]", (1,)),
    ("x[1:]", (1,)),
    ("M[1]", (3,)),
    ("M[1, 2]", ()),
    ("M[:, 1]", (2,)),
    ("M[0:2, 1:3]", (2, 2)),
    ("M[1, :2]", (2,)),
    ("[x, u]", (2, 2)),
    ("[s, w, r]", (3,)),
    ("sum(M)", ()),
    ("norm(x)", ()),
    ("dot(x, u)", ()),
    ("quad(x, A)", ()),
    ("diag(x)", (2, 2)),
    ("eye(n)", (3, 3)),
    ("zeros(2)", (2,)),
    ("ones(2, n)", (2, 3)),
    ("cat(x, s, u)", (5,)),
    ("min(M)", ()),
    ("max(x, 0)", (2,)),
    ("min(M, g)", (2, 3)),
    ("clip(u, -1, 1)", (2,)),
    ("sin(A) @ x", (2,)),
    ("x / r", (2,)),
    ("2 ^ x", (2,)),
    ("pi * s", ()),
])
def test_shape_rules(text, shape):
    assert typed(text).shape == shape


def test_constant_expressions_are_folded():
    ir = typed("x + (eye(2) @ [dt, 2 * dt])[1] + n * pi")
    consts = [e for e in ir.walk() if e.op is Op.CONST]
    assert ir.op is Op.ADD and len(consts) == 2
    assert sorted(round(float(c.attr), 6) for c in consts) == [1.0, round(3 * 3.141592653589793, 6)]
    assert all(c.attr.dtype == torch.float64 for c in consts)


def test_variables_in_the_ir():
    ir = typed("A @ x + u * r")
    assert ir.variables() == {VarRef(VarKind.PARAM, "A"), VarRef(VarKind.STATE, "x"),
                              VarRef(VarKind.CONTROL, "u"), VarRef(VarKind.INPUT, "r")}
    assert {v for v in ir.variables() if v.is_decision} == {VarRef(VarKind.STATE, "x"), VarRef(VarKind.CONTROL, "u")}


# ------------------------------------------------------------- plan_info

def test_plan_info():
    graph = checked("state e[n] in [-1, 1] = 0.5\ndynamics e' = e\nlearn q[2] = [1, 2] positive\n"
                    "learn P[2, 2] psd\ncost stage = sum(x^2) + sum(e^2)\n")
    info = graph.graph["plan_info"]
    assert info.horizon == 4
    assert set(info.consts) == {"n", "dt"} and float(info.consts["dt"]) == 0.5
    assert list(info.variables) == ["x", "s", "u", "w", "A", "M", "g", "r", "e", "q", "P"]   # declaration order
    e = info.variables["e"]
    assert (e.shape, e.ref, e.node) == ((3,), VarRef(VarKind.STATE, "e"), "state:e")
    assert e.default.op is Op.CONST and float(e.default.attr) == 0.5
    assert (float(e.lower.attr), float(e.upper.attr)) == (-1.0, 1.0)
    assert info.variables["q"].positive and info.variables["P"].psd
    assert info.variables["g"].default is None and info.variables["u"].default is None
    assert graph.nodes["state:e"]["shape"] == (3,)            # const sizes are resolved on the node
    assert [v.ref.name for v in info.of_kind(VarKind.CONTROL)] == ["u", "w"]


def test_constraints_are_normalized_to_le_or_eq():
    graph = checked("constraint x[0] >= r\nconstraint u[0] == w\nconstraint x in [-1, 2]\n")
    ge, eq, lo, hi = (graph.nodes[f"constraint#{i}"] for i in (1, 2, 3, 4))
    assert ge["sense"] is Cmp.LE and ge["ir"].op is Op.SUB
    assert ge["ir"].args[0].op is Op.VAR and ge["ir"].args[0].attr.name == "r"      # r - x[0] <= 0
    assert eq["sense"] is Cmp.EQ
    assert lo["sense"] is hi["sense"] is Cmp.LE
    assert lo["ir"].args[1].attr.name == "x" and hi["ir"].args[0].attr.name == "x"   # -1 - x <= 0, x - 2 <= 0
    assert lo["ir"].shape == hi["ir"].shape == (2,)


def test_dynamics_may_broadcast_to_the_state():
    graph = checked("state y[2] = 0\ndynamics y' = s\n")
    assert graph.nodes["dynamics:y"]["ir"].shape == ()


def test_typed_ir_on_every_expression_node(example_path):
    graph = run_passes(planlang.load(example_path).graph, until="shapes", check=True)
    lets = [d["span"] for _, d in graph.nodes(data=True) if d["kind"] is NodeKind.LET]
    within = lambda span, outer: outer.line <= span.line <= outer.end_line      # noqa: E731
    for node, data in graph.nodes(data=True):
        if data["kind"] in (NodeKind.DYNAMICS, NodeKind.COST, NodeKind.CONSTRAINT):
            # typed where it is written: in the declaration, or in a `let` it uses (substituted)
            assert within(data["ir"].span, data["span"]) or any(within(data["ir"].span, s) for s in lets)
        if data["kind"] is NodeKind.COST and graph.graph["plan_info"].grid is None:
            assert data["ir"].shape == ()
