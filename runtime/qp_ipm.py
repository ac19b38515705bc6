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
corrector. Once an element's residuals are within polish_tol (and at the iteration limit) it is
polished (`qp_active`: one equality-constrained solve on the active set {lam > s}); a polished
point that passes the convergence test at tol is the exact solution and ends its iterations, else
the element goes on (and is polished again next time). All batch elements share the loop; an
element stops moving once it is decided (solved, infeasible, not convex, numerical failure) and
leaves the working set, so the cost is the sum, not the maximum, of the iteration counts.

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
                                multiplier_forces, penalty, residual_norms)
from runtime.status import Status


@dataclass(frozen=True)
class QPOptions:
    """Solver options.

    tol: residual tolerance (relative to the data scale); None picks 1e-10 for float64, 1e-5 otherwise.
    max_iters: interior-point iterations.
    polish_tol: residual level (same scaling as tol) from which elements are polished at every
        iteration; None picks tol**0.3 (1e-3 for float64), measured fastest on benchmarks/qp.py.
    infeasibility_tol: eps_inf of the Farkas test (see module docstring).
    max_sweeps: refinement sweeps per KKT solve with equality rows (`runtime.qp_kkt`).
    step_fraction: fraction of the step to the boundary of s, lam >= 0.
    """

    tol: float | None = None
    max_iters: int = 50
    polish_tol: float | None = None
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
    polish_tol = options.polish_tol if options.polish_tol is not None else tol ** 0.3
    rho = penalty(prob)
    it, convex = _initial_point(prob, rho, tol, options.max_sweeps)
    finite = torch.stack([torch.isfinite(v).flatten(1).all(1) for v in prob]).all(0)
    status = torch.full_like(prob.x0[:, 0], int(Status.MAX_ITERS), dtype=torch.int64)
    status = torch.where(convex, status, int(Status.NOT_CONVEX))
    status = torch.where(finite, status, int(Status.NUMERICAL))
    iterations = torch.zeros_like(status)
    norms = residual_norms(kkt_residuals(prob, it), it)

    # Iterate on the working set of undecided elements only: decided ones leave it (and so stop
    # changing), which also keeps their cost out of the remaining iterations.
    work = (finite & convex).nonzero().squeeze(1)
    sub, sub_it, sub_rho = _take(prob, work), _take(it, work), rho[work]
    for k in range(options.max_iters + 1):
        r = kkt_residuals(sub, sub_it)
        sub_norms = residual_norms(r, sub_it)
        solved = converged(sub, sub_it, sub_norms, tol)
        # Polish the elements within polish_tol (and all at the iteration limit); a polished point
        # that passes the convergence test at tol ends that element's iterations.
        ready = converged(sub, sub_it, sub_norms, polish_tol) | (k == options.max_iters)
        if bool(ready.any()):
            polished = polish(_take(sub, ready), _take(sub_it, ready), sub_rho[ready], tol, options.max_sweeps)
            take = ready.nonzero().squeeze(1)[polished.accepted]
            sub_it = _put(sub_it, take, _take(polished.iterate, polished.accepted))
            sub_norms = _put(sub_norms, take, _take(polished.norms, polished.accepted))
            solved = solved.index_fill(0, take, True)
        infeasible = ~solved & _farkas(sub, sub_it, options.infeasibility_tol)
        it, norms = _put(it, work, sub_it), _put(norms, work, sub_norms)
        status[work] = torch.where(solved, int(Status.SOLVED),
                                   torch.where(infeasible, int(Status.INFEASIBLE), status[work]))
        keep = ~solved & ~infeasible
        if k == options.max_iters or not bool(keep.any()):
            break
        stepped, ok = _newton_step(sub, sub_it, r, sub_rho, tol, options)
        status[work[keep & ~ok]] = int(Status.NUMERICAL)
        keep = keep & ok
        work, sub, sub_it, sub_rho = work[keep], _take(sub, keep), _take(stepped, keep), sub_rho[keep]
        iterations[work] += 1
    return IPMResult(it, status, iterations, *norms)


def _take(data: tuple[Tensor, ...], index: Tensor) -> tuple[Tensor, ...]:
    """The batch elements `index` (indices or a (B,) mask) of a tuple of batch-first tensors."""
    return type(data)(*(v[index] for v in data))


def _put(data: tuple[Tensor, ...], index: Tensor, values: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Copy of `data` with the batch elements `index` replaced by `values`."""
    return type(data)(*(v.index_put((index,), w) for v, w in zip(data, values)))


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


