"""Tests of the sampling planners (runtime/sampling.py): MPPI and CEM.

References: reference implementations written with explicit loops over batch and samples on
the same noise (the formulas of the module docstring), iLQR's optimum on a linear-quadratic
problem, and finite differences with common random numbers (the same generator seed) plus
`torch.autograd.gradcheck` for the gradients.
"""
import dataclasses
import math

import pytest
import torch

from runtime.ilqr import ILQROptions, ILQRProblem, ilqr
from runtime.sampling import (CEMOptions, MPPIOptions, SamplingPlanner, SamplingProblem, cem, mppi,
                              rollout)
from runtime.status import Status

DT = 0.1
F64 = torch.float64


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def double_integrator(weight=0.1, lower=None, upper=None, ref=None, vectorized=False):
    """x = (position, velocity), u = acceleration; stage cost x'x + weight u'u (optionally
    tracking a time-indexed position reference ref (T,)), final cost 10 x'x."""
    def dynamics(x, u, t):
        p, v = x.unbind(-1)
        v = v + DT * u[..., 0]
        return torch.stack((p + DT * v, v), -1)

    def stage_cost(x, u, t):
        target = 0.0 if ref is None else ref[t]
        return (x[..., 0] - target) ** 2 + x[..., 1] ** 2 + weight * (u ** 2).sum(-1)

    def final_cost(x):
        return 10.0 * (x ** 2).sum(-1)

    return SamplingProblem(dynamics, stage_cost, final_cost, lower, upper, vectorized)


def pendulum(damping, weight, lower=-2.0, upper=2.0):
    """A damped pendulum with a non-smooth cost (abs, relu, max)."""
    def dynamics(x, u, t):
        th, om = x.unbind(-1)
        om = om + DT * (-9.8 * torch.sin(th) - damping * om + u[..., 0])
        return torch.stack((th + DT * om, om), -1)

    def stage_cost(x, u, t):
        return ((x[..., 0] - math.pi).abs() + torch.relu(x[..., 1].abs() - 1.0)
                + weight * torch.maximum(u[..., 0] ** 2, u[..., 0].abs()))

    def final_cost(x):
        return 5.0 * (x[..., 0] - math.pi).abs() + x[..., 1] ** 2

    lo, hi = (torch.tensor(b, dtype=F64) for b in (lower, upper))
    return SamplingProblem(dynamics, stage_cost, final_cost, lo, hi)


def start(B=3):
    x0 = torch.stack((torch.linspace(-1.0, 1.0, B, dtype=F64), torch.zeros(B, dtype=F64)), -1)
    return x0, torch.zeros(B, 6, 1, dtype=F64)


# ---- reference implementations (loops over batch and samples) -----------------------------

def reference_cost(problem, x0, v):
    """J of one control sequence v (T, m) from x0 (n,), stage by stage."""
    x, J = x0[None, None], 0.0
    for t in range(v.shape[0]):
        u = v[t][None, None]
        J = J + problem.stage_cost(x, u, t)[0, 0]
        x = problem.dynamics(x, u, t)
    return J + problem.final_cost(x)[0, 0]


def reference_mppi(problem, x0, u_init, options, seed):
    iters, K, lam = options.iters, options.samples, options.temperature
    (B, T, m), sigma = u_init.shape, options.noise
    eps = torch.randn((iters, B, K, T, m), generator=seeded(seed), dtype=F64) * sigma
    lo, hi = problem.lower, problem.upper
    plans = []
    for b in range(B):
        u = u_init[b].clamp(lo, hi)
        for i in range(iters):
            v = [(u + eps[i, b, k]).clamp(lo, hi) for k in range(K)]
            S = torch.stack([reference_cost(problem, x0[b], v[k])
                             + options.control_cost * lam * (u * (v[k] - u)).sum() / sigma ** 2
                             for k in range(K)])
            w = torch.exp(-(S - S.min()) / lam)
            u = sum(w[k] * v[k] for k in range(K)) / w.sum()
        plans.append(u)
    return torch.stack(plans)


