"""`planlang check`: the module against the cvxpy reference (compiler/lower/cvxpy_ref.py) and FD."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

import planlang
from compiler.functions import FUNCTIONS
from compiler.ir import Op
from compiler.lower import cvxpy_ref
from compiler.pipeline import run_passes
from planlang.checks import gradients as checking
from planlang.checks.gradients import Verdict

ROOT = Path(__file__).resolve().parents[2]
LQR_EXAMPLES = [p for p in sorted((ROOT / "examples").glob("*.plan")) if "solve lqr" in p.read_text()]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny batched factorizations are much slower with several threads on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _plan(text: str) -> planlang.Plan:
    return planlang.loads(text, "test.plan")


MIXED = """plan mixed
const dt = 0.1
horizon 12
state p[2] = [1, -1]
state v[2] = [0, 0.5]
control a[2]
param M[2, 2] = [[1, 0.2], [-0.1, 1]]
input w[2] = [1, 2]
learn s = 0.5 positive
learn W[2, 2] = [[1, 0.3], [0.3, 2]] psd
dynamics p' = p + dt * v
dynamics v' = M @ v + dt * (a @ M) + [0, dt] * a[0]
cost stage = sum(w * p^2) + s * dot(v, v) + quad(a, diag(w)) + (p[0] - v[1])^2 + sum(cat(a[0:1], p[1])^2)
cost stage lin = 0.3 * sum(M @ p) - v[0] / 2 + 1.5
cost final = 10 * quad(p, W) + sum(v[0:2]^2) + 2
solve lqr
"""

RK4 = """plan rk4
horizon 20
state p[2] = [1, -1]
state v[2] = [0, 0.5]
control a[2]
param k = 0.3
input goal[2] = [0.5, 0.2]
dynamics dot(p) = v by rk4(0.1)
dynamics dot(v) = -k * v - p + a by rk4(0.1)
cost stage = sum((p - goal)^2) + 0.1 * sum(a^2)
cost final = 5 * sum((p - goal)^2)
solve lqr
"""

CROSS = """plan cross
horizon 10
state x[2] = [1, -1]
control u
dynamics x' = [[1, 0.1], [0, 1]] @ x + [0, 0.1] * u
cost stage = x[0] * x[0] + x[0] * x[1] + x[1] * x[1] + u * u
cost final = sum(x^2)
solve lqr
"""

BOXED = """plan boxed
horizon 10
state x[2] = [1, 0]
control u in [-0.5, 0.5]
dynamics x' = [[1, 0.1], [0, 1]] @ x + [0, 0.1] * u
constraint x[1] <= -0.02
constraint u - x[1] <= 0.45
cost stage = sum(x^2) + 0.01 * u^2
cost final = 10 * sum(x^2)
solve qp
"""


# ------------------------------------------------------------------ agreement

@pytest.mark.parametrize("path", LQR_EXAMPLES, ids=[p.stem for p in LQR_EXAMPLES])
def test_lqr_examples_agree(path):
    report = planlang.check(planlang.load(path))
    assert report.ok, report.render()
    assert all(row.verdict is Verdict.OK for row in report.rows), report.render()
    for row in report.rows:                          # far inside the tolerances, not just under them
        assert row.rel_project < 1e-7, row
        if row.kind == "gradient":
            assert row.rel_reference < 1e-7, row


def test_table_has_one_row_per_quantity():
    report = planlang.check(planlang.load(ROOT / "examples" / "point_mass_2d.plan"))
    expected = ["x", "u", "cost", "dL/dp_0", "dL/dv_0", "dL/dtarget", "dL/dQ", "dL/drv", "dL/dra"]
    assert [row.quantity for row in report.rows] == expected
    assert [row.entries for row in report.rows] == [41 * 4, 40 * 2, 1, 2, 2, 2, 4, 1, 2]
    assert [row.kind for row in report.rows] == ["solution"] * 3 + ["gradient"] * 6
    text = report.render()
    for name in expected:
        assert f"\n{name} " in text
    for column in ("project", "cvxpy", "FD", "rel err", "verdict"):
        assert column in text
    assert "check passed" in text and "CLARABEL" in text
    assert np.allclose(report["dL/dQ"].project, report["dL/dQ"].fd, rtol=1e-6)


@pytest.mark.parametrize("text", [MIXED, RK4], ids=["ops", "rk4"])
def test_lowering_covers_ops_and_integrators(text):
    """index, slices, @ on both sides, diag, cat, stack, dot, quad (psd), constants, rk4 dynamics."""
    report = planlang.check(_plan(text))
    assert report.ok and all(row.verdict is Verdict.OK for row in report.rows), report.render()
    assert report["x"].rel_project < 1e-9


def test_every_op_and_builtin_has_a_rule():
    assert set(cvxpy_ref.RULES) == set(Op)
    evaluated = {name for name, fn in FUNCTIONS.items() if fn.fold is None}
    assert evaluated <= set(cvxpy_ref.FUNCTION_RULES)


def test_large_tensors_are_checked_along_random_directions():
    report = planlang.check(planlang.load(ROOT / "examples" / "lane_keeping.plan"), max_entries=8, directions=3)
    row = report["dL/dAc"]
    assert row.directions == 3 and row.project.shape == (3,) and row.entries == 16
    assert report["dL/dBc"].directions is None
    assert report.ok, report.render()
    assert "16 (3 dir)" in report.render() and "random unit directions" in report.render()


def test_values_override_defaults():
    plan = planlang.load(ROOT / "examples" / "double_integrator.plan")
    report = planlang.check(plan, values={"goal": [0.5, 0.0], "x": [2.0, 1.0], "r": 0.3})
    assert report.ok, report.render()
    assert report["x"].project[0].tolist() == [2.0, 1.0]
    with pytest.raises(TypeError, match="unknown value"):
        planlang.check(plan, values={"gaol": [0, 0]})
    with pytest.raises(TypeError, match="unknown option"):
        planlang.check(plan, tolerance=1e-3)


# --------------------------------------------------------- project off: FAIL

class _SkewGrad(torch.autograd.Function):
    """Identity forward, a backward 1% off."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return 1.01 * grad


