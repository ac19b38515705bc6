"""Tests of trajectory optimization by descent (runtime/descent.py) and its backward modes.

References: central finite differences of tight re-solves, the unrolled iterations at
convergence, the control-limited iLQR (`runtime.ilqr`) for the same bounded problem, and
per-row solves for batch independence.
"""
import pytest
import torch

from runtime.descent import DescentMethod, DescentOptions, DescentProblem, descent
from runtime.ilqr import ILQROptions, ILQRProblem, ilqr
from runtime.implicit import Backward
from runtime.status import Status

F64 = torch.float64
DT = 0.1
B, T = 3, 10
LBFGS = DescentOptions(iters=200, lr=1.0, method=DescentMethod.LBFGS, tol=1e-12,
                       backward=Backward.implicit(iters=60, tol=1e-14))


def generator(seed):
    return torch.Generator().manual_seed(seed)


class Pendulum:
    """Damped pendulum x = (theta, omega), torque u, with learnable damping, goal and weight."""

    def __init__(self, seed=0, requires_grad=True):
        g = generator(seed)
        self.damping = torch.tensor(0.3, dtype=F64)
        self.weight = torch.tensor(0.05, dtype=F64)
        self.goal = torch.tensor([1.0, 0.0], dtype=F64)
        self.x0 = 0.5 * torch.randn(B, 2, generator=g, dtype=F64)
        self.upper = torch.full((1, T, 1), 1.0, dtype=F64)
        for p in self.parameters():
            p.requires_grad_(requires_grad)

    def parameters(self):
        return [self.damping, self.weight, self.goal, self.x0, self.upper]

    def problem(self, bounded=False):
        def dynamics(x, u):
            th, om = x.unbind(-1)
            om = om + DT * (-9.8 * torch.sin(th) - self.damping * om + u[..., 0])
            return torch.stack((th + DT * om, om), -1)

        def stage_cost(x, u):
            return 0.1 * ((x - self.goal) ** 2).sum(-1) + self.weight * (u ** 2).sum(-1)

        def final_cost(x):
            return 10.0 * ((x - self.goal) ** 2).sum(-1)

        if bounded:
            return DescentProblem(dynamics, stage_cost, final_cost, -self.upper, self.upper)
        return DescentProblem(dynamics, stage_cost, final_cost)


def loss_weights(seed=1):
    g = generator(seed)
    return (torch.randn(B, T + 1, 2, generator=g, dtype=F64),
            torch.randn(B, T, 1, generator=g, dtype=F64))


def loss(sol, weights):
    wx, wu = weights
    return (wx * sol.x).sum() + (wu * sol.u).sum()


def solve_loss(pend, options, bounded=False, weights=None):
    sol = descent(pend.problem(bounded), pend.x0, torch.zeros(B, T, 1, dtype=F64), options)
    return loss(sol, weights or loss_weights()), sol


def directional_fd(pend, direction, options, bounded=False, h=1e-5):
    """Central difference of the loss along `direction` (one tensor per parameter)."""
    values = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for p, d in zip(pend.parameters(), direction):
                p.add_(sign * h * d)
            values.append(solve_loss(pend, options, bounded)[0].item())
            for p, d in zip(pend.parameters(), direction):
                p.sub_(sign * h * d)
    return (values[0] - values[1]) / (2 * h)


def random_directions(pend, seed=2):
    g = generator(seed)
    return [torch.randn(p.shape, generator=g, dtype=F64) for p in pend.parameters()]


def relative(a, b):
    return (a - b).abs().max().item() / max(b.abs().max().item(), 1e-300)


# ---- gradients -------------------------------------------------------------------------------

