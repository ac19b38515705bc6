"""Batched primal-dual interior-point method (Mehrotra predictor-corrector) for stage-structured QPs.

Problem (batch-first, z_t = [x_t; u_t], N = n + m, shapes as in `qp_problem.QPProblem`):

    minimize   sum_{t<T} 1/2 z_t' C_t z_t + c_t' z_t + 1/2 x_T' C_T x_T + c_T' x_T
    subject to x_0 = x0,  x_{t+1} = F_t z_t + f_t,  G_t z_t + s_t = h_t,  s_t >= 0,  E_t z_t = e_t.

Iterates: x, u, slacks s >= 0 and inequality duals lam >= 0 (B,T,p), costates mu (B,T+1,n),
equality duals nu (B,T,q). With the KKT residuals
    r_d = C z + c + G'lam + E'nu + F'mu_+ - [mu; 0],  r_T = C_T x_T + c_T - mu_T,
    r_p = G z + s - h,  r_e = E z - e,  r_f = F z + f - x_+,  r_0 = x0 - x_0,
Sigma = diag(lam / s) and a complementarity target w (0 for the predictor, sigma*gap - ds_aff*dlam_aff
for the corrector), eliminating ds = -r_p - G dz and dlam = (w - s lam - lam ds) / s from the Newton
system leaves for (dz, dmu, dnu) the equality-constrained LQR

    stage Hessian C_t + G_t' Sigma_t G_t,   linear term r_d + G'(w / s - lam + Sigma r_p),
    terminal C_T with linear term r_T,      dynamics dx_+ = F dz + r_f,  dx_0 = r_0,  E dz = -r_e,

solved in O(T) by `qp_kkt`. Its right-hand sides are residuals, so rounding errors shrink with the
step even when Sigma is huge near the solution. One factorisation serves both the predictor and the
corrector. All batch elements share the loop; an element stops moving once it is decided
(solved, infeasible, not convex, numerical failure). Finally every element that converged or ran
out of iterations is polished (`qp_active`: one equality-constrained solve on its active set);
a polished point that passes the convergence test replaces the iterate and is SOLVED.

Primal infeasibility certificate (Farkas): duals with vanishing homogeneous dual residual
    r_t = G_t'lam_t + E_t'nu_t + F_t'mu_{t+1} - [mu_t; 0],  r_T = -mu_T,
and positive value v = sum_t mu_{t+1}'f_t + mu_0'x0 - lam'h - nu'e prove that no feasible point
exists, since every feasible z satisfies v <= -sum r'z. The test v > |r|_inf (1 + |z|_1) / eps_inf
rules out feasible points in a ball of radius ~|z|_1 / eps_inf; the duals of an infeasible problem
grow without bound along such a certificate, so it triggers after a few iterations.
"""
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from runtime.qp_active import polish
from runtime.qp_kkt import factor_kkt, matvec, rmatvec, solve_kkt, stage_z
from runtime.qp_problem import (Iterate, KKTResiduals, QPProblem, converged, inf_norm, kkt_residuals,
                                multiplier_forces, penalty, residual_norms, select)
from runtime.status import Status


@dataclass(frozen=True)
class QPOptions:
    """Solver options.

    tol: residual tolerance (relative to the data scale); None picks 1e-10 for float64, 1e-5 otherwise.
    max_iters: interior-point iterations.
    infeasibility_tol: eps_inf of the Farkas test (see module docstring).
    max_sweeps: refinement sweeps per KKT solve with equality rows (`runtime.qp_kkt`).
    step_fraction: fraction of the step to the boundary of s, lam >= 0.
    """

    tol: float | None = None
    max_iters: int = 50
    infeasibility_tol: float = 1e-6
    max_sweeps: int = 20
    step_fraction: float = 0.99

    def resolved_tol(self, dtype: torch.dtype) -> float:
        if self.tol is not None:
            return self.tol
        return 1e-10 if dtype == torch.float64 else 1e-5


class IPMResult(NamedTuple):
    iterate: Iterate
    status: Tensor      # (B,) int64
    iterations: Tensor  # (B,) int64
    primal: Tensor      # (B,) max violation of dynamics, equalities and G z + s = h
    dual: Tensor        # (B,) max stationarity residual
    gap: Tensor         # (B,) duality gap s'lam


def interior_point(prob: QPProblem, options: QPOptions) -> IPMResult:
    """Run the batched Mehrotra predictor-corrector method; see the module docstring."""
    tol = options.resolved_tol(prob.C.dtype)
    rho = penalty(prob)
    it, convex = _initial_point(prob, rho, tol, options.max_sweeps)
    finite = torch.stack([torch.isfinite(v).flatten(1).all(1) for v in prob]).all(0)
    status = torch.full_like(prob.x0[:, 0], int(Status.MAX_ITERS), dtype=torch.int64)
    status = torch.where(convex, status, int(Status.NOT_CONVEX))
    status = torch.where(finite, status, int(Status.NUMERICAL))
    running = finite & convex
    iterations = torch.zeros_like(status)

    for k in range(options.max_iters + 1):
        r = kkt_residuals(prob, it)
        norms = residual_norms(r, it)
        solved = converged(prob, it, norms, tol)
        infeasible = ~solved & _farkas(prob, it, options.infeasibility_tol)
        status = torch.where(running & solved, int(Status.SOLVED), status)
        status = torch.where(running & infeasible, int(Status.INFEASIBLE), status)
        running = running & ~solved & ~infeasible
        if k == options.max_iters or not bool(running.any()):
            break
        stepped, ok = _newton_step(prob, it, r, rho, tol, options)
        status = torch.where(running & ~ok, int(Status.NUMERICAL), status)
        running = running & ok
        it = Iterate(*(select(running, new, old) for new, old in zip(stepped, it)))
        iterations = iterations + running.long()

    # One polishing solve for all elements that converged or ran out of iterations.
    polished = polish(prob, it, rho, tol, options.max_sweeps)
    take = polished.accepted & ((status == Status.SOLVED) | (status == Status.MAX_ITERS))
    it = Iterate(*(select(take, new, old) for new, old in zip(polished.iterate, it)))
    norms = tuple(select(take, new, old) for new, old in zip(polished.norms, norms))
    status = torch.where(take, int(Status.SOLVED), status)
    return IPMResult(it, status, iterations, *norms)


