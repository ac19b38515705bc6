"""Active-set KKT systems of the QP: polishing of interior-point iterates, and the backward pass.

For an active set A (from an iterate: A = {lam > s}) the QP's KKT conditions, restricted to A, are
those of the equality-constrained LQR (solved in O(T) by `qp_kkt`)

    minimize   sum_t 1/2 z_t' C_t z_t + c_t' z_t + 1/2 x_T' C_T x_T + c_T' x_T
    subject to x_0 = x0,  x_{t+1} = F_t z_t + f_t,  E_t z_t = e_t,  G_{A,t} z_t = h_{A,t}

with rows [E_t; G_{A,t}] (inactive rows of G zeroed, so shapes stay (B,T,q+p,N)), multipliers
(nu, lam_A) and lam = 0 off A. If its solution is primal and dual feasible (G z <= h, lam_A >= 0)
it is the QP's solution, exact to rounding: polishing takes it as soon as the convergence test
passes, which removes the O(sqrt(gap)) error that weakly active constraints leave in an
interior-point iterate and usually saves the last interior-point iterations.
At the solution the same system, with linear terms dl/dz, is the backward pass's adjoint system.
"""
from typing import NamedTuple

import torch
from torch import Tensor

from runtime.qp_kkt import KKTFactor, factor_kkt, matvec, solve_kkt, stage_z
from runtime.qp_problem import Iterate, QPProblem, ResidualNorms, converged, kkt_residuals, residual_norms


class ActiveSet(NamedTuple):
    active: Tensor     # (B,T,p) bool: the constraints G z <= h held as equalities
    factor: KKTFactor  # factorisation of the active-set KKT system (Hessians C, rows [E; G_A])


class Polished(NamedTuple):
    """The active-set solution of an iterate, as an iterate (s = 0 on A, lam = 0 off A)."""

    iterate: Iterate
    accepted: Tensor      # (B,) bool: a KKT point within tolerance
    norms: ResidualNorms  # of `iterate`


def active_set(prob: QPProblem, it: Iterate, rho: Tensor) -> ActiveSet:
    """Active set {lam > s} of an iterate and the factorisation of its KKT system."""
    active = it.lam > it.s
    rows = torch.cat([prob.E, torch.where(active.unsqueeze(-1), prob.G, torch.zeros_like(prob.G))], dim=2)
    return ActiveSet(active, factor_kkt(prob.C, prob.F, prob.CT, rows, rho))


def polish(prob: QPProblem, it: Iterate, rho: Tensor, tol: float, max_sweeps: int) -> Polished:
    """Solve the active-set system of `it` and test the result (module docstring)."""
    act = active_set(prob, it, rho)
    q, zero = prob.e.shape[-1], torch.zeros_like(it.lam)
    rhs = torch.cat([prob.e, torch.where(act.active, prob.h, zero)], dim=2)
    warm = torch.cat([it.nu, torch.where(act.active, it.lam, zero)], dim=2)
    sol = solve_kkt(act.factor, prob.c, prob.f, prob.cT, prob.x0, rhs, warm, 0.1 * tol, max_sweeps)
    slack = prob.h - matvec(prob.G, stage_z(sol.x, sol.u))
    # A wrong active set shows up as violated inactive rows or negative multipliers; clamping them
    # moves that violation into the residuals, which the convergence test then rejects.
    candidate = Iterate(sol.x, sol.u, torch.where(act.active, zero, slack.clamp_min(0)),
                        torch.where(act.active, sol.nu[..., q:].clamp_min(0), zero), sol.mu, sol.nu[..., :q])
    norms = residual_norms(kkt_residuals(prob, candidate), candidate)
    return Polished(candidate, converged(prob, candidate, norms, tol), norms)
