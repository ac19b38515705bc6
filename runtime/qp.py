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

The cost J(x, u) is an output of the same Function: its incoming gradient g adds g dJ/dz_t =
g (C_t z_t + c_t) and g dJ/dx_T to the adjoint's linear data, and the explicit terms
dC_t += g/2 z_t z_t', dc_t += g z_t, dCT += g/2 x_T x_T', dcT += g x_T. Gradients exist where the
solution is strictly complementary; MAX_ITERS elements get those of their last iterate.

Failed elements (INFEASIBLE, NOT_CONVEX, NUMERICAL) have NaN x, u, cost and duals, as in
`runtime.lqr`: their input gradients are NaN if the loss reads any of their outputs (a nonzero
incoming gradient) and exactly zero if it does not, so a loss masked with
`torch.where(sol.status == Status.SOLVED, sol.cost, 0)` or `sol.cost[ok]` keeps the other
elements' gradients, and those of shared parameters, intact. An element whose x, u or cost is not
finite is never SOLVED (it becomes NUMERICAL). The returned duals are not differentiable.
"""
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from runtime.linalg import outer, sym
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
    x, u, cost, lam, nu, mu, status, iterations, primal, dual, gap = _QPFunction.apply(options, *prob)
    return QPSolution(x, u, cost, status, iterations, QPResiduals(primal, dual, gap), QPDuals(lam, nu, mu))


class _QPFunction(torch.autograd.Function):
    """(options, x0, C, c, F, f, CT, cT, G, h, E, e) -> (x, u, cost, lam, nu, mu, status, iters, residuals)."""

    @staticmethod
    def forward(ctx, options: QPOptions, *data: Tensor):
        prob = QPProblem(*data)
        prob = prob._replace(C=sym(prob.C), CT=sym(prob.CT))
        result = interior_point(prob, options)
        it = result.iterate
        cost = objective(prob, it.x, it.u)
        finite = torch.isfinite(cost) & torch.isfinite(it.x).flatten(1).all(1) & torch.isfinite(it.u).flatten(1).all(1)
        status = torch.where(finite | _failed(result.status), result.status,
                             torch.full_like(result.status, int(Status.NUMERICAL)))
        failed = _failed(status)
        ctx.save_for_backward(*prob, *it, status)
        ctx.tol, ctx.max_sweeps = options.resolved_tol(prob.C.dtype), options.max_sweeps
        x, u, cost, lam, nu, mu = (select(failed, torch.full_like(y, torch.nan), y)
                                   for y in (it.x, it.u, cost, it.lam, it.nu, it.mu))
        outputs = (x, u, cost, lam, nu, mu, status, result.iterations, result.primal, result.dual, result.gap)
        ctx.mark_non_differentiable(*outputs[3:])
        return outputs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_x: Tensor, grad_u: Tensor, grad_cost: Tensor, *_unused: Tensor):
        *data, x, u, s, lam, mu, nu, status = ctx.saved_tensors
        prob = QPProblem(*data)
        failed = _failed(status)
        read = (grad_x != 0).flatten(1).any(1) | (grad_u != 0).flatten(1).any(1) | (grad_cost != 0)
        grad_x, grad_u, grad_cost = (select(failed, torch.zeros_like(g), g) for g in (grad_x, grad_u, grad_cost))
        x, u, lam, mu, nu = (select(failed, torch.zeros_like(y), y) for y in (x, u, lam, mu, nu))
        grad_x, grad_u = _with_cost_gradient(prob, x, u, grad_x, grad_u, grad_cost)
        act = active_set(prob, Iterate(x, u, s, lam, mu, nu), penalty(prob))
        grads = _adjoint_gradients(act, x, u, lam, mu, nu, grad_x, grad_u, ctx.tol, ctx.max_sweeps)
        grads = _add_explicit_cost_terms(grads, x, u, grad_cost)
        fill = torch.where(read, torch.nan, 0.0).to(x.dtype)
        grads = [select(failed, fill.view(-1, *([1] * (g.dim() - 1))).expand_as(g), g) for g in grads]
        return (None, *(g if need else None for g, need in zip(grads, ctx.needs_input_grad[1:])))


def _failed(status: Tensor) -> Tensor:
    """(B,) bool: elements with no solution (not SOLVED and not MAX_ITERS)."""
    return (status != Status.SOLVED) & (status != Status.MAX_ITERS)


def _with_cost_gradient(prob: QPProblem, x: Tensor, u: Tensor, grad_x: Tensor, grad_u: Tensor,
                        grad_cost: Tensor) -> tuple[Tensor, Tensor]:
    """Incoming gradients on x, u plus grad_cost * dJ/d(x, u) (C symmetric): the adjoint's linear data."""
    n = x.shape[-1]
    g = grad_cost[:, None, None]
    dz = g * ((prob.C @ stage_z(x, u).unsqueeze(-1)).squeeze(-1) + prob.c)               # (B, T, N)
    dxT = grad_cost[:, None] * ((prob.CT @ x[:, -1].unsqueeze(-1)).squeeze(-1) + prob.cT)  # (B, n)
    return grad_x + torch.cat([dz[..., :n], dxT.unsqueeze(1)], dim=1), grad_u + dz[..., n:]


def _add_explicit_cost_terms(grads: list[Tensor], x: Tensor, u: Tensor, grad_cost: Tensor) -> list[Tensor]:
    """The cost's explicit dependence on C, c, CT, cT at fixed (x, u) (module docstring)."""
    z, xT, g = stage_z(x, u), x[:, -1], grad_cost[:, None]
    dx0, dC, dc, dF, df, dCT, dcT, *rest = grads
    return [dx0, dC + 0.5 * g[..., None, None] * outer(z, z), dc + g[..., None] * z, dF, df,
            dCT + 0.5 * g[..., None] * outer(xT, xT), dcT + g * xT, *rest]


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
        sym(outer(z_hat, z)),                                 # C
        z_hat,                                                  # c
        outer(mu[:, 1:], z_hat) + outer(mu_hat[:, 1:], z),    # F
        mu_hat[:, 1:],                                          # f
        sym(outer(adj.x[:, -1], x[:, -1])),                   # CT
        adj.x[:, -1],                                           # cT
        outer(lam, z_hat) + outer(lam_hat, z),                # G
        -lam_hat,                                               # h
        outer(nu, z_hat) + outer(nu_hat, z),                  # E
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
