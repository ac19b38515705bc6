"""Batched Riccati recursion for equality-constrained LQR (plain tensor code, no autograd).

Problem (batch-first; N = n + m, z_t = [x_t; u_t]):

    minimize    sum_{t<T} 1/2 z_t' C_t z_t + c_t' z_t  +  1/2 x_T' CT x_T + cT' x_T
    subject to  x_{t+1} = F_t z_t + f_t  (t < T),   x_0 = x0

    x0: (B, n)   C: (B, T, N, N)   c: (B, T, N)   F = [A B]: (B, T, n, N)   f: (B, T, n)
    CT: (B, n, n)   cT: (B, n)

The quadratic data (C, F, CT) alone fix the feedback gains. `factor` runs that part of the
recursion once; `solve` then handles any linear data (c, f, cT, x0) with matrix-vector
products and triangular solves only. Implicit differentiation (one more `solve`) and the
interior-point / iLQR solvers reuse a factorization this way.

C and CT enter only through their symmetric parts 1/2 (C + C'). Both functions are plain
tensor code: called on tensors that require grad they would be unrolled by autograd, which
`runtime.lqr` avoids with its analytic backward.
"""
from typing import NamedTuple

import torch
from torch import Tensor

from runtime.linalg import sym
from runtime.status import Status


class RiccatiFactor(NamedTuple):
    """The quadratic part of the Riccati recursion (see `factor`).

    Shapes are batch-first; the tensors are views of time-major storage (contiguous per
    time step, which is what the recursions read), so `.transpose(0, 1)` is free.
    """

    F: Tensor        # (B, T, n, N)  dynamics [A_t B_t], needed again by `solve`
    Q: Tensor        # (B, T, N, N)  stage Hessians Q_t = C_t + F_t' V_{t+1} F_t
    FV: Tensor       # (B, T, N, n)  F_t' V_{t+1}
    L: Tensor        # (B, T, m, m)  lower Cholesky factor of Q_t,uu (identity where not PD)
    K: Tensor        # (B, T, m, n)  feedback gains K_t = -Q_t,uu^{-1} Q_t,ux
    V: Tensor        # (B, T+1, n, n) cost-to-go Hessians, V_T = CT
    A_cl: Tensor     # (B, T, n, n)  closed-loop dynamics A_t + B_t K_t
    status: Tensor   # (B,) int64    Status.SOLVED / NOT_CONVEX / NUMERICAL


