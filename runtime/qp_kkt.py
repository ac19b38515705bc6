"""Stage-structured KKT solves of equality-constrained LQR problems (the QP's linear algebra).

Problem, batch-first, with z_t = [x_t; u_t] of size N = n + m:

    minimize   sum_{t<T} 1/2 z_t' H_t z_t + q_t' z_t  +  1/2 x_T' H_T x_T + q_T' x_T
    subject to x_0 = x0,   x_{t+1} = F_t z_t + f_t,   E_t z_t = e_t          (t = 0..T-1)

    H (B,T,N,N)  q (B,T,N)  H_T (B,n,n)  q_T (B,n)  F (B,T,n,N)  f (B,T,n)  x0 (B,n)
    E (B,T,r,N)  e (B,T,r)      r may be 0; rows may be zero, pure-state or linearly dependent.

Its KKT conditions, for the Lagrangian
    objective + sum_t nu_t'(E_t z_t - e_t) + mu_{t+1}'(F_t z_t + f_t - x_{t+1}) + mu_0'(x0 - x_0),
with costates mu (B,T+1,n) and equality multipliers nu (B,T,r), are

    H_t z_t + q_t + E_t' nu_t + F_t' mu_{t+1} - [mu_t; 0] = 0,      H_T x_T + q_T - mu_T = 0,

plus primal feasibility. Because the Lagrangian is a quadratic form 1/2 w'Kw + b'w in w = (z, mu, nu)
with K symmetric, the same solve serves the QP's Newton steps and the adjoint (backward) systems.

Method. The rows of E are normalised to unit length and the equalities are solved *exactly* by
iterative refinement on one Riccati factorisation of the penalised Hessian H_t + rho E_t'E_t
(`runtime.riccati.factor`), i.e. of the quasi-definite system [[H, E'], [E, -I/rho]]: each sweep
computes the residuals of the exact KKT system at the current (z, mu, nu) and adds the correction
that the penalised system gives for them (`runtime.riccati.solve` with linear term
r_d + rho E' r_e and nu-correction rho (E dz + r_e)). Restricted to the equality residual this is
the method of multipliers, nu <- nu + rho (E z - e), so it converges for any rho > 0 and needs no
rank condition on E: terminal/state rows (whose control part is rank deficient) need no constraint
propagation. Refining on the full residual also removes the rho * eps rounding that the penalty
leaves in the stationarity conditions. Every sweep costs O(T). Inconsistent rows make nu grow
without bound, which the QP's infeasibility certificate detects.
"""
from typing import NamedTuple

import torch
from torch import Tensor

from runtime.riccati import RiccatiFactor, factor, solve


class KKTFactor(NamedTuple):
    """Riccati factorisation of the penalised stage Hessians, with the data needed for residuals."""

    riccati: RiccatiFactor
    H: Tensor          # (B,T,N,N) stage Hessians (not penalised)
    HT: Tensor         # (B,n,n)
    E: Tensor          # (B,T,r,N) unit-norm rows (zero rows kept as they are)
    row_scale: Tensor  # (B,T,r)   E = E_given * row_scale
    rho: Tensor        # (B,)      penalty of the quasi-definite regularisation
    status: Tensor     # (B,)      int64 Status from the Riccati factorisation


class KKTSolution(NamedTuple):
    """Primal solution and multipliers of the module's KKT system."""

    x: Tensor   # (B,T+1,n)
    u: Tensor   # (B,T,m)
    mu: Tensor  # (B,T+1,n) costates
    nu: Tensor  # (B,T,r)   equality multipliers (of the rows as given, not normalised)


def matvec(A: Tensor, v: Tensor) -> Tensor:
    """A v over trailing dims: (..., a, b) x (..., b) -> (..., a)."""
    return (A @ v.unsqueeze(-1)).squeeze(-1)


def rmatvec(A: Tensor, v: Tensor) -> Tensor:
    """A' v over trailing dims: (..., a, b) x (..., a) -> (..., b)."""
    return (v.unsqueeze(-2) @ A).squeeze(-2)


