"""Trajectory optimization by descent on the controls (single shooting), differentiable.

Problem (batch-first, as `runtime.ilqr`):

    minimize_u  J(u) = sum_{t<T} l(x_t, u_t) + l_T(x_T),   x_{t+1} = f(x_t, u_t),  x_0 = x0,
    subject to  lo <= u_t <= hi

    x0: (B, n)   u: (B, T, m)   x: (B, T+1, n)   lo, hi: broadcastable to (B, T, m), +-inf allowed
    f: dynamics(x (B, n), u (B, m)) -> (B, n)
    l: stage_cost(x (B, n), u (B, m)) -> (B,)      l_T: final_cost(x (B, n)) -> (B,)

The callables must be smooth (twice differentiable for the implicit backward) and row-wise:
row b of the batch is an independent problem. Each iteration rolls the dynamics out and
takes the gradient grad_u J by reverse mode through the rollout (one backward pass).

Methods (`DescentMethod`), both projected onto the box and both per row (no row's step depends
on another row's values):
  ADAM   u <- clamp(u - lr m^ / sqrt(v^ + eps^2), lo, hi), Adam's moments m^, v^ per row and
         coordinate (bias-corrected with each row's own step count). sqrt(v^ + eps^2) is the
         smooth form of Adam's sqrt(v^) + eps, so that unrolling stays finite where v^ = 0.
         Adam with a fixed lr hovers at a distance ~lr around the optimum: raise iters or
         lower lr for a tight tolerance.
  LBFGS  a batched, projected L-BFGS (memory `history`): per row, the two-loop recursion on
         the gradient restricted to the free coordinates (those not held at a bound by a
         gradient pointing outwards), initial scaling gamma = s'y / y'y (lr before the first
         pair), then a backtracking line search on the projected path u(a) = clamp(u + a d),
         a = decay^j, accepted per row by Armijo's rule J(u(a)) <= J(u) + armijo g'(u(a) - u)
         (plus 10 eps |J| of rounding slack). A pair (s, y) is kept only when s'y > eps y'y; a
         row whose line search fails drops its memory and retries along -gamma g.
  A row stops (SOLVED) when the projected gradient u - clamp(u - grad J, lo, hi) has max-norm
  <= tol (None: sqrt(eps) of the dtype); it ends as MAX_ITERS after `iters` iterations,
  NUMERICAL when J or its gradient is NaN/Inf (its x, u, cost are then NaN).

Bounds are handled by projection with an active set, not by a reparametrization: descent
minimizes the same problem as `runtime.ilqr`, with the same solution.

Backward (`runtime.implicit.Backward`):
  IMPLICIT   (default, implicit(cg, iters=20)) the forward iterations run without autograd;
             at the solution u*, with the active set A = {u* at a bound} and the free set F,
               du*_A = d(bound)/dtheta,   du*_F = -H_FF^{-1} d(grad_F J)/dtheta,
             H the Hessian of the reduced objective J(u) (Hessian-vector products by double
             backward through the rollout), solved per row by CG or a Neumann series
             (`runtime.implicit.implicit_argmin`). x = rollout(x0, u) and the cost are then
             recomputed with autograd, so x0 and the callables' parameters get their direct
             gradients too. Exact at a strict local minimum under strict complementarity; time
             ~ one rollout plus `iters` Hessian-vector products, memory independent of the
             forward iterations. Needs H_FF positive definite (CG) or alpha < 2 / lambda_max
             (Neumann; alpha=None estimates it per row). A NUMERICAL row is modelled at a
             finite placeholder, clamp(0, lo, hi), and returned as NaN with zero gradient
             (NaN/Inf that come from a row's data itself, e.g. x0, can still reach shared
             parameters' gradients).
  UNROLL     every iteration recorded (gradients by create_graph, Adam's moments, the line
             search's projected steps): time and memory linear in the iterations. L-BFGS'
             memory (the pairs s, y and gamma) is held constant, a preconditioner: its own
             derivative goes through 1 / s'y, which near convergence (s, y -> 0) amplifies
             rounding without bound. With it fixed, the unrolled derivative obeys
             du+ = du - a H_k (hess J du + d grad J / dtheta), whose fixed point is the
             implicit one, and converges to it with the iterate.
  TRUNCATED  (k) all but the last k iterations without autograd, then k recorded steps.
"""
from dataclasses import dataclass
from enum import Enum
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from runtime.implicit import Backward, BackwardMode, implicit_argmin, iterate
from runtime.limits import check_start_and_controls, control_limits
from runtime.status import Status