def factor(C: Tensor, F: Tensor, CT: Tensor) -> RiccatiFactor:
    """Backward Riccati recursion of the quadratic data.

        V_T = CT
        for t = T-1, ..., 0:
            Q_t = C_t + F_t' V_{t+1} F_t            = [[Q_xx, Q_xu], [Q_ux, Q_uu]]
            L_t = chol(Q_uu)
            K_t = -Q_uu^{-1} Q_ux
            V_t = Q_xx + Q_xu K_t

    Q_t and V_t are symmetrized, so C and CT enter through their symmetric parts.
    `status[b]` is NOT_CONVEX where some Q_uu of element b is not positive definite (that
    factor is replaced by the identity so the batch proceeds) and NUMERICAL where NaN/Inf
    appear; whichever the recursion meets first (in backward time) decides. `solve` returns
    NaN for every element whose status is not SOLVED.
    """
    B, T, n, N = _check_quadratic(C, F, CT)
    m = N - n
    like = dict(dtype=C.dtype, device=C.device)
    Q, FV = torch.empty(T, B, N, N, **like), torch.empty(T, B, N, n, **like)
    L, K = torch.empty(T, B, m, m, **like), torch.empty(T, B, m, n, **like)
    V, A_cl = torch.empty(T + 1, B, n, n, **like), torch.empty(T, B, n, n, **like)
    info = torch.empty(T, B, dtype=torch.int32, device=C.device)
    eye = torch.eye(m, **like)
    # Products keep inner dimension N (not m) so that they run as batched BLAS rather than
    # torch's slow small-matrix kernel: with Y = 1/2 [I; K_t] and Q_t,x = [Q_xx Q_xu],
    # Q_t,x Y = (Q_xx + Q_xu K_t) / 2 and A_cl_t = 2 F_t Y (scaling by 2 is exact).
    Y = torch.zeros(B, N, n, **like)
    Y[:, :n].copy_(0.5 * torch.eye(n, **like))
    C = C.transpose(0, 1)                                                    # (T, B, N, N)
    F = F.transpose(0, 1).contiguous()                                       # (T, B, n, N)
    sym(CT, out=V[T])
    Fs, FVs, Qs, Vs, Ls, Ks, As, infos = (
        y.unbind(0) for y in (F, FV, Q, V, L, K, A_cl, info))
    Quu, Qux, Qx = (y.unbind(0) for y in (Q[..., n:, n:], Q[..., n:, :n], Q[..., :n, :]))
    for t in reversed(range(T)):
        torch.bmm(Fs[t].mT, Vs[t + 1], out=FVs[t])
        H = torch.baddbmm(C[t], FVs[t], Fs[t], beta=0.5, alpha=0.5)
        torch.add(H, H.mT, out=Qs[t])                                        # symmetric Q_t
        torch.linalg.cholesky_ex(Quu[t], out=(Ls[t], infos[t]))
        Q_uu = Quu[t]
        if infos[t].any():
            failed = infos[t][:, None, None] != 0
            Ls[t].copy_(torch.where(failed, eye, Ls[t]))
            Q_uu = torch.where(failed, eye, Q_uu)
        torch.neg(torch.linalg.solve_ex(Q_uu, Qux[t]).result, out=Ks[t])
        torch.mul(Ks[t], 0.5, out=Y[:, n:])
        P = torch.bmm(Qx[t], Y)
        torch.add(P, P.mT, out=Vs[t])                                        # symmetric V_t
        torch.baddbmm(As[t], Fs[t], Y, beta=0, alpha=2, out=As[t])          # A_t + B_t K_t
    status = _first_failure(
        fail=(info != 0).T,
        nonfinite=~torch.isfinite(torch.cat([Q.sum(dim=(-2, -1)), V[T:].sum(dim=(-2, -1))]).T),
    )
    batch_first = (y.transpose(0, 1) for y in (F, Q, FV, L, K, V, A_cl))
    return RiccatiFactor(*batch_first, status)


def solve(fac: RiccatiFactor, c: Tensor, f: Tensor, cT: Tensor, x0: Tensor
          ) -> tuple[Tensor, Tensor, Tensor]:
    """Solve the LQR problem with the factored quadratic data and linear data (c, f, cT, x0).

    Linear backward pass and forward rollout:

        v_T = cT
        q_t = c_t + F_t' (V_{t+1} f_t + v_{t+1}),   k_t = -Q_uu^{-1} q_u,   v_t = q_x + Q_xu k_t
        x_0 = x0,   u_t = K_t x_t + k_t,   x_{t+1} = F_t [x_t; u_t] + f_t

    computed as v_t = a_t + A_cl_t' v_{t+1} (a_t = q_x + K_t' q_u at v_{t+1} = 0) and
    x_{t+1} = A_cl_t x_t + B_t k_t + f_t, so that each time step costs one matrix-vector
    product and everything else is batched over time.

    Returns x (B, T+1, n), u (B, T, m) and the costates lam (B, T+1, n), lam_t = V_t x_t + v_t:
    the multipliers of the Lagrangian

        J(x, u) + lam_0' (x0 - x_0) + sum_t lam_{t+1}' (F_t z_t + f_t - x_{t+1}),

    i.e. lam_t = dJ*/dx_t (cost-to-go gradient), lam_T = CT x_T + cT and
    C_t z_t + c_t + F_t' lam_{t+1} = [lam_t; 0]. Elements with `fac.status != SOLVED` are NaN.
    """
    B, T, n, m = _check_linear(fac, c, f, cT, x0)
    # Time-major views: fac's tensors are contiguous this way round.
    F, FV, L, K, V, A_cl = (y.transpose(0, 1)
                            for y in (fac.F, fac.FV, fac.L, fac.K, fac.V, fac.A_cl))
    B_u = F[..., n:]                                                         # (T, B, n, m)
    c, f = c.transpose(0, 1), f.transpose(0, 1)
    # Backward pass on row vectors (y' M rather than M' y keeps the matmuls untransposed).
    g = (c[..., None] + FV @ f[..., None]).mT                                # (T, B, 1, N)
    g_x, g_u = g.split((n, m), dim=-1)                                       # q_t at v_{t+1}=0
    a = g_x + g_u @ K                                                        # (T, B, 1, n)
    v = torch.empty(T + 1, B, 1, n, dtype=c.dtype, device=c.device)
    v[T] = cT[:, None, :]
    for t in reversed(range(T)):
        torch.baddbmm(a[t], v[t + 1], A_cl[t], out=v[t])                    # a_t + A_cl_t' v_{t+1}
    q_u = g_u + v[1:] @ B_u                                                  # (T, B, 1, m)
    k = torch.cholesky_solve(q_u.mT, L).neg_()                               # (T, B, m, 1)
    # Forward rollout on column vectors.
    d = B_u @ k + f[..., None]                                               # (T, B, n, 1)
    x = torch.empty(T + 1, B, n, 1, dtype=c.dtype, device=c.device)
    x[0] = x0[..., None]
    for t in range(T):
        torch.baddbmm(d[t], A_cl[t], x[t], out=x[t + 1])                    # A_cl_t x_t + d_t
    u = K @ x[:-1] + k
    lam = V @ x + v.mT
    bad = (fac.status != Status.SOLVED)[:, None, None]
    return tuple(torch.where(bad, torch.nan, y.squeeze(-1).transpose(0, 1)) for y in (x, u, lam))


