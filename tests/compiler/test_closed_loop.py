"""Closed-loop MPC: `PlanModule.simulate` and `PlanModule.step`, in process and in float64."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

import planlang
from runtime.status import Status

ROOT = Path(__file__).resolve().parents[2]
F64 = torch.float64

# The double integrator written out here (the example may change): q = [1, 1], r = 0.1, goal 0.
DI = """\
plan double_integrator
const dt = 0.1
horizon 20
state x[2] = [1.0, 0.0]
control u[1]
param A[2, 2] = [[1, dt], [0, 1]]
input goal[2] = [0, 0]
learn q[2] = [1, 1] positive
learn r = 0.1 positive
dynamics x' = A @ x + [0, dt] * u
cost stage = sum(q * (x - goal)^2) + r * sum(u^2)
cost final = 10 * sum((x - goal)^2)
solve lqr
"""

# The same states and controls, another true system: friction on the velocity.
FRICTION = """\
plan with_friction
const dt = 0.1
horizon 5
state x[2]
control u[1]
param A[2, 2] = [[1, dt], [0, 0.8]]
dynamics x' = A @ x + [0, dt] * u
cost stage = sum(x^2)
solve lqr
"""


def _compile(text: str, name: str = "test.plan"):
    return planlang.compile(planlang.loads(text, name), dtype=F64)


@pytest.fixture(scope="module")
def di():
    return _compile(DI, "double_integrator.plan")


@pytest.fixture(scope="module")
def example_di():
    return planlang.compile(planlang.load(ROOT / "examples" / "double_integrator.plan"), dtype=F64)


def _realized_cost(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The double integrator's costs summed along an executed trajectory (goal 0, q = 1, r = 0.1)."""
    return (x[:, :-1] ** 2).sum((1, 2)) + 0.1 * (u ** 2).sum((1, 2)) + 10 * (x[:, -1] ** 2).sum(1)


def test_simulate_matches_a_manual_receding_horizon_loop(di):
    steps = 6
    x0 = torch.tensor([[1.0, 0.0], [-0.5, 2.0]], dtype=F64)
    with torch.no_grad():
        sim = di.simulate(steps, x=x0)
        x, xs, us = x0, [x0], []
        for _ in range(steps):
            u = di(x=x).u[:, 0]                      # solve, apply the first control, step
            x = di.step(x, u)
            xs.append(x)
            us.append(u)
    xs, us = torch.stack(xs, 1), torch.stack(us, 1)
    assert sim.x.shape == (2, steps + 1, 2) and sim.u.shape == (2, steps, 1) and sim.cost.shape == (2,)
    assert sim.x.dtype == F64
    torch.testing.assert_close(sim.x, xs, rtol=0, atol=1e-10)
    torch.testing.assert_close(sim.u, us, rtol=0, atol=1e-10)
    torch.testing.assert_close(sim.cost, _realized_cost(xs, us), rtol=0, atol=1e-10)
    assert sim.ok.all()
    assert sim["x"].shape == (2, steps + 1, 2) and sim["u"].shape == (2, steps, 1)   # the layout is set


def test_step_is_one_step_of_the_dynamics(di):
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=F64)
    u = torch.tensor([[0.5], [-2.0]], dtype=F64)
    expected = torch.stack([x[:, 0] + 0.1 * x[:, 1], x[:, 1] + 0.1 * u[:, 0]], 1)
    torch.testing.assert_close(di.step(x, u), expected, rtol=0, atol=1e-14)
    A = torch.tensor([[1.0, 0.0], [0.0, 0.5]], dtype=F64)                # values bind params
    torch.testing.assert_close(di.step(x, u, A=A), torch.stack([x[:, 0], 0.5 * x[:, 1] + 0.1 * u[:, 0]], 1),
                               rtol=0, atol=1e-14)


def test_closed_loop_first_step_is_the_open_loop_first_step(example_di):
    with torch.no_grad():
        open_loop = example_di()
        sim = example_di.simulate(4)
    torch.testing.assert_close(sim.u[:, 0], open_loop.u[:, 0], rtol=0, atol=1e-10)
    torch.testing.assert_close(sim.x[:, :2], open_loop.x[:, :2], rtol=0, atol=1e-10)
    assert not torch.allclose(sim.x[:, 4], open_loop.x[:, 4], atol=1e-6)      # re-planned since


def _friction_with_initial_state() -> str:
    return FRICTION.replace("state x[2]", "state x[2] = [0.0, 0.0]")