Dynamics = Callable[[Tensor, Tensor], Tensor]
StageCost = Callable[[Tensor, Tensor], Tensor]
FinalCost = Callable[[Tensor], Tensor]


class DescentMethod(Enum):
    """The descent method (module docstring)."""

    ADAM = "adam"
    LBFGS = "lbfgs"


@dataclass(frozen=True)
class DescentOptions:
    """Iterations, step, method, stopping rule and backward mode; method-specific settings."""

    iters: int = 100
    lr: float = 0.1                      # ADAM: step size; LBFGS: initial scaling gamma
    method: DescentMethod = DescentMethod.ADAM
    tol: Optional[float] = None          # on the projected gradient's max-norm; None: sqrt(eps)
    backward: Backward = Backward()
    betas: tuple[float, float] = (0.9, 0.999)   # ADAM
    eps: float = 1e-8                            # ADAM
    history: int = 10                            # LBFGS memory
    line_search_steps: int = 30                  # LBFGS: a = 1, decay, ..., decay^(steps-1)
    step_decay: float = 0.5
    armijo: float = 1e-4

    def __post_init__(self):
        if not isinstance(self.method, DescentMethod) or not isinstance(self.backward, Backward):
            raise TypeError("DescentOptions takes a DescentMethod and a runtime.implicit.Backward")
        if self.iters < 0 or not self.lr > 0 or self.history < 1 or self.line_search_steps < 1:
            raise ValueError(f"descent needs iters >= 0, lr > 0, history >= 1 and "
                             f"line_search_steps >= 1, got iters={self.iters}, lr={self.lr}, "
                             f"history={self.history}, line_search_steps={self.line_search_steps}")


@dataclass(frozen=True)
class DescentProblem:
    """Callables and control limits; see the module docstring for the shapes."""

    dynamics: Dynamics
    stage_cost: StageCost
    final_cost: FinalCost
    lower: Optional[Tensor] = None
    upper: Optional[Tensor] = None


class DescentSolution(NamedTuple):
    x: Tensor            # (B, T+1, n) states
    u: Tensor            # (B, T, m)   controls
    cost: Tensor         # (B,)        J at (x, u)
    status: Tensor       # (B,) int64  Status
    iterations: Tensor   # (B,) int64  iterations taken
    residual: Tensor     # (B,)        max-norm of the projected gradient at u: 0 at a solution


def descent(problem: DescentProblem, x0: Tensor, u_init: Tensor,
            options: DescentOptions = DescentOptions()) -> DescentSolution:
    """Solve the batch of problems from the warm start u_init (B, T, m)."""
    check_start_and_controls(x0, u_init, "descent", "u_init")
    B, T, m = u_init.shape
    lo, hi = _bounds(problem, u_init)
    lo_flat, hi_flat = lo.reshape(B, -1), hi.reshape(B, -1)

    def objective(u_flat: Tensor) -> Tensor:
        return total_cost(problem, x0, u_flat.view(B, T, m))

    tol = torch.finfo(u_init.dtype).eps ** 0.5 if options.tol is None else options.tol
    method = _METHODS[options.method](options)
    state = method.initial(objective, torch.clamp(u_init, lo, hi).reshape(B, -1))

    def stop(s) -> Tensor:
        return ~_finite(s.J, s.g) | (_residual(s.u, s.g, lo_flat, hi_flat) <= tol)

    def step(s, active: Tensor):
        return method.step(objective, s, active, lo_flat, hi_flat)

    state, iterations = iterate(step, state, options.iters, options.backward, stop)
    with torch.no_grad():
        residual = _residual(state.u, state.g, lo_flat, hi_flat)
        bad = ~_finite(state.J, state.g)
        status = torch.where(residual <= tol, int(Status.SOLVED), int(Status.MAX_ITERS))
        status = torch.where(bad, int(Status.NUMERICAL), status)
    u = state.u.reshape(B, T, m)
    if options.backward.mode is BackwardMode.IMPLICIT and torch.is_grad_enabled():
        u = _implicit_controls(problem, x0, u, lo, hi, bad, options.backward)
    x = rollout(problem.dynamics, x0, u)
    cost = _cost_of(problem, x, u)
    nan = torch.nan
    return DescentSolution(torch.where(bad[:, None, None], nan, x),
                           torch.where(bad[:, None, None], nan, u),
                           torch.where(bad, nan, cost), status, iterations,
                           torch.where(bad, nan, residual))


