"""Differentiable box-constrained LQR step at a known solution (the implicit backward of iLQR).

Problem (batch-first; N = n + m, z_t = [x_t; u_t]):

    minimize    sum_{t<T} 1/2 z_t' C_t z_t + c_t' z_t  +  1/2 x_T' CT x_T + cT' x_T
    subject to  x_{t+1} = F_t z_t + f_t,  x_0 = x0,  u_t,i = b_t,i  for clamped (t, i)

    x0: (B, n)  C: (B, T, N, N)  c: (B, T, N)  F: (B, T, n, N)  f: (B, T, n)
    CT: (B, n, n)  cT: (B, n)  b: (B, T, m) clamp values  free: (B, T, m) bool

With the active set of a box-constrained solution fixed (strict complementarity), the box
constraints lo <= u <= hi reduce to the equalities u_c = b on the clamped controls, so the
solution is locally a smooth function of the data. `box_lqr_step` takes that solution
(x*, u*) as known (its forward pass returns it unchanged) and differentiates it analytically
(Amos et al. 2018, as mpc.pytorch's LQRStep, with its free-control mask). For a loss l with
gradients (gx, gu), the adjoint LQR has the same quadratic data, linear data
c = (gx, gu), cT = gx_T, f = 0, x0 = 0 and clamped controls fixed at 0; its solution dz and
costates dlam give, with the primal costates lam (lam_T = CT x_T + cT,
lam_t = (C_t z_t + c_t)_x + F_t,x' lam_{t+1}):

    dl/dC_t = 1/2 (dz_t z_t' + z_t dz_t')      dl/dc_t = dz_t
    dl/dF_t = dlam_{t+1} z_t' + lam_{t+1} dz_t'  dl/df_t = dlam_{t+1}     dl/dx0 = dlam_0
    dl/dCT  = 1/2 (dx_T x_T' + x_T dx_T')      dl/dcT  = dx_T
    dl/db_t,i = [C_t dz_t + (gx_t, gu_t) + F_t' dlam_{t+1}]_u,i on clamped controls, else 0

(the last line is minus the adjoint multiplier of the equality u_t,i = b_t,i). Free controls
have the sensitivity of the LQR on the free subspace; clamped controls have none beyond
their clamp value. The adjoint LQR is solved by `runtime.riccati` after decoupling the
clamped controls (their rows/columns of C_t and columns of F_t zeroed, unit diagonal), which
fixes them at 0 and leaves the free subproblem unchanged. Elements whose free-control
Riccati recursion fails (the model is not positive definite on the free controls) get NaN
gradients where the loss reads their outputs and exact zeros where it does not, like
`runtime.lqr`, so a masked loss keeps shared parameters finite.
"""
from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from runtime.linalg import sym_outer
from runtime.riccati import RiccatiFactor, factor, solve


def box_lqr_step(x0: Tensor, C: Tensor, c: Tensor, F: Tensor, f: Tensor, CT: Tensor, cT: Tensor,
                 clamp_value: Tensor, free: Tensor, x: Tensor, u: Tensor,
                 fac: Optional[RiccatiFactor] = None) -> tuple[Tensor, Tensor]:
    """Return (x, u), the given solution of the box-LQR above, differentiable in
    (x0, C, c, F, f, CT, cT, clamp_value); x (B, T+1, n) and u (B, T, m) are taken as constants.
    fac: `factor_free(C, F, CT, free)` if the caller has it (else the backward computes it)."""
    return _BoxLQRStep.apply(x0, C, c, F, f, CT, cT, clamp_value, free, x.detach(), u.detach(),
                             fac)


def factor_free(C: Tensor, F: Tensor, CT: Tensor, free: Tensor) -> RiccatiFactor:
    """Riccati factorization of the LQR with its clamped controls fixed. Its status is SOLVED
    where that LQR is strictly convex in the free controls (every Q_uu positive definite), i.e.
    where `box_lqr_step` has a finite backward."""
    return factor(*_fix_clamped(C.detach(), F.detach(), free), CT.detach())


