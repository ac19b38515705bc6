"""Multiple-shooting iLQR (runtime.ilqr_shooting): the same optimum and gradients as single
shooting, states that satisfy the dynamics, state guesses, and the plan-level spelling."""
from pathlib import Path

import pytest
import torch

import planlang
from planlang.errors import PlanError
from runtime.ilqr import ILQROptions, ILQRProblem, ILQRShooting, ilqr
from runtime.status import Status

ROOT = Path(__file__).resolve().parents[2]
MULTIPLE = ILQROptions(max_iters=200, shooting=ILQRShooting.MULTIPLE)


def pendulum(damping: torch.Tensor) -> ILQRProblem:
    """A torque-limited pendulum brought from near the bottom towards upright (theta = pi)."""
    def dynamics(x, u):
        th, w = x[:, :1], x[:, 1:]
        return torch.cat((th + 0.05 * w, w + 0.05 * (-9.81 * torch.sin(th) - damping * w + 3 * u)), 1)

    def stage_cost(x, u):
        return 0.1 * (1 + torch.cos(x[:, 0])) + 0.01 * (u * u).sum(1)

    def final_cost(x):
        return 10 * (1 + torch.cos(x[:, 0])) + x[:, 1] ** 2

    return ILQRProblem(dynamics, stage_cost, final_cost, lower=-1.0, upper=1.0)


def start(batch: int = 2, T: int = 30):
    x0 = torch.tensor([[0.3, 0.0], [-0.2, 0.5]], dtype=torch.float64)[:batch]
    return x0, torch.zeros(batch, T, 1, dtype=torch.float64)


def test_multiple_shooting_reaches_the_single_shooting_optimum():
    problem = pendulum(torch.tensor(0.1, dtype=torch.float64))
    x0, u0 = start()
    tight = dict(max_iters=300, tol=1e-10, cost_tol=0.0)
    single = ilqr(problem, x0, u0, ILQROptions(**tight))
    multiple = ilqr(problem, x0, u0, ILQROptions(**tight, shooting=ILQRShooting.MULTIPLE))
    assert (single.status == Status.SOLVED).all() and (multiple.status == Status.SOLVED).all()
    torch.testing.assert_close(multiple.cost, single.cost, rtol=1e-7, atol=0)
    torch.testing.assert_close(multiple.u, single.u, rtol=0, atol=1e-7)


def test_returned_states_satisfy_the_dynamics():
    problem = pendulum(torch.tensor(0.1, dtype=torch.float64))
    x0, u0 = start()
    sol = ilqr(problem, x0, u0, MULTIPLE)
    for t in range(u0.shape[1]):
        torch.testing.assert_close(sol.x[:, t + 1], problem.dynamics(sol.x[:, t], sol.u[:, t]),
                                   rtol=0, atol=1e-12)


def test_implicit_gradients_match_finite_differences_and_single_shooting():
    damping = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    x0, u0 = start()
    x0 = x0.clone().requires_grad_(True)

    def loss(d, x, options):
        return ilqr(pendulum(d), x, u0, options).cost.sum()

    grads = torch.autograd.grad(loss(damping, x0, MULTIPLE), (damping, x0))
    single = torch.autograd.grad(loss(damping, x0, ILQROptions(max_iters=200)), (damping, x0))
    for g, s in zip(grads, single):
        torch.testing.assert_close(g, s, rtol=1e-6, atol=1e-8)
    h = 1e-6
    with torch.no_grad():
        fd = (loss(damping + h, x0, MULTIPLE) - loss(damping - h, x0, MULTIPLE)) / (2 * h)
        direction = torch.randn_like(x0)
        fd_x = (loss(damping, x0 + h * direction, MULTIPLE)
                - loss(damping, x0 - h * direction, MULTIPLE)) / (2 * h)
    torch.testing.assert_close(grads[0], fd, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close((grads[1] * direction).sum(), fd_x, rtol=1e-5, atol=1e-7)


def test_state_guess_nodes_and_errors():
    problem = pendulum(torch.tensor(0.1, dtype=torch.float64))
    x0, u0 = start(batch=1)
    guess = torch.full((1, 31, 2), torch.nan, dtype=torch.float64)
    guess[..., 0] = torch.linspace(0.3, torch.pi, 31, dtype=torch.float64)   # angle only
    sol = ilqr(problem, x0, u0, MULTIPLE, x_guess=guess)
    assert sol.status.item() == Status.SOLVED
    with pytest.raises(ValueError, match="multiple shooting"):
        ilqr(problem, x0, u0, ILQROptions(), x_guess=guess)
    with pytest.raises(ValueError, match=r"\(B, T\+1, n\)"):
        ilqr(problem, x0, u0, MULTIPLE, x_guess=guess[:, :30])


def test_state_guess_escapes_the_swing_around_minimum():
    """The long-horizon cart-pole: single shooting from u = 0 heads for a swing-around (cost in
    the thousands after 15 iterations; 3180 at its minimum, benchmarks/README.md); multiple
    shooting from the upright nodes balances (cost ~15)."""
    plan = planlang.load(ROOT / "examples" / "cartpole_upright_long.plan")
    with torch.no_grad():
        multiple = planlang.compile(plan, dtype=torch.float64)()
    assert multiple.ok.all() and multiple.cost.item() < 20
    text = (ROOT / "examples" / "cartpole_upright_long.plan").read_text()
    text = text.replace("guess s = [0, 0, 0, 0]", "").replace(", shooting=multiple", "")
    with torch.no_grad():
        single = planlang.compile(planlang.loads(text), dtype=torch.float64, options={"iters": 15})()
    assert single.cost.item() > 100 * multiple.cost.item()


@pytest.mark.parametrize("edit, message", [
    (("solve ilqr(iters=200, shooting=multiple)", "solve ilqr(iters=200)"), "add shooting=multiple"),
    (("solve ilqr(iters=200, shooting=multiple)", "solve mppi"), "solve mppi takes no guess of a state"),
    (("guess s = [0, 0, 0, 0]", "guess s = zeros(100, 4)"), r"\[101, 4\] per stage"),
])
def test_state_guess_errors_are_located(edit, message):
    text = (ROOT / "examples" / "cartpole_upright_long.plan").read_text().replace(*edit)
    with pytest.raises(PlanError, match=message):
        planlang.compile(planlang.loads(text))