def rollout(dynamics: Dynamics, x0: Tensor, u: Tensor) -> Tensor:
    """x (B, T+1, n): x_0 = x0, x_{t+1} = f(x_t, u_t) for u (B, T, m)."""
    xs = [x0]
    for ut in u.unbind(1):
        xs.append(dynamics(xs[-1], ut))
    return torch.stack(xs, 1)


def total_cost(problem: DescentProblem, x0: Tensor, u: Tensor) -> Tensor:
    """J(u) (B,) of the module docstring, rolling the dynamics out from x0 (B, n)."""
    return _cost_of(problem, rollout(problem.dynamics, x0, u), u)


def _cost_of(problem: DescentProblem, x: Tensor, u: Tensor) -> Tensor:
    stage = sum(problem.stage_cost(xt, ut) for xt, ut in zip(x[:, :-1].unbind(1), u.unbind(1)))
    return stage + problem.final_cost(x[:, -1])


def _implicit_controls(problem: DescentProblem, x0: Tensor, u: Tensor, lo: Tensor, hi: Tensor,
                       bad: Tensor, backward: Backward) -> Tensor:
    """u* connected to x0, the bounds and the callables' parameters (module docstring)."""
    placeholder = torch.clamp(torch.zeros_like(u), lo, hi)
    u_star = torch.where(bad[:, None, None], placeholder, u.detach())
    at_lo, at_hi = u_star <= lo, u_star >= hi

    def clamped(v: Tensor) -> Tensor:
        return torch.where(at_lo, lo, torch.where(at_hi, hi, v))

    def objective(v: Tensor) -> Tensor:
        return total_cost(problem, x0, clamped(v))

    u_out = implicit_argmin(u_star, objective, backward, free=~(at_lo | at_hi))
    return clamped(u_out)


# ---- the two methods: state (B, ...) tensors and one step -----------------------------------

Objective = Callable[[Tensor], Tensor]


class _AdamState(NamedTuple):
    u: Tensor       # (B, k) controls, flat
    J: Tensor       # (B,)   J(u)
    g: Tensor       # (B, k) grad J(u)
    m: Tensor       # (B, k) first moment
    v: Tensor       # (B, k) second moment
    t: Tensor       # (B,)   steps taken (bias correction)


class _Adam:
    def __init__(self, options: DescentOptions):
        self.lr, (self.beta1, self.beta2), self.eps = options.lr, options.betas, options.eps

    def initial(self, objective: Objective, u: Tensor) -> _AdamState:
        J, g = _value_and_grad(objective, u)
        zero = torch.zeros_like(u)
        return _AdamState(u, J, g, zero, zero, torch.zeros_like(J))

    def step(self, objective: Objective, s: _AdamState, active: Tensor, lo: Tensor, hi: Tensor
             ) -> _AdamState:
        t = s.t + 1
        m = self.beta1 * s.m + (1 - self.beta1) * s.g
        v = self.beta2 * s.v + (1 - self.beta2) * s.g * s.g
        m_hat = m / (1 - self.beta1 ** t)[:, None]
        v_hat = v / (1 - self.beta2 ** t)[:, None]
        u = torch.clamp(s.u - self.lr * m_hat / torch.sqrt(v_hat + self.eps ** 2), lo, hi)
        J, g = _value_and_grad(objective, u)
        return _AdamState(u, J, g, m, v, t)


class _LBFGSState(NamedTuple):
    u: Tensor       # (B, k)    controls, flat
    J: Tensor       # (B,)      J(u)
    g: Tensor       # (B, k)    grad J(u)
    S: Tensor       # (B, M, k) steps s_i, newest last
    Y: Tensor       # (B, M, k) gradient changes y_i
    rho: Tensor     # (B, M)    1 / s_i'y_i, 0 for an empty slot
    gamma: Tensor   # (B,)      initial inverse-Hessian scaling