def test_wrong_project_gradient_fails(monkeypatch):
    solve = checking.project_solve

    def skewed(*args):
        sol = solve(*args)
        return dataclasses.replace(sol, x=_SkewGrad.apply(sol.x))

    monkeypatch.setattr(checking, "project_solve", skewed)
    report = planlang.check(planlang.load(ROOT / "examples" / "double_integrator.plan"))
    assert not report.ok
    failed = [row for row in report.rows if not row.ok]
    assert failed and all(row.kind == "gradient" for row in failed)
    assert all(row.verdict is Verdict.OK for row in report.rows if row.kind == "solution")
    assert all("cvxpy reference agrees with FD" in row.note for row in failed)
    assert "check FAILED" in report.render()


def test_wrong_project_solution_fails(monkeypatch):
    solve = checking.project_solve

    def shifted(*args):
        sol = solve(*args)
        return dataclasses.replace(sol, u=sol.u + 1e-3)

    monkeypatch.setattr(checking, "project_solve", shifted)
    report = planlang.check(planlang.load(ROOT / "examples" / "thermostat.plan"))
    assert report["u"].verdict is Verdict.FAIL
    assert "violates the reference's constraints" in report["u"].note
    assert not report.ok


# ------------------------------------------------ reference off: pass, said

def test_reference_gradient_off_is_reported_not_failed():
    # a huge FD step for the cvxpy re-solves: its gradients are off wherever L is not quadratic
    report = planlang.check(planlang.load(ROOT / "examples" / "double_integrator.plan"), reference_step=3e-2)
    assert report.ok, report.render()
    off = {row.quantity for row in report.rows if row.verdict is Verdict.REFERENCE_OFF}
    assert {"dL/dA", "dL/dr"} <= off
    assert "dL/dx_0" not in off                      # L is quadratic in x0: central differences are exact
    assert all(row.note.startswith("reference off") for row in report.rows if row.quantity in off)
    assert "the reference, not the project, is off" in report.render()


def test_reference_solution_off_is_reported_not_failed(monkeypatch):
    solve = cvxpy_ref.ReferenceProblem.solve

    def noisy(self, *args, **kwargs):
        ref = solve(self, *args, **kwargs)
        ref.x = ref.x + 1e-4 * np.random.default_rng(0).standard_normal(ref.x.shape)
        ref.residual = self.violation(ref.x, ref.u)
        return ref

    monkeypatch.setattr(cvxpy_ref.ReferenceProblem, "solve", noisy)
    report = planlang.check(planlang.load(ROOT / "examples" / "double_integrator.plan"))
    assert report.ok, report.render()
    assert report["x"].verdict is Verdict.REFERENCE_OFF
    assert "violates its own constraints" in report["x"].note
    assert report["u"].verdict is Verdict.OK


