"""Candidate trajectories for joint inference: K per agent, batched over scenes and agents.

A candidate set is a pair of tensors

    x: (B, N, K, T+1, n) states        u: (B, N, K, T, m) controls

for B scenes, N agents and K candidates each, rolled out from x0 (B, N, n) through a
dynamics callable step(x (..., n), u (..., m)) -> (..., n) applied to all leading axes at once.
Three sources:

  `lattice_proposals`: the same K control sequences for every agent (e.g. `control_lattice`,
      piecewise-constant accelerations on a grid), rolled out from each agent's state;
  `sampled_proposals`: a small cross-entropy-method sampler per agent on a unary cost
      cost(x, u) -> (B, N, K): smooth control perturbations (linear interpolation of random
      knots) around a mean that moves to the mean of the elite samples; the final set is the
      mean plus K - 1 perturbations of it. (A stand-in; it should later delegate to the shared
      sampler of runtime/sampling.py.)
  given candidates: any (x, u) of the shapes above, e.g. from data; `insert_candidates` puts a
      reference trajectory (the ground truth, for training) at a chosen index.

`double_integrator(dt)` is the planar agent of the interaction scenes: x = (px, py, vx, vy),
u = (ax, ay), exact zero-order-hold discretization.
"""
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

Dynamics = Callable[[Tensor, Tensor], Tensor]
UnaryCost = Callable[[Tensor, Tensor], Tensor]


class Candidates(NamedTuple):
    """K candidate trajectories per agent."""

    x: Tensor    # (B, N, K, T+1, n)
    u: Tensor    # (B, N, K, T, m)


def double_integrator(dt: float) -> Dynamics:
    """step(x, u): p' = p + dt v + dt^2/2 a, v' = v + dt a for x = (p, v) (..., 4), u = a (..., 2)."""
    def step(x: Tensor, u: Tensor) -> Tensor:
        p, v = x[..., :2], x[..., 2:]
        return torch.cat([p + dt * v + 0.5 * dt * dt * u, v + dt * u], dim=-1)
    return step


def rollout(step: Dynamics, x0: Tensor, u: Tensor) -> Tensor:
    """States (..., T+1, n) from x0 (..., n) under controls u (..., T, m)."""
    states = [x0]
    for t in range(u.shape[-2]):
        states.append(step(states[-1], u[..., t, :]))
    return torch.stack(states, dim=-2)


def control_lattice(levels: Tensor, m: int, T: int, segments: int = 1) -> Tensor:
    """Every piecewise-constant control sequence on a grid: (L^(m segments), T, m).

    levels (L,) are the values each control component takes; the horizon is cut into
    `segments` equal pieces (the last one takes the remainder), each with its own constant
    control vector.
    """
    if segments < 1 or segments > T:
        raise ValueError(f"segments must lie in [1, T={T}], got {segments}")
    grid = torch.cartesian_prod(*[levels] * (m * segments)).reshape(-1, segments, m)
    piece = torch.div(torch.arange(T, device=levels.device) * segments, T, rounding_mode="floor")
    return grid[:, piece]


def lattice_proposals(step: Dynamics, x0: Tensor, controls: Tensor) -> Candidates:
    """Roll the K control sequences controls (K, T, m) out from every agent's x0 (B, N, n)."""
    B, N, _ = x0.shape
    u = controls.to(x0)[None, None].expand(B, N, *controls.shape)
    return Candidates(rollout(step, x0[:, :, None].expand(B, N, controls.shape[0], -1), u), u)


def smooth_noise(shape: tuple, T: int, m: int, knots: int, generator: Optional[torch.Generator],
                 like: Tensor) -> Tensor:
    """Standard-normal values at `knots` times, linearly interpolated over T steps: (*shape, T, m)."""
    values = torch.randn(*shape, knots, m, generator=generator, dtype=like.dtype,
                         device=like.device)
    if knots == 1:
        return values.expand(*shape, T, m)
    position = torch.linspace(0, knots - 1, T, dtype=like.dtype, device=like.device)
    left = position.floor().long().clamp(max=knots - 2)
    fraction = (position - left)[:, None]
    return values[..., left, :] * (1 - fraction) + values[..., left + 1, :] * fraction