class _LBFGS:
    def __init__(self, options: DescentOptions):
        self.options = options

    def initial(self, objective: Objective, u: Tensor) -> _LBFGSState:
        J, g = _value_and_grad(objective, u)
        M = self.options.history
        B, k = u.shape
        pairs = u.new_zeros(B, M, k)
        return _LBFGSState(u, J, g, pairs, pairs, u.new_zeros(B, M),
                           torch.full_like(J, self.options.lr))

    def step(self, objective: Objective, s: _LBFGSState, active: Tensor, lo: Tensor, hi: Tensor
             ) -> _LBFGSState:
        free = ~(((s.u <= lo) & (s.g > 0)) | ((s.u >= hi) & (s.g < 0)))
        g_free = torch.where(free, s.g, 0.0)
        d = -torch.where(free, _two_loop(g_free, s.S, s.Y, s.rho, s.gamma), 0.0)
        fallback = -s.gamma[:, None] * g_free
        d = torch.where((_dot(d, s.g) < 0)[:, None], d, fallback)
        u, accepted = self._line_search(objective, s, d, active, lo, hi)
        J, g = _value_and_grad(objective, u)
        step, change = (u - s.u).detach(), (g - s.g).detach()
        sy, yy = _dot(step, change), _dot(change, change)
        keep = accepted & (sy > torch.finfo(sy.dtype).eps * yy) & (sy > 0)
        S = torch.where(keep[:, None, None], torch.cat((s.S[:, 1:], step[:, None]), 1), s.S)
        Y = torch.where(keep[:, None, None], torch.cat((s.Y[:, 1:], change[:, None]), 1), s.Y)
        safe_sy = torch.where(keep, sy, 1.0)
        rho = torch.cat((s.rho[:, 1:], (1.0 / safe_sy)[:, None]), 1)
        rho = torch.where(keep[:, None], rho, torch.where(accepted[:, None], s.rho, 0.0))
        gamma = torch.where(keep, safe_sy / torch.where(keep, yy, 1.0), s.gamma)
        return _LBFGSState(u, J, g, S, Y, rho, gamma)

    def _line_search(self, objective: Objective, s: _LBFGSState, d: Tensor, active: Tensor,
                     lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """Projected backtracking over the active rows; rows without an accepted step keep u."""
        o = self.options
        slack = 10 * torch.finfo(s.J.dtype).eps * s.J.abs().clamp_min(1.0)
        accepted = torch.zeros_like(active)
        u_new = s.u
        for j in range(o.line_search_steps):
            u_try = torch.clamp(s.u + (o.step_decay ** j) * d, lo, hi)
            with torch.no_grad():
                J_try = objective(u_try)
                take = active & ~accepted & torch.isfinite(J_try)
                take = take & (J_try <= s.J + o.armijo * _dot(s.g, u_try - s.u) + slack)
            u_new = torch.where(take[:, None], u_try, u_new)
            accepted = accepted | take
            if bool((accepted | ~active).all()):
                break
        return u_new, accepted


_METHODS = {DescentMethod.ADAM: _Adam, DescentMethod.LBFGS: _LBFGS}


def _two_loop(q: Tensor, S: Tensor, Y: Tensor, rho: Tensor, gamma: Tensor) -> Tensor:
    """H q (B, k) for the L-BFGS inverse-Hessian H of the pairs (S, Y) per row, H_0 = gamma I."""
    M = S.shape[1]
    alphas = [torch.zeros_like(gamma)] * M
    for i in reversed(range(M)):
        alphas[i] = rho[:, i] * _dot(S[:, i], q)
        q = q - alphas[i][:, None] * Y[:, i]
    r = gamma[:, None] * q
    for i in range(M):
        beta = rho[:, i] * _dot(Y[:, i], r)
        r = r + (alphas[i] - beta)[:, None] * S[:, i]
    return r


# ---- helpers ---------------------------------------------------------------------------------

def _value_and_grad(objective: Objective, u: Tensor) -> tuple[Tensor, Tensor]:
    """(J (B,), grad J (B, k)) at u; recorded (create_graph) when autograd is enabled."""
    record = torch.is_grad_enabled()
    with torch.enable_grad():
        leaf = u if record and u.requires_grad else u.detach().requires_grad_()
        J = objective(leaf)
        (g,) = torch.autograd.grad(J.sum(), leaf, create_graph=record, allow_unused=True)
    g = torch.zeros_like(u) if g is None else g
    return (J, g) if record else (J.detach(), g.detach())


def _residual(u: Tensor, g: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """max-norm of the projected gradient u - clamp(u - g, lo, hi), per row (B,)."""
    return (u - torch.clamp(u - g, lo, hi)).abs().amax(-1)


def _finite(J: Tensor, g: Tensor) -> Tensor:
    return torch.isfinite(J) & torch.isfinite(g).all(-1)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1)


def _bounds(problem: DescentProblem, u: Tensor) -> tuple[Tensor, Tensor]:
    """Control limits expanded to (B, T, m) (+-inf where absent)."""
    lo, hi = control_limits(-torch.inf if problem.lower is None else problem.lower, problem.upper, u)
    if bool((lo > hi).any()):
        raise ValueError("control limits must satisfy lower <= upper")
    return lo, hi