def test_another_true_system_changes_the_trajectory(di):
    system = _compile(_friction_with_initial_state(), "friction.plan")
    steps = 5
    x0 = torch.tensor([1.0, 0.5], dtype=F64)
    with torch.no_grad():
        nominal = di.simulate(steps, x=x0)
        sim = di.simulate(steps, system=system, x=x0)
        assert sim.x.shape == nominal.x.shape and sim.u.shape == nominal.u.shape
        torch.testing.assert_close(sim.x[:, 0], x0.unsqueeze(0))   # the plan's start, not the system's
        torch.testing.assert_close(sim.u[:, 0], nominal.u[:, 0], rtol=0, atol=1e-12)   # same controller
        assert not torch.allclose(sim.x[:, 1:], nominal.x[:, 1:], atol=1e-6)
        for t in range(steps):
            # the truth moves the state; the controller re-plans from wherever it lands
            torch.testing.assert_close(sim.x[:, t + 1], system.step(sim.x[:, t], sim.u[:, t]), rtol=0, atol=1e-12)
            torch.testing.assert_close(sim.u[:, t], di(x=sim.x[:, t]).u[:, 0], rtol=0, atol=1e-10)
        # realized with the plan's costs along the true trajectory
        torch.testing.assert_close(sim.cost, _realized_cost(sim.x, sim.u), rtol=0, atol=1e-10)


def test_a_mismatched_system_layout_raises(di):
    three_states = _compile(_friction_with_initial_state()
                            .replace("state x[2] = [0.0, 0.0]", "state x[3] = [0.0, 0.0, 0.0]")
                            .replace("param A[2, 2] = [[1, dt], [0, 0.8]]", "param A[3, 3] = eye(3)")
                            .replace("[0, dt] * u", "[0, dt, 0] * u"), "three.plan")
    two_controls = _compile(_friction_with_initial_state()
                            .replace("control u[1]", "control u[2]")
                            .replace("[0, dt] * u", "[0, dt] * u[0] + [0, dt] * u[1]"), "two.plan")
    with pytest.raises(ValueError, match="n=3"):
        di.simulate(2, system=three_states)
    with pytest.raises(ValueError, match="m=2"):
        di.simulate(2, system=two_controls)
    with pytest.raises(ValueError, match="steps"):
        di.simulate(0)


def test_step_status_and_status(di):
    x0 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, -2.0]], dtype=F64)
    with torch.no_grad():
        sim = di.simulate(3, x=x0)
    assert sim.step_status.shape == (3, 3)
    assert sim.status.shape == (3,)
    assert (sim.step_status == Status.SOLVED).all() and (sim.status == Status.SOLVED).all()
    torch.testing.assert_close(sim.status, sim.step_status.max(dim=1).values)
    assert sim.iterations is None                    # lqr is not iterative
    assert "closed loop" in sim.solver


def test_simulate_is_differentiable(di):
    x0 = torch.tensor([1.0, 0.0], dtype=F64, requires_grad=True)
    sim = di.simulate(3, x=x0)
    (grad,) = torch.autograd.grad(sim.cost.sum(), x0)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_step_needs_no_initial_state():
    module = _compile(FRICTION, "friction.plan")
    x, u = torch.tensor([[1.0, 1.0]], dtype=F64), torch.tensor([[1.0]], dtype=F64)
    torch.testing.assert_close(module.step(x, u), torch.tensor([[1.1, 0.9]], dtype=F64))


def test_a_true_system_needs_no_initial_state(di):
    di.simulate(2, system=_compile(FRICTION, "friction.plan"))


def test_a_true_system_of_another_dtype(di):
    system = planlang.compile(planlang.loads(_friction_with_initial_state(), "friction.plan"), dtype=torch.float32)
    sim = di.simulate(2, system=system)
    assert sim.x.dtype == F64


def test_warm_starts_cut_ilqr_iterations():
    """Pendulum near upright, short horizon: each re-plan warm-started from the shifted controls
    converges in fewer iterations than a solve from zero controls at the same state."""
    text = (ROOT / "examples" / "pendulum.plan").read_text()
    text = re.sub(r"^horizon\s+\d+", "horizon 15", text, flags=re.M)
    module = planlang.compile(planlang.loads(text, "pendulum.plan"), dtype=F64)
    assert module.solver == "ilqr"
    x0 = torch.tensor([math.pi - 0.3, 0.0], dtype=F64)
    steps = 4
    with torch.no_grad():
        sim = module.simulate(steps, x=x0)
        assert sim.ok.all(), sim.step_status
        cold = [module(x=sim.x[:, t]) for t in range(steps)]
        assert all(sol.ok.all() for sol in cold)
        # the manual warm-started loop reproduces simulate's controls and summed iterations
        warm, x, iters = None, sim.x[:, 0], []
        for t in range(steps):
            sol = module(warm_start=warm, x=x)
            torch.testing.assert_close(sol.u[:, 0], sim.u[:, t], rtol=0, atol=1e-10)
            iters.append(int(sol.iterations))
            x = module.step(x, sol.u[:, 0])
            warm = torch.cat([sol.u[:, 1:], sol.u[:, -1:]], dim=1)
    cold_iters = [int(sol.iterations) for sol in cold]
    assert int(sim.iterations) == sum(iters)
    assert iters[0] == cold_iters[0]                 # the first solve is cold either way
    assert sum(iters[1:]) < sum(cold_iters[1:]), (iters, cold_iters)