def _first_failure(fail: Tensor, nonfinite: Tensor) -> Tensor:
    """Status from per-stage flags, the last stage (first met by the recursion) deciding.

    fail: (B, T) Cholesky of Q_uu failed; nonfinite: (B, T+1) NaN/Inf in Q_t (or in CT at T).
    """
    bad = torch.cat([fail, torch.zeros_like(fail[:, :1])], dim=1) | nonfinite
    stage = torch.arange(bad.shape[1], device=bad.device)
    first = torch.where(bad, stage, -1).amax(dim=1)                          # (B,)
    numerical = nonfinite.gather(1, first.clamp(min=0)[:, None]).squeeze(1)
    status = torch.where(numerical, int(Status.NUMERICAL), int(Status.NOT_CONVEX))
    return torch.where(first < 0, int(Status.SOLVED), status).to(torch.int64)


def _check_quadratic(C: Tensor, F: Tensor, CT: Tensor) -> tuple[int, int, int, int]:
    if F.dim() != 4:
        raise ValueError(f"F must have shape (B, T, n, n+m), got {tuple(F.shape)}")
    B, T, n, N = F.shape
    if T < 1 or N <= n:
        raise ValueError(f"need horizon T >= 1 and m >= 1 controls, got F {tuple(F.shape)}")
    if not F.is_floating_point():
        raise ValueError(f"F must be a floating-point tensor, got {F.dtype}")
    _expect("C", C, (B, T, N, N), F)
    _expect("CT", CT, (B, n, n), F)
    return B, T, n, N


def _check_linear(fac: RiccatiFactor, c: Tensor, f: Tensor, cT: Tensor, x0: Tensor
                  ) -> tuple[int, int, int, int]:
    B, T, n, N = fac.F.shape
    for name, tensor, shape in (("c", c, (B, T, N)), ("f", f, (B, T, n)),
                                ("cT", cT, (B, n)), ("x0", x0, (B, n))):
        _expect(name, tensor, shape, fac.F)
    return B, T, n, N - n


def _expect(name: str, tensor: Tensor, shape: tuple[int, ...], like: Tensor) -> None:
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
    if tensor.dtype != like.dtype or tensor.device != like.device:
        raise ValueError(f"{name} is {tensor.dtype} on {tensor.device}, expected "
                         f"{like.dtype} on {like.device} like the dynamics F")
