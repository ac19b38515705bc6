"""Differentiable batched iLQR with control limits (Tassa, Mansard & Todorov 2014).

Problem (batch-first):

    minimize_u  J = sum_{t<T} l(x_t, u_t) + l_T(x_T)
    subject to  x_{t+1} = f(x_t, u_t),  x_0 = x0,  lo <= u_t <= hi

    x0: (B, n)   u: (B, T, m)   x: (B, T+1, n)   lo, hi: broadcastable to (B, T, m), +-inf allowed
    f: dynamics(x (B, n), u (B, m)) -> (B, n)
    l: stage_cost(x (B, n), u (B, m)) -> (B,)      l_T: final_cost(x (B, n)) -> (B,)

Forward (no autograd graph), per iteration, around the nominal trajectory (x̄, ū):

 1. Gauss-Newton model of every stage at once (`runtime.ilqr_derivatives`):
        F_t = [f_x f_u] (B, T, n, N),  g_t = grad l, C_t = hess l,  g_T, C_T of l_T.
    With `newton=True`, C_t also gets the dynamics curvature sum_i lam_{t+1,i} hess f_i, with
    the costates lam of the nominal (lam_T = g_T, lam_t = g_t,x + F_t,x' lam_{t+1}): each step
    is then a Newton (SQP) step on the reduced objective, converging quadratically near a strict
    local minimum, for second derivatives of the dynamics and a model that may be indefinite
    far from it (left to the regularization of step 4).
 2. Backward pass, v_T = g_T, V_T = C_T, for t = T-1 .. 0:
        q_t = g_t + F_t' v_{t+1},  Q_t = C_t + F_t' V_{t+1} F_t
        k_t = argmin { 1/2 k'(Q_uu + mu I)k + q_u'k : lo_t - ū_t <= k <= hi_t - ū_t }   (box_qp)
        K_t = -(Q_uu + mu I)_ff^{-1} Q_ux on the free rows, 0 on the clamped rows
        v_t = q_x + K'Q_uu k + K'q_u + Q_xu k,  V_t = Q_xx + K'Q_uu K + K'Q_ux + Q_xu K
    predicting the change J(alpha) - J̄ ≈ alpha dV1 + alpha^2 dV2,
        dV1 = sum_t k_t'q_u,  dV2 = 1/2 sum_t k_t'Q_uu k_t.
 3. Line search on the rollout u_t = clamp(ū_t + alpha k_t + K_t (x_t - x̄_t), lo, hi),
    alpha = decay^j: each element takes the first alpha with
    J̄ - J(alpha) >= armijo * -(alpha dV1 + alpha^2 dV2) - 10 eps max(1, |J̄|)
    (the last term forgives differences below the rounding error of J).
 4. Levenberg-Marquardt mu per element: mu <- mu / factor (0 below mu_min) after an accepted
    step, mu <- max(mu * factor, mu_min) after a rejected one or an indefinite Q_uu (the
    backward pass is then redone), at most mu_max.

Steps 1-4 run on `_TorchKernels`, or, where `ILQRProblem.native` is given (the compiler's C
code of the plan) and the solve is on the CPU with single shooting, on
`runtime.native.NativeKernels`: the same steps in C, in float64, under the same loop.

Convergence (one criterion, `converged_step`, for every caller): an element is SOLVED, and
stops changing, when its model is positive definite with at most mu_min of regularization (a
large mu shrinks k without the point being stationary; Tassa et al. require the same) and either
    the step is small:   ||k||_inf <= tol * max(1, ||ū||_inf)             (relative, floor tol)
    or the model predicts no further decrease:
                         -(dV1 + dV2) <= cost_tol * max(1, |J̄|)          (relative, floor cost_tol)
with defaults tol = sqrt(eps) and cost_tol = eps^(3/4) of the dtype (1.5e-8 and 1.8e-12 in
float64; 3.5e-4 and 6.4e-6 in float32): the predicted decrease of a full step is quadratic in k,
so the second test stops a solve whose cost has converged to rounding even where ||k|| stalls
above tol (a poorly scaled control). `residual` reports ||k||_inf; cost_tol = 0 switches the
second test off (tight solves for finite differences).
Others end as MAX_ITERS after max_iters iterations, NOT_CONVEX when Q_uu stays indefinite at
mu_max, NUMERICAL on NaN/Inf. No element is detached: every one is differentiated by the
same formula, and its status says whether it is at a fixed point.

Backward (`ILQRBackward`):

  IMPLICIT (default) differentiates the first-order optimality conditions at the solution
  tau* (Amos et al. 2018, mpc.pytorch's final LQR step). At tau* the exact second-order
  (Newton / SQP) model of the problem is built with autograd connected to the parameters the
  callables close over: with the costates lam (lam_T = grad l_T, lam_t = l_x + f_x' lam_{t+1}),
        F_t,  f_t = f(z*_t) - F_t z*_t,
        C_t = hess (l + lam_{t+1}'f)(z*_t),  c_t = grad l(z*_t) - C_t z*_t,
  and likewise C_T, c_T. tau* solves this box-LQR, and `runtime.box_lqr.box_lqr_step`
  returns it with the analytic LQR backward restricted to the free controls. Because the
  Newton map is stationary at its fixed point, this is the exact derivative of tau*
  (mpc.pytorch drops the dynamics curvature sum_i lam_i hess f_i, which is exact only for
  affine dynamics). Where this model is not positive definite on the free controls (an
  unconverged element, or a saddle point), that element uses the Gauss-Newton model without
  the curvature term instead, as mpc.pytorch does, so that its gradient stays finite.
  NUMERICAL elements return NaN in x, u and cost, with NaN gradients for their own inputs and
  every shared parameter where the loss reads them, and none where the loss masks them
  (the rule of every solver, as `runtime.lqr`). It assumes strict complementarity (a
  control at its bound is treated as clamped: zero sensitivity except through the bound
  itself, which receives a gradient). Cost: one extra quadratization with second derivatives
  of the dynamics, one Riccati factorization (two if some element falls back) and one solve;
  memory O(T), independent of the iterations. Skipped when autograd is disabled.

  UNROLL backpropagates through every iteration (derivatives, box QPs, line searches) as
  plain autograd: time and memory grow with iterations x line-search trials x T (about 3x
  the time of IMPLICIT for forward + backward in benchmarks/ilqr.py); exact for the returned
  iterate, and at convergence it agrees with IMPLICIT. For comparison only.
"""
from dataclasses import dataclass, replace
from enum import Enum
from typing import TYPE_CHECKING, Callable, NamedTuple, Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from runtime.box_lqr import box_lqr_step, costates, factor_free
from runtime.box_qp import BoxQPOptions
from runtime.ilqr_backward import Policy, backward_pass, local_model, next_mu, regularized_backward_pass
from runtime.ilqr_shooting import multiple_shooting
from runtime.ilqr_constraints import (ConstraintOptions, Constraints, FinalConstraint,
                                      StageConstraint, derivative_costs, augmented_costs,
                                      initial_multipliers, update)