def test_arbiter_prefers_the_optimal_trajectory():
    plan = planlang.load(ROOT / "examples" / "double_integrator.plan")
    module = planlang.compile(plan, dtype=torch.float64)
    values = {k: module.default(k).numpy() for k in module.inputs()}
    values.update({k: module.learned(k).detach().numpy() for k in module.learnables})
    problem, ref = cvxpy_ref.solve(module.graph, values)
    best = module()
    other = module(goal=torch.tensor([0.3, 0.0], dtype=torch.float64))      # feasible, not optimal
    x, u = best.x[0].detach().numpy(), best.u[0].detach().numpy()
    xo, uo = other.x[0].detach().numpy(), other.u[0].detach().numpy()
    suboptimal = dataclasses.replace(ref, x=xo, u=uo, residual=problem.violation(xo, uo))
    off, why = checking.arbitrate(problem, suboptimal, x, u, 1e-6)
    assert off and "least at a=1.00" in why                                  # the reference is off
    off, why = checking.arbitrate(problem, ref, xo, uo, 1e-6)
    assert not off and "least at a=0.00" in why                              # the project is off


# ---------------------------------------------------- without a reference

def test_unrepresentable_plan_falls_back_to_fd():
    report = planlang.check(_plan(CROSS))
    assert report.ok, report.render()
    assert report.reference.startswith("none: cvxpy cannot represent")
    assert "line 6, column 28" in report.reference
    assert [row.verdict for row in report.rows[:3]] == [Verdict.UNCHECKED] * 3
    assert report["dL/dx_0"].verdict is Verdict.OK and report["dL/dx_0"].reference is None


def test_nonlinear_builtin_of_a_decision_is_unrepresentable():
    text = CROSS.replace("x[0] * x[1]", "sin(x[0])").replace("solve lqr", "solve ilqr")
    graph = run_passes(_plan(text).graph)
    with pytest.raises(cvxpy_ref.Unrepresentable, match=r"sin\(\) of a decision-dependent value at line 6"):
        cvxpy_ref.ReferenceProblem(graph, {"x": np.array([1.0, -1.0])})


# --------------------------------------------------------- constraints (qp)

def test_constraints_hold_at_their_stages():
    graph = run_passes(_plan(BOXED).graph)
    problem, ref = cvxpy_ref.solve(graph, {"x": np.array([1.0, 0.0])})
    assert ref.ok and ref.residual < 1e-8
    x, u = ref.x, ref.u[:, 0]
    assert x[0].tolist() == pytest.approx([1.0, 0.0])                       # x_0 is given, violates x[1] <= -0.02
    assert np.all(x[1:, 1] <= -0.02 + 1e-8)                                  # state-only: x_1..x_T
    assert np.all(np.abs(u) <= 0.5 + 1e-8) and np.isclose(np.abs(u).max(), 0.5)   # an active box
    assert np.all(u - x[:-1, 1] <= 0.45 + 1e-8)                              # with a control: t = 0..T-1
    assert np.isclose(problem.objective(ref.x, ref.u), ref.cost)


# ---------------------------------------------------------------- qp plans and kinks

def _speed_limit(vmax: str) -> planlang.Plan:
    text = (ROOT / "examples" / "speed_limit_qp.plan").read_text()
    return planlang.loads(text.replace("param vmax = 0.75", f"param vmax = {vmax}"), "speed_limit_qp.plan")


def test_qp_example_agrees_with_cvxpy_and_fd():
    report = planlang.check(planlang.load(ROOT / "examples" / "speed_limit_qp.plan"))
    assert report.ok, report.render()
    assert all(row.verdict is Verdict.OK for row in report.rows), report.render()


def test_a_degenerate_active_set_is_reported_as_a_kink():
    """vmax = 0.8 = 8 steps of full force: the force bound and the speed limit become active together,
    so the loss has a kink in vmax; the one-sided derivatives differ and the project's lies between."""
    report = planlang.check(_speed_limit("0.8"))
    row = report["dL/dvmax"]
    assert row.verdict is Verdict.KINK, report.render()
    assert report.ok
    assert "one-sided derivatives" in row.note


def test_a_gradient_outside_the_one_sided_bracket_still_fails(monkeypatch):
    real = checking.project_autograd

    def scaled(*args):
        side = real(*args)
        side.derivatives = {k: 1.5 * v for k, v in side.derivatives.items()}
        return side

    monkeypatch.setattr(checking, "project_autograd", scaled)
    report = planlang.check(_speed_limit("0.8"))
    assert report["dL/dvmax"].verdict is Verdict.FAIL
    assert not report.ok


def test_kink_needs_differing_one_sided_derivatives():
    smooth = np.array([2.0])
    assert not checking.kink(smooth, smooth * (1 + 1e-9), smooth, 1e-5)
    assert checking.kink(np.array([1.0]), np.array([2.0]), np.array([1.5]), 1e-5)
    assert not checking.kink(np.array([1.0]), np.array([2.0]), np.array([3.0]), 1e-5)
