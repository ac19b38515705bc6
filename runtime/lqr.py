"""Differentiable batched LQR with an analytic implicit backward (Amos et al., 2018).

Problem (batch-first; N = n + m, z_t = [x_t; u_t], tau = (z_0, ..., z_{T-1}, x_T)):

    minimize    J = sum_{t<T} 1/2 z_t' C_t z_t + c_t' z_t  +  1/2 x_T' CT x_T + cT' x_T
    subject to  x_{t+1} = F_t z_t + f_t  (t < T),   x_0 = x0

    x0: (B, n)   C: (B, T, N, N)   c: (B, T, N)   F: (B, T, n, N)   f: (B, T, n)
    CT: (B, n, n)   cT: (B, n)          (time-invariant data may be expanded views)

The forward pass is one Riccati factorization and solve (`runtime.riccati`). With the KKT
system K [tau; lam] = -[(c, cT); (x0, f)] (lam as in `riccati.solve`), the backward pass for
a loss l solves the adjoint system K [dtau; dlam] = -[dl/dtau; dl/dlam]: the same LQR with
the same factorization, linear data (c, cT) := dl/d(x, u) and (x0, f) := dl/dlam, giving
dtau = (dz_0, ..., dz_{T-1}, dx_T) and dlam. Then (Amos et al. 2018, Module 1)

    dl/dC_t = 1/2 (dz_t z_t' + z_t dz_t')       dl/dc_t = dz_t
    dl/dCT  = 1/2 (dx_T x_T' + x_T dx_T')       dl/dcT  = dx_T
    dl/dF_t = dlam_{t+1} z_t' + lam_{t+1} dz_t'  dl/df_t = dlam_{t+1}     dl/dx0 = dlam_0

and the optimal cost adds, by the envelope theorem, dJ/dC_t = 1/2 z_t z_t', dJ/dc_t = z_t,
dJ/dF_t = lam_{t+1} z_t', dJ/df_t = lam_{t+1}, dJ/dx0 = lam_0 (and likewise for CT, cT).
C and CT are read through their symmetric parts, so their gradients are symmetric.

Elements whose status is not SOLVED (NOT_CONVEX: some Q_uu not positive definite;
NUMERICAL: NaN/Inf in data or solution) get NaN in every output. Their input gradients are
NaN too if the loss reads any of their outputs (a nonzero incoming gradient), and exactly
zero if it does not (e.g. a loss masked with `torch.where(sol.status == Status.SOLVED, ...,
0)`), so masking the bad elements keeps the other elements' gradients, and shared
parameters, intact. Nothing is detached silently.
"""
from typing import NamedTuple, Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from runtime.linalg import outer2, sym_outer
from runtime.riccati import RiccatiFactor, factor, solve
from runtime.status import Status


class LQRSolution(NamedTuple):
    """Output of `lqr`; x, u, cost and lam are NaN for elements whose status is not SOLVED."""

    x: Tensor        # (B, T+1, n) states
    u: Tensor        # (B, T, m)   controls
    cost: Tensor     # (B,)        optimal objective J (no constant term)
    status: Tensor   # (B,) int64  Status per element
    lam: Tensor      # (B, T+1, n) dynamics multipliers, lam_t = dJ*/dx_t


def lqr(x0: Tensor, C: Tensor, c: Tensor, F: Tensor, f: Tensor, CT: Tensor, cT: Tensor
        ) -> LQRSolution:
    """Solve the batched LQR problem of this module; differentiable in every input."""
    return LQRSolution(*_LQRFunction.apply(x0, C, c, F, f, CT, cT))


def objective(x: Tensor, u: Tensor, C: Tensor, c: Tensor, CT: Tensor, cT: Tensor) -> Tensor:
    """J(x, u) (B,) for states x (B, T+1, n) and controls u (B, T, m)."""
    z = torch.cat([x[:, :-1], u], dim=-1)
    xT = x[:, -1]
    stage = ((0.5 * (C @ z[..., None]).squeeze(-1) + c) * z).sum(dim=(1, 2))
    final = ((0.5 * (CT @ xT[..., None]).squeeze(-1) + cT) * xT).sum(dim=-1)
    return stage + final


