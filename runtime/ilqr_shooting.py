"""Multiple-shooting iLQR: Gauss-Newton multiple shooting (GNMS; Giftthaler, Neunert, Stäuble,
Buchli & Diehl 2018, "A family of iterative Gauss-Newton shooting methods for nonlinear optimal
control"), with the control limits and regularization of `runtime.ilqr`.

The states x_1..x_T are decision variables next to the controls, and the dynamics become the
equality constraints d_t(x, u) = f(x_t, u_t) - x_{t+1} = 0 (the defects; x_0 = x0 is fixed).
From nodes (x̄, ū), per iteration:

 1. The model of every stage at the nodes, F_t, g_t, C_t, g_T, C_T, and the defects d̄_t: one
    call over all stages (`runtime.ilqr_derivatives`), with no rollout.
 2. The backward pass with the defects (`runtime.ilqr_backward`): du_t = k_t + K_t dx_t.
 3. The linear forward pass dx_0 = 0, du_t = clamp(k_t + K_t dx_t, lo_t - ū_t, hi_t - ū_t),
    dx_{t+1} = F_t (dx_t, du_t) + d̄_t: the step that closes the defects to first order.
 4. A line search on the segment (x̄, ū) + alpha (dx, du) (inside the box for alpha in [0, 1])
    for the exact l1 merit function (Nocedal & Wright 2006, sec. 18.3)

        phi(x, u) = J(x, u) + rho ||d(x, u)||_1,   rho = 2 ||lam||_inf

    where lam are the costates of the step's quadratic model (lam_T = g_T + C_T dx_T,
    lam_t = (g_t + C_t dz_t)_x + F_t,x' lam_{t+1}), the multipliers of its dynamics, so that
    the step is a descent direction of phi: alpha = decay^j, the first with
        phi(alpha) <= phi(0) + armijo alpha D,   D = g'dz - rho ||d̄||_1 < 0,
    up to the rounding error of phi. Every trial evaluates f and l at all nodes at once.
 5. Levenberg-Marquardt mu as in `runtime.ilqr`.

A single-shooting iteration instead rolls the dynamics out T times in sequence for every
trial; on CPU that sequence of small calls is most of its time, and here it is gone: the
only sequential work left is the T small matrix products of the backward and linear forward
passes. The nodes also let an unstable system's trajectory be improved piece by piece rather
than through the rollout of all earlier controls.

Convergence: the single-shooting rule (`runtime.ilqr.converged_step`, passed in) at the nodes
AND defects ||d̄||_inf <= tol max(1, ||x̄||_inf). `runtime.ilqr` then rolls the result out
once under its feedback gains, so that the returned states satisfy the dynamics exactly.

The penalty rho is set afresh at every iteration from the step's multipliers (a running
maximum kept a spike of an early, far-from-optimal step and made later steps tiny).
"""
from typing import TYPE_CHECKING, Callable, NamedTuple, Optional

import torch
from torch import Tensor

from runtime.box_lqr import costates
from runtime.ilqr_backward import Policy, backward_pass, local_model, next_mu, regularized_backward_pass
from runtime.ilqr_derivatives import FinalDerivatives, StageDerivatives, TrajectoryFunctions
from runtime.status import Status

if TYPE_CHECKING:
    from runtime.ilqr import ILQROptions


class ShootingResult(NamedTuple):
    x: Tensor            # (B, T+1, n) the nodes
    u: Tensor            # (B, T, m)
    status: Tensor       # (B,) int64 Status
    iterations: Tensor   # (B,) int64
    residual: Tensor     # (B,) ||k||_inf at the returned nodes
    K: Tensor            # (B, T, m, n) the feedback gains of the last backward pass
    model: StageDerivatives
    final: FinalDerivatives