def reference_cem(problem, x0, u_init, options, seed):
    iters, K, E, rho = options.iters, options.samples, options.elites, options.momentum
    B, T, m = u_init.shape
    z = torch.randn((iters, B, K, T, m), generator=seeded(seed), dtype=F64)
    lo, hi = problem.lower, problem.upper
    plans = []
    for b in range(B):
        mean, std = u_init[b].clamp(lo, hi), torch.full((T, m), options.noise, dtype=F64)
        for i in range(iters):
            v = [(mean + std * z[i, b, k]).clamp(lo, hi) for k in range(K)]
            J = torch.stack([reference_cost(problem, x0[b], v[k]) for k in range(K)])
            order = torch.argsort(J)[:E].tolist()
            elites = torch.stack([v[k] for k in order])
            if i == iters - 1:
                w = torch.softmax(-J[order] / options.temperature, 0)
                mean = (w[:, None, None] * elites).sum(0)
            else:
                mean = rho * mean + (1 - rho) * elites.mean(0)
                std = (rho * std + (1 - rho) * elites.std(0, correction=0)).clamp_min(
                    options.min_std)
        plans.append(mean)
    return torch.stack(plans)


# ---- forward ---------------------------------------------------------------------------------

@pytest.mark.parametrize("control_cost", [0.0, 1.0])
def test_mppi_matches_the_reference_formula(control_cost):
    problem = pendulum(damping=0.3, weight=0.05)
    x0, u_init = start()
    u_init = u_init + 0.3
    options = MPPIOptions(samples=16, temperature=0.5, noise=0.8, iters=3,
                          control_cost=control_cost)
    solution = mppi(problem, x0, u_init, options, seeded(3))
    expected = reference_mppi(problem, x0, u_init, options, 3)
    torch.testing.assert_close(solution.u, expected, rtol=1e-10, atol=1e-12)
    x, J = rollout(problem, x0, solution.u)
    torch.testing.assert_close(solution.x, x)
    torch.testing.assert_close(solution.cost, J)
    assert (solution.status == Status.SOLVED).all()
    assert (solution.iterations == 3).all()


def test_cem_matches_the_reference_formula():
    problem = pendulum(damping=0.3, weight=0.05)
    x0, u_init = start()
    options = CEMOptions(samples=20, elites=5, iters=3, noise=1.0, momentum=0.25, min_std=0.2,
                         temperature=0.7)
    solution = cem(problem, x0, u_init, options, seeded(4))
    expected = reference_cem(problem, x0, u_init, options, 4)
    torch.testing.assert_close(solution.u, expected, rtol=1e-10, atol=1e-12)
    assert (solution.status == Status.SOLVED).all()


@pytest.mark.parametrize("solve, options", [
    (mppi, MPPIOptions(samples=512, temperature=0.01, noise=0.5, iters=25, control_cost=0.0)),
    (cem, CEMOptions(samples=256, elites=16, iters=25, noise=1.0, temperature=0.01)),
])
def test_reaches_the_optimum_of_a_linear_quadratic_problem(solve, options):
    problem = double_integrator()
    x0 = torch.tensor([[1.0, 0.0], [-1.0, 0.5], [0.5, -1.0]], dtype=F64)
    u_init = torch.zeros(3, 6, 1, dtype=F64)
    solution = solve(problem, x0, u_init, options, seeded(0))
    reference = ilqr(ILQRProblem(lambda x, u: problem.dynamics(x, u, 0),
                                 lambda x, u: problem.stage_cost(x, u, 0), problem.final_cost),
                     x0, u_init, ILQROptions(tol=1e-10))
    initial = rollout(problem, x0, u_init)[1]
    gap = (solution.cost - reference.cost) / (initial - reference.cost)
    assert (gap >= -1e-9).all()          # nothing beats the optimum
    assert (gap < 2e-3).all(), gap       # and the planner closes 99.8% of the gap


def test_same_seed_gives_the_same_plan_and_another_seed_another():
    problem = pendulum(damping=0.3, weight=0.05)
    x0, u_init = start()
    for solve, options in ((mppi, MPPIOptions(samples=32, iters=2)),
                           (cem, CEMOptions(samples=32, elites=4, iters=2))):
        first = solve(problem, x0, u_init, options, seeded(7)).u
        torch.testing.assert_close(solve(problem, x0, u_init, options, seeded(7)).u, first,
                                   rtol=0, atol=0)
        assert not torch.allclose(solve(problem, x0, u_init, options, seeded(8)).u, first)