class _LQRFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x0, C, c, F, f, CT, cT):
        fac = factor(C, F, CT)
        x, u, lam = solve(fac, c, f, cT, x0)
        cost = objective(x, u, C, c, CT, cT)
        finite = torch.isfinite(cost + lam.sum(dim=(1, 2)))  # NaN/Inf in x or u reach cost
        status = torch.where((fac.status == Status.SOLVED) & ~finite,
                             int(Status.NUMERICAL), fac.status)
        bad = status != Status.SOLVED
        x, u, lam = (torch.where(bad[:, None, None], torch.nan, y) for y in (x, u, lam))
        cost = torch.where(bad, torch.nan, cost)
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(status)
        ctx.save_for_backward(x, u, lam, status, *fac)
        return x, u, cost, status, lam

    @staticmethod
    @once_differentiable
    def backward(ctx, gx, gu, gcost, _gstatus, glam):
        x, u, lam, status, *fac = ctx.saved_tensors
        need_x0, need_C, need_c, need_F, need_f, need_CT, need_cT = ctx.needs_input_grad
        dx, du, dlam = _adjoint(RiccatiFactor(*fac), x, u, lam, gx, gu, glam)
        s = torch.zeros_like(x[:, :1, :1]) if gcost is None else gcost[:, None, None]
        dlam = dlam + s * lam                                     # trajectory + envelope terms
        # Unsolved elements: zero primal/dual values, and NaN or zero adjoints (see module doc).
        bad = (status != Status.SOLVED)[:, None, None]
        fill = _read_by_loss(status, (gx, gu, gcost, glam))[:, None, None]
        x, u, lam = (torch.where(bad, 0.0, y) for y in (x, u, lam))
        dx, du, dlam = (torch.where(bad, fill, y) for y in (dx, du, dlam))
        s = torch.where(bad, 0.0, s)
        z = torch.cat([x[:, :-1], u], dim=-1)                     # (B, T, N)
        dz = torch.cat([dx[:, :-1], du], dim=-1)
        xT, dxT = x[:, -1], dx[:, -1]
        sT = s[:, 0]
        return (
            dlam[:, 0] if need_x0 else None,
            sym_outer(dz + 0.5 * s * z, z) if need_C else None,
            dz + s * z if need_c else None,
            outer2(dlam[:, 1:], z, lam[:, 1:], dz) if need_F else None,
            dlam[:, 1:] if need_f else None,
            sym_outer(dxT + 0.5 * sT * xT, xT) if need_CT else None,
            dxT + sT * xT if need_cT else None,
        )


def _adjoint(fac: RiccatiFactor, x: Tensor, u: Tensor, lam: Tensor, gx: Optional[Tensor],
             gu: Optional[Tensor], glam: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, du, dlam): the LQR with linear data c = (gx, gu), cT = gx_T, (x0, f) = glam."""
    if gx is None and gu is None and glam is None:
        return torch.zeros_like(x), torch.zeros_like(u), torch.zeros_like(lam)
    gx = torch.zeros_like(x) if gx is None else gx
    gu = torch.zeros_like(u) if gu is None else gu
    glam = torch.zeros_like(lam) if glam is None else glam
    return solve(fac, torch.cat([gx[:, :-1], gu], dim=-1), glam[:, 1:], gx[:, -1], glam[:, 0])


def _read_by_loss(status: Tensor, incoming: tuple[Optional[Tensor], ...]) -> Tensor:
    """(B,) adjoint fill for unsolved elements: NaN where the loss reads their outputs, else 0."""
    read = torch.zeros_like(status, dtype=torch.bool)
    for g in incoming:
        if g is not None:
            read |= (g != 0).flatten(1).any(1) if g.dim() > 1 else g != 0
    return torch.where(read, torch.nan, 0.0)