def test_implicit_gradient_matches_unrolling_and_finite_differences():
    pend = Pendulum()
    L, sol = solve_loss(pend, LBFGS)
    assert (sol.status == Status.SOLVED).all()
    params = pend.parameters()[:4]
    implicit = torch.autograd.grad(L, params)
    L_unroll, sol_unroll = solve_loss(pend, DescentOptions(**{**LBFGS.__dict__,
                                                              "backward": Backward.unroll()}))
    assert torch.equal(sol_unroll.u, sol.u)
    unrolled = torch.autograd.grad(L_unroll, params)
    for a, b in zip(implicit, unrolled):
        assert relative(a, b) < 1e-6
    # one central difference per parameter group, along a random direction
    for i, d in enumerate(random_directions(pend)[:4]):
        direction = [d if j == i else torch.zeros_like(p) for j, p in enumerate(pend.parameters())]
        fd = directional_fd(pend, direction, LBFGS)
        analytic = (implicit[i] * d).sum().item()
        assert abs(analytic - fd) <= 1e-6 * abs(fd), (i, analytic, fd)


def test_neumann_backward_matches_cg():
    """Neumann with its step estimated per row (power iteration on the reduced Hessian)."""
    pend = Pendulum()
    L, sol = solve_loss(pend, LBFGS)
    cg = torch.autograd.grad(L, pend.damping)[0]
    neumann_options = DescentOptions(**{**LBFGS.__dict__,
                                        "backward": Backward.implicit("neumann", iters=500)})
    L_n, _ = solve_loss(pend, neumann_options)
    neumann = torch.autograd.grad(L_n, pend.damping)[0]
    assert relative(neumann, cg) < 1e-6


def test_truncated_with_every_step_recorded_equals_unroll():
    pend = Pendulum()
    adam = DescentOptions(iters=15, lr=0.2, tol=0.0)
    grads = []
    for backward in (Backward.unroll(), Backward.truncated(15), Backward.truncated(3)):
        L, sol = solve_loss(pend, DescentOptions(**{**adam.__dict__, "backward": backward}))
        grads.append(torch.autograd.grad(L, pend.damping)[0])
        assert sol.iterations.tolist() == [15] * B
    assert torch.allclose(grads[0], grads[1], rtol=1e-12, atol=0)
    assert not torch.allclose(grads[0], grads[2], rtol=1e-3, atol=0)


# ---- bounds ----------------------------------------------------------------------------------

def test_bounded_solution_matches_ilqr_and_finite_differences():
    pend = Pendulum(seed=3)
    pend.x0.data[:, 0] = torch.tensor([-1.0, 0.2, 2.5], dtype=F64)     # some torques saturate
    L, sol = solve_loss(pend, LBFGS, bounded=True)
    assert (sol.status == Status.SOLVED).all()
    active = sol.u.detach().abs() >= 1.0
    assert active.any() and (~active).any()
    problem = pend.problem(bounded=True)
    ref = ilqr(ILQRProblem(problem.dynamics, problem.stage_cost, problem.final_cost,
                           problem.lower, problem.upper), pend.x0,
               torch.zeros(B, T, 1, dtype=F64), ILQROptions(max_iters=200, tol=1e-11, cost_tol=0.0))
    assert (ref.status == Status.SOLVED).all()
    assert torch.allclose(sol.u, ref.u, atol=1e-7, rtol=0)
    ours = torch.autograd.grad(L, pend.parameters())
    theirs = torch.autograd.grad(loss(ref, loss_weights()), pend.parameters())
    for a, b in zip(ours, theirs):
        assert relative(a, b) < 1e-5
    assert ours[4].abs().sum() > 0                          # the bound itself gets a gradient
    d = random_directions(pend, seed=4)
    fd = directional_fd(pend, d, LBFGS, bounded=True)
    analytic = sum((g * di).sum() for g, di in zip(ours, d)).item()
    assert abs(analytic - fd) <= 1e-6 * abs(fd)


def test_adam_reaches_the_lbfgs_solution_within_bounds():
    pend = Pendulum(seed=3, requires_grad=False)
    pend.x0[:, 0] = torch.tensor([-1.0, 0.2, 2.5], dtype=F64)
    problem = pend.problem(bounded=True)
    u0 = torch.zeros(B, T, 1, dtype=F64)
    sol = descent(problem, pend.x0, u0, DescentOptions(iters=400, lr=0.05, tol=1e-4))
    ref = descent(problem, pend.x0, u0, LBFGS)
    assert (sol.status == Status.SOLVED).all() and (sol.iterations < 400).all()
    assert (sol.u.abs() <= 1.0).all() and sol.residual.max() <= 1e-4
    assert torch.allclose(sol.u, ref.u, atol=1e-2, rtol=0)
    assert (sol.cost >= ref.cost - 1e-12).all()


