"""Tests of the control-limited iLQR (runtime/ilqr.py), its projected-Newton box QP
(runtime/box_qp.py) and its implicit backward (runtime/box_lqr.py).

References: cvxpy + Clarabel for the box QP, the Riccati LQR `runtime.lqr.lqr` for LQ problems,
finite differences of re-solves and `torch.autograd.gradcheck` for the implicit gradients, and
the unrolled iterations (ILQRBackward.UNROLL) at convergence.
"""
import cvxpy as cp
import numpy as np
import pytest
import torch

from runtime.box_lqr import factor_free
from runtime.box_qp import box_qp
from runtime.ilqr import ILQRBackward, ILQROptions, ILQRProblem, ilqr
from runtime.ilqr_derivatives import ExactDerivatives
from runtime.lqr import lqr
from runtime.status import Status

DT = 0.1
TIGHT = ILQROptions(max_iters=200, tol=1e-11, cost_tol=0.0)
CLARABEL = dict(solver=cp.CLARABEL, canon_backend=cp.SCIPY_CANON_BACKEND, tol_gap_abs=1e-12,
                tol_gap_rel=1e-12, tol_feas=1e-12)


def generator(seed):
    return torch.Generator().manual_seed(seed)


def pendulum(damping, goal, weight, lower=None, upper=None, derivatives=ExactDerivatives()):
    """Damped pendulum x = (theta, omega), torque u; goal (B, 2) is a per-element target."""
    def dynamics(x, u):
        th, om = x.unbind(-1)
        om = om + DT * (-9.8 * torch.sin(th) - damping * om + u[..., 0])
        return torch.stack((th + DT * om, om), -1)

    def stage_cost(x, u):
        return 0.1 * ((x - goal) ** 2).sum(-1) + weight * (u ** 2).sum(-1)

    def final_cost(x):
        return 10.0 * ((x - goal) ** 2).sum(-1)

    return ILQRProblem(dynamics, stage_cost, final_cost, lower, upper, derivatives)


def upright(B):
    return torch.tensor([torch.pi, 0.0], dtype=torch.float64).expand(B, 2)


def control_gradient(problem, sol):
    """dJ/du_t (B, T, m) of the reduced objective at sol, by autograd through a rollout."""
    u = sol.u.detach().requires_grad_()
    x, J = sol.x[:, 0].detach(), 0.0
    for t in range(u.shape[1]):
        J = J + problem.stage_cost(x, u[:, t])
        x = problem.dynamics(x, u[:, t])
    (g,) = torch.autograd.grad((J + problem.final_cost(x)).sum(), u)
    return g


# ---- box QP ---------------------------------------------------------------------------------

@pytest.mark.parametrize("m", [1, 2, 3, 5])   # closed form, faces (2, 3), projected Newton
def test_box_qp_matches_clarabel(m):
    g = generator(m)
    B = 12
    A = torch.randn(B, m, m, generator=g, dtype=torch.float64)
    H = A @ A.mT + 0.1 * torch.eye(m, dtype=torch.float64)
    q = 3 * torch.randn(B, m, generator=g, dtype=torch.float64)
    lo = -torch.rand(B, m, generator=g, dtype=torch.float64)
    hi = torch.rand(B, m, generator=g, dtype=torch.float64)
    lo[0], hi[1] = -torch.inf, torch.inf
    res = box_qp(H, q, lo, hi)
    assert (res.status == Status.SOLVED).all()
    for b in range(B):
        x = cp.Variable(m)
        cons = [x[i] >= lo[b, i].item() for i in range(m) if torch.isfinite(lo[b, i])]
        cons += [x[i] <= hi[b, i].item() for i in range(m) if torch.isfinite(hi[b, i])]
        cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, cp.psd_wrap(H[b].numpy())) + q[b].numpy() @ x),
                   cons).solve(**CLARABEL)
        np.testing.assert_allclose(res.x[b].numpy(), x.value, atol=1e-7)
    # The free-block inverse reproduces the free coordinates' Newton equations.
    grad = (H @ res.x[..., None]).squeeze(-1) + q
    assert torch.where(res.free, grad, 0.0).abs().max() < 1e-9
    assert ((res.x[~res.free] == lo[~res.free]) | (res.x[~res.free] == hi[~res.free])).all()
    pair = res.free[..., None] & res.free[..., None, :]
    eye = torch.eye(m, dtype=torch.float64).expand(B, m, m)
    assert torch.allclose(torch.where(pair, H, 0.0) @ res.free_inverse,
                          torch.where(pair, eye, 0.0), atol=1e-10)


