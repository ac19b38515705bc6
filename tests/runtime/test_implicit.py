"""Tests of the shared implicit-differentiation core (runtime/implicit.py).

References: dense solves (`torch.linalg.solve`) for the matrix-free solvers and the closed-form
sensitivity of a quadratic's minimizer; `torch.autograd.gradcheck` through exact re-solves for
a non-quadratic argmin and a contraction's fixed point; closed-form geometric sums for the
unrolled and truncated iterations.
"""
from typing import NamedTuple

import pytest
import torch

from runtime.implicit import (Backward, BackwardMode, LinearSolver, conjugate_gradient,
                              implicit_argmin, implicit_fixed_point, iterate, neumann)

F64 = torch.float64


def generator(seed):
    return torch.Generator().manual_seed(seed)


def random_spd(B, k, seed, shift=0.5):
    M = torch.randn(B, k, k, generator=generator(seed), dtype=F64)
    return M @ M.mT + shift * torch.eye(k, dtype=F64)


def batched(A):
    return lambda p: (A @ p[..., None]).squeeze(-1)


# ---- matrix-free solvers ---------------------------------------------------------------------

def test_conjugate_gradient_solves_spd_systems_per_row():
    B, k = 5, 7
    A = random_spd(B, k, 0)
    A[1] = 3.0 * torch.eye(k, dtype=F64)              # converges after one product
    b = torch.randn(B, k, generator=generator(1), dtype=F64)
    b[2] = 0.0                                        # a zero right-hand side stays zero
    x = conjugate_gradient(batched(A), b, iters=3 * k, tol=1e-13)
    assert torch.allclose(x, torch.linalg.solve(A, b), atol=1e-10, rtol=0)
    assert (x[2] == 0).all()
    # the identity row is exact after one iteration even when others are not
    one = conjugate_gradient(batched(A), b, iters=1)
    assert torch.allclose(one[1], b[1] / 3.0, atol=1e-15, rtol=0)
    assert not torch.allclose(one[0], x[0], atol=1e-3)


def test_conjugate_gradient_stops_on_negative_curvature_without_nan():
    B, k = 2, 4
    A = random_spd(B, k, 2)
    A[1] = -A[1]
    b = torch.randn(B, k, generator=generator(3), dtype=F64)
    x = conjugate_gradient(batched(A), b, iters=20, tol=1e-13)
    assert torch.isfinite(x).all()
    assert (x[1] == 0).all()
    assert torch.allclose(x[0], torch.linalg.solve(A[0], b[0]), atol=1e-10, rtol=0)


def test_neumann_series_for_hessian_and_for_contraction():
    B, k = 3, 5
    A = random_spd(B, k, 4)
    b = torch.randn(B, k, generator=generator(5), dtype=F64)
    alpha = 1.0 / torch.linalg.eigvalsh(A)[:, -1].max().item()
    x = neumann(batched(A), b, iters=3000, alpha=alpha)
    assert torch.allclose(x, torch.linalg.solve(A, b), atol=1e-8, rtol=0)
    # (I - J) x = b with a contraction J, alpha = 1: x = sum_i J^i b
    J = torch.randn(B, k, k, generator=generator(6), dtype=F64)
    J = 0.6 * J / torch.linalg.matrix_norm(J, ord=2)[:, None, None]
    eye = torch.eye(k, dtype=F64)
    x = neumann(lambda p: p - batched(J)(p), b, iters=80)
    assert torch.allclose(x, torch.linalg.solve(eye - J, b), atol=1e-12, rtol=0)
    few = neumann(lambda p: p - batched(J)(p), b, iters=2)
    assert torch.allclose(few, b + batched(J)(b), atol=1e-14, rtol=0)


# ---- implicit argmin -------------------------------------------------------------------------

@pytest.mark.parametrize("backward", [Backward.implicit("cg", iters=30, tol=1e-14),
                                      Backward.implicit("neumann", iters=200, alpha=0.5),
                                      Backward.implicit("neumann", iters=200)])  # alpha estimated
def test_argmin_of_quadratic_matches_closed_form(backward):
    """z* = A^{-1} b for f = 1/2 z'Az - b'z; gradients w.r.t. A's factor and b by autograd
    through a dense solve."""
    B, k = 3, 4
    M = (0.3 * torch.randn(B, k, k, generator=generator(7), dtype=F64)).requires_grad_()
    b = torch.randn(B, k, generator=generator(8), dtype=F64, requires_grad=True)
    w = torch.randn(B, k, generator=generator(9), dtype=F64)
    eye = torch.eye(k, dtype=F64)

    def A_of(M):
        return M @ M.mT + eye

    def objective(z):
        return 0.5 * (z * batched(A_of(M))(z)).sum(-1) - (b * z).sum(-1)

    with torch.no_grad():
        z_star = torch.linalg.solve(A_of(M), b)
    z = implicit_argmin(z_star, objective, backward)
    assert torch.equal(z, z_star)
    ours = torch.autograd.grad((w * z).sum(), (M, b))
    reference = torch.autograd.grad((w * torch.linalg.solve(A_of(M), b)).sum(), (M, b))
    for a, r in zip(ours, reference):
        assert torch.allclose(a, r, atol=1e-9, rtol=0)


