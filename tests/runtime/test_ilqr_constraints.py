"""Constrained iLQR (augmented Lagrangian, runtime/ilqr_constraints.py) against scipy's SLSQP
on small problems (single shooting over the controls, exact gradients from torch), and its
implicit gradients against central finite differences of re-solves, in float64."""
import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from runtime.ilqr import ILQROptions, ILQRProblem, ilqr
from runtime.ilqr_constraints import ConstraintOptions
from runtime.status import Status

DT, T = 0.2, 15
TIGHT = ILQROptions(max_iters=300, tol=1e-10, cost_tol=0.0,
                    constraints=ConstraintOptions(tol=1e-9, max_outer=40))


def point_mass(obstacle: torch.Tensor, goal: torch.Tensor, *, stage_equality=False,
               control_limit=None) -> ILQRProblem:
    """A 2-D point mass (x = position, velocity; u = acceleration) around a disc obstacle of
    radius 0.5 (state inequality), |u| <= 1.5 (mixed nonlinear inequality), at the goal and
    nearly at rest in the end (final equality and inequality); optionally a stage equality
    prescribing the y motion (u_y = -2 v_y - p_y, mixed state-control; the final equality
    then fixes p_x only)."""
    def dynamics(x, u):
        p, v = x[:, :2], x[:, 2:]
        return torch.cat((p + DT * v + 0.5 * DT ** 2 * u, v + DT * u), 1)

    def stage_cost(x, u):
        return 0.1 * (u * u).sum(1) + 0.01 * (x[:, 2:] ** 2).sum(1)

    def final_cost(x):
        return 0.1 * (x[:, 2:] ** 2).sum(1)

    def inequality(x, u):
        d = x[:, :2] - obstacle
        return torch.stack((0.25 - (d * d).sum(1), (u * u).sum(1) - 1.5 ** 2), 1)

    def equality(x, u):
        return (u[:, 1] + 2 * x[:, 3] + x[:, 1])[:, None]

    def final_equality(x):
        return x[:, :1] - goal[:1] if stage_equality else x[:, :2] - goal

    lim = dict(lower=-control_limit, upper=control_limit) if control_limit is not None else {}
    return ILQRProblem(dynamics, stage_cost, final_cost, **lim,
                       inequality=inequality, equality=equality if stage_equality else None,
                       final_inequality=lambda x: ((x[:, 2:] ** 2).sum(1) - 0.01)[:, None],
                       final_equality=final_equality)


def slsqp(problem: ILQRProblem, x0: torch.Tensor, u0: torch.Tensor, bounds=None):
    """Single-shooting NLP of one element with scipy SLSQP; returns (u, cost)."""
    m = u0.shape[-1]

    def rollout(flat):
        u = flat.reshape(1, T, m)
        xs, J = [x0], 0.0
        for t in range(T):
            J = J + problem.stage_cost(xs[-1], u[:, t])
            xs.append(problem.dynamics(xs[-1], u[:, t]))
        return torch.stack(xs, 1), u, J + problem.final_cost(xs[-1])

    def cost(flat):
        return rollout(flat)[2].sum()

    def ineq(flat):                      # scipy wants g >= 0
        x, u, _ = rollout(flat)
        c = [problem.inequality(x[:, t], u[:, t]) for t in range(T)]
        return -torch.cat(c + [problem.final_inequality(x[:, -1])], 1).flatten()

    def eq(flat):
        x, u, _ = rollout(flat)
        h = [problem.final_equality(x[:, -1])]
        if problem.equality is not None:
            h += [problem.equality(x[:, t], u[:, t]) for t in range(T)]
        return torch.cat(h, 1).flatten()

    def np_fn(fn):
        return lambda v: fn(torch.tensor(v)).detach().numpy()

    def np_jac(fn):
        return lambda v: torch.autograd.functional.jacobian(fn, torch.tensor(v)).numpy()

    res = minimize(np_fn(cost), u0.flatten().numpy(), jac=np_jac(cost), method="SLSQP",
                   bounds=bounds, constraints=[
                       dict(type="ineq", fun=np_fn(ineq), jac=np_jac(ineq)),
                       dict(type="eq", fun=np_fn(eq), jac=np_jac(eq))],
                   options=dict(maxiter=500, ftol=1e-14))
    assert res.success, res.message
    return torch.tensor(res.x).reshape(1, T, m), float(res.fun)