def test_plans_respect_the_control_limits_and_per_control_noise():
    def dynamics(x, u, t):
        return x + DT * u

    def stage_cost(x, u, t):
        return 10 * (x - 5.0).abs().sum(-1)    # wants u as large as possible

    problem = SamplingProblem(dynamics, stage_cost, lambda x: stage_cost(x, None, None),
                              torch.tensor([-1.0, -0.5], dtype=F64),
                              torch.tensor([1.0, 0.25], dtype=F64))
    x0, u_init = torch.zeros(2, 2, dtype=F64), torch.zeros(2, 5, 2, dtype=F64)
    for solve, options in ((mppi, MPPIOptions(samples=64, temperature=0.1, noise=(2.0, 1.0),
                                              iters=3)),
                           (cem, CEMOptions(samples=64, elites=8, noise=[2.0, 1.0], iters=3))):
        u = solve(problem, x0, u_init, options, seeded(1)).u
        assert (u[..., 0].abs() <= 1.0).all() and (u[..., 1] >= -0.5).all()
        assert (u[..., 1] <= 0.25).all()
        assert (u[:, :-1, 0] > 0.5).all() and u[..., 1].mean() > 0.0   # pushed up


def test_time_indexed_costs_and_vectorized_costs_agree():
    ref = torch.linspace(0.0, 1.0, 6, dtype=F64)
    x0, u_init = start()
    options = MPPIOptions(samples=32, noise=0.5, iters=2)
    per_stage = mppi(double_integrator(ref=ref), x0, u_init, options, seeded(2))
    at_once = mppi(double_integrator(ref=ref, vectorized=True), x0, u_init, options, seeded(2))
    torch.testing.assert_close(at_once.u, per_stage.u)
    torch.testing.assert_close(at_once.cost, per_stage.cost)
    untracked = mppi(double_integrator(), x0, u_init, options, seeded(2))
    assert not torch.allclose(untracked.u, per_stage.u)


def test_nan_in_one_element_is_numerical_and_the_others_solved():
    base = double_integrator()

    def dynamics(x, u, t):
        y = base.dynamics(x, u, t)
        return torch.where(x[..., :1] > 0.5, torch.nan, y)   # element 2 starts at x = 1

    problem = dataclasses.replace(base, dynamics=dynamics)
    x0, u_init = start()
    for solve, options in ((mppi, MPPIOptions(samples=8)), (cem, CEMOptions(samples=8, elites=2))):
        status = solve(problem, x0, u_init, options, seeded(0)).status
        assert status.tolist() == [Status.SOLVED, Status.SOLVED, Status.NUMERICAL]


def test_invalid_options_and_shapes_are_rejected():
    with pytest.raises(ValueError, match="elites <= samples"):
        CEMOptions(samples=4, elites=5)
    with pytest.raises(ValueError, match="temperature must be positive"):
        MPPIOptions(temperature=0.0)
    with pytest.raises(ValueError, match="momentum"):
        CEMOptions(momentum=1.0)
    x0, u_init = start()
    with pytest.raises(ValueError, match="one entry per control"):
        mppi(double_integrator(), x0, u_init, MPPIOptions(noise=(1.0, 2.0)))
    with pytest.raises(ValueError, match="noise must be positive"):
        cem(double_integrator(), x0, u_init, CEMOptions(noise=-1.0))
    with pytest.raises(ValueError, match=r"x0 \(B, n\) and u \(B, T, m\)"):
        mppi(double_integrator(), x0[0], u_init)


# ---- gradients -------------------------------------------------------------------------------

def parametrized(theta):
    """The pendulum with (damping, control weight) = theta, a smooth cost and no limits."""
    damping, weight = theta.unbind()

    def dynamics(x, u, t):
        th, om = x.unbind(-1)
        om = om + DT * (-9.8 * torch.sin(th) - damping * om + u[..., 0])
        return torch.stack((th + DT * om, om), -1)

    def stage_cost(x, u, t):
        return (1 + torch.cos(x[..., 0])) + 0.1 * x[..., 1] ** 2 + weight * u[..., 0] ** 2

    return SamplingProblem(dynamics, stage_cost, lambda x: 5 * (1 + torch.cos(x[..., 0])))


def solve_with(solve, options, seed=5):
    """(theta, x0, u_init) -> (u, cost) of the plan, on fresh noise from the same seed."""
    def f(theta, x0, u_init=None):
        u_init = torch.full((2, 4, 1), 0.5, dtype=F64) if u_init is None else u_init
        solution = solve(parametrized(theta), x0, u_init, options, seeded(seed))
        return solution.u, solution.cost
    return f


THETA = torch.tensor([0.3, 0.2], dtype=F64, requires_grad=True)
X0 = torch.tensor([[0.4, 0.0], [-0.2, 0.5]], dtype=F64, requires_grad=True)
U_INIT = torch.linspace(-0.5, 0.5, 8, dtype=F64).reshape(2, 4, 1).requires_grad_(True)
MPPI_SMALL = MPPIOptions(samples=16, temperature=0.5, noise=1.0, iters=2)
CEM_SMALL = CEMOptions(samples=16, elites=4, iters=2, noise=1.0, temperature=0.5)