# ---- batch and status ------------------------------------------------------------------------

def test_batch_elements_are_independent():
    pend = Pendulum(seed=5)
    problem = pend.problem()
    together = descent(problem, pend.x0, torch.zeros(B, T, 1, dtype=F64), LBFGS)
    (g,) = torch.autograd.grad(together.u[0].sum(), pend.x0)
    assert (g[1:] == 0).all() and (g[0] != 0).any()
    for b in range(B):
        alone = descent(problem, pend.x0[b:b + 1], torch.zeros(1, T, 1, dtype=F64), LBFGS)
        assert torch.allclose(alone.u, together.u[b:b + 1], atol=1e-12, rtol=0)
        assert alone.iterations.item() == together.iterations[b].item()
        assert alone.status.item() == together.status[b].item()


@pytest.mark.parametrize("method", list(DescentMethod))
def test_nan_is_reported_not_solved(method):
    """Row 1's cost has log(u + 2) and a target beyond -2: Adam steps into NaN; row 2 starts
    at an overflowing state. Both are NUMERICAL with NaN outputs; row 0 is unaffected."""
    target = torch.tensor([0.0, -3.0, 0.0], dtype=F64)
    theta = torch.tensor(1.0, dtype=F64, requires_grad=True)

    def dynamics(x, u):
        return x + DT * theta * u

    def stage_cost(x, u):
        return ((u[..., 0] - target) ** 2 + torch.log(u[..., 0] + 2.0) * (target < 0)
                + (x ** 2).sum(-1))

    def final_cost(x):
        return (x ** 2).sum(-1)

    x0 = torch.tensor([[0.5], [0.5], [1e200]], dtype=F64)
    options = DescentOptions(iters=300 if method is DescentMethod.ADAM else 40, lr=0.3,
                             method=method, tol=1e-6)
    sol = descent(DescentProblem(dynamics, stage_cost, final_cost), x0,
                  torch.zeros(3, 4, 1, dtype=F64), options)
    assert sol.status[0] == Status.SOLVED and sol.status[2] == Status.NUMERICAL
    if method is DescentMethod.ADAM:
        assert sol.status[1] == Status.NUMERICAL
    else:   # the line search refuses NaN steps: row 1 runs along J -> -inf, never solved
        assert sol.status[1] != Status.SOLVED
    for out in (sol.x, sol.u, sol.cost):
        assert torch.isfinite(out[0]).all()
    assert torch.isnan(sol.u[2]).all() and torch.isnan(sol.cost[2])
    (g,) = torch.autograd.grad(sol.cost[0], theta)
    assert torch.isfinite(g)


def test_invalid_inputs_raise():
    pend = Pendulum(requires_grad=False)
    with pytest.raises(ValueError, match=r"x0 \(B, n\) and u_init \(B, T, m\)"):
        descent(pend.problem(), pend.x0, torch.zeros(T, 1, dtype=F64))
    with pytest.raises(ValueError, match="lower <= upper"):
        descent(DescentProblem(*list(pend.problem().__dict__.values())[:3], 1.0, -1.0),
                pend.x0, torch.zeros(B, T, 1, dtype=F64))
    with pytest.raises(ValueError, match="broadcast"):
        descent(DescentProblem(*list(pend.problem().__dict__.values())[:3],
                               torch.zeros(2, 2), None),
                pend.x0, torch.zeros(B, T, 1, dtype=F64))
    with pytest.raises(ValueError, match="lr > 0"):
        DescentOptions(lr=0.0)
    with pytest.raises(TypeError, match="DescentMethod"):
        DescentOptions(method="adam")
