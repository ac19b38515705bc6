"""Differentiable batched QP solver for linear-quadratic planning with stage constraints.

Problem (batch-first; z_t = [x_t; u_t] of size N = n + m; t = 0..T-1):

    minimize   sum_t 1/2 z_t' C_t z_t + c_t' z_t  +  1/2 x_T' C_T x_T + c_T' x_T
    subject to x_0 = x0,   x_{t+1} = F_t z_t + f_t,   G_t z_t <= h_t,   E_t z_t = e_t

    x0 (B,n)  C (B,T,N,N)  c (B,T,N)  F (B,T,n,N)  f (B,T,n)  CT (B,n,n)  cT (B,n)
    G (B,T,p,N)  h (B,T,p)  E (B,T,q,N)  e (B,T,q)   (E, e optional; p or q may be 0)

Forward: the batched primal-dual interior-point method (Mehrotra predictor-corrector) of
`runtime.qp_ipm`, whose Newton systems are LQR problems with stage Hessians C_t + G_t' Sigma_t G_t
(Sigma = diag(lam / s)), solved by Riccati recursions in O(T) per iteration (no dense KKT
factorisation); equality rows are solved exactly by refinement on the same factorisation
(`runtime.qp_kkt`), and the result is polished on its active set (`runtime.qp_active`).

Status per element (`runtime.status.Status`): SOLVED (primal and dual residuals and the duality
gap s'lam within tol, relative to the data and the cost), MAX_ITERS, INFEASIBLE (a Farkas
certificate from the diverging duals), NOT_CONVEX (the Riccati recursion of C, with the equality
rows penalised, meets a Q_uu that is not positive definite), NUMERICAL (NaN/Inf in the data or
a step). Decided elements stop changing while the others iterate.

Backward: implicit differentiation of the KKT conditions at the solution (Amos & Kolter, OptNet, 2017).
With the active set A = {lam > s} of the solution the differential KKT system is the LQR with stage Hessian C_t,
dynamics F_t and equality rows [E_t; G_{A,t}] -- the structure of the polishing solve -- so the
adjoint is ONE structured solve (one Riccati factorisation, O(T)): (z^, mu^, nu^, lam^) solves that
LQR with linear terms dl/dz and zero f, x0, e, and (with sym(M) = (M + M')/2 and the duals lam, nu,
mu of the forward solution)

    dC_t = sym(z^_t z_t')   dc_t = z^_t      dCT = sym(x^_T x_T')   dcT = x^_T    dx0 = mu^_0
    dF_t = mu_{t+1} z^_t' + mu^_{t+1} z_t'   df_t = mu^_{t+1}
    dG_t = lam_t z^_t' + lam^_t z_t'         dh_t = -lam^_t
    dE_t = nu_t z^_t' + nu^_t z_t'           de_t = -nu^_t.

The returned cost is computed from (x, u) outside the autograd Function, so autograd adds its
explicit dependence on C, c, CT, cT to the implicit one. Gradients exist where the solution is
strictly complementary. Elements that are not SOLVED or
MAX_ITERS (infeasible, not convex, numerical failure) get zero gradients; `status` reports them.
The returned duals are not differentiable.
"""
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from runtime.qp_active import ActiveSet, active_set
from runtime.qp_ipm import QPOptions, interior_point
from runtime.qp_kkt import solve_kkt, stage_z
from runtime.qp_problem import Iterate, QPProblem, objective, penalty, select
from runtime.status import Status

__all__ = ["QPOptions", "QPResiduals", "QPDuals", "QPSolution", "qp"]


class QPResiduals(NamedTuple):
    primal: Tensor          # (B,) max violation of dynamics, G z + s = h and E z = e
    dual: Tensor            # (B,) max stationarity residual of the Lagrangian
    complementarity: Tensor  # (B,) duality gap s'lam


class QPDuals(NamedTuple):
    lam: Tensor  # (B,T,p) inequality multipliers (>= 0)
    nu: Tensor   # (B,T,q) equality multipliers
    mu: Tensor   # (B,T+1,n) costates: multipliers of x_0 = x0 and of the dynamics


class QPSolution(NamedTuple):
    x: Tensor           # (B,T+1,n)
    u: Tensor           # (B,T,m)
    cost: Tensor        # (B,) objective without constant terms
    status: Tensor      # (B,) int64 runtime.status.Status
    iterations: Tensor  # (B,) int64
    residuals: QPResiduals
    duals: QPDuals


def qp(x0: Tensor, C: Tensor, c: Tensor, F: Tensor, f: Tensor, CT: Tensor, cT: Tensor,
       G: Tensor, h: Tensor, E: Tensor | None = None, e: Tensor | None = None,
       options: QPOptions = QPOptions()) -> QPSolution:
    """Solve the batched QP of the module docstring; x, u and cost are differentiable in all data."""
    prob = _problem(x0, C, c, F, f, CT, cT, G, h, E, e)
    x, u, lam, nu, mu, status, iterations, primal, dual, gap = _QPFunction.apply(options, *prob)
    cost = objective(prob._replace(C=_sym(prob.C), CT=_sym(prob.CT)), x, u)
    return QPSolution(x, u, cost, status, iterations, QPResiduals(primal, dual, gap), QPDuals(lam, nu, mu))