@pytest.mark.parametrize("solve, options", [(mppi, MPPI_SMALL), (cem, CEM_SMALL)],
                         ids=["mppi", "cem"])
def test_gradcheck_with_common_random_numbers(solve, options):
    assert torch.autograd.gradcheck(solve_with(solve, options), (THETA, X0, U_INIT))


@pytest.mark.parametrize("solve, options", [(mppi, MPPI_SMALL), (cem, CEM_SMALL)],
                         ids=["mppi", "cem"])
def test_gradient_of_a_loss_matches_central_differences(solve, options):
    f = solve_with(solve, options)
    target = torch.linspace(-1.0, 1.0, 8, dtype=F64).reshape(2, 4, 1)

    def loss(theta):
        u, cost = f(theta, X0.detach())
        return ((u - target) ** 2).sum() + 0.1 * cost.sum()

    theta = THETA.detach().clone().requires_grad_(True)
    grad, = torch.autograd.grad(loss(theta), theta)
    h = 1e-6
    for i in range(2):
        step = torch.zeros(2, dtype=F64)
        step[i] = h
        fd = (loss(theta.detach() + step) - loss(theta.detach() - step)) / (2 * h)
        assert abs(grad[i] - fd) <= 1e-6 * max(1.0, abs(fd)), (i, grad[i], fd)
    assert grad.abs().max() > 1e-3      # the estimator is not trivially zero


def test_cem_plan_is_independent_of_the_costs_at_infinite_temperature():
    options = dataclasses.replace(CEM_SMALL, temperature=math.inf)
    u, _ = solve_with(cem, options)(THETA, X0)
    grad, = torch.autograd.grad(u.sum(), THETA)
    assert torch.equal(grad, torch.zeros_like(grad))


# ---- fused -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_fused_solves_match_eager_ones():
    problem = pendulum(damping=0.3, weight=0.05)
    fused = dataclasses.replace(problem, fuse=True)
    x0, u_init = start()
    with torch.no_grad():
        for solve, options in ((mppi, MPPIOptions(samples=16, iters=2)),
                               (cem, CEMOptions(samples=16, elites=4, iters=2))):
            eager = solve(problem, x0, u_init, options, seeded(0))
            compiled = solve(fused, x0, u_init, options, seeded(0))
            torch.testing.assert_close(compiled.u, eager.u)
            torch.testing.assert_close(compiled.x, eager.x)
            torch.testing.assert_close(compiled.cost, eager.cost)


# ---- prepared planner -------------------------------------------------------------------------

@pytest.mark.parametrize("solve, options", [(mppi, MPPIOptions(samples=16, iters=2)),
                                            (cem, CEMOptions(samples=16, elites=4, iters=2))],
                         ids=["mppi", "cem"])
def test_prepared_planner_repeats_the_solves_of_mppi_and_cem(solve, options):
    problem = pendulum(damping=0.3, weight=0.05)
    x0, u_init = start()
    fixed = SamplingPlanner(problem, options, u_init, seeded(3), fixed_noise=True)
    fresh = SamplingPlanner(problem, options, u_init, seeded(3))
    generator = seeded(3)
    for step in range(3):       # fixed noise = a generator re-seeded per solve; else it advances
        u_init = u_init + 0.1 * step
        once = solve(problem, x0, u_init, options, seeded(3))
        got = fixed(x0, u_init)
        torch.testing.assert_close(got.u, once.u, rtol=0, atol=0)
        torch.testing.assert_close(got.x, once.x, rtol=0, atol=0)
        assert torch.equal(got.status, once.status) and torch.equal(got.iterations, once.iterations)
        torch.testing.assert_close(fresh(x0, u_init).u, solve(problem, x0, u_init, options, generator).u,
                                   rtol=0, atol=0)
    assert not torch.equal(fresh(x0, u_init).u, fixed(x0, u_init).u)


def test_prepared_planner_marks_non_finite_elements_numerical():
    problem = pendulum(damping=0.3, weight=0.05)
    x0, u_init = start()
    x0[1, 0] = torch.nan
    planner = SamplingPlanner(problem, MPPIOptions(samples=8), u_init, seeded(0), fixed_noise=True)
    assert planner(x0, u_init).status.tolist() == [Status.SOLVED, Status.NUMERICAL, Status.SOLVED]
