"""Stage-structured QP data and its KKT residuals (shared by the interior-point method and polishing).

Problem (batch-first, z_t = [x_t; u_t], N = n + m):

    minimize   sum_{t<T} 1/2 z_t' C_t z_t + c_t' z_t + 1/2 x_T' C_T x_T + c_T' x_T
    subject to x_0 = x0,  x_{t+1} = F_t z_t + f_t,  G_t z_t + s_t = h_t,  s_t >= 0,  E_t z_t = e_t

with the Lagrangian objective + lam'(G z - h) + nu'(E z - e) + sum_t mu_{t+1}'(F_t z_t + f_t - x_{t+1})
+ mu_0'(x0 - x_0), whose KKT residuals at an `Iterate` are
    r_d = C z + c + G'lam + E'nu + F'mu_+ - [mu; 0],  r_T = C_T x_T + c_T - mu_T,
    r_p = G z + s - h,  r_e = E z - e,  r_f = F z + f - x_+,  r_0 = x0 - x_0,   gap = s'lam.
"""
from typing import NamedTuple

import torch
from torch import Tensor

from runtime.qp_kkt import matvec, rmatvec, stage_z


class QPProblem(NamedTuple):
    """QP data; the module docstring states the problem."""

    x0: Tensor  # (B,n)
    C: Tensor   # (B,T,N,N) symmetric
    c: Tensor   # (B,T,N)
    F: Tensor   # (B,T,n,N)
    f: Tensor   # (B,T,n)
    CT: Tensor  # (B,n,n) symmetric
    cT: Tensor  # (B,n)
    G: Tensor   # (B,T,p,N)
    h: Tensor   # (B,T,p)
    E: Tensor   # (B,T,q,N)
    e: Tensor   # (B,T,q)


class Iterate(NamedTuple):
    """Primal-dual point: states, controls, slacks, and the multipliers of the module's Lagrangian."""

    x: Tensor    # (B,T+1,n)
    u: Tensor    # (B,T,m)
    s: Tensor    # (B,T,p)
    lam: Tensor  # (B,T,p)
    mu: Tensor   # (B,T+1,n)
    nu: Tensor   # (B,T,q)


def objective(prob: QPProblem, x: Tensor, u: Tensor) -> Tensor:
    """The QP objective (B,) at x (B,T+1,n), u (B,T,m)."""
    z, xT = stage_z(x, u), x[:, -1]
    stage = (0.5 * matvec(prob.C, z) + prob.c) * z
    final = (0.5 * matvec(prob.CT, xT) + prob.cT) * xT
    return stage.sum((1, 2)) + final.sum(1)


def penalty(prob: QPProblem) -> Tensor:
    """Regularisation penalty rho (B,) of the equality rows in `qp_kkt`: eps^{-1/2} times the mean
    cost curvature, so the penalised Riccati recursion stays well conditioned."""
    curvature = prob.C.diagonal(dim1=-2, dim2=-1).abs().mean((1, 2))
    curvature = torch.where(curvature > 0, curvature, torch.ones_like(curvature))
    return curvature / torch.finfo(prob.C.dtype).eps ** 0.5


class KKTResiduals(NamedTuple):
    """Residual vectors of the KKT conditions at an iterate (module docstring)."""

    dual: Tensor      # r_d (B,T,N)
    final: Tensor     # r_T (B,n)
    ineq: Tensor      # r_p (B,T,p)
    eq: Tensor        # r_e (B,T,q)
    dynamics: Tensor  # r_f (B,T,n)
    initial: Tensor   # r_0 (B,n)


def kkt_residuals(prob: QPProblem, it: Iterate) -> KKTResiduals:
    """The residual vectors of the module docstring at `it`."""
    z = stage_z(it.x, it.u)
    return KKTResiduals(
        dual=matvec(prob.C, z) + prob.c + multiplier_forces(prob, it),
        final=matvec(prob.CT, it.x[:, -1]) + prob.cT - it.mu[:, -1],
        ineq=matvec(prob.G, z) + it.s - prob.h,
        eq=matvec(prob.E, z) - prob.e,
        dynamics=matvec(prob.F, z) + prob.f - it.x[:, 1:],
        initial=prob.x0 - it.x[:, 0])


class ResidualNorms(NamedTuple):
    primal: Tensor  # (B,) max |r_p|, |r_e|, |r_f|, |r_0|
    dual: Tensor    # (B,) max |r_d|, |r_T|
    gap: Tensor     # (B,) s'lam


def converged(prob: QPProblem, it: Iterate, norms: ResidualNorms, tol: float) -> Tensor:
    """(B,) bool: primal, dual residuals and gap within tol relative to the data and the cost."""
    primal, dual, gap = norms
    primal_scale = 1 + inf_norm(prob.h, prob.e, prob.f, prob.x0)
    dual_scale = 1 + inf_norm(prob.c, prob.cT)
    cost_scale = 1 + objective(prob, it.x, it.u).abs()
    return (primal <= tol * primal_scale) & (dual <= tol * dual_scale) & (gap <= tol * cost_scale)


def residual_norms(r: KKTResiduals, it: Iterate) -> ResidualNorms:
    """Primal and dual residuals and duality gap (B,) at `it` with KKT residuals `r`."""
    return ResidualNorms(inf_norm(r.ineq, r.eq, r.dynamics, r.initial), inf_norm(r.dual, r.final),
                         (it.s * it.lam).flatten(1).sum(1))


def multiplier_forces(prob: QPProblem, it: Iterate) -> Tensor:
    """G_t'lam_t + E_t'nu_t + F_t'mu_{t+1} - [mu_t; 0]  (B,T,N)."""
    n = prob.x0.shape[1]
    shift = torch.nn.functional.pad(it.mu[:, :-1], (0, prob.c.shape[-1] - n))
    return rmatvec(prob.G, it.lam) + rmatvec(prob.E, it.nu) + rmatvec(prob.F, it.mu[:, 1:]) - shift


def inf_norm(*tensors: Tensor) -> Tensor:
    """max_i |v_i|_inf over batch-first tensors, (B,); empty tensors count as 0."""
    flat = [v.abs().flatten(1) for v in tensors]
    return torch.cat(flat + [flat[0].new_zeros(flat[0].shape[0], 1)], dim=1).amax(1)


def select(mask: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """Per batch element: `new` where the (B,) mask is set, else `old`."""
    return torch.where(mask.view(-1, *([1] * (new.dim() - 1))), new, old)