def test_argmin_with_fixed_coordinates_matches_reduced_problem():
    """Coordinates not free are held at a value c(theta) substituted into the objective: the
    free ones then follow the reduced problem's closed form, the fixed ones c."""
    B, k = 2, 4
    A = random_spd(B, k, 10)
    b = torch.randn(B, k, generator=generator(11), dtype=F64, requires_grad=True)
    c = torch.tensor(0.7, dtype=F64, requires_grad=True)
    free = torch.tensor([[True, False, True, True], [True, True, True, False]])

    def held(z):
        return torch.where(free, z, c)

    def objective(z):
        z = held(z)
        return 0.5 * (z * batched(A)(z)).sum(-1) - (b * z).sum(-1)

    def reduced_solution(b, c):
        rows = []
        for i in range(B):
            F, H = free[i], ~free[i]
            zF = torch.linalg.solve(A[i][F][:, F], b[i][F] - A[i][F][:, H] @ c.expand(int(H.sum())))
            rows.append(torch.zeros(k, dtype=F64).masked_scatter(F, zF) + torch.where(F, 0.0, c))
        return torch.stack(rows)

    with torch.no_grad():
        z_star = reduced_solution(b, c)
    z = held(implicit_argmin(z_star, objective, Backward.implicit(iters=20, tol=1e-14), free))
    w = torch.randn(B, k, generator=generator(12), dtype=F64)
    ours = torch.autograd.grad((w * z).sum(), (b, c))
    reference = torch.autograd.grad((w * reduced_solution(b, c)).sum(), (b, c))
    for a, r in zip(ours, reference):
        assert torch.allclose(a, r, atol=1e-10, rtol=0)


def newton_argmin(objective, z, iters=12):
    """Exact minimizer of a row-wise strictly convex objective (dense Newton, no autograd out)."""
    z = z.detach().clone()
    for _ in range(iters):
        H = torch.autograd.functional.hessian(lambda y: objective(y).sum(), z)
        g = torch.autograd.functional.jacobian(lambda y: objective(y).sum(), z)
        k = z.numel()
        z = z - torch.linalg.solve(H.reshape(k, k), g.reshape(k)).view_as(z)
    return z


def test_argmin_gradcheck_nonquadratic():
    B, k = 2, 3
    A = random_spd(B, k, 13)
    theta = torch.randn(B, k, generator=generator(14), dtype=F64, requires_grad=True)
    scale = torch.tensor(0.8, dtype=F64, requires_grad=True)

    def solve(theta, scale):
        def objective(z):
            return (0.5 * (z * batched(A)(z)).sum(-1)
                    + torch.nn.functional.softplus(scale * z).sum(-1) - (theta * z).sum(-1))
        z_star = newton_argmin(objective, torch.zeros(B, k, dtype=F64))
        return implicit_argmin(z_star, objective, Backward.implicit(iters=20, tol=1e-14))

    assert torch.autograd.gradcheck(solve, (theta, scale), atol=1e-7, rtol=1e-6)


def test_argmin_without_grad_returns_detached_input():
    z = torch.ones(2, 3, dtype=F64, requires_grad=True)
    with torch.no_grad():
        out = implicit_argmin(z, lambda y: (y * y).sum(-1))
    assert not out.requires_grad and torch.equal(out, z)
    constant = implicit_argmin(z.detach(), lambda y: (y * y).sum(-1))    # nothing to learn
    assert not constant.requires_grad
    assert not implicit_fixed_point(z.detach(), lambda y: 0.5 * y).requires_grad
    with pytest.raises(ValueError, match="one value per row"):
        implicit_argmin(z, lambda y: (y * y).sum())
    w = torch.ones(3, dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match="no curvature"):
        implicit_argmin(z, lambda y: w.sum() + 0.0 * y.detach().sum(-1))


def counted(fn):
    """fn, and a list that counts its calls."""
    calls = []

    def wrapped(z):
        calls.append(1)
        return fn(z)
    return wrapped, calls


def test_argmin_and_fixed_point_call_the_callable_once_per_solve():
    theta = torch.tensor([[0.5, -1.0]], dtype=F64, requires_grad=True)
    z_star = (theta / 2).detach()                    # argmin of z'z - theta'z
    objective, calls = counted(lambda z: (z * z - theta * z).sum(-1))
    out = implicit_argmin(z_star, objective)
    (g,) = torch.autograd.grad(out.sum(), theta)
    assert len(calls) == 1 and torch.allclose(g, torch.full_like(g, 0.5))
    constant, calls = counted(lambda z: (z * z).sum(-1))          # no parameter: z* detached
    assert not implicit_argmin(z_star, constant).requires_grad and len(calls) == 1
    fixed = (2 * theta).detach()                                 # z = z / 2 + theta
    mapping, calls = counted(lambda z: 0.5 * z + theta)
    out = implicit_fixed_point(fixed, mapping, Backward.implicit("neumann", iters=60))
    (g,) = torch.autograd.grad(out.sum(), theta)
    assert len(calls) == 1 and torch.allclose(g, torch.full_like(g, 2.0))
    mapping, calls = counted(lambda z: 0.5 * z)
    assert not implicit_fixed_point(fixed, mapping).requires_grad and len(calls) == 1
    parameter = torch.tensor(2.0, dtype=F64, requires_grad=True)
    through, calls = counted(lambda z: 0.5 * z + (parameter * 1.0).exp())   # a non-leaf of a leaf
    assert implicit_fixed_point(fixed, through).requires_grad and len(calls) == 1


