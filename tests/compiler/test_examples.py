"""Every example plan compiles and solves; LQR plans agree across lqr, qp and ilqr; learning works."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import planlang
from planlang.checks import cross_check

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.plan"))
# joint plans (`agents N`) take scenes, not defaults: tests/compiler/test_joint_plans.py solves them
SINGLE = [p for p in EXAMPLES if not any(line.startswith("agents ") for line in p.read_text().splitlines())]


@pytest.mark.parametrize("path", SINGLE, ids=lambda p: p.stem)
def test_example_solves(path):
    weights = ROOT / "examples" / "weights" / f"{path.stem}.pt"
    module = planlang.compile(planlang.load(path), dtype=torch.float64, weights=weights if weights.exists() else None)
    with torch.no_grad():
        sol = module()
    if module.info.family == "grid":          # trained or exact: reaches the goal; untrained: shapes only
        if weights.exists() or module.solver == "value_iteration":
            assert sol.reached.all(), (path.stem, sol.path)
        assert sol.values.shape[1:] == module.info.grid.shape
        return
    assert sol.ok.all(), (path.stem, sol.status_names(), sol.iterations)
    assert torch.isfinite(sol.x).all() and torch.isfinite(sol.u).all()


LQR_EXAMPLES = [p for p in SINGLE if planlang.load(p).graph.nodes["solve"]["solver"] == "lqr"]


@pytest.mark.parametrize("path", LQR_EXAMPLES, ids=lambda p: p.stem)
def test_lqr_plans_agree_under_qp_and_ilqr(path):
    """Solutions and gradients (x0, inputs, params, learnables) to 1e-8 relative in float64."""
    report = cross_check(planlang.load(path))
    assert report.solvers == ["lqr", "qp", "ilqr"]
    assert report.ok, report.render()
    assert max(r.rel_error for r in report.rows) < 1e-8


def test_cross_check_fails_when_a_solver_is_wrong(monkeypatch):
    from compiler.lower import backends

    real = backends.ILQRBackend.__call__

    def biased(self, env, x0, like, warm=None):
        sol = real(self, env, x0, like, warm)
        sol.u = sol.u * (1 + 1e-6)
        return sol

    monkeypatch.setattr(backends.ILQRBackend, "__call__", biased)
    report = cross_check(planlang.load(ROOT / "examples" / "double_integrator.plan"))
    assert not report.ok
    assert any(r.quantity == "u" and r.solver == "ilqr" and not r.ok for r in report.rows)


def test_learning_costs_from_demonstrations():
    spec = importlib.util.spec_from_file_location("learn_lqr_costs", ROOT / "examples" / "learn_lqr_costs.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    losses, q, _ = example.learn(steps=150, batch=16, verbose=False)
    assert losses[-1] < 1e-3 * losses[0]
    assert torch.allclose(q, example.TRUE_Q.double(), rtol=2e-2)


def test_ilqr_newton_model_reaches_the_same_solution():
    """`solve ilqr(model=newton)` adds the dynamics curvature: same optimum, no more iterations."""
    text = (ROOT / "examples" / "car_obstacle.plan").read_text()
    plans = {model: planlang.loads(text.replace("solve ilqr(", f"solve ilqr(model={model}, "), "car.plan")
             for model in ("gauss_newton", "newton")}
    sols = {}
    for model, plan in plans.items():
        with torch.no_grad():
            sols[model] = planlang.compile(plan, dtype=torch.float64)()
    assert sols["newton"].ok.all() and sols["gauss_newton"].ok.all()
    torch.testing.assert_close(sols["newton"].u, sols["gauss_newton"].u, atol=1e-5, rtol=0)
    assert int(sols["newton"].iterations) <= int(sols["gauss_newton"].iterations)