def multiple_shooting(fns: TrajectoryFunctions, x_init: Tensor, u_init: Tensor,
                      lo: Optional[Tensor], hi: Optional[Tensor], options: "ILQROptions",
                      converged_step: Callable[..., Tensor]) -> ShootingResult:
    """The iterations of the module docstring from the nodes x_init (B, T+1, n) (x_init[:, 0]
    is the fixed initial state) and controls u_init (B, T, m) inside the box."""
    x, u = x_init, u_init
    B = x.shape[0]
    eps = torch.finfo(x.dtype).eps
    tol = eps ** 0.5 if options.tol is None else options.tol
    J, defects = _cost_and_defects(fns, x, u)
    status = torch.full((B,), int(Status.MAX_ITERS), dtype=torch.int64, device=x.device)
    status = torch.where(torch.isfinite(J) & torch.isfinite(defects).flatten(1).all(1), status,
                         int(Status.NUMERICAL))
    active = status == Status.MAX_ITERS
    iterations = torch.zeros_like(status)
    residual = torch.full_like(J, torch.nan)
    mu = torch.zeros_like(J)
    rho = torch.zeros_like(J)

    for it in range(options.max_iters + 1):
        model, final, finite = local_model(fns, x, u, options.newton)
        status = torch.where(active & ~finite, int(Status.NUMERICAL), status)
        active = active & finite
        policy, mu = regularized_backward_pass(
            lambda mu, _: backward_pass(model, final, u, lo, hi, mu, options.qp, defects), mu, active, options)
        residual = torch.where(active, policy.k.abs().flatten(1).amax(1), residual)
        closed = defects.abs().flatten(1).amax(1) <= tol * x.abs().flatten(1).amax(1).clamp_min(1.0)
        converged = (policy.ok & (mu <= options.mu_min) & closed
                     & converged_step(policy.k, u, policy.dV1 + policy.dV2, J, options))
        status = torch.where(active & ~policy.ok, int(Status.NOT_CONVEX), status)
        status = torch.where(active & converged, int(Status.SOLVED), status)
        active = active & policy.ok & ~converged
        if it == options.max_iters or not bool(active.any()):
            break

        dx, du = _linear_step(model, policy, defects, u, lo, hi)
        rho = 2 * _step_costates(model, final, dx, du).abs().flatten(1).amax(1)
        x, u, J, defects, accepted = _line_search(fns, x, u, J, defects, dx, du, model, final, rho,
                                                  active, options)
        iterations = iterations + active.to(iterations.dtype)
        mu = next_mu(mu, accepted, active, options)

    return ShootingResult(x, u, status, iterations, residual, policy.K, model, final)


def _cost_and_defects(fns: TrajectoryFunctions, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """J (B,) and d_t = f(x_t, u_t) - x_{t+1} (B, T, n), every stage in one call."""
    return fns.total_cost(x, u), fns.next_states(x[:, :-1], u) - x[:, 1:]


def _linear_step(model: StageDerivatives, policy: Policy, defects: Tensor, u: Tensor,
                 lo: Optional[Tensor], hi: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """Step 3: dx (B, T+1, n) with dx_0 = 0 and du (B, T, m) through the linear model."""
    n = defects.shape[-1]
    A, Bu = model.F[..., :n].unbind(1), model.F[..., n:].unbind(1)
    K, k, d = policy.K.unbind(1), policy.k[..., None].unbind(1), defects[..., None].unbind(1)
    if lo is not None:
        lo_step, hi_step = (lo - u).unbind(1), (hi - u).unbind(1)
    dxs, dus = [torch.zeros_like(d[0])], []
    for t in range(len(K)):
        du = torch.baddbmm(k[t], K[t], dxs[-1])
        if lo is not None:
            du = torch.clamp(du.squeeze(-1), lo_step[t], hi_step[t]).unsqueeze(-1)
        dus.append(du)
        dxs.append(torch.baddbmm(torch.baddbmm(d[t], A[t], dxs[-1]), Bu[t], du))
    return torch.stack(dxs, 1).squeeze(-1), torch.stack(dus, 1).squeeze(-1)


def _step_costates(model: StageDerivatives, final: FinalDerivatives, dx: Tensor, du: Tensor) -> Tensor:
    """The multipliers of the step's dynamics: costates of the quadratic model at (dx, du)."""
    dz = torch.cat((dx[:, :-1], du), -1)
    grad = model.g + (model.C @ dz[..., None]).squeeze(-1)
    grad_T = final.g + (final.C @ dx[:, -1, :, None]).squeeze(-1)
    return costates(model.F, grad, grad_T)


def _line_search(fns: TrajectoryFunctions, x: Tensor, u: Tensor, J: Tensor, defects: Tensor,
                 dx: Tensor, du: Tensor, model: StageDerivatives, final: FinalDerivatives,
                 rho: Tensor, active: Tensor, options: "ILQROptions"
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Step 4; rejected elements keep their nodes, cost and defects."""
    slope = ((model.g * torch.cat((dx[:, :-1], du), -1)).sum((1, 2))
             + (final.g * dx[:, -1]).sum(1) - rho * defects.abs().sum((1, 2)))
    merit = J + rho * defects.abs().sum((1, 2))
    slack = 10 * torch.finfo(J.dtype).eps * merit.abs().clamp_min(1.0)   # rounding error of phi
    descent = slope < 0
    accepted = torch.zeros_like(active)
    out = [x, u, J, defects]
    for j in range(options.line_search_steps):
        alpha = options.step_decay ** j
        x_try, u_try = x + alpha * dx, u + alpha * du
        J_try, d_try = _cost_and_defects(fns, x_try, u_try)
        merit_try = J_try + rho * d_try.abs().sum((1, 2))
        take = (active & descent & ~accepted
                & (merit - merit_try >= -options.armijo * alpha * slope - slack))
        out = [torch.where(take.view(-1, *[1] * (new.dim() - 1)), new, old)
               for new, old in zip((x_try, u_try, J_try, d_try), out)]
        accepted = accepted | take
        if bool((accepted | ~(active & descent)).all()):
            break
    return (*out, accepted)