def stage_z(x: Tensor, u: Tensor) -> Tensor:
    """z_t = [x_t; u_t] for t < T: (B,T+1,n), (B,T,m) -> (B,T,N)."""
    return torch.cat([x[:, :-1], u], dim=-1)


def factor_kkt(H: Tensor, F: Tensor, HT: Tensor, E: Tensor, rho: Tensor) -> KKTFactor:
    """Factor the KKT system with stage Hessians H (B,T,N,N), terminal H_T (B,n,n), rows E (B,T,r,N).

    rho (B,) is the penalty on the unit-normalised rows of E in the factored Hessians H + rho E'E.
    """
    norms = torch.linalg.vector_norm(E, dim=-1)
    row_scale = torch.where(norms > 0, 1 / norms.clamp_min(torch.finfo(E.dtype).tiny), torch.ones_like(norms))
    En = E * row_scale.unsqueeze(-1)
    penalised = H + rho[:, None, None, None] * (En.mT @ En) if E.shape[-2] > 0 else H
    fac = factor(penalised, F, HT)
    return KKTFactor(fac, H, HT, En, row_scale, rho, fac.status)


def solve_kkt(fac: KKTFactor, q: Tensor, f: Tensor, qT: Tensor, x0: Tensor, e: Tensor, nu: Tensor,
              tol: float, max_sweeps: int) -> KKTSolution:
    """Solve the factored KKT system for the data q (B,T,N), f (B,T,n), q_T (B,n), x0 (B,n), e (B,T,r).

    nu (B,T,r) warm-starts the multipliers. Without equality rows this is one Riccati solve; with
    them, refinement sweeps stop once every element has all KKT residuals <= tol (rows normalised)
    or has stopped improving, or after max_sweeps sweeps.
    """
    rho = fac.rho[:, None, None]
    en = e * fac.row_scale
    x, u, mu = solve(fac.riccati, q + rmatvec(fac.E, nu / fac.row_scale - rho * en), f, qT, x0)
    nun = nu / fac.row_scale + rho * (matvec(fac.E, stage_z(x, u)) - en)
    previous = torch.full_like(x0[:, 0], torch.inf)
    for _ in range(max_sweeps if fac.E.shape[-2] > 0 else 0):
        r = _residuals(fac, q, f, qT, x0, en, x, u, mu, nun)
        size = torch.cat([v.abs().flatten(1) for v in r], dim=1).amax(1)
        # Stop when every element has converged or stalled (inconsistent rows never converge).
        if bool(((size <= tol) | (size > 0.5 * previous) | ~torch.isfinite(size)).all()):
            break
        previous = size
        dual, final, eq, dynamics, initial = r
        dx, du, dmu = solve(fac.riccati, dual + rmatvec(fac.E, rho * eq), dynamics, final, initial)
        x, u, mu = x + dx, u + du, mu + dmu
        nun = nun + rho * (matvec(fac.E, stage_z(dx, du)) + eq)
    return KKTSolution(x, u, mu, nun * fac.row_scale)


def _residuals(fac: KKTFactor, q: Tensor, f: Tensor, qT: Tensor, x0: Tensor, en: Tensor, x: Tensor,
               u: Tensor, mu: Tensor, nun: Tensor) -> tuple[Tensor, ...]:
    """Residuals of the exact KKT system (stationarity, terminal, equalities, dynamics, x_0)."""
    z = stage_z(x, u)
    F = fac.riccati.F
    shift = torch.nn.functional.pad(mu[:, :-1], (0, z.shape[-1] - mu.shape[-1]))
    dual = matvec(fac.H, z) + q + rmatvec(fac.E, nun) + rmatvec(F, mu[:, 1:]) - shift
    final = matvec(fac.HT, x[:, -1]) + qT - mu[:, -1]
    return dual, final, matvec(fac.E, z) - en, matvec(F, z) + f - x[:, 1:], x0 - x[:, 0]