@pytest.mark.parametrize("variant", ["path", "stage_equality", "with_limits"])
def test_matches_slsqp(variant):
    obstacle = torch.tensor([1.0, 0.6 if variant == "stage_equality" else 0.15], dtype=torch.float64)
    goal = torch.tensor([2.0, 0.0], dtype=torch.float64)
    limit = 1.2 if variant == "with_limits" else None
    problem = point_mass(obstacle, goal, stage_equality=variant == "stage_equality",
                         control_limit=limit)
    x0 = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.05, 0.2, 0.0]], dtype=torch.float64)
    u0 = torch.zeros(2, T, 2, dtype=torch.float64)
    sol = ilqr(problem, x0, u0, TIGHT)
    assert (sol.status == Status.SOLVED).all(), sol.status
    assert (sol.violation <= 1e-9).all()
    # SLSQP from u = 0 fails on these (LSQ subproblem limits); it starts from our solution
    # perturbed by 0.1 instead, so that agreement means a strict local minimum, not a copy.
    start = sol.u.detach() + 0.1 * torch.randn(sol.u.shape, generator=torch.Generator().manual_seed(0),
                                               dtype=torch.float64)
    for b in range(2):
        bounds = [(-limit, limit)] * (T * 2) if limit is not None else None
        u_ref, J_ref = slsqp(problem, x0[b:b + 1], start[b:b + 1].clamp(-(limit or 9), limit or 9), bounds)
        assert abs(sol.cost[b].item() - J_ref) <= 1e-6 * max(1.0, abs(J_ref))
        assert torch.allclose(sol.u[b], u_ref[0], atol=1e-4)


def test_reports_an_unmet_constraint():
    """An unreachable goal (final equality beyond what |u| <= 1.5 allows in T steps):
    CONSTRAINT_VIOLATION with the violation reported, and the feasible element SOLVED."""
    obstacle = torch.tensor([10.0, 10.0], dtype=torch.float64)
    goal = torch.tensor([[1.0, 0.0], [40.0, 0.0]], dtype=torch.float64)
    problem = point_mass(obstacle, goal)
    options = ILQROptions(max_iters=100, constraints=ConstraintOptions(max_outer=8))
    sol = ilqr(problem, torch.zeros(2, 4, dtype=torch.float64),
               torch.zeros(2, T, 2, dtype=torch.float64), options)
    assert sol.status.tolist() == [Status.SOLVED, Status.CONSTRAINT_VIOLATION]
    assert sol.violation[0] <= 1e-7 and sol.violation[1] > 1.0


def test_implicit_gradient_matches_finite_differences():
    """d loss / d (obstacle, goal, x0) with the obstacle, the final equality and |u| active."""
    g = torch.Generator().manual_seed(3)
    weights = torch.randn(2, T, 2, generator=g, dtype=torch.float64)

    def loss(obstacle, goal, x0):
        sol = ilqr(point_mass(obstacle, goal), x0, torch.zeros(2, T, 2, dtype=torch.float64), TIGHT)
        assert (sol.status == Status.SOLVED).all()
        return (sol.u * weights).sum() + sol.cost.sum()

    inputs = (torch.tensor([1.0, 0.15], dtype=torch.float64),
              torch.tensor([2.0, 0.0], dtype=torch.float64),
              torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.05, 0.2, 0.0]], dtype=torch.float64))
    leaves = [v.clone().requires_grad_(True) for v in inputs]
    analytic = torch.autograd.grad(loss(*leaves), leaves)
    h = 1e-5
    for i, value in enumerate(inputs):
        direction = torch.randn(value.shape, generator=g, dtype=torch.float64)
        with torch.no_grad():
            plus = loss(*[v + h * direction if j == i else v for j, v in enumerate(inputs)])
            minus = loss(*[v - h * direction if j == i else v for j, v in enumerate(inputs)])
        fd = (plus - minus) / (2 * h)
        assert torch.allclose((analytic[i] * direction).sum(), fd, rtol=1e-4, atol=1e-6), (i, fd)
