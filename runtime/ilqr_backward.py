"""The backward pass of control-limited iLQR / DDP (Tassa, Mansard & Todorov 2014), with the
regularization retries of `runtime.ilqr` (steps 2 and 4 of its docstring).

Around a nominal trajectory (x̄, ū) with stage models F_t = [f_x f_u] (B, T, n, N), cost
gradients g_t and Hessians C_t, the local problem in dz_t = (dx_t, du_t) is

    minimize  sum_t g_t'dz_t + 1/2 dz_t'C_t dz_t + g_T'dx_T + 1/2 dx_T'C_T dx_T
    subject to dx_{t+1} = F_t dz_t + d_t,  dx_0 = 0,  lo_t - ū_t <= du_t <= hi_t - ū_t

with the defects d_t = f(x̄_t, ū_t) - x̄_{t+1} (B, T, n): zero for a rollout (single shooting),
nonzero between the nodes of multiple shooting (`runtime.ilqr_shooting`). Its solution is the
affine policy du_t = k_t + K_t dx_t of `backward_pass`.
"""
from typing import TYPE_CHECKING, Callable, NamedTuple, Optional

import torch
from torch import Tensor

from runtime.box_lqr import costates
from runtime.box_qp import BoxQPOptions, box_qp
from runtime.ilqr_derivatives import FinalDerivatives, StageDerivatives, TrajectoryFunctions
from runtime.status import Status

if TYPE_CHECKING:
    from runtime.ilqr import ILQROptions


class Policy(NamedTuple):
    K: Tensor     # (B, T, m, n) feedback gains
    k: Tensor     # (B, T, m)    feedforward steps
    dV1: Tensor   # (B,)         predicted cost change: alpha dV1 + alpha^2 dV2 (without defects);
    dV2: Tensor   # (B,)         dV1 + dV2 is the model's change for the full step in any case
    ok: Tensor    # (B,) bool    every Q_uu (free block) positive definite


def regularized_backward_pass(backward: Callable[[Tensor, Tensor], Policy], mu: Tensor,
                              active: Tensor, options: "ILQROptions") -> tuple[Policy, Tensor]:
    """backward(mu (B,), todo (B,) bool) -> Policy, redone with a higher mu for the active
    elements whose Q_uu is indefinite (the rows of the others are kept)."""
    policy = backward(mu, active)
    while True:
        retry = active & ~policy.ok & (mu < options.mu_max)
        if not bool(retry.any()):
            return policy, mu
        mu = torch.where(retry, (mu * options.mu_factor).clamp(options.mu_min, options.mu_max), mu)
        again = backward(mu, retry)
        policy = Policy(*(torch.where(retry.view(-1, *[1] * (new.dim() - 1)), new, old)
                          for new, old in zip(again, policy)))