class _QPFunction(torch.autograd.Function):
    """(options, x0, C, c, F, f, CT, cT, G, h, E, e) -> (x, u, lam, nu, mu, status, iters, residuals)."""

    @staticmethod
    def forward(ctx, options: QPOptions, *data: Tensor):
        prob = QPProblem(*data)
        prob = prob._replace(C=_sym(prob.C), CT=_sym(prob.CT))
        result = interior_point(prob, options)
        it = result.iterate
        ctx.save_for_backward(*prob, *it, result.status)
        ctx.tol, ctx.max_sweeps = options.resolved_tol(prob.C.dtype), options.max_sweeps
        outputs = (it.x, it.u, it.lam, it.nu, it.mu, result.status, result.iterations,
                   result.primal, result.dual, result.gap)
        ctx.mark_non_differentiable(*outputs[2:])
        return outputs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_x: Tensor, grad_u: Tensor, *_unused: Tensor):
        *data, x, u, s, lam, mu, nu, status = ctx.saved_tensors
        prob = QPProblem(*data)
        act = active_set(prob, Iterate(x, u, s, lam, mu, nu), penalty(prob))
        grads = _adjoint_gradients(act, x, u, lam, mu, nu, grad_x, grad_u, ctx.tol, ctx.max_sweeps)
        usable = (status == Status.SOLVED) | (status == Status.MAX_ITERS)
        grads = [select(usable, g, torch.zeros_like(g)) for g in grads]
        return (None, *(g if need else None for g, need in zip(grads, ctx.needs_input_grad[1:])))


def _adjoint_gradients(act: ActiveSet, x: Tensor, u: Tensor, lam: Tensor, mu: Tensor, nu: Tensor,
                       grad_x: Tensor, grad_u: Tensor, tol: float, max_sweeps: int) -> list[Tensor]:
    """Gradients of the loss w.r.t. (x0, C, c, F, f, CT, cT, G, h, E, e) (module docstring formulas)."""
    q = nu.shape[-1]
    zero_rhs = torch.zeros(act.factor.E.shape[:-1], dtype=x.dtype, device=x.device)
    adj = solve_kkt(act.factor, stage_z(grad_x, grad_u), torch.zeros_like(mu[:, 1:]), grad_x[:, -1],
                    torch.zeros_like(x[:, 0]), zero_rhs, zero_rhs, 0.1 * tol, max_sweeps)
    z, z_hat = stage_z(x, u), stage_z(adj.x, adj.u)
    nu_hat, lam_hat = adj.nu[..., :q], adj.nu[..., q:]
    mu_hat = adj.mu
    return [
        mu_hat[:, 0],                                           # x0
        _sym(_outer(z_hat, z)),                                 # C
        z_hat,                                                  # c
        _outer(mu[:, 1:], z_hat) + _outer(mu_hat[:, 1:], z),    # F
        mu_hat[:, 1:],                                          # f
        _sym(_outer(adj.x[:, -1], x[:, -1])),                   # CT
        adj.x[:, -1],                                           # cT
        _outer(lam, z_hat) + _outer(lam_hat, z),                # G
        -lam_hat,                                               # h
        _outer(nu, z_hat) + _outer(nu_hat, z),                  # E
        -nu_hat,                                                # e
    ]


def _problem(x0, C, c, F, f, CT, cT, G, h, E, e) -> QPProblem:
    """Validate shapes and fill in empty equality data."""
    if x0.dim() != 2 or C.dim() != 4:
        raise ValueError(f"expected x0 (B,n) and C (B,T,N,N), got {tuple(x0.shape)} and {tuple(C.shape)}")
    B, n = x0.shape
    T, N = C.shape[1], C.shape[2]
    if (E is None) != (e is None):
        raise ValueError("give both E and e, or neither")
    if E is None:
        E = C.new_zeros(B, T, 0, N)
        e = C.new_zeros(B, T, 0)
    p = G.shape[-2] if G.dim() == 4 else -1
    q = E.shape[-2] if E.dim() == 4 else -1
    expected = {"C": (B, T, N, N), "c": (B, T, N), "F": (B, T, n, N), "f": (B, T, n), "CT": (B, n, n),
                "cT": (B, n), "G": (B, T, p, N), "h": (B, T, p), "E": (B, T, q, N), "e": (B, T, q)}
    given = {"C": C, "c": c, "F": F, "f": f, "CT": CT, "cT": cT, "G": G, "h": h, "E": E, "e": e}
    for name, tensor in given.items():
        if tuple(tensor.shape) != expected[name]:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {expected[name]} "
                             f"(B={B}, T={T}, n={n}, N=n+m={N})")
        if tensor.dtype != x0.dtype or tensor.device != x0.device or not tensor.is_floating_point():
            raise ValueError(f"{name} is {tensor.dtype} on {tensor.device}; every input must be a "
                             f"floating-point tensor like x0 ({x0.dtype} on {x0.device})")
    if N <= n:
        raise ValueError(f"C is (.., {N}, {N}) but needs N = n + m > n = {n}")
    return QPProblem(x0, C, c, F, f, CT, cT, G, h, E, e)


def _sym(M: Tensor) -> Tensor:
    return 0.5 * (M + M.mT)


def _outer(a: Tensor, b: Tensor) -> Tensor:
    """a b' over the last dimension."""
    return a.unsqueeze(-1) * b.unsqueeze(-2)