@pytest.mark.parametrize("m", [1, 2, 5])
def test_box_qp_reports_failures(m):
    H = torch.eye(m, dtype=torch.float64).repeat(3, 1, 1)
    H[1] = -H[1]
    q = torch.ones(3, m, dtype=torch.float64)
    q[2, 0] = torch.nan
    ones = torch.ones_like(q)
    res = box_qp(H, q, -ones, ones)
    assert res.status.tolist() == [Status.SOLVED, Status.NOT_CONVEX, Status.NUMERICAL]
    assert torch.allclose(res.x[0], -q[0])


# ---- iLQR against the Riccati LQR on an LQ problem ------------------------------------------

def test_lq_problem_converges_in_one_step_to_lqr():
    g = generator(1)
    B, T, n, m = 3, 6, 3, 2
    N = n + m

    def leaf(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_()

    A = leaf(n, n, scale=0.3)
    Bu = leaf(n, m)
    f = leaf(n, scale=0.1)
    q = (torch.rand(N, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    c = leaf(B, N)
    x0 = leaf(B, n)
    eye = torch.eye(n, dtype=torch.float64)

    def dynamics(x, u):
        return x @ (eye + A).T + u @ Bu.T + f

    def stage_cost(x, u):
        z = torch.cat((x, u), -1)
        return (0.5 * q * z * z + c * z).sum(-1)

    def final_cost(x):
        return (0.5 * q[:n] * x * x + c[:, :n] * x).sum(-1)

    sol = ilqr(ILQRProblem(dynamics, stage_cost, final_cost), x0,
               torch.zeros(B, T, m, dtype=torch.float64), ILQROptions(tol=1e-10, cost_tol=0.0))
    ref = lqr(x0, torch.diag(q).expand(B, T, N, N), c[:, None].expand(B, T, N),
              torch.cat((eye + A, Bu), -1).expand(B, T, n, N), f.expand(B, T, n),
              torch.diag(q[:n]).expand(B, n, n), c[:, :n])
    assert (sol.status == Status.SOLVED).all() and (sol.iterations == 1).all()
    for ours, theirs in ((sol.x, ref.x), (sol.u, ref.u), (sol.cost, ref.cost)):
        assert torch.allclose(ours, theirs, atol=1e-8, rtol=0)

    w = torch.randn(B, T + 1, n, generator=g, dtype=torch.float64)
    leaves = (x0, A, Bu, f, q, c)
    grads = torch.autograd.grad((w * sol.x).sum() + (sol.u ** 2).sum() + sol.cost.sum(), leaves)
    ref_grads = torch.autograd.grad((w * ref.x).sum() + (ref.u ** 2).sum() + ref.cost.sum(), leaves)
    for ours, theirs in zip(grads, ref_grads):
        assert torch.allclose(ours, theirs, atol=1e-8, rtol=0)


def test_box_constrained_lq_problem_matches_clarabel():
    """Linear dynamics, quadratic cost and control limits: a convex QP over the controls."""
    g = generator(7)
    B, T, n, m = 2, 8, 2, 2
    A = torch.tensor([[1.0, 0.1], [0.0, 1.0]], dtype=torch.float64)
    Bu = 0.1 * torch.randn(n, m, generator=g, dtype=torch.float64)
    x0 = 3 * torch.randn(B, n, generator=g, dtype=torch.float64)
    lo = torch.tensor([-1.0, -0.5], dtype=torch.float64)
    hi = torch.tensor([1.0, 2.0], dtype=torch.float64)
    problem = ILQRProblem(lambda x, u: x @ A.T + u @ Bu.T,
                          lambda x, u: (x * x).sum(-1) + 0.1 * (u * u).sum(-1),
                          lambda x: 5 * (x * x).sum(-1), lo, hi)
    sol = ilqr(problem, x0, torch.zeros(B, T, m, dtype=torch.float64), TIGHT)
    assert (sol.status == Status.SOLVED).all() and sol.iterations.max() <= 10
    assert ((sol.u == lo) | (sol.u == hi)).any()
    for b in range(B):
        x, u = cp.Variable((T + 1, n)), cp.Variable((T, m))
        cons = [x[0] == x0[b].numpy(), u >= lo.numpy(), u <= hi.numpy(),
                x[1:] == x[:T] @ A.numpy().T + u @ Bu.numpy().T]
        objective = cp.sum_squares(x[:T]) + 0.1 * cp.sum_squares(u) + 5 * cp.sum_squares(x[T])
        cp.Problem(cp.Minimize(objective), cons).solve(**CLARABEL)
        np.testing.assert_allclose(sol.u[b].numpy(), u.value, atol=1e-6)
        np.testing.assert_allclose(sol.cost[b].item(), objective.value, rtol=1e-8)


# ---- implicit gradients of a nonlinear, control-limited problem ------------------------------

def swing_data(B=2, seed=0):
    g = generator(seed)
    x0 = torch.stack((0.5 * torch.randn(B, generator=g, dtype=torch.float64),
                      torch.randn(B, generator=g, dtype=torch.float64)), -1)
    damping = torch.tensor(0.3, dtype=torch.float64)
    weight = torch.tensor(0.1, dtype=torch.float64)
    return x0, damping, weight


@pytest.mark.parametrize("limit", [None, 4.0], ids=["inactive", "active"])
def test_gradcheck_implicit(limit):
    """x0, the damping and, with active limits, the upper limit itself."""
    T = 6
    x0, damping, weight = swing_data()
    B = x0.shape[0]
    u_init = torch.zeros(B, T, 1, dtype=torch.float64)
    upper = torch.full((B, T, 1), limit if limit else torch.inf, dtype=torch.float64)

    def solve(x0, damping, upper):
        problem = pendulum(damping, upright(B), weight, -upper, upper)
        return ilqr(problem, x0, u_init, TIGHT)

    sol = solve(x0, damping, upper)
    assert (sol.status == Status.SOLVED).all()
    clamped = sol.u.abs() >= upper
    if limit is None:
        assert not clamped.any()
    else:
        # Strictly clamped (nonzero multiplier) controls and free ones, both present.
        grad_u = control_gradient(pendulum(damping, upright(B), weight), sol)
        assert 0 < clamped.sum() < clamped.numel()
        assert (grad_u[clamped].abs() > 1e-2).all()

    def outputs(x0, damping, upper):
        sol = solve(x0, damping, upper)
        return sol.x, sol.u, sol.cost

    inputs = (x0.requires_grad_(), damping.requires_grad_(),
              upper.requires_grad_(limit is not None))
    assert torch.autograd.gradcheck(outputs, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_implicit_matches_unroll_at_convergence():
    x0, damping, weight = swing_data(B=3, seed=1)
    T = 12
    leaves = (x0.requires_grad_(), damping.requires_grad_(), weight.requires_grad_())
    grads = {}
    for mode in ILQRBackward:
        problem = pendulum(damping, upright(3), weight, torch.tensor(-3.0), torch.tensor(3.0))
        sol = ilqr(problem, x0, torch.zeros(3, T, 1, dtype=torch.float64),
                   ILQROptions(max_iters=200, tol=1e-11, cost_tol=0.0, backward=mode))
        assert (sol.status == Status.SOLVED).all()
        assert (sol.u.abs() == 3.0).any()
        loss = (sol.u ** 2).sum() + sol.x[..., 0].sum() + sol.cost.sum()
        grads[mode] = torch.autograd.grad(loss, leaves)
    for a, b in zip(grads[ILQRBackward.IMPLICIT], grads[ILQRBackward.UNROLL]):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)


def test_directional_derivative_matches_finite_differences_of_resolves():
    x0, damping, weight = swing_data(B=3, seed=2)
    B, T = 3, 15
    goal = upright(B).clone()
    params = (damping, weight, goal)
    direction = [torch.randn(p.shape, generator=generator(3), dtype=torch.float64) for p in params]
    lower, upper = torch.tensor(-4.0), torch.tensor(4.0)
    u_init = torch.zeros(B, T, 1, dtype=torch.float64)

    def loss(damping, weight, goal, u_init=u_init):
        sol = ilqr(pendulum(damping, goal, weight, lower, upper), x0, u_init, TIGHT)
        assert (sol.status == Status.SOLVED).all()
        return (sol.u ** 2).sum() + sol.x.sum(), sol

    leaves = [p.clone().requires_grad_() for p in params]
    value, sol = loss(*leaves)
    assert (sol.u.abs() == 4.0).any()
    analytic = sum((g * d).sum() for g, d in zip(torch.autograd.grad(value, leaves), direction))
    h = 1e-5
    with torch.no_grad():
        plus = loss(*(p + h * d for p, d in zip(params, direction)), u_init=sol.u)[0]
        minus = loss(*(p - h * d for p, d in zip(params, direction)), u_init=sol.u)[0]
    assert torch.allclose(analytic, (plus - minus) / (2 * h), rtol=1e-6)


def test_newton_steps_reach_the_same_solution_in_fewer_iterations():
    x0, damping, weight = swing_data(B=4, seed=0)
    problem = pendulum(damping, upright(4), weight, torch.tensor(-4.0), torch.tensor(4.0))
    u_init = torch.zeros(4, 15, 1, dtype=torch.float64)
    gauss_newton = ilqr(problem, x0, u_init, TIGHT)
    newton = ilqr(problem, x0, u_init, ILQROptions(max_iters=200, tol=1e-11, cost_tol=0.0, newton=True))
    assert (gauss_newton.status == Status.SOLVED).all() and (newton.status == Status.SOLVED).all()
    assert torch.allclose(newton.u, gauss_newton.u, atol=1e-9)
    assert newton.iterations.max() <= 8 < gauss_newton.iterations.max()


# ---- per-element status, iterations and failures ---------------------------------------------

def test_batch_elements_in_different_regimes():
    """Element 0 rests near its goal (converges), element 1 swings up (runs out of iterations);
    the goals are a per-element tensor the callables close over."""
    T = 20
    x0 = torch.tensor([[0.1, 0.0], [0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    goal = torch.tensor([[0.0, 0.0], [torch.pi, 0.0]], dtype=torch.float64)
    damping = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    problem = pendulum(damping, goal, 0.1, torch.tensor(-2.0), torch.tensor(2.0))
    options = ILQROptions(max_iters=4, tol=1e-9, cost_tol=0.0)
    sol = ilqr(problem, x0, torch.zeros(2, T, 1, dtype=torch.float64), options)
    assert sol.status.tolist() == [Status.SOLVED, Status.MAX_ITERS]
    assert sol.iterations[0] < 4 and sol.iterations[1] == 4
    assert sol.residual[0] <= 1e-9 < sol.residual[1]
    # Each element is solved independently of the other.
    alone = ilqr(pendulum(damping, goal[:1], 0.1, torch.tensor(-2.0), torch.tensor(2.0)),
                 x0[:1], torch.zeros(1, T, 1, dtype=torch.float64), options)
    assert torch.allclose(alone.u, sol.u[:1], atol=1e-12)
    # The unconverged element is not detached: it is differentiated by the same formula.
    grads = torch.autograd.grad(sol.u[1].sum(), (x0, damping))
    assert grads[0][1].abs().sum() > 0 and grads[1] != 0 and all(g.isfinite().all() for g in grads)


def test_unconverged_elements_get_finite_gradients():
    """Far from a minimum the exact (Lagrangian) model can be indefinite; those elements fall
    back to the Gauss-Newton model instead of returning NaN."""
    B = 16
    g = generator(5)
    x0 = torch.stack((6 * torch.rand(B, generator=g, dtype=torch.float64) - 3,
                      torch.randn(B, generator=g, dtype=torch.float64)), -1).requires_grad_()
    damping = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    problem = pendulum(damping, upright(B), 0.01, torch.tensor(-2.0), torch.tensor(2.0))
    sol = ilqr(problem, x0, torch.zeros(B, 20, 1, dtype=torch.float64), ILQROptions(max_iters=0))
    assert (sol.status == Status.MAX_ITERS).all()
    grads = torch.autograd.grad(sol.u.sum() + sol.x.sum(), (x0, damping))
    assert all(g.isfinite().all() for g in grads)


def test_factor_free_masks_clamped_controls():
    """An LQR whose control 1 has negative curvature is convex once that control is clamped."""
    B, T, n, m = 2, 3, 2, 2
    F = torch.randn(B, T, n, n + m, generator=generator(6), dtype=torch.float64)
    C = torch.eye(n + m, dtype=torch.float64).repeat(B, T, 1, 1)
    C[..., n + 1, n + 1] = -5.0
    CT = torch.eye(n, dtype=torch.float64).expand(B, n, n)
    free = torch.ones(B, T, m, dtype=torch.bool)
    free[1, :, 1] = False
    assert factor_free(C, F, CT, free).status.tolist() == [Status.NOT_CONVEX, Status.SOLVED]


def test_nan_input_is_numerical_and_isolated():
    x0, damping, weight = swing_data(B=2)
    x0 = x0.clone()
    x0[1, 0] = torch.nan
    x0.requires_grad_()
    damping.requires_grad_()
    problem = pendulum(damping, upright(2), weight, torch.tensor(-4.0), torch.tensor(4.0))
    sol = ilqr(problem, x0, torch.zeros(2, 8, 1, dtype=torch.float64), TIGHT)
    assert sol.status.tolist() == [Status.SOLVED, Status.NUMERICAL]
    assert sol.u[1].isnan().all() and sol.u[0].isfinite().all()
    ok = sol.status == Status.SOLVED
    loss = torch.where(ok[:, None, None], sol.u, 0.0).sum()
    g_x0, g_damping = torch.autograd.grad(loss, (x0, damping))
    assert g_x0[0].isfinite().all() and (g_x0[1] == 0).all() and g_damping.isfinite()


def pendulum_derivatives(damping, goal, weight, B, T):
    """Exact derivatives of `pendulum` in the form the compiler supplies them."""
    eye2 = torch.eye(2, dtype=torch.float64)

    def jacobian(x, u):
        th, om = x.unbind(-1)
        dom = torch.stack((-9.8 * DT * torch.cos(th), 1 - DT * damping * torch.ones_like(om),
                           DT * torch.ones_like(om)), -1)                      # d om'/d (th, om, u)
        dth = torch.tensor([1.0, 0.0, 0.0], dtype=x.dtype) + DT * dom
        return torch.stack((dth, dom), -2)

    def stage_derivatives(x, u):
        grad = torch.cat((0.2 * (x - goal[:, None]), 2 * weight * u), -1)
        hess = torch.block_diag(0.2 * eye2, 2 * weight * torch.eye(1, dtype=torch.float64))
        return grad, hess.expand(B, T, 3, 3)

    def final_derivatives(x):
        return 20.0 * (x - goal), (20.0 * eye2).expand(B, 2, 2)

    def curvature(x, u, lam):                        # only d2 om'/d th2 = 9.8 dt sin(th) is nonzero
        w = (DT * lam[..., 0] + lam[..., 1]) * 9.8 * DT * torch.sin(x[..., 0])
        return torch.diag_embed(torch.stack((w, 0 * w, 0 * w), -1))

    return ExactDerivatives(jacobian, stage_derivatives, final_derivatives, curvature)


def test_exact_derivatives_match_autodiff():
    x0, damping, weight = swing_data(B=2, seed=4)
    B, T = 2, 10
    goal = upright(B)
    results = []
    for exact in (False, True):
        d = damping.clone().requires_grad_()
        derivatives = pendulum_derivatives(d, goal, weight, B, T) if exact else ExactDerivatives()
        problem = pendulum(d, goal, weight, torch.tensor(-4.0), torch.tensor(4.0), derivatives)
        sol = ilqr(problem, x0, torch.zeros(B, T, 1, dtype=torch.float64), TIGHT)
        assert (sol.status == Status.SOLVED).all() and (sol.u.abs() == 4.0).any()
        results.append((sol.u, *torch.autograd.grad(sol.x.sum() + sol.u.sum(), d)))
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-9)


def test_float32_matches_float64():
    B, T = 2, 8

    def solve(dtype):
        damping = torch.tensor(0.3, dtype=dtype, requires_grad=True)
        goal = torch.tensor([1.0, 0.0], dtype=dtype).expand(B, 2)
        problem = pendulum(damping, goal, 0.1, torch.tensor(-2.0, dtype=dtype),
                           torch.tensor(2.0, dtype=dtype))
        x0 = torch.tensor([[0.0, 0.5], [0.5, 0.0]], dtype=dtype, requires_grad=True)
        sol = ilqr(problem, x0, torch.zeros(B, T, 1, dtype=dtype), ILQROptions(tol=1e-5, cost_tol=0.0))
        return sol, torch.autograd.grad(sol.u.sum(), (x0, damping))

    sol32, grads32 = solve(torch.float32)
    sol64, grads64 = solve(torch.float64)
    assert (sol32.status == Status.SOLVED).all() and sol32.u.dtype == torch.float32
    assert torch.allclose(sol32.u.double(), sol64.u, atol=1e-4)
    for a, b in zip(grads32, grads64):
        assert a.dtype == torch.float32 and torch.allclose(a.double(), b, rtol=1e-3, atol=1e-3)


def test_rejects_bad_shapes():
    problem = pendulum(0.3, upright(2), 0.1)
    with pytest.raises(ValueError, match="u_init"):
        ilqr(problem, torch.zeros(2, 2, dtype=torch.float64),
             torch.zeros(2, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="limits"):
        bad = pendulum(0.3, upright(2), 0.1, torch.zeros(3), torch.ones(3))
        ilqr(bad, torch.zeros(2, 2, dtype=torch.float64), torch.zeros(2, 5, 1, dtype=torch.float64))
