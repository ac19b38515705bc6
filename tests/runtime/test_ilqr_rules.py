"""iLQR's stopping rule and its gradient rule for failed elements (runtime/ilqr.py).

Gradient rule (every solver, as runtime/lqr.py): a failed (NUMERICAL) element returns NaN x, u
and cost; its own inputs get NaN gradients when the loss reads it, and when the loss masks it
(`torch.where(ok, cost, 0)` or `cost[ok]`) it contributes nothing to shared parameters.
"""
import pytest
import torch

from runtime.ilqr import ILQROptions, ILQRProblem, converged_step, ilqr
from runtime.status import Status

T = 15


def damped_pendulum(theta: torch.Tensor) -> ILQRProblem:
    def dynamics(x, u):
        return torch.stack((x[:, 0] + 0.1 * x[:, 1],
                            x[:, 1] + 0.1 * (u[:, 0] - theta * torch.sin(x[:, 0]))), 1)

    def stage_cost(x, u):            # theta in the cost too: a NaN state must not poison it
        return (1 + 0.1 * theta) * (x * x).sum(1) + 0.1 * (u * u).sum(1)

    return ILQRProblem(dynamics, stage_cost, lambda x: 10 * (x * x).sum(1), lower=-3.0, upper=3.0)


def batch_with_a_failure():
    theta = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    x0 = torch.tensor([[1.0, 0.0], [1e200, 0.0], [0.5, 0.2]], dtype=torch.float64,
                      requires_grad=True)
    return theta, x0


def solve(theta, x0):
    return ilqr(damped_pendulum(theta), x0, torch.zeros(x0.shape[0], T, 1, dtype=x0.dtype),
                ILQROptions(max_iters=100))


def test_a_failed_element_is_nan_and_the_others_solve():
    theta, x0 = batch_with_a_failure()
    sol = solve(theta, x0)
    assert sol.status.tolist() == [Status.SOLVED, Status.NUMERICAL, Status.SOLVED]
    assert sol.x[1].isnan().all() and sol.u[1].isnan().all() and sol.cost[1].isnan()
    assert sol.x[[0, 2]].isfinite().all()
    with torch.no_grad():
        plain = solve(theta, x0)
    assert plain.x[1].isnan().all() and plain.cost[1].isnan()


@pytest.mark.parametrize("idiom", ["where", "index"])
def test_masked_failure_leaves_shared_gradients_exact(idiom):
    theta, x0 = batch_with_a_failure()
    sol = solve(theta, x0)
    ok = sol.status == Status.SOLVED
    loss = (torch.where(ok, sol.cost, 0.0).sum() if idiom == "where" else sol.cost[ok].sum())
    g_theta, g_x0 = torch.autograd.grad(loss, (theta, x0))
    assert (g_x0[1] == 0).all() and g_x0[[0, 2]].isfinite().all()
    # The shared gradient is the sum over the good elements solved alone.
    theta_alone = theta.detach().clone().requires_grad_(True)
    good = x0.detach()[[0, 2]]
    (expected,) = torch.autograd.grad(solve(theta_alone, good).cost.sum(), theta_alone)
    assert torch.isfinite(g_theta) and torch.allclose(g_theta, expected, rtol=1e-10)


@pytest.mark.parametrize("read", ["cost", "x", "u"])
def test_reading_a_failed_element_gives_nan_gradients(read):
    theta, x0 = batch_with_a_failure()
    sol = solve(theta, x0)
    g_theta, g_x0 = torch.autograd.grad(getattr(sol, read).sum(), (theta, x0))
    assert g_theta.isnan() and g_x0[1].isnan().all()
    assert g_x0[[0, 2]].isfinite().all()


def test_stopping_rule_is_relative_with_an_absolute_floor():
    options = ILQROptions(tol=1e-6, cost_tol=1e-9)
    u = torch.tensor([[[1e4]], [[0.1]], [[0.1]], [[0.1]]], dtype=torch.float64)
    k = torch.tensor([[[1e-3]], [[5e-7]], [[1e-3]], [[1e-3]]], dtype=torch.float64)
    J = torch.tensor([1.0, 1.0, 1e6, 1.0], dtype=torch.float64)
    predicted = torch.tensor([-1.0, -1.0, -1e-4, -1e-4], dtype=torch.float64)
    # 1e-3 <= 1e-6 * 1e4: relative step; 5e-7 <= 1e-6 * 1: floor; 1e-4 <= 1e-9 * 1e6: relative
    # cost; 1e-4 > 1e-9 * max(1, 1): neither.
    assert converged_step(k, u, predicted, J, options).tolist() == [True, True, True, False]
    off = ILQROptions(tol=1e-6, cost_tol=0.0)
    assert converged_step(k, u, predicted, J, off).tolist() == [True, True, False, False]


def test_default_rule_stops_where_the_cost_has_converged():
    """A poorly scaled control (u ~ 1e3, as a joint torque in mN m): the absolute step test of
    old stalls on rounding in float32, the relative rules stop with the same optimum."""
    scale = 1e3

    def dynamics(x, u):
        return torch.stack((x[:, 0] + 0.1 * x[:, 1], x[:, 1] + 0.1 * u[:, 0] / scale), 1)

    problem = ILQRProblem(dynamics, lambda x, u: (x * x).sum(1) + 1e-2 * (u[:, 0] / scale) ** 2,
                          lambda x: 100 * (x * x).sum(1))
    x0 = torch.tensor([[1.0, 0.0]])
    u0 = torch.zeros(1, 30, 1)
    sol = ilqr(problem, x0, u0, ILQROptions(max_iters=100))
    ref = ilqr(problem, x0.double(), u0.double(), ILQROptions(max_iters=100, tol=1e-12, cost_tol=0.0))
    assert sol.status.item() == Status.SOLVED and ref.status.item() == Status.SOLVED
    assert torch.allclose(sol.cost.double(), ref.cost, rtol=1e-5)
    stalled = ilqr(problem, x0, u0, ILQROptions(max_iters=30, tol=1e-7 / scale, cost_tol=0.0))
    assert stalled.status.item() == Status.MAX_ITERS
