"""Sampling-based planners: MPPI (Williams et al. 2017) and the cross-entropy method (CEM).

Problem (batch-first, K sampled control sequences per batch element):

    minimize_u  J(u) = sum_{t<T} l(x_t, u_t, t) + l_T(x_T)
    subject to  x_{t+1} = f(x_t, u_t, t),  x_0 = x0,  lo <= u_t <= hi

    x0: (B, n)   u: (B, T, m)   x: (B, T+1, n)   lo, hi: broadcastable to (B, T, m), +-inf allowed
    f: dynamics(x (B, K, n), u (B, K, m), t: int) -> (B, K, n)
    l: stage_cost(x (B, K, n), u (B, K, m), t: int) -> (B, K)
    l_T: final_cost(x (B, K, n)) -> (B, K)

K is the number of samples (1 for the rollout of the returned plan); t lets the callables use
time-indexed references. With `SamplingProblem.vectorized_cost`, the stage cost is called once
for all stages instead: x (B, K, T, n), u (B, K, T, m), t = arange(T) (a (T,) int64 tensor that
indexes references as ref[t]) -> (B, K, T). No smoothness is assumed (abs, relu, min, max, clip
are fine). Rollouts run over (B, K) at once with a Python loop over T only; the noise of every
iteration and stage is drawn up front from `generator`, so the same seed gives the same plan.
Samples leave the limits by clamping: v = clamp(u + eps, lo, hi).

MPPI (`mppi`), per iteration, from the warm start u = u_init (closed-loop callers pass the
previous plan shifted by one step):

    eps_k ~ N(0, diag(sigma^2)) i.i.d. over (B, K, T),   v_k = clamp(u + eps_k, lo, hi)
    S_k = J(v_k) + gamma * lam * sum_t u_t' Sigma^{-1} (v_k,t - u_t)
    w = softmax(-S / lam) over k,   u <- sum_k w_k v_k

with lam the temperature, sigma the noise (std, scalar or per control) and the second term of
S the control cost of information-theoretic MPC (Williams et al. 2017, Alg. 2, with the noise
measured after clamping as in pytorch_mppi); gamma = `control_cost` (1 there, 0 drops it).

CEM (`cem`), per iteration, from mean u = u_init and std s = noise:

    v_k = clamp(u + s * z_k, lo, hi),  z_k ~ N(0, I);  E = the `elites` samples of lowest J
    u <- rho u + (1 - rho) mean_E v,  s <- max(rho s + (1 - rho) std_E v, min_std)

with rho the momentum. The returned plan is the last iteration's soft elite mean
u* = sum_{k in E} softmax_E(-J_k / lam) v_k (temperature lam; lam = inf gives the plain elite
mean).

Status: SOLVED after the fixed number of iterations when the plan, its states and its cost
are finite, else NUMERICAL (per element). A sample whose cost is +inf only gets weight 0.
The returned x and cost are a rollout of the returned u (cost J, without the control-cost term).

Speed: a solve is a fixed sequence of small tensor ops (the noise of all iterations in one
draw, one clamp per iteration, the callables once per stage, then softmax and one bmm), so on a
CPU its time is mostly per-op overhead. With `SamplingProblem.fuse` the iterations and the
final rollout are compiled by `torch.compile` into one fused kernel per problem and shapes
when autograd is disabled (closed-loop control); the first solve pays the compilation (tens of
seconds), later ones run several times faster than eager. With autograd enabled the eager code
always runs. torch.compile keeps a limited number of variants per function (torch._dynamo's
recompile_limit, 8 by default) and falls back to eager beyond it, so reuse one problem rather
than building a new one per solve. For closed-loop control, `SamplingPlanner` prepares a solve
once (limits, noise std, optionally the noise itself) so that each call is the compiled kernel
and little else.

Gradients (with respect to x0, u_init, the limits, and any parameters the callables close
over; taken when autograd is enabled, at the cost of keeping the graph of every iteration):

  MPPI: the noise is held fixed (common random numbers), and the iterations are unrolled: the
  returned u* = sum_k w_k(theta) v_k is differentiated through the weights
  w = softmax(-S(theta) / lam) (the sample costs S as functions of the parameters, x0 and the
  earlier iterates) and through v_k = clamp(u + eps_k). This is the exact derivative of the
  plan as a function of the parameters for the given noise, the reparameterized estimator of
  the gradient of E[u*]; x and cost are a differentiable rollout of u*.
  CEM: with the noise held fixed, the elite sets are locally constant, so the plan depends on
  the parameters only through the final soft weighting softmax_E(-J_k(theta) / lam) of the last
  iteration's elites (and on x0 through J_k); the earlier means and stds, and through them
  u_init, enter through the samples. Autograd gives the exact derivative of this piecewise-
  smooth map (undefined only where an elite set changes, a set of measure zero). With
  lam = inf the plan does not depend on the costs and its gradient with respect to them is 0.
"""
import types
from dataclasses import dataclass
from functools import partial
from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