def _farkas(prob: QPProblem, it: Iterate, eps: float) -> Tensor:
    """(B,) bool: the duals certify primal infeasibility (module docstring)."""
    homogeneous = inf_norm(multiplier_forces(prob, it), it.mu[:, -1])
    value = ((it.mu[:, 1:] * prob.f).sum((1, 2)) + (it.mu[:, 0] * prob.x0).sum(1)
             - (it.lam * prob.h).sum((1, 2)) - (it.nu * prob.e).sum((1, 2)))
    size = 1 + stage_z(it.x, it.u).abs().sum((1, 2)) + it.x[:, -1].abs().sum(1)
    return (value > 0) & (homogeneous * size < eps * value)


def _initial_point(prob: QPProblem, rho: Tensor, tol: float, sweeps: int) -> tuple[Iterate, Tensor]:
    """Start at the minimiser z of the cost under dynamics and equalities, with s and lam the positive
    and negative parts of h - G z shifted into the interior (as in CVXOPT). Its Riccati factorisation
    also tells which elements are convex (Q_uu > 0 at every stage): returns (iterate, convex (B,))."""
    fac = factor_kkt(prob.C, prob.F, prob.CT, prob.E, rho)
    sol = solve_kkt(fac, prob.c, prob.f, prob.cT, prob.x0, prob.e, torch.zeros_like(prob.e), tol, sweeps)
    slack = prob.h - matvec(prob.G, stage_z(sol.x, sol.u))
    it = Iterate(sol.x, sol.u, _shift_positive(slack), _shift_positive(-slack), sol.mu, sol.nu)
    return it, fac.status == Status.SOLVED


def _shift_positive(v: Tensor) -> Tensor:
    """v itself if all its entries are positive, else v + 1 - min(v) (per batch element)."""
    least = _amin(v)
    return v + torch.where(least > 0, 0, 1 - least)[:, None, None]


def _newton_step(prob: QPProblem, it: Iterate, r: KKTResiduals, rho: Tensor, tol: float,
                 options: QPOptions) -> tuple[Iterate, Tensor]:
    """One predictor-corrector step from `it` (KKT residuals `r`); returns the new iterate and a
    (B,) mask of the elements whose step is finite."""
    s, lam = it.s, it.lam
    sigma = lam / s
    fac = factor_kkt(prob.C + prob.G.mT @ (sigma.unsqueeze(-1) * prob.G), prob.F, prob.CT, prob.E, rho)

    def direction(target: Tensor):
        linear = r.dual + rmatvec(prob.G, target / s - lam + sigma * r.ineq)
        sol = solve_kkt(fac, linear, r.dynamics, r.final, r.initial, -r.eq, torch.zeros_like(it.nu),
                        0.1 * tol, options.max_sweeps)
        ds = -r.ineq - matvec(prob.G, stage_z(sol.x, sol.u))
        return sol, ds, (target - s * lam - lam * ds) / s

    _, ds_aff, dlam_aff = direction(torch.zeros_like(s))
    gap = _mean_gap(s, lam)
    alpha_aff = _max_step(s, ds_aff, lam, dlam_aff)[:, None, None]
    gap_aff = _mean_gap(s + alpha_aff * ds_aff, lam + alpha_aff * dlam_aff)
    centering = (gap_aff / gap.clamp_min(torch.finfo(s.dtype).tiny)).clamp(0, 1) ** 3
    sol, ds, dlam = direction((centering * gap)[:, None, None] - ds_aff * dlam_aff)

    alpha = (options.step_fraction * _max_step(s, ds, lam, dlam)).clamp_max(1)
    a = alpha[:, None, None]
    stepped = Iterate(it.x + a * sol.x, it.u + a * sol.u, s + a * ds, lam + a * dlam,
                      it.mu + a * sol.mu, it.nu + a * sol.nu)
    ok = (fac.status == Status.SOLVED) & torch.stack(
        [torch.isfinite(v).flatten(1).all(1) for v in stepped]).all(0)
    return stepped, ok


def _max_step(s: Tensor, ds: Tensor, lam: Tensor, dlam: Tensor) -> Tensor:
    """Largest alpha (B,) in (0, inf] with s + alpha ds >= 0 and lam + alpha dlam >= 0."""
    ratios = torch.cat([torch.where(ds < 0, -s / ds, torch.inf).flatten(1),
                        torch.where(dlam < 0, -lam / dlam, torch.inf).flatten(1)], dim=1)
    return torch.cat([ratios, ratios.new_full((ratios.shape[0], 1), torch.inf)], dim=1).amin(1)


def _mean_gap(s: Tensor, lam: Tensor) -> Tensor:
    """s'lam / (T p) per batch element (0 without inequalities)."""
    return (s * lam).flatten(1).sum(1) / max(s[0].numel(), 1)


def _amin(v: Tensor) -> Tensor:
    """min over all non-batch entries, (B,); +inf when empty."""
    flat = v.flatten(1)
    return torch.cat([flat, flat.new_full((flat.shape[0], 1), torch.inf)], dim=1).amin(1)