from runtime.ilqr_derivatives import (Dynamics, ExactDerivatives, FinalCost, FinalDerivatives,
                                      StageCost, StageDerivatives, TrajectoryFunctions)
from runtime.limits import check_start_and_controls, control_limits
from runtime.status import Status

if TYPE_CHECKING:
    from runtime.native import NativeKernels


NativeSetup = Callable[..., "NativeKernels"]     # (x0, lo, hi, options, stage_data) -> kernels


class ILQRShooting(Enum):
    """Single shooting (the states are the rollout of the controls) or multiple shooting (the
    states are variables too, `runtime.ilqr_shooting`)."""

    SINGLE = "single"
    MULTIPLE = "multiple"


class ILQRBackward(Enum):
    """How gradients reach the inputs (see the module docstring)."""

    IMPLICIT = "implicit"
    UNROLL = "unroll"


@dataclass(frozen=True)
class ILQROptions:
    """Iteration limit, stopping rule, line search, regularization schedule, backward mode."""

    max_iters: int = 50
    tol: Optional[float] = None       # relative step ||k|| / max(1, ||u||); None: sqrt(eps)
    cost_tol: Optional[float] = None  # relative predicted decrease; None: eps^(3/4); 0: off
    line_search_steps: int = 10       # alphas 1, decay, ..., decay^(steps-1)
    step_decay: float = 0.5
    armijo: float = 1e-4
    mu_min: float = 1e-6              # Levenberg-Marquardt regularization of Q_uu
    mu_max: float = 1e10
    mu_factor: float = 10.0
    newton: bool = False              # add the dynamics curvature to the model (step 1)
    backward: ILQRBackward = ILQRBackward.IMPLICIT
    shooting: ILQRShooting = ILQRShooting.SINGLE
    qp: BoxQPOptions = BoxQPOptions()
    constraints: ConstraintOptions = ConstraintOptions()


