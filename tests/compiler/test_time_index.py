"""Time-indexed data (`input ref[T, 2]`, `[T+1, ...]`), the stage index `t`, `time`, and the
`range` / `linspace` builtins: shapes, located errors, every solver, cvxpy, gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import planlang
from compiler.lower import cvxpy_ref
from planlang.errors import PlanError

T = 8
TRACK = f"""plan track
const dt = 0.1
horizon {T}
state p[2] = [0.2, -0.1]
state v[2] = [0, 0]
control a[2]
input ref[T, 2] = zeros(T, 2)
param w[T+1] = ones(T+1)
dynamics p' = p + dt * v
dynamics v' = v + dt * a
cost stage = sum((p - ref[t])^2) + 0.05 * w[t] * sum(a^2) + 0.1 * 0.9^t * sum(v^2)
cost final = sum((p - ref[T-1])^2) + sum(v^2)
solve lqr
"""


def compiled(text: str, solver: str | None = None, **kwargs):
    return planlang.compile(planlang.loads(text, "p.plan"), dtype=torch.float64, solver=solver, **kwargs)


def reference(batch: int | None = None) -> torch.Tensor:
    s = torch.arange(T, dtype=torch.float64) * 0.4
    ref = torch.stack([torch.sin(s), torch.sin(2 * s) / 2], 1)
    return ref if batch is None else torch.stack([ref * (1 + b) for b in range(batch)])


def error_of(text: str) -> tuple:
    with pytest.raises(PlanError) as info:
        compiled(text)
    d = info.value.diagnostics[0]
    return d.message + " | " + d.hint, d.span.line, d.span.col


# ------------------------------------------------------------------ language

def test_sizes_and_shapes_of_time_indexed_data():
    module = compiled(TRACK)
    assert module.info.variables["ref"].shape == (T, 2) and module.info.variables["w"].shape == (T + 1,)
    assert module.info.variables["ref"].per_stage and module.info.variables["w"].per_stage
    cost = module.graph.nodes["cost:stage#1"]["ir"].as_text()
    assert "ref[t]" in cost and "w[t]" in cost


def test_range_and_linspace_are_constant_vectors():
    plan = TRACK.replace("param w[T+1] = ones(T+1)", f"param w[T+1] = 1 + 0 * linspace(0, 1, {T + 1})") \
        .replace("const dt = 0.1", "const dt = 0.1\nconst k = range(4)\nconst g = linspace(-1, 1, 5)")
    info = compiled(plan).info
    torch.testing.assert_close(info.consts["k"], torch.arange(4, dtype=torch.float64))
    torch.testing.assert_close(info.consts["g"], torch.linspace(-1, 1, 5, dtype=torch.float64))


ERRORS = [
    # (replace, by, expected message part, line, col)
    ("cost final = sum((p - ref[T-1])^2)", "cost final = sum((p - ref[t])^2)", "use the last row explicitly: ref[T]",
     12, 23),
    ("cost final = sum((p - ref[T-1])^2)", "cost final = sum((p - ref[T])^2)", "has rows 0..7 (0..T-1", 12, 27),
    ("cost final = sum((p - ref[T-1])^2)", "cost final = sum((p - ref[9])^2)", "index 9 is out of range", 12, 27),
    ("state p[2] = [0.2, -0.1]", "state p[2] = [0.2, -0.1] + t", "cannot read the stage index t", 4, 28),
    ("control a[2]", "control a[2] in [-1 - t, 1]", "write a constraint line", 6, 23),
    ("sum((p - ref[t])^2)", "sum((p - p[t])^2)", "reads the row of time-indexed data", 11, 23),
    ("sum((p - ref[t])^2)", "sum((p - ref[t + 1])^2)", "by itself", 11, 27),
    ("sum((p - ref[t])^2)", "sum((p - ref[0, t])^2)", "by itself", 11, 30),
    ("input ref[T, 2] = zeros(T, 2)", "input ref[T, 2] = zeros(T, 2)\ninput c[3] = [0, 0, 0]",
     "needs a leading dimension T = 8", 12, 36),
    ("const dt = 0.1", "const step = 0.1", "`time` is t * dt", 14, 19),
    ("solve lqr", "solve qp\nconstraint p[0] <= 1 + ref[t, 0]", "has 8 rows", 14, 24),
]


@pytest.mark.parametrize("old, new, message, line, col", ERRORS)
def test_located_errors(old, new, message, line, col):
    text = TRACK.replace(old, new)
    if "input c[3]" in new:
        text = text.replace("sum((p - ref[t])^2)", "sum((p - ref[t])^2) + c[t]")
    if "const step" in new:
        text = text.replace("dt * v", "0.1 * v").replace("dt * a", "0.1 * a") + "cost stage late = time * sum(a^2)\n"
    got, at_line, at_col = error_of(text)
    assert message in got and (at_line, at_col) == (line, col), (got, at_line, at_col)


def test_time_is_t_times_dt():
    by_time = TRACK.replace("0.9^t * sum(v^2)", "(1 + time) * sum(v^2)")
    by_t = TRACK.replace("0.9^t * sum(v^2)", "(1 + 0.1 * t) * sum(v^2)")
    torch.testing.assert_close(compiled(by_time)(ref=reference()).u, compiled(by_t)(ref=reference()).u,
                               rtol=0, atol=1e-12)


def test_wrong_leading_size_at_call_time_names_the_input():
    with pytest.raises(ValueError, match=r"'ref' has shape \(7, 2\).*time-indexed, its leading dimension is T = 8"):
        compiled(TRACK)(ref=torch.zeros(T - 1, 2, dtype=torch.float64))


# ------------------------------------------------------------------ solvers

def test_time_varying_weights_equal_the_unrolled_plan():
    """sum_t 0.9^t |v_t|^2 with `t` is the same plan as with a [T] param holding 0.9^t."""
    unrolled = TRACK.replace("0.9^t * sum(v^2)", "d[t] * sum(v^2)").replace(
        "param w[T+1]", "param d[T] = [" + ", ".join(f"{0.9 ** k!r}" for k in range(T)) + "]\nparam w[T+1]")
    torch.testing.assert_close(compiled(unrolled)(ref=reference()).x, compiled(TRACK)(ref=reference()).x,
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("solver", ["qp", "ilqr"])
def test_lqr_qp_and_ilqr_agree_batched(solver):
    ref = reference(batch=3)
    exact = compiled(TRACK)(ref=ref)
    other = compiled(TRACK, solver, options={"tol": 1e-12} if solver == "ilqr" else None)(ref=ref)
    assert exact.ok.all() and other.ok.all() and exact.x.shape == (3, T + 1, 4)
    torch.testing.assert_close(other.u, exact.u, rtol=0, atol=1e-8)
    assert not torch.allclose(exact.u[0], exact.u[1])          # each element tracks its own reference


@pytest.mark.parametrize("solver, options, atol", [("descent", {"method": "lbfgs", "iters": 300, "tol": 1e-10}, 1e-5),
                                                   ("mppi", {"samples": 64}, None), ("cem", {"samples": 64}, None)])
def test_other_solvers_read_the_rows(solver, options, atol):
    ref = reference(batch=2)
    sol = compiled(TRACK, solver, options=options)(ref=ref)
    assert sol.x.shape == (2, T + 1, 4) and sol.u.shape == (2, T, 2) and torch.isfinite(sol.cost).all()
    module = compiled(TRACK, solver, options=options)
    torch.testing.assert_close(module.trajectory_cost(sol.x, sol.u, ref=ref), sol.cost, rtol=1e-10, atol=1e-12)
    if atol is not None:
        torch.testing.assert_close(sol.u, compiled(TRACK)(ref=ref).u, rtol=0, atol=atol)


def test_trajectory_cost_reads_each_stages_row():
    module = compiled(TRACK, "ilqr")
    sol = module(ref=reference())
    torch.testing.assert_close(module.trajectory_cost(sol.x, sol.u, ref=reference()), sol.cost, rtol=1e-12, atol=0)


CONSTRAINED = TRACK.replace("solve lqr", "solve qp\nconstraint p[0] <= lim[t]\nconstraint a[1] >= -3 + 0.1 * t") \
    .replace("param w[T+1] = ones(T+1)", "param w[T+1] = ones(T+1)\ninput lim[T+1] = 0.5 * ones(T+1)")


@pytest.mark.parametrize("text", [TRACK, CONSTRAINED], ids=["lqr", "qp"])
def test_cvxpy_reference_agrees(text):
    lim = 0.21 + 0.01 * torch.arange(T + 1, dtype=torch.float64)
    module = compiled(text)
    values = {"ref": reference()} if text is TRACK else {"ref": reference(), "lim": lim}
    sol = module(**values)
    numeric = {"p": np.array([0.2, -0.1]), "v": np.zeros(2), "w": np.ones(T + 1),
               **{k: v.numpy() for k, v in values.items()}}
    problem, ref = cvxpy_ref.solve(module.graph, numeric)
    assert ref.ok and sol.ok.all()
    assert abs(ref.cost - float(sol.cost)) <= 1e-7 * (1 + abs(ref.cost))
    assert problem.violation(sol.x[0].numpy(), sol.u[0].numpy()) < 1e-8
    if text is CONSTRAINED:
        assert float(sol.x[0, 1:, 0].sub(lim[1:]).max()) > -1e-6        # the time-varying limit is active


def test_ilqr_takes_time_indexed_constraints():
    text = CONSTRAINED.replace("solve qp", "solve ilqr(iters=100)")
    lim = 0.21 + 0.01 * torch.arange(T + 1, dtype=torch.float64)
    qp = compiled(CONSTRAINED)(ref=reference(), lim=lim)
    il = compiled(text)(ref=reference(), lim=lim)
    assert il.ok.all() and float((qp.x[0, 1:, 0] - lim[1:]).max()) > -1e-6     # active
    torch.testing.assert_close(il.u, qp.u, rtol=0, atol=1e-5)


# ------------------------------------------------------------------ gradients

@pytest.mark.parametrize("solver", ["lqr", "qp"])
def test_gradcheck_with_respect_to_the_reference(solver):
    text = TRACK if solver == "lqr" else CONSTRAINED
    module = compiled(text)
    lim = torch.full((T + 1,), 0.3, dtype=torch.float64)
    extra = {} if solver == "lqr" else {"lim": lim}
    w = torch.randn(T, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def loss(ref):
        sol = module(ref=ref, **extra)
        return (sol.u * w).sum() + sol.cost.sum()
    assert torch.autograd.gradcheck(loss, (reference().requires_grad_(),), eps=1e-6, atol=1e-6)


PENDULUM = """plan swing
const dt = 0.05
horizon 12
state th = 0.3
state om = 0
control u in [-4, 4]
input ref[T+1] = zeros(T+1)
dynamics th' = th + dt * om
dynamics om' = om + dt * (u - 9.8 * sin(th))
cost stage = (th - ref[t])^2 + 0.1 * om^2 + 0.01 * u^2
cost final = 10 * (th - ref[T])^2
solve ilqr(iters=100, tol=1e-12)
"""


def test_ilqr_gradient_with_respect_to_the_reference_matches_finite_differences():
    module = compiled(PENDULUM)
    ref = 0.5 * torch.sin(torch.arange(13, dtype=torch.float64) * 0.3)
    direction = torch.randn(13, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    weights = torch.randn(12, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def loss(r):
        sol = module(ref=r)
        assert sol.status_names() == ["solved"]
        return (sol.u[0] * weights).sum() + sol.cost.sum()
    r = ref.clone().requires_grad_()
    (grad,) = torch.autograd.grad(loss(r), r)
    h = 1e-5
    with torch.no_grad():
        fd = (loss(ref + h * direction) - loss(ref - h * direction)) / (2 * h)
    assert abs(float(grad @ direction) - float(fd)) <= 1e-5 * (1 + abs(float(fd)))