from runtime.limits import check_start_and_controls, control_limits
from runtime.status import Status

Dynamics = Callable[[Tensor, Tensor, int], Tensor]
StageCost = Callable[[Tensor, Tensor, Union[int, Tensor]], Tensor]
FinalCost = Callable[[Tensor], Tensor]
Noise = Union[float, Sequence[float], Tensor]


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")


@dataclass(frozen=True)
class SamplingProblem:
    """Callables and control limits; see the module docstring for the shapes. The callables
    must be row-wise over (B, K) and may close over tensors that require grad."""

    dynamics: Dynamics
    stage_cost: StageCost
    final_cost: FinalCost
    lower: Optional[Tensor] = None
    upper: Optional[Tensor] = None
    vectorized_cost: bool = False     # stage_cost takes all stages at once (module docstring)
    fuse: bool = False                # compile the iterations (module docstring, "Speed")

    def _compiled(self, iterations: Callable) -> Callable:
        """`iterations` (this module's `_mppi` or `_cem`) bound to this problem and compiled by
        torch.compile; cached on the problem. torch._dynamo keeps its compiled variants on the
        code object it compiles, at most recompile_limit (8) of them, and runs eager beyond:
        each problem is another program, so it compiles its own copy of the function's code (a
        function, not a partial, whose wrapper code all partials would share), and many
        problems in one process (plans, seeds) do not fall back to eager."""
        cache = self.__dict__.setdefault("_fused", {})   # frozen: fields stay read-only
        if iterations not in cache:
            own = types.FunctionType(iterations.__code__.replace(), iterations.__globals__, iterations.__name__,
                                     iterations.__defaults__, iterations.__closure__)
            cache[iterations] = partial(torch.compile(own, dynamic=False), self)
        return cache[iterations]


@dataclass(frozen=True)
class MPPIOptions:
    samples: int = 100                # K
    temperature: float = 1.0          # lam > 0
    noise: Noise = 1.0                # sigma: std of the perturbations, scalar or (m,)
    iters: int = 1
    control_cost: float = 1.0         # gamma: weight of the lam u'Sigma^{-1}eps term (0: none)

    def __post_init__(self):
        _check_positive(samples=self.samples, iters=self.iters, temperature=self.temperature)
        if self.control_cost < 0:
            raise ValueError(f"mppi control_cost must be >= 0, got {self.control_cost}")