def backward_pass(model: StageDerivatives, final: FinalDerivatives, u: Tensor,
                  lo: Optional[Tensor], hi: Optional[Tensor], mu: Tensor,
                  qp_options: BoxQPOptions, defects: Optional[Tensor] = None) -> Policy:
    """Step 2 of the module docstring in homogeneous coordinates x~ = (dx, 1), z~ = (dx, 1, du):
    the value 1/2 x~'V~x~ with V~ = [[V, v], [v', 2 s]] carries V, v and the predicted change s
    in one matrix, and one gain K~ = [K k] maps x~ to du, so that per stage

        Q~ = C~_t + F~_t' V~ F~_t,   K~ = [K k],
        V~ <- Q~_x~x~ + Q~_x~u K~ + K~'Q~_ux~ + K~'Q~_uu K~

    with C~_t = [[C_xx, g_x, C_xu], [g_x', 0, g_u'], [C_ux, g_u, C_uu]] and
    F~_t = [[F_x, d_t, F_u], [0, 1, 0]] (d_t the defects, zero if None); s accumulates
    dV1 + dV2, the model's change for the full step."""
    B, T, m = u.shape
    n = final.g.shape[-1]
    C_aug, F_aug, V = homogeneous(model, final, defects)
    C_aug, F_aug, F_aug_T = C_aug.unbind(1), F_aug.unbind(1), F_aug.mT.unbind(1)
    eye = torch.eye(m, dtype=u.dtype, device=u.device)
    reg = mu[:, None, None] * eye
    if lo is not None:
        lo_step, hi_step = (lo - u).unbind(1), (hi - u).unbind(1)
    gains, q_us, goods = [], [], []
    for t in reversed(range(T)):
        Q = torch.baddbmm(C_aug[t], F_aug_T[t], torch.bmm(V, F_aug[t]))
        Q_xx, Q_xu = Q[:, :n + 1, :n + 1], Q[:, :n + 1, n + 1:]
        Q_ux, Q_uu = Q[:, n + 1:, :n + 1], Q[:, n + 1:, n + 1:]
        if lo is None or m > 1:
            L, info = torch.linalg.cholesky_ex(Q_uu + reg)
            good = info == 0
            inverse = torch.cholesky_inverse(torch.where(good[:, None, None], L, eye))
            gain = -torch.bmm(inverse, Q_ux)                              # [K k]: (B, m, n+1)
        if lo is not None and (m == 1 or not bool((good[:, None] & (lo_step[t] < gain[..., n])
                                                   & (gain[..., n] < hi_step[t])).all())):
            # One control (closed form), or some unconstrained step leaves the box (or Q_uu is
            # indefinite): solve the box QPs.
            qp = box_qp(Q_uu + reg, Q_ux[..., n], lo_step[t], hi_step[t], qp_options)
            good = qp.status <= Status.MAX_ITERS
            gain = torch.cat((-torch.bmm(qp.free_inverse, Q_ux[..., :n]), qp.x[..., None]), -1)
        cross = torch.bmm(Q_xu, gain)
        V = Q_xx + cross + cross.mT + torch.bmm(gain.mT, torch.bmm(Q_uu, gain))
        V = 0.5 * (V + V.mT)
        gains.append(gain)
        q_us.append(Q_ux[..., n])
        goods.append(good)
    gain = torch.stack(gains[::-1], 1)                                    # (B, T, m, n+1)
    k = gain[..., n]
    dV1 = (k * torch.stack(q_us[::-1], 1)).sum((1, 2))
    dV2 = 0.5 * V[:, n, n] - dV1
    ok = torch.stack(goods, 1).all(1)
    return Policy(gain[..., :n], k, dV1, dV2, ok)


def homogeneous(model: StageDerivatives, final: FinalDerivatives, defects: Optional[Tensor] = None
                ) -> tuple[Tensor, Tensor, Tensor]:
    """C~ (B, T, N+1, N+1), F~ (B, T, n+1, N+1) and V~_T (B, n+1, n+1) of `backward_pass`."""
    F, g, C = model
    B, T, n, N = F.shape
    g_x, g_u = g[..., :n, None], g[..., n:, None]
    zero = g.new_zeros(B, T, 1, 1)
    C_aug = torch.cat((torch.cat((C[..., :n, :n], g_x, C[..., :n, n:]), -1),
                       torch.cat((g_x.mT, zero, g_u.mT), -1),
                       torch.cat((C[..., n:, :n], g_u, C[..., n:, n:]), -1)), -2)
    unit = g.new_zeros(N + 1)
    unit[n] = 1.0
    d = zero.expand(B, T, n, 1) if defects is None else defects[..., None]
    F_aug = torch.cat((torch.cat((F[..., :n], d, F[..., n:]), -1),
                       unit.expand(B, T, 1, N + 1)), -2)
    V = torch.cat((torch.cat((final.C, final.g[..., None]), -1),
                   torch.cat((final.g[:, None, :], zero[:, 0]), -1)), -2)
    return C_aug, F_aug, V


def local_model(fns: TrajectoryFunctions, x: Tensor, u: Tensor, newton: bool
                ) -> tuple[StageDerivatives, FinalDerivatives, Tensor]:
    """The model of every stage at x (B, T+1, n), u (B, T, m) (step 1 of `runtime.ilqr`: with
    `newton`, C gets the dynamics curvature weighted by the costates), and (B,) True where all
    of it is finite."""
    model, final = fns.stage(x[:, :-1], u), fns.final(x[:, -1])
    if newton:
        lam = costates(model.F, model.g, final.g)
        model = model._replace(C=model.C + fns.curvature(x[:, :-1], u, lam[:, 1:]))
    finite = torch.stack([torch.isfinite(t).flatten(1).all(1) for t in (*model, *final)]).all(0)
    return model, final, finite


def next_mu(mu: Tensor, accepted: Tensor, active: Tensor, options: "ILQROptions") -> Tensor:
    """Levenberg-Marquardt schedule (step 4 of `runtime.ilqr`): mu / factor (0 below mu_min)
    after an accepted step, max(mu * factor, mu_min) after a rejected one, capped at mu_max."""
    lower = mu / options.mu_factor
    lower = torch.where(lower < options.mu_min, 0.0, lower)
    higher = (mu * options.mu_factor).clamp(options.mu_min, options.mu_max)
    return torch.where(active, torch.where(accepted, lower, higher), mu)