@dataclass(frozen=True)
class ILQRProblem:
    """Callables and control limits; see the module docstring for the shapes. The callables
    must be `torch.func`-transformable (vmap, grad) and row-wise over the batch. The optional
    constraints c(x, u) <= 0 (B, p), h(x, u) = 0 (B, q), c_T(x) <= 0 (B, p_T), h_T(x) = 0
    (B, q_T) are handled by the augmented Lagrangian of `runtime.ilqr_constraints`.
    `native` (x0, lo, hi, options, stage_data) -> `runtime.native.NativeKernels` runs the forward
    iterations of a CPU, single-shooting solve (and the inner solves of the
    augmented Lagrangian) in C; the compiler supplies it with the constraints generated too."""

    dynamics: Dynamics
    stage_cost: StageCost
    final_cost: FinalCost
    lower: Optional[Tensor] = None
    upper: Optional[Tensor] = None
    derivatives: ExactDerivatives = ExactDerivatives()
    inequality: Optional[StageConstraint] = None
    equality: Optional[StageConstraint] = None
    final_inequality: Optional[FinalConstraint] = None
    final_equality: Optional[FinalConstraint] = None
    native: Optional[NativeSetup] = None

    @property
    def constraints(self) -> Constraints:
        return Constraints(self.inequality, self.equality, self.final_inequality,
                           self.final_equality)


class ILQRSolution(NamedTuple):
    x: Tensor            # (B, T+1, n) states
    u: Tensor            # (B, T, m)   controls
    cost: Tensor         # (B,)        J at (x, u)
    status: Tensor       # (B,) int64  Status
    iterations: Tensor   # (B,) int64  iterations (backward pass + line search) taken
    residual: Tensor     # (B,)        ||k||_inf at (x, u): 0 at a fixed point
    violation: Optional[Tensor] = None   # (B,) max constraint violation (0 without constraints)


def ilqr(problem: ILQRProblem, x0: Tensor, u_init: Tensor,
         options: ILQROptions = ILQROptions(), x_guess: Optional[Tensor] = None) -> ILQRSolution:
    """Solve the batch of control-limited problems from the warm start u_init (B, T, m).
    x_guess (B, T+1, n), multiple shooting only: the initial nodes; its NaN entries (and x_0)
    are taken from the rollout of u_init."""
    check_start_and_controls(x0, u_init, "ilqr", "u_init")
    if x_guess is not None and options.shooting is not ILQRShooting.MULTIPLE:
        raise ValueError("ilqr: a state guess sets the nodes of multiple shooting; "
                         "use ILQROptions(shooting=ILQRShooting.MULTIPLE)")
    nodes = (u_init.shape[0], u_init.shape[1] + 1, x0.shape[-1])
    if x_guess is not None and tuple(x_guess.shape) != nodes:
        raise ValueError(f"ilqr: x_guess must be (B, T+1, n) = {nodes}; got {tuple(x_guess.shape)}")
    fns = TrajectoryFunctions(problem.dynamics, problem.stage_cost, problem.final_cost,
                              problem.derivatives)
    lo, hi = control_limits(problem.lower, problem.upper, u_init)
    constrained = problem.constraints.any
    unroll = options.backward is ILQRBackward.UNROLL and torch.is_grad_enabled()
    if unroll:
        if constrained:
            return _augmented_lagrangian(problem, fns, x0, u_init, lo, hi, options, x_guess)[0].solution
        return _with_violation(_iterate(fns, x0, u_init, lo, hi, options, x_guess).solution)
    with torch.no_grad():
        args = (x0.detach(), u_init.detach(), _detach(lo), _detach(hi), options, _detach(x_guess))
        if _native_applies(problem, x0, options) and not constrained:
            result, derivative_fns = _native_iterate(problem.native, *args[:-1]), fns
        elif constrained:
            result, derivative_fns = _augmented_lagrangian(problem, fns, *args)
        else:
            result, derivative_fns = _iterate(fns, *args), fns
    sol = _with_violation(result.solution)
    failed = sol.status == Status.NUMERICAL
    if not torch.is_grad_enabled():
        x, u, cost = (torch.where(_rows(failed, y), torch.nan, y) for y in (sol.x, sol.u, sol.cost))
        return sol._replace(x=x, u=u, cost=cost)
    x, u = _implicit_step(derivative_fns, x0, result, lo, hi)
    x, u, cost = _MarkFailed.apply(failed, x, u, fns.total_cost(x, u))
    return sol._replace(x=x, u=u, cost=cost)