@dataclass(frozen=True)
class CEMOptions:
    samples: int = 100                # K
    elites: int = 10                  # |E| <= K
    iters: int = 5
    noise: Noise = 1.0                # initial std, scalar or (m,)
    momentum: float = 0.0             # rho in [0, 1)
    min_std: float = 0.0              # floor of the std after each update
    temperature: float = 1.0          # lam of the final soft elite mean (inf: plain mean)

    def __post_init__(self):
        _check_positive(samples=self.samples, elites=self.elites, iters=self.iters,
                        temperature=self.temperature)
        if self.elites > self.samples:
            raise ValueError(f"cem needs elites <= samples, got {self.elites} > {self.samples}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"cem momentum must be in [0, 1), got {self.momentum}")
        if self.min_std < 0:
            raise ValueError(f"cem min_std must be >= 0, got {self.min_std}")


class SamplingSolution(NamedTuple):
    x: Tensor            # (B, T+1, n) states of the plan
    u: Tensor            # (B, T, m)   the plan
    cost: Tensor         # (B,)        J at (x, u)
    status: Tensor       # (B,) int64  Status: SOLVED or NUMERICAL
    iterations: Tensor   # (B,) int64  iterations taken (all of them)


class SamplingPlanner:
    """MPPI or CEM (chosen by the type of `options`) prepared for repeated solves of `problem`
    at one plan shape (B, T, m), dtype and device, as closed-loop control needs: the limits
    (B, T, m), the noise std, the control-cost weights and (with `fixed_noise`) the noise are
    made once, and a call does no validation and no allocation beyond the solve itself.

    like: a (B, T, m) tensor of the plans' shape, dtype and device (e.g. the first warm start).
    Noise: a call draws fresh noise from `generator` (None: torch's global generator), so that
    successive calls differ, unless `fixed_noise`: then it is drawn once here and every call
    reuses it, which is what re-seeding a generator before each solve gives (the same plan for
    the same x0 and u_init; the compiled plans' `seed` option).

    planner(x0 (B, n), u_init (B, T, m)) -> SamplingSolution; x0 and u_init must have the
    prepared shapes, dtype and device (unchecked here; `mppi` and `cem` check them). Limits
    that require grad are taken into the graph once, here: build a planner per solve then.
    """

    def __init__(self, problem: SamplingProblem, options: Union[MPPIOptions, CEMOptions],
                 like: Tensor, generator: Optional[torch.Generator] = None,
                 fixed_noise: bool = False):
        if not isinstance(options, (MPPIOptions, CEMOptions)):
            raise TypeError(f"options must be MPPIOptions or CEMOptions, got {type(options).__name__}")
        if like.dim() != 3 or like.shape[1] < 1:
            raise ValueError(f"a sampling planner needs plans (B, T, m) with T >= 1, got {tuple(like.shape)}")
        self.problem, self.options, self.generator = problem, options, generator
        self._shape, self._dtype, self._device = tuple(like.shape), like.dtype, like.device
        self.lower, self.upper = control_limits(problem.lower, problem.upper, like)
        self._iterations = _mppi if isinstance(options, MPPIOptions) else _cem
        scale = _per_control(options.noise, like, "noise")
        if isinstance(options, MPPIOptions):
            # eps = sigma * z; the control cost's gamma lam Sigma^{-1}
            self._scale = scale
            self._extra = (options.control_cost * options.temperature / scale ** 2, options.temperature,
                           bool(options.control_cost))
        else:
            self._scale = None
            self._extra = (scale, options.elites, options.momentum, options.min_std, options.temperature)
        self._noise = self._draw() if fixed_noise else None
        self._count = torch.full(self._shape[:1], options.iters, dtype=torch.int64, device=like.device)

    def _draw(self) -> Tensor:
        """The noise of every iteration and stage, (iters, B, K, T, m): sigma z for MPPI, z for CEM."""
        B, T, m = self._shape
        z = torch.randn((self.options.iters, B, self.options.samples, T, m), generator=self.generator,
                        dtype=self._dtype, device=self._device)
        return z if self._scale is None else z.mul_(self._scale)

    def __call__(self, x0: Tensor, u_init: Tensor) -> SamplingSolution:
        noise = self._draw() if self._noise is None else self._noise
        x, u, J, status = _solver(self.problem, self._iterations)(x0, u_init, self.lower, self.upper, noise,
                                                                  *self._extra)
        return SamplingSolution(x, u, J, status, self._count)


def mppi(problem: SamplingProblem, x0: Tensor, u_init: Tensor,
         options: MPPIOptions = MPPIOptions(),
         generator: Optional[torch.Generator] = None) -> SamplingSolution:
    """MPPI from the warm start u_init (B, T, m); noise from `generator` (on x0's device)."""
    check_start_and_controls(x0, u_init, "sampling planners")
    return SamplingPlanner(problem, options, u_init, generator)(x0, u_init)


def cem(problem: SamplingProblem, x0: Tensor, u_init: Tensor,
        options: CEMOptions = CEMOptions(),
        generator: Optional[torch.Generator] = None) -> SamplingSolution:
    """CEM from the mean u_init (B, T, m); noise from `generator` (on x0's device)."""
    check_start_and_controls(x0, u_init, "sampling planners")
    return SamplingPlanner(problem, options, u_init, generator)(x0, u_init)


def rollout(problem: SamplingProblem, x0: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """States (B, T+1, n) and cost J (B,) of the plans u (B, T, m) from x0 (B, n), unclamped."""
    check_start_and_controls(x0, u, "sampling planners")
    x, J = _rollout(problem, x0, u.unsqueeze(1), keep_states=True)
    return x.squeeze(1), J.squeeze(1)


# ---- the iterations (plain tensor code, compiled whole when the problem asks to fuse) --------

def _mppi(problem: SamplingProblem, x0: Tensor, u: Tensor, lo: Optional[Tensor],
          hi: Optional[Tensor], eps: Tensor, weight: Tensor, lam: float,
          control_cost: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """MPPI iterations on the noise eps (iters, B, K, T, m); the plan's x, u, J and status."""
    u = _clamp(u, lo, hi)
    for eps_i in eps.unbind(0):
        v = _clamp(u.unsqueeze(1) + eps_i, _samples(lo), _samples(hi))
        S = _rollout_cost(problem, x0, v)
        if control_cost:
            uw = u * weight
            S = S + (_contract(v, uw) - (uw * u).sum((1, 2)).unsqueeze(1))
        u = _weighted_mean(torch.softmax(S.mul(-1.0 / lam), 1), v)
    return _planned(problem, x0, u)


def _cem(problem: SamplingProblem, x0: Tensor, mean: Tensor, lo: Optional[Tensor],
         hi: Optional[Tensor], z: Tensor, std: Tensor, elites: int, rho: float, min_std: float,
         lam: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """CEM iterations on the standard noise z (iters, B, K, T, m); the plan's x, u, J and status."""
    B, T, m = mean.shape
    mean = _clamp(mean, lo, hi)
    std = std.expand(B, T, m)
    iters = z.shape[0]
    for i, z_i in enumerate(z.unbind(0)):
        v = _clamp(mean.unsqueeze(1) + std.unsqueeze(1) * z_i, _samples(lo), _samples(hi))
        J = _rollout_cost(problem, x0, v)
        J_elite, index = torch.topk(J, elites, dim=1, largest=False, sorted=False)
        best = v.gather(1, index[..., None, None].expand(-1, -1, T, m))
        if i == iters - 1:
            mean = _weighted_mean(torch.softmax(J_elite.mul(-1.0 / lam), 1), best)
        else:
            e_std, e_mean = torch.std_mean(best, 1, correction=0)
            mean = e_mean if rho == 0 else rho * mean + (1 - rho) * e_mean
            std = (e_std if rho == 0 else rho * std + (1 - rho) * e_std).clamp_min(min_std)
    return _planned(problem, x0, mean)


def _solver(problem: SamplingProblem, iterations: Callable) -> Callable:
    """The iterations bound to the problem: compiled by torch.compile (once per problem,
    solver, shapes and options) if the problem asks to fuse and autograd is off."""
    if problem.fuse and not torch.is_grad_enabled():
        return problem._compiled(iterations)
    return partial(iterations, problem)


# ---- rollouts over (B, K, T) ------------------------------------------------------------------

def _rollout_cost(problem: SamplingProblem, x0: Tensor, v: Tensor) -> Tensor:
    """J (B, K) of the control samples v (B, K, T, m)."""
    return _rollout(problem, x0, v, keep_states=problem.vectorized_cost)[1]


def _rollout(problem: SamplingProblem, x0: Tensor, v: Tensor,
             keep_states: bool) -> tuple[Optional[Tensor], Tensor]:
    """States (B, K, T+1, n) (None unless keep_states) and cost J (B, K) of v (B, K, T, m)."""
    B, K, T, _ = v.shape
    x = x0.unsqueeze(1).expand(B, K, x0.shape[1])
    states, costs = [x], []
    for t, u_t in enumerate(v.unbind(2)):
        if not problem.vectorized_cost:
            costs.append(problem.stage_cost(x, u_t, t))
        x = problem.dynamics(x, u_t, t)
        if keep_states:
            states.append(x)
    X = torch.stack(states, 2) if keep_states else None
    if problem.vectorized_cost:
        t = torch.arange(T, device=v.device)
        stage = problem.stage_cost(X[:, :, :-1], v, t).sum(2)
    else:
        stage = torch.stack(costs, 2).sum(2)
    return X, stage + problem.final_cost(x)


def _planned(problem: SamplingProblem, x0: Tensor, u: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The plan u (B, T, m) with its rollout x (B, T+1, n), cost J (B,) and status (B,): SOLVED
    where all three are finite, else NUMERICAL."""
    x, J = _rollout(problem, x0, u.unsqueeze(1), keep_states=True)
    x, J = x.squeeze(1), J.squeeze(1)
    finite = torch.isfinite(J) & torch.isfinite(x).flatten(1).all(1) & torch.isfinite(u).flatten(1).all(1)
    return x, u, J, torch.where(finite, int(Status.SOLVED), int(Status.NUMERICAL))


# ---- small helpers ----------------------------------------------------------------------------

def _weighted_mean(w: Tensor, v: Tensor) -> Tensor:
    """sum_k w[b, k] v[b, k] for w (B, K), v (B, K, T, m) -> (B, T, m)."""
    B, K, T, m = v.shape
    return torch.bmm(w.unsqueeze(1), v.reshape(B, K, T * m)).view(B, T, m)


def _contract(v: Tensor, a: Tensor) -> Tensor:
    """sum_{t, i} v[b, k, t, i] a[b, t, i] for v (B, K, T, m), a (B, T, m) -> (B, K)."""
    B, K, T, m = v.shape
    return torch.bmm(v.reshape(B, K, T * m), a.reshape(B, T * m, 1)).view(B, K)


def _clamp(u: Tensor, lo: Optional[Tensor], hi: Optional[Tensor]) -> Tensor:
    return u if lo is None else torch.clamp(u, lo, hi)


def _samples(bound: Optional[Tensor]) -> Optional[Tensor]:
    """A (B, T, m) limit broadcast over the samples: (B, 1, T, m)."""
    return None if bound is None else bound.unsqueeze(1)


def _per_control(value: Noise, u: Tensor, name: str) -> Tensor:
    """A positive scalar or per-control value as a (m,) tensor of u's dtype and device."""
    m = u.shape[2]
    tensor = torch.as_tensor(value, dtype=u.dtype, device=u.device)
    if tensor.dim() > 1 or tensor.numel() not in (1, m):
        raise ValueError(f"{name} must be a scalar or have one entry per control ({m}), got "
                         f"shape {tuple(tensor.shape)}")
    if not bool((tensor > 0).all()):
        raise ValueError(f"{name} must be positive, got {tensor.tolist()}")
    return tensor.reshape(-1).expand(m).clone()   # contiguous: ops on 0-stride tensors are slow