def sampled_proposals(step: Dynamics, x0: Tensor, cost: UnaryCost, K: int, T: int, m: int,
                      iters: int = 10, sigma: float = 1.0, decay: float = 0.7,
                      final_sigma: Optional[float] = None, elite_fraction: float = 0.1,
                      knots: int = 5, initial_controls: Optional[Tensor] = None,
                      final_noise: Optional[Callable[[Tensor], Tensor]] = None,
                      generator: Optional[torch.Generator] = None) -> Candidates:
    """K candidates per agent from a cross-entropy-method sampler on a unary cost.

    x0 (B, N, n); cost(x (B, N, K, T+1, n), u (B, N, K, T, m)) -> (B, N, K). Iteration k
    samples u = mean + sigma decay^k smooth_noise (candidate 0 is the mean itself) and moves
    the mean (B, N, T, m) to the average of the round(elite_fraction K) cheapest samples. The
    result is the final mean (candidate 0) and K - 1 samples around it with `final_sigma`
    (default sigma), their noise passed through `final_noise` (e.g.
    `double_integrator_endpoint_projection`, so that every candidate ends where the mean
    does). No gradient flows through the sampler.
    """
    if K < 2:
        raise ValueError(f"the sampler needs K >= 2 candidates, got {K}")
    B, N, _ = x0.shape
    final_sigma = sigma if final_sigma is None else final_sigma
    elites = max(1, int(round(elite_fraction * K)))
    start = x0[:, :, None].expand(B, N, K, -1)
    with torch.no_grad():
        mean = x0.new_zeros(B, N, T, m) if initial_controls is None else initial_controls.to(x0)

        def draw(scale: float, shape_noise: Callable[[Tensor], Tensor]) -> Candidates:
            noise = shape_noise(smooth_noise((B, N, K), T, m, knots, generator, x0))
            noise[:, :, 0] = 0.0
            u = mean[:, :, None] + scale * noise
            return Candidates(rollout(step, start, u), u)

        for k in range(iters):
            samples = draw(sigma * decay ** k, _unchanged)
            best = cost(samples.x, samples.u).topk(elites, dim=2, largest=False).indices
            mean = samples.u.gather(2, best[..., None, None].expand(-1, -1, -1, T, m)).mean(2)
        return draw(final_sigma, _unchanged if final_noise is None else final_noise)


def _unchanged(noise: Tensor) -> Tensor:
    return noise


def double_integrator_endpoint_projection(dt: float, T: int) -> Callable[[Tensor], Tensor]:
    """Project control noise (..., T, m) so that it leaves a double integrator's final state.

    The final position and velocity change by dt^2 sum_s (T - s - 1/2) e_s and dt sum_s e_s;
    the projection e - L'(L L')^-1 L e, L = [1 ... 1; T - 1/2 ... 1/2] (2, T), removes both
    (per control component), keeping the noise's shape otherwise.
    """
    s = torch.arange(T, dtype=torch.float64)
    L = torch.stack([torch.ones(T, dtype=torch.float64), T - s - 0.5])          # (2, T)
    projector = torch.eye(T, dtype=torch.float64) - L.T @ torch.linalg.solve(L @ L.T, L)

    def project(noise: Tensor) -> Tensor:
        return projector.to(noise) @ noise
    return project


def insert_candidates(candidates: Candidates, x: Tensor, u: Tensor, index: Tensor) -> Candidates:
    """A copy of `candidates` whose candidate index[b, i] (B, N) of agent i is (x, u)[b, i].

    x (B, N, T+1, n) and u (B, N, T, m) are one trajectory per agent (e.g. the ground truth).
    """
    B, N = index.shape
    scene = torch.arange(B, device=index.device)[:, None]
    agent = torch.arange(N, device=index.device)[None, :]
    cx, cu = candidates.x.clone(), candidates.u.clone()
    cx[scene, agent, index] = x.to(cx)
    cu[scene, agent, index] = u.to(cu)
    return Candidates(cx, cu)


def endpoint_projector(jacobian: Tensor) -> Tensor:
    """P (R, D, D) = I - G'(G G')^-1 G for terminal-state Jacobians G = dx_T/du (R, n, D).

    Control perturbations P d leave the final state unchanged to first order (exactly for
    linear dynamics): candidates built from them reach wherever the nominal plan reaches. A
    ridge of eps (of the dtype) times the largest diagonal of G G' keeps rank-deficient G usable.
    """
    gram = jacobian @ jacobian.mT
    ridge = torch.finfo(gram.dtype).eps * gram.diagonal(dim1=-2, dim2=-1).amax(-1).clamp_min(1e-30)[..., None, None]
    eye_n = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    solved = torch.linalg.solve(gram + ridge * eye_n, jacobian)                 # (R, n, D)
    eye_d = torch.eye(jacobian.shape[-1], dtype=gram.dtype, device=gram.device)
    return eye_d - jacobian.mT @ solved


def sine_modes(T: int, modes: int, like: Tensor) -> Tensor:
    """(modes + 2, T): sin(pi k (t + 1/2) / T), k = 1..modes + 2, the smooth control shapes that
    perturbations are built from (2 more than `modes`, as the endpoint projection removes two
    directions per control component of a double integrator)."""
    t = (torch.arange(T, dtype=like.dtype, device=like.device) + 0.5) / T
    k = torch.arange(1, modes + 3, dtype=like.dtype, device=like.device)
    return torch.sin(torch.pi * k[:, None] * t[None, :])


def coefficient_lattice(levels: int, spread: float, dims: int, like: Tensor) -> Tensor:
    """(levels^dims, dims): every combination of `levels` values evenly spaced in [-spread, spread]."""
    values = torch.linspace(-spread, spread, levels, dtype=like.dtype, device=like.device)
    return torch.cartesian_prod(*[values] * dims).reshape(-1, dims)