# ---- implicit fixed point --------------------------------------------------------------------

@pytest.mark.parametrize("backward", [Backward.implicit("neumann", iters=200),
                                      Backward.implicit("cg", iters=50, tol=1e-14)])
def test_fixed_point_of_contraction_gradcheck(backward):
    B, k = 2, 4
    W = torch.randn(B, k, k, generator=generator(15), dtype=F64)
    W = (0.5 * W / torch.linalg.matrix_norm(W, ord=2)[:, None, None]).requires_grad_()
    theta = torch.randn(B, k, generator=generator(16), dtype=F64, requires_grad=True)

    def solve(W, theta):
        def mapping(z):
            return torch.tanh(batched(W)(z) + theta)
        z = torch.zeros(B, k, dtype=F64)
        with torch.no_grad():
            for _ in range(80):
                z = mapping(z)
        return implicit_fixed_point(z, mapping, backward)

    assert torch.autograd.gradcheck(solve, (W, theta), atol=1e-8, rtol=1e-6)


def test_fixed_point_closed_form_scalar():
    """z = 1/2 cos z + theta: dz/dtheta = 1 / (1 + 1/2 sin z), default backward (Neumann, 20
    terms of a series with ratio ~0.32)."""
    theta = torch.tensor([0.3], dtype=F64, requires_grad=True)
    z = torch.zeros(1, 1, dtype=F64)
    with torch.no_grad():
        for _ in range(100):
            z = 0.5 * torch.cos(z) + theta
    out = implicit_fixed_point(z, lambda y: 0.5 * torch.cos(y) + theta)
    (g,) = torch.autograd.grad(out.sum(), theta)
    assert torch.allclose(g, 1.0 / (1.0 + 0.5 * torch.sin(z)).reshape(1), atol=1e-9, rtol=0)


# ---- options and iteration -------------------------------------------------------------------

def test_backward_parse_spellings_and_errors():
    assert Backward.parse("unroll").mode is BackwardMode.UNROLL
    assert Backward.parse("truncated", 5) == Backward(BackwardMode.TRUNCATED, k=5)
    implicit = Backward.parse("implicit", "cg", iters=20)
    assert (implicit.mode, implicit.solver, implicit.iters) == (BackwardMode.IMPLICIT,
                                                                LinearSolver.CG, 20)
    assert Backward.parse("implicit", "neumann", iters=50, alpha=0.5).alpha == 0.5
    assert Backward.parse("implicit", solver="neumann").alpha is None
    with pytest.raises(ValueError, match="unknown backward 'unrolled'"):
        Backward.parse("unrolled")
    with pytest.raises(ValueError, match="unknown implicit solver 'gmres'"):
        Backward.parse("implicit", "gmres")
    with pytest.raises(ValueError, match="truncated k must be an integer"):
        Backward.parse("truncated", 2.5)
    with pytest.raises(ValueError, match=r"backward=unroll\(...\)"):
        Backward.parse("unroll", 3)
    with pytest.raises(ValueError, match="iters >= 1"):
        Backward.implicit(iters=0)


class Linear(NamedTuple):
    z: torch.Tensor   # (B,)


@pytest.mark.parametrize("backward, expected_terms", [(Backward.unroll(), 6),
                                                       (Backward.truncated(2), 2),
                                                       (Backward.truncated(10), 6)])
def test_iterate_records_unrolled_or_truncated_steps(backward, expected_terms):
    """z <- a z + theta from z = 0: dz_N/dtheta = sum_{j<N} a^j over the recorded steps."""
    a = 0.5
    theta = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    state, iterations = iterate(lambda s, active: Linear(a * s.z + theta),
                                Linear(torch.zeros(2, dtype=F64)), 6, backward,
                                stop=lambda s: torch.zeros(2, dtype=torch.bool))
    (g,) = torch.autograd.grad(state.z.sum(), theta)
    assert torch.allclose(g, torch.full((2,), sum(a ** j for j in range(expected_terms)),
                                        dtype=F64))
    assert torch.allclose(state.z.detach(), theta.detach() * sum(a ** j for j in range(6)))
    assert iterations.tolist() == [6, 6]


def test_iterate_freezes_rows_that_stop():
    state, iterations = iterate(lambda s, active: Linear(s.z + 1),
                                Linear(torch.tensor([0.0, 5.0])), 10, Backward(),
                                stop=lambda s: s.z >= 3)
    assert state.z.tolist() == [3.0, 5.0] and iterations.tolist() == [3, 0]