class _Result(NamedTuple):
    solution: ILQRSolution
    model: StageDerivatives    # last model, at the returned trajectory (its F, g give lam)
    final: FinalDerivatives


class _TorchKernels:
    """The four steps of an iteration on torch (any device and dtype; autograd follows them if
    it is enabled): rollout, stage models, backward pass, line search. `runtime.native` has the
    same steps in C."""

    def __init__(self, fns: TrajectoryFunctions, x0: Tensor, lo: Optional[Tensor],
                 hi: Optional[Tensor], options: ILQROptions):
        self.fns, self.x0, self.lo, self.hi, self.options = fns, x0, lo, hi, options

    def rollout(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x, u = _rollout(self.fns, self.x0, u, self.lo, self.hi)
        return x, u, self.fns.total_cost(x, u)

    def model(self, x: Tensor, u: Tensor) -> tuple[StageDerivatives, FinalDerivatives, Tensor]:
        return local_model(self.fns, x, u, self.options.newton)

    def backward(self, model: StageDerivatives, final: FinalDerivatives, u: Tensor, mu: Tensor,
                 todo: Tensor) -> Policy:
        return backward_pass(model, final, u, self.lo, self.hi, mu, self.options.qp)

    def line_search(self, x: Tensor, u: Tensor, J: Tensor, policy: Policy, active: Tensor
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return _line_search(self.fns, self.x0, x, u, J, policy, self.lo, self.hi, active, self.options)


def _iterate(fns: TrajectoryFunctions, x0: Tensor, u_init: Tensor, lo: Optional[Tensor],
             hi: Optional[Tensor], options: ILQROptions, x_guess: Optional[Tensor] = None) -> _Result:
    """The forward iterations of the module docstring (autograd follows if it is enabled)."""
    if options.shooting is ILQRShooting.MULTIPLE:
        return _iterate_multiple(fns, x0, u_init, lo, hi, options, x_guess)
    return _single_shooting(_TorchKernels(fns, x0, lo, hi, options), u_init, options)


def _single_shooting(kernels, u_init: Tensor, options: ILQROptions) -> _Result:
    """Steps 1-4 of the module docstring on `kernels` (`_TorchKernels` or
    `runtime.native.NativeKernels`)."""
    x, u, J = kernels.rollout(u_init)
    B = J.shape[0]
    status = torch.full((B,), int(Status.MAX_ITERS), dtype=torch.int64, device=J.device)
    status = torch.where(torch.isfinite(J), status, int(Status.NUMERICAL))
    active = status == Status.MAX_ITERS
    iterations = torch.zeros_like(status)
    residual = torch.full_like(J, torch.nan)
    mu = torch.zeros_like(J)

    for it in range(options.max_iters + 1):
        model, final, finite = kernels.model(x, u)
        status = torch.where(active & ~finite, int(Status.NUMERICAL), status)
        active = active & finite
        policy, mu = regularized_backward_pass(
            lambda mu, todo: kernels.backward(model, final, u, mu, todo), mu, active, options)
        res = policy.k.abs().flatten(1).amax(1)
        residual = torch.where(active, res, residual)
        converged = (policy.ok & (mu <= options.mu_min)
                     & converged_step(policy.k, u, policy.dV1 + policy.dV2, J, options))
        status = torch.where(active & ~policy.ok, int(Status.NOT_CONVEX), status)
        status = torch.where(active & converged, int(Status.SOLVED), status)
        active = active & policy.ok & ~converged
        if it == options.max_iters or not bool(active.any()):
            break

        x, u, J, accepted = kernels.line_search(x, u, J, policy, active)
        iterations = iterations + active.to(iterations.dtype)
        mu = next_mu(mu, accepted, active, options)

    solution = ILQRSolution(x, u, J, status, iterations, residual)
    return _Result(solution, model, final)


def _native_applies(problem: ILQRProblem, x0: Tensor, options: ILQROptions) -> bool:
    """The native kernels cover single-shooting solves on the CPU."""
    return problem.native is not None and x0.device.type == "cpu" and options.shooting is ILQRShooting.SINGLE


def _native_iterate(native: NativeSetup, x0: Tensor, u_init: Tensor, lo: Optional[Tensor],
                    hi: Optional[Tensor], options: ILQROptions, stage_data: Optional[Tensor] = None
                    ) -> _Result:
    """`_single_shooting` on the native kernels (float64), with the stopping rule of x0's dtype;
    the result in x0's dtype. stage_data: the augmented Lagrangian's [lam, nu, rho] per stage."""
    eps = torch.finfo(x0.dtype).eps
    options = replace(options, tol=eps ** 0.5 if options.tol is None else options.tol,
                      cost_tol=eps ** 0.75 if options.cost_tol is None else options.cost_tol)
    kernels = native(x0, lo, hi, options, stage_data)
    result = _single_shooting(kernels, u_init.to(torch.float64), options)
    cast = lambda t: t.to(x0.dtype) if t is not None and t.is_floating_point() else t
    return _Result(result.solution._make(map(cast, result.solution)),
                   result.model._make(map(cast, result.model)), result.final._make(map(cast, result.final)))


def _iterate_multiple(fns: TrajectoryFunctions, x0: Tensor, u_init: Tensor, lo: Optional[Tensor],
                      hi: Optional[Tensor], options: ILQROptions, x_guess: Optional[Tensor]) -> _Result:
    """Multiple shooting (`runtime.ilqr_shooting`) from the nodes x_guess, completed by the
    rollout of u_init. The result is rolled out once more under the last feedback policy,
    u_t = clamp(ū_t + K_t (x_t - x̄_t)), so that x satisfies the dynamics exactly and J is the
    cost of u (an open-loop rollout of ū would amplify the remaining defects of an unstable
    system), and differs from the nodes by the defects' effect."""
    x, u = _rollout(fns, x0, u_init, lo, hi)
    if x_guess is not None:
        x = torch.cat((x[:, :1], torch.where(torch.isnan(x_guess[:, 1:]), x[:, 1:], x_guess[:, 1:])), 1)
    nodes = multiple_shooting(fns, x, u, lo, hi, options, converged_step)
    x, u = _rollout(fns, x0, nodes.u, lo, hi, nodes.K, nodes.x)
    J = fns.total_cost(x, u)
    status = torch.where(torch.isfinite(J), nodes.status, int(Status.NUMERICAL))
    solution = ILQRSolution(x, u, J, status, nodes.iterations, nodes.residual)
    return _Result(solution, nodes.model, nodes.final)


def _with_violation(sol: ILQRSolution) -> ILQRSolution:
    return sol if sol.violation is not None else sol._replace(violation=torch.zeros_like(sol.cost))


def _augmented_lagrangian(problem: ILQRProblem, fns: TrajectoryFunctions, x0: Tensor,
                          u_init: Tensor, lo: Optional[Tensor], hi: Optional[Tensor],
                          options: ILQROptions, x_guess: Optional[Tensor] = None
                          ) -> tuple[_Result, TrajectoryFunctions]:
    """Constrained iLQR (`runtime.ilqr_constraints`): box-iLQR on the augmented Lagrangian,
    then multiplier and penalty updates, until every element's inner solve is SOLVED with
    violation <= tol (or fails, or max_outer). Returns the last inner result, with the
    problem's own cost, the total iterations, the violation and the final status (SOLVED,
    CONSTRAINT_VIOLATION where the violation stays above tol, else the inner status), and the
    functions whose stationary point the implicit backward differentiates."""
    constraints, copts = problem.constraints, options.constraints
    exact = ExactDerivatives(problem.derivatives.dynamics_jacobian, None, None,
                             problem.derivatives.dynamics_curvature)
    x, u = _rollout(fns, x0, u_init, lo, hi)
    eps = torch.finfo(x0.dtype).eps
    tol = eps ** 0.5 if copts.tol is None else copts.tol
    mult = initial_multipliers(constraints, x, u, copts.penalty)
    B = x0.shape[0]
    done = torch.zeros(B, dtype=torch.bool, device=x0.device)
    iterations = torch.zeros(B, dtype=torch.int64, device=x0.device)
    for _ in range(copts.max_outer):
        stage, final, w = augmented_costs(problem.stage_cost, problem.final_cost, constraints, mult)
        if _native_applies(problem, x0, options):
            result = _native_iterate(problem.native, x0, u, lo, hi, options, w)
        else:
            result = _iterate(TrajectoryFunctions(problem.dynamics, stage, final, exact, w),
                              x0, u, lo, hi, options, x_guess)
        x_guess = None
        sol = result.solution
        u = sol.u
        iterations = iterations + torch.where(done, 0, sol.iterations)
        violation = constraints.violation(sol.x, sol.u)
        failed = (sol.status == Status.NUMERICAL) | (sol.status == Status.NOT_CONVEX)
        met = (sol.status == Status.SOLVED) & (violation <= tol)
        mult = update(constraints, mult, sol.x, sol.u, ~done & ~met & ~failed, violation, tol, copts)
        done = done | met | failed
        if bool(done.all()):
            break
    status = torch.where((sol.status == Status.SOLVED) & (violation > tol),
                         int(Status.CONSTRAINT_VIOLATION), sol.status)
    rho_d = eps ** -0.5 if copts.derivative_penalty is None else copts.derivative_penalty
    stage, final, w = derivative_costs(problem.stage_cost, problem.final_cost, constraints, mult,
                                       sol.x, sol.u, rho_d)
    derivative_fns = TrajectoryFunctions(problem.dynamics, stage, final, exact, w)
    model = derivative_fns.stage(sol.x[:, :-1], sol.u)
    final_model = derivative_fns.final(sol.x[:, -1])
    solution = sol._replace(cost=fns.total_cost(sol.x, sol.u), status=status,
                            iterations=iterations, violation=violation)
    return _Result(solution, model, final_model), derivative_fns


def converged_step(k: Tensor, u: Tensor, predicted_change: Tensor, J: Tensor,
                   options: ILQROptions) -> Tensor:
    """(B,) bool: the stopping rule of the module docstring for the step k (B, T, m) at the
    nominal controls u (B, T, m) with cost J (B,) and predicted change dV1 + dV2 (B,)."""
    eps = torch.finfo(J.dtype).eps
    tol = eps ** 0.5 if options.tol is None else options.tol
    cost_tol = eps ** 0.75 if options.cost_tol is None else options.cost_tol
    small_step = k.abs().flatten(1).amax(1) <= tol * u.abs().flatten(1).amax(1).clamp_min(1.0)
    flat = -predicted_change <= cost_tol * J.abs().clamp_min(1.0)
    return small_step | (flat if cost_tol > 0 else torch.zeros_like(flat))


def _rollout(fns: TrajectoryFunctions, x0: Tensor, u_ff: Tensor, lo: Optional[Tensor],
             hi: Optional[Tensor], K: Optional[Tensor] = None, x_nom: Optional[Tensor] = None
             ) -> tuple[Tensor, Tensor]:
    """x_{t+1} = f(x_t, u_t) with u_t = clamp(u_ff_t + K_t (x_t - x_nom_t), lo_t, hi_t)."""
    T = u_ff.shape[1]
    u_ff = u_ff[..., None].unbind(1)
    K = K.unbind(1) if K is not None else None
    x_nom = x_nom.unbind(1) if x_nom is not None else None
    lo = lo.unbind(1) if lo is not None else None
    hi = hi.unbind(1) if hi is not None else None
    xs, us = [x0], []
    for t in range(T):
        ut = u_ff[t] if K is None else torch.baddbmm(u_ff[t], K[t], (xs[-1] - x_nom[t])[..., None])
        ut = ut.squeeze(-1)
        if lo is not None:
            ut = torch.clamp(ut, lo[t], hi[t])
        us.append(ut)
        xs.append(fns.dynamics(xs[-1], ut))
    return torch.stack(xs, 1), torch.stack(us, 1)


def _line_search(fns: TrajectoryFunctions, x0: Tensor, x: Tensor, u: Tensor, J: Tensor,
                 policy: Policy, lo: Optional[Tensor], hi: Optional[Tensor], active: Tensor,
                 options: ILQROptions) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Backtracking with a per-element accepted step; rejected elements keep (x, u, J)."""
    slack = 10 * torch.finfo(J.dtype).eps * J.abs().clamp_min(1.0)      # rounding error of J
    accepted = torch.zeros_like(active)
    x_new, u_new, J_new = x, u, J
    for j in range(options.line_search_steps):
        alpha = options.step_decay ** j
        x_try, u_try = _rollout(fns, x0, u + alpha * policy.k, lo, hi, policy.K, x)
        J_try = fns.total_cost(x_try, u_try)
        predicted = -(alpha * policy.dV1 + alpha ** 2 * policy.dV2)
        take = active & ~accepted & (J - J_try >= options.armijo * predicted - slack)
        x_new = torch.where(take[:, None, None], x_try, x_new)
        u_new = torch.where(take[:, None, None], u_try, u_new)
        J_new = torch.where(take, J_try, J_new)
        accepted = accepted | take
        if bool((accepted | ~active).all()):
            break
    return x_new, u_new, J_new, accepted


class _MarkFailed(torch.autograd.Function):
    """Outputs (x, u, cost) with NaN on the failed rows (B,); backward: a failed row's incoming
    gradients become NaN where the loss reads any of its outputs (a nonzero or NaN gradient)
    and exactly 0 where it does not. Upstream of this, the failed rows were computed at a
    finite placeholder, so the NaN reaches the row's own inputs and every shared parameter
    when read, and nothing reaches anything when the loss masks the row
    (`torch.where(sol.ok, sol.cost, 0)`, `sol.cost[sol.ok]`): the rule of `runtime.lqr`."""

    @staticmethod
    def forward(ctx, failed: Tensor, *outputs: Tensor):
        ctx.save_for_backward(failed)
        ctx.set_materialize_grads(False)
        return tuple(torch.where(_rows(failed, y), torch.nan, y) for y in outputs)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads: Optional[Tensor]):
        (failed,) = ctx.saved_tensors
        read = torch.zeros_like(failed)
        for g in grads:
            if g is not None:
                read |= (g != 0).flatten(1).any(1) if g.dim() > 1 else g != 0
        fill = torch.where(read, torch.nan, 0.0)
        return (None,) + tuple(None if g is None else torch.where(_rows(failed, g), _rows(fill, g), g)
                               for g in grads)


def _implicit_step(fns: TrajectoryFunctions, x0: Tensor, result: _Result,
                   lo: Optional[Tensor], hi: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """(x*, u*) connected to x0, the bounds and the callables' parameters (module docstring).
    NUMERICAL elements are modelled at a finite placeholder (zeros), so that no NaN enters the
    graph; `_MarkFailed` then turns them into NaN with the gradient rule of its docstring."""
    sol = result.solution
    bad = sol.status == Status.NUMERICAL
    x = torch.where(bad[:, None, None], 0.0, sol.x)
    u = torch.where(bad[:, None, None], 0.0, sol.u)
    safe = (torch.where(bad.view(-1, *[1] * (d.dim() - 1)), 0.0, d)
            for d in (result.model.F, result.model.g, result.final.g))
    lam = costates(*safe)
    if lo is None:
        free = torch.ones_like(u, dtype=torch.bool)
        clamp_value = torch.zeros_like(u)
    else:
        at_lo, at_hi = u <= lo, u >= hi
        free = ~(at_lo | at_hi)
        clamp_value = torch.where(at_lo, lo, torch.where(at_hi, hi, 0.0))
    model = fns.stage(x[:, :-1], u)
    final = fns.final(x[:, -1])
    curvature = fns.curvature(x[:, :-1], u, lam[:, 1:])
    fac = factor_free(model.C + curvature, model.F, final.C, free)
    newton = fac.status == Status.SOLVED
    C = model.C + torch.where(newton[:, None, None, None], curvature, 0.0)
    if not bool(newton.all()):
        fac = factor_free(C, model.F, final.C, free)
    z = torch.cat((x[:, :-1], u), -1)
    f = fns.next_states(x[:, :-1], u) - (model.F @ z[..., None]).squeeze(-1)
    c = model.g - (C @ z[..., None]).squeeze(-1)
    cT = final.g - (final.C @ x[:, -1, :, None]).squeeze(-1)
    return box_lqr_step(x0, C, c, model.F, f, final.C, cT, clamp_value, free, x, u, fac)



def _rows(v: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against `like`."""
    return v.view(-1, *[1] * (like.dim() - 1))


def _detach(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.detach()