def costates(F: Tensor, grad_z: Tensor, grad_T: Tensor) -> Tensor:
    """Costates lam (B, T+1, n) of a trajectory from its stage gradients grad_z (B, T, N) and
    final gradient grad_T (B, n):  lam_T = grad_T,  lam_t = (grad_z)_t,x + F_t,x' lam_{t+1}."""
    n = grad_T.shape[-1]
    grad_x = grad_z[..., :n].unbind(1)
    A_T = F[..., :n].mT.unbind(1)
    lam = [grad_T]
    for t in reversed(range(len(grad_x))):
        lam.append(grad_x[t] + (A_T[t] @ lam[-1][..., None]).squeeze(-1))
    return torch.stack(lam[::-1], 1)


class _BoxLQRStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x0, C, c, F, f, CT, cT, clamp_value, free, x, u, fac):
        ctx.save_for_backward(C, c, F, CT, cT, free, x, u)
        ctx.fac = fac
        ctx.set_materialize_grads(False)
        return x.clone(), u.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, gx: Optional[Tensor], gu: Optional[Tensor]):
        C, c, F, CT, cT, free, x, u = ctx.saved_tensors
        gx = torch.zeros_like(x) if gx is None else gx
        gu = torch.zeros_like(u) if gu is None else gu
        n = x.shape[-1]
        r = torch.cat((gx[:, :-1], gu), -1)                                           # (B, T, N)
        r_free = torch.cat((gx[:, :-1], torch.where(free, gu, 0.0)), -1)
        fac = factor_free(C, F, CT, free) if ctx.fac is None else ctx.fac
        dx, du, dlam = solve(fac, r_free, torch.zeros_like(x[:, 1:]), gx[:, -1],
                             torch.zeros_like(x[:, 0]))
        z = torch.cat((x[:, :-1], u), -1)
        dz = torch.cat((dx[:, :-1], du), -1)
        xT, dxT = x[:, -1], dx[:, -1]
        lam = costates(F, (C @ z[..., None]).squeeze(-1) + c,
                       (CT @ xT[..., None]).squeeze(-1) + cT)
        clamp_grad = ((C @ dz[..., None]).squeeze(-1) + r
                      + (F.mT @ dlam[:, 1:, :, None]).squeeze(-1))[..., n:]
        grads = (
            dlam[:, 0],
            sym_outer(dz, z),
            dz,
            dlam[:, 1:, :, None] * z[:, :, None, :] + lam[:, 1:, :, None] * dz[:, :, None, :],
            dlam[:, 1:],
            sym_outer(dxT, xT),
            dxT,
            torch.where(free, 0.0, clamp_grad),
        )
        read = (gx != 0).flatten(1).any(1) | (gu != 0).flatten(1).any(1)
        fill = torch.where(read, torch.nan, 0.0)
        failed = ~(torch.isfinite(dz).flatten(1).all(1) & torch.isfinite(dlam).flatten(1).all(1))
        return tuple(torch.where(_rows(failed, g), _rows(fill, g), g) if need else None
                     for g, need in zip(grads, ctx.needs_input_grad)) + (None,) * 4


def _fix_clamped(C: Tensor, F: Tensor, free: Tensor) -> tuple[Tensor, Tensor]:
    """Decouple the clamped controls: zero their rows/columns of C (unit diagonal) and their
    columns of F, so that the LQR optimum keeps them at 0 and the free part is unchanged."""
    n = F.shape[-2]
    fixed = torch.cat((torch.zeros_like(free[..., :1]).expand(*free.shape[:-1], n), ~free), -1)
    eye = torch.eye(C.shape[-1], dtype=C.dtype, device=C.device)
    C_free = torch.where(fixed[..., :, None] | fixed[..., None, :], eye * fixed[..., None], C)
    return C_free, torch.where(fixed[..., None, :], 0.0, F)


def _rows(v: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against `like`."""
    return v.view(-1, *[1] * (like.dim() - 1))
