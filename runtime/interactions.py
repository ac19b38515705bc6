"""Interaction data: multi-agent scenes whose ground truth is a centralized joint optimum.

Agents are planar double integrators (`runtime.joint_proposals.double_integrator`): state
x = (px, py, vx, vy), control u = (ax, ay), discs of radius 0.5. A scene draws start states
x0 (N, 4) and goals (N, 2); the ground truth plans all agents together, minimizing over the
joint controls u (N, T, 2) (one scene; scenes are batched)

    J(u) = sum_i [ w_goal |p_i,T - g_i|^2 + w_speed |v_i,T|^2 + w_effort dt sum_t |u_i,t|^2 ]
         + w_collision sum_{i<j} sum_t h(clearance - |p_i,t - p_j,t|)^2
         + w_wall sum_i sum_t [h(py_i,t - limit)^2 + h(-py_i,t - limit)^2]  (corridor scenes only)

with the smooth hinge h(z) = softplus(sharpness z) / sharpness (so that J is smooth and
Newton's method converges to a point where the gradient vanishes)

by damped Newton steps from the agents' independent optima plus small random controls (which
break the symmetry of head-on scenes). A scene is kept only if its plan is collision-free (every two centres >= 1.0 apart at
every step and between steps), a strict local minimum (max_t,i |dJ/du| <= `grad_tol`, Hessian
positive definite) and within `goal_tol` of every goal; the generator draws more scenes until `count` pass.

Scenes (`SCENES`):
  intersection: a four-way crossing; agent i enters on arm i mod 4 (queued 3.5 m apart when
      N > 4), 3-5 m out, in the right-hand lane, at 0-1 m/s towards the centre, and is bound
      for a different arm (a random derangement of the arms), 3-5 m out in its outgoing lane.
  corridor_swap: a corridor |py| <= 1.5 (centres within 1.0); agents start at its two ends,
      6-8 m apart, at 0-1 m/s towards each other, and swap ends.
  merge: a main lane (py = 0, heading +x) and an on-ramp joining it at the origin at 30
      degrees; agents alternate between them, 3-7 m before the merge point at 0.5-1 m/s, and
      end in the main lane 1.5 m apart, in the order they would reach the merge point.

File format (`save` / `load`, numpy .npz, float64 arrays):
    x0    (M, N, 4)       start states
    goals (M, N, 2)       goal positions
    x     (M, N, T+1, 4)  ground-truth states (x[:, :, 0] == x0)
    u     (M, N, T, 2)    ground-truth controls
    dt    ()              time step (s)
    scene ()              scene name (str)
    seed  ()              generator seed (int)
"""
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor

from runtime.joint_energies import min_distance

LANE_OFFSET = 0.75


class InteractionData(NamedTuple):
    """M scenes of N agents with their ground-truth joint plans (see the module docstring)."""

    x0: Tensor       # (M, N, 4)
    goals: Tensor    # (M, N, 2)
    x: Tensor        # (M, N, T+1, 4)
    u: Tensor        # (M, N, T, 2)
    dt: float
    scene: str
    seed: int


@dataclass(frozen=True)
class JointCost:
    """Weights of the centralized objective J of the module docstring."""

    goal: float = 20.0
    final_speed: float = 10.0
    effort: float = 1.0
    collision: float = 1000.0
    clearance: float = 1.2
    wall: float = 200.0
    sharpness: float = 10.0


class SceneStarts(NamedTuple):
    x0: Tensor                        # (M, N, 4)
    goals: Tensor                     # (M, N, 2)
    lateral_limit: Optional[float]    # |py| bound of the agents' centres, None for none


def _rotate(vectors: Tensor, angle: Tensor) -> Tensor:
    """Rotate (..., 2) vectors by angles (...)."""
    c, s = angle.cos(), angle.sin()
    return torch.stack([c * vectors[..., 0] - s * vectors[..., 1],
                        s * vectors[..., 0] + c * vectors[..., 1]], dim=-1)


def _uniform(g: torch.Generator, low: float, high: float, *shape: int) -> Tensor:
    return low + (high - low) * torch.rand(*shape, generator=g, dtype=torch.float64)


def _derangements(g: torch.Generator, M: int, n: int) -> Tensor:
    """(M, n) random permutations of range(n) with no fixed point (n >= 2), by rejection."""
    out = torch.empty(M, n, dtype=torch.long)
    filled = 0
    while filled < M:
        perms = torch.rand(2 * (M - filled) + 8, n, generator=g).argsort(1)
        good = perms[(perms != torch.arange(n)).all(1)][:M - filled]
        out[filled:filled + len(good)] = good
        filled += len(good)
    return out


def intersection(g: torch.Generator, M: int, N: int) -> SceneStarts:
    if not 2 <= N <= 8:
        raise ValueError(f"the intersection scene takes 2..8 agents, got {N}")
    agent = torch.arange(N)
    arm_angle = (agent % 4).double() * (math.pi / 2)                       # (N,)
    queue = (agent // 4).double() * 3.5
    outward = torch.stack([arm_angle.cos(), arm_angle.sin()], -1)          # (N, 2)
    left = _rotate(outward, torch.full((N,), math.pi / 2, dtype=torch.float64))
    start_distance = _uniform(g, 3.0, 5.0, M, N) + queue
    lateral = LANE_OFFSET + _uniform(g, -0.1, 0.1, M, N)
    speed = _uniform(g, 0.0, 1.0, M, N)
    position = outward * start_distance[..., None] + left * lateral[..., None]
    velocity = -outward * speed[..., None]
    arms = min(N, 4)
    goal_arm = _derangements(g, M, arms)[:, agent % arms]                   # (M, N)
    goal_angle = goal_arm.double() * (math.pi / 2)
    goal_out = torch.stack([goal_angle.cos(), goal_angle.sin()], -1)       # (M, N, 2)
    goal_left = _rotate(goal_out, torch.full(goal_angle.shape, math.pi / 2, dtype=torch.float64))
    goal_distance = _uniform(g, 3.0, 5.0, M, N) + queue
    goal_lateral = -(LANE_OFFSET + _uniform(g, -0.1, 0.1, M, N))
    goals = goal_out * goal_distance[..., None] + goal_left * goal_lateral[..., None]
    return SceneStarts(torch.cat([position, velocity], -1), goals, None)


def corridor_swap(g: torch.Generator, M: int, N: int) -> SceneStarts:
    if N < 2:
        raise ValueError(f"the corridor swap takes at least 2 agents, got {N}")
    agent = torch.arange(N)
    side = torch.where(agent % 2 == 0, -1.0, 1.0).double()                 # start end of the corridor
    queue = (agent // 2).double() * 2.0
    half_length = _uniform(g, 3.0, 4.0, M, 1) + queue
    py = _uniform(g, -0.3, 0.3, M, N)
    speed = _uniform(g, 0.0, 1.0, M, N)
    position = torch.stack([side * half_length, py], -1)
    velocity = torch.stack([-side * speed, torch.zeros_like(speed)], -1)
    goals = torch.stack([-side * (half_length + _uniform(g, -0.2, 0.2, M, N)),
                         _uniform(g, -0.3, 0.3, M, N)], -1)
    return SceneStarts(torch.cat([position, velocity], -1), goals, 1.0)


def merge(g: torch.Generator, M: int, N: int) -> SceneStarts:
    if N < 2:
        raise ValueError(f"the merge takes at least 2 agents, got {N}")
    agent = torch.arange(N)
    ramp_angle = torch.where(agent % 2 == 1, math.pi / 6, 0.0).double()    # main lane, ramp, ...
    heading = torch.stack([ramp_angle.cos(), ramp_angle.sin()], -1)        # (N, 2)
    distance = 3.0 + (agent // 2).double() * 2.5 + _uniform(g, 0.0, 1.0, M, N)
    speed = _uniform(g, 0.5, 1.0, M, N)
    position = -heading * distance[..., None]
    velocity = heading * speed[..., None]
    rank = (distance / speed).argsort(1).argsort(1).double()               # arrival order
    goals = torch.stack([3.0 + 1.5 * rank + _uniform(g, 0.0, 0.3, M, N),
                         torch.zeros(M, N, dtype=torch.float64)], -1)
    return SceneStarts(torch.cat([position, velocity], -1), goals, None)


SCENES: dict[str, Callable[[torch.Generator, int, int], SceneStarts]] = {
    "intersection": intersection, "corridor_swap": corridor_swap, "merge": merge}


def _double_integrator_maps(T: int, dt: float, like: Tensor) -> tuple[Tensor, Tensor]:
    """(position_map, velocity_map), each (T+1, T): p_t = ... + position_map[t] @ u, likewise v."""
    t = torch.arange(T + 1, dtype=like.dtype, device=like.device)
    lag = t[:, None] - torch.arange(T, dtype=like.dtype, device=like.device)[None, :]  # t - s
    before = (lag > 0).to(like.dtype)
    return dt * dt * (lag - 0.5) * before, dt * before


def double_integrator_rollout(x0: Tensor, u: Tensor, dt: float) -> Tensor:
    """States (..., T+1, 4) of the double integrator as one linear map of u (..., T, 2).

    p_t = p_0 + t dt v_0 + dt^2 sum_{s<t} (t - s - 1/2) u_s,   v_t = v_0 + dt sum_{s<t} u_s
    (the closed form of `rollout(double_integrator(dt), x0, u)`).
    """
    T = u.shape[-2]
    position_map, velocity_map = _double_integrator_maps(T, dt, u)
    t = torch.arange(T + 1, dtype=u.dtype, device=u.device)
    p = x0[..., None, :2] + dt * t[:, None] * x0[..., None, 2:] + position_map @ u
    v = x0[..., None, 2:] + velocity_map @ u
    return torch.cat([p, v], dim=-1)


def _pair_geometry(p: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """For positions p (M, N, T+1, 2): pair indices i, j (P,), distances (M, P, T+1), unit i-j."""
    N = p.shape[1]
    i, j = torch.triu_indices(N, N, 1, device=p.device)
    difference = p[:, i] - p[:, j]
    distance = (difference.square().sum(-1) + torch.finfo(p.dtype).tiny).sqrt()
    return i, j, distance, difference / distance[..., None]


def _hinge(z: Tensor, sharpness: float) -> Tensor:
    """Smooth hinge softplus(sharpness z) / sharpness; its derivative is sigmoid(sharpness z)."""
    return torch.nn.functional.softplus(sharpness * z) / sharpness


def joint_residuals(u: Tensor, x0: Tensor, goals: Tensor, dt: float, cost: JointCost,
                    lateral_limit: Optional[float] = None) -> Tensor:
    """r (M, R) with J = |r|^2 (the module docstring's objective as least squares), u (M, N, T, 2).

    Order: goal (N, 2), final speed (N, 2), effort (N, T, 2), collision (P, T+1) over the pairs
    i < j, then upper and lower wall (N, T+1) each if lateral_limit is set.
    """
    M = u.shape[0]
    x = double_integrator_rollout(x0, u, dt)
    final = x[:, :, -1]
    _, _, distance, _ = _pair_geometry(x[..., :2])
    parts = [math.sqrt(cost.goal) * (final[..., :2] - goals),
             math.sqrt(cost.final_speed) * final[..., 2:],
             math.sqrt(cost.effort * dt) * u,
             math.sqrt(cost.collision) * _hinge(cost.clearance - distance, cost.sharpness)]
    if lateral_limit is not None:
        py = x[..., 1]
        parts += [math.sqrt(cost.wall) * _hinge(py - lateral_limit, cost.sharpness),
                  math.sqrt(cost.wall) * _hinge(-py - lateral_limit, cost.sharpness)]
    return torch.cat([part.reshape(M, -1) for part in parts], dim=1)


def newton_system(u: Tensor, x0: Tensor, goals: Tensor, dt: float, cost: JointCost,
                        lateral_limit: Optional[float] = None) -> tuple[Tensor, Tensor]:
    """(dJ/du (M, D), H (M, D, D)) for D = N T 2, H = 1/2 d^2J/du^2 (the exact Hessian's half).

    H = J_r'J_r + sum_k r_k d^2 r_k/du^2 is assembled from blocks: the constant goal, speed and
    effort terms, and per pair (i, j) and step t the 2x2 position term
        w_collision [ (h'^2 + h h'') n n' - h h' (I - n n') / d ]     (h at clearance - d,
    n the unit vector from j to i) on the (i, i), (j, j), -(i, j), -(j, i) agent blocks, mapped
    to controls by the position map; likewise the walls on the py components. H may be
    indefinite where the distance's curvature term dominates.
    """
    M, N, T, _ = u.shape
    D = N * T * 2
    position_map, velocity_map = _double_integrator_maps(T, dt, u)
    eye_n = torch.eye(N, dtype=u.dtype, device=u.device)
    eye_2 = torch.eye(2, dtype=u.dtype, device=u.device)
    final = (cost.goal * position_map[-1, :, None] * position_map[-1]
             + cost.final_speed * velocity_map[-1, :, None] * velocity_map[-1])       # (T, T)
    normal = (torch.einsum("kl,sr,ab->ksalrb", eye_n, final, eye_2).reshape(D, D)
              + cost.effort * dt * torch.eye(D, dtype=u.dtype, device=u.device))
    x = double_integrator_rollout(x0, u, dt)
    i, j, distance, unit = _pair_geometry(x[..., :2])
    selector = eye_n[i] - eye_n[j]                                                     # (P, N)
    beta = cost.sharpness
    slope = torch.sigmoid(beta * (cost.clearance - distance))                   # h'  (M, P, T+1)
    value = _hinge(cost.clearance - distance, beta)                             # h
    along = unit[..., :, None] * unit[..., None, :]                             # n n'
    across = torch.eye(2, dtype=u.dtype, device=u.device) - along
    weight = cost.collision * (
        (slope.square() + value * beta * slope * (1 - slope))[..., None, None] * along
        - (value * slope / distance)[..., None, None] * across)                 # (M, P, T+1, 2, 2)
    blocks = torch.einsum("pk,pl,mptab->mkltab", selector, selector, weight)   # (M,N,N,T+1,2,2)
    if lateral_limit is not None:
        py = x[..., 1]
        wall = 0.0
        for side in (1.0, -1.0):
            z = side * py - lateral_limit
            sigma = torch.sigmoid(beta * z)
            wall = wall + cost.wall * (sigma.square() + _hinge(z, beta) * beta * sigma * (1 - sigma))
        blocks = blocks + torch.einsum("kl,mkt,a,b->mkltab", eye_n, wall, eye_2[1], eye_2[1])
    varying = torch.einsum("mkltab,ts,tr->mksalrb", blocks, position_map, position_map)
    u = u.detach().requires_grad_()
    with torch.enable_grad():
        (gradient,) = torch.autograd.grad(
            joint_objective(u, x0, goals, dt, cost, lateral_limit).sum(), u)
    return gradient.reshape(M, D), normal + varying.reshape(M, D, D)


def joint_objective(u: Tensor, x0: Tensor, goals: Tensor, dt: float, cost: JointCost,
                    lateral_limit: Optional[float] = None) -> Tensor:
    """J (M,) of the module docstring for joint controls u (M, N, T, 2)."""
    return joint_residuals(u, x0, goals, dt, cost, lateral_limit).square().sum(1)


def centralized_plan(x0: Tensor, goals: Tensor, dt: float, T: int, cost: JointCost,
                     lateral_limit: Optional[float] = None, generator: Optional[torch.Generator] = None,
                     iters: int = 100, grad_tol: float = 1e-6) -> tuple[Tensor, Tensor, Tensor]:
    """(x (M, N, T+1, 4), u (M, N, T, 2), max |dJ/du| (M,)) at a local minimum of J per scene.

    Damped Newton per scene (`newton_system`): the step solves (H + lam I) d = -dJ/du / 2, is
    kept if J decreases (lam /= 3) and rejected otherwise (lam *= 4). It starts from the
    agents' independent optima (one Newton step without interaction terms, exact: that part is
    quadratic) plus N(0, 0.01^2) controls (which breaks the symmetry of head-on scenes). Scenes
    stop moving once max |dJ/du| <= grad_tol.
    """
    M, N, _ = x0.shape
    D = N * T * 2
    alone = JointCost(cost.goal, cost.final_speed, cost.effort, collision=0.0, wall=0.0)
    zero = x0.new_zeros(M, N, T, 2)
    gradient, normal = newton_system(zero, x0, goals, dt, alone)
    flat = -torch.linalg.solve(normal, gradient[..., None] / 2)[..., 0]
    flat = flat + 0.01 * torch.randn(M, D, generator=generator, dtype=x0.dtype)
    damping = torch.full((M,), 1e-3, dtype=x0.dtype)
    eye = torch.eye(D, dtype=x0.dtype)
    value = joint_objective(flat.reshape(M, N, T, 2), x0, goals, dt, cost, lateral_limit)
    for _ in range(iters):
        gradient, normal = newton_system(flat.reshape(M, N, T, 2), x0, goals, dt, cost,
                                               lateral_limit)
        active = gradient.abs().amax(1) > grad_tol
        if not active.any():
            break
        step = -torch.linalg.solve(normal + damping[:, None, None] * eye,
                                   gradient[..., None] / 2)[..., 0]
        trial = flat + step
        trial_value = joint_objective(trial.reshape(M, N, T, 2), x0, goals, dt, cost, lateral_limit)
        better = (trial_value < value) & active
        flat = torch.where(better[:, None], trial, flat)
        value = torch.where(better, trial_value, value)
        damping = torch.where(better, damping / 3, damping * 4).clamp(1e-9, 1e9)
    u = flat.reshape(M, N, T, 2)
    gradient, _ = newton_system(u, x0, goals, dt, cost, lateral_limit)
    return double_integrator_rollout(x0, u, dt), u, gradient.abs().amax(1)


def ground_truth_checks(x: Tensor, u: Tensor, starts: SceneStarts, dt: float, cost: JointCost,
                        grad_tol: float, goal_tol: float, substeps: int = 4) -> Tensor:
    """(M,) bool: the plans pass every check of the module docstring.

    Collision-free between the steps too (positions linearly interpolated at `substeps` points
    per step, so that agents cannot pass through each other between two samples), every goal
    within goal_tol, max |dJ/du| <= grad_tol and the Hessian of J positive definite (a strict
    local minimum, not a saddle).
    """
    fraction = torch.linspace(0, 1, substeps + 1, dtype=x.dtype)[:-1, None]
    between = x[:, :, :-1, None, :2] * (1 - fraction) + x[:, :, 1:, None, :2] * fraction
    fine = torch.cat([between.flatten(2, 3), x[:, :, -1:, :2]], dim=2)
    reached = (x[:, :, -1, :2] - starts.goals).norm(dim=-1).amax(1) <= goal_tol
    gradient, half_hessian = newton_system(u, starts.x0, starts.goals, dt, cost, starts.lateral_limit)
    minimum = torch.linalg.eigvalsh(half_hessian)[:, 0] > 0
    return (min_distance(fine) >= 1.0) & (gradient.abs().amax(1) <= grad_tol) & reached & minimum


def generate(scene: str, agents: int, count: int, seed: int, T: int = 25, dt: float = 0.4,
             cost: JointCost = JointCost(), grad_tol: float = 1e-5, goal_tol: float = 0.5,
             batch: int = 32, max_rounds: int = 20) -> InteractionData:
    """`count` scenes of `agents` agents whose ground truth passes the checks of the docstring.

    Scenes are drawn and planned `batch` at a time (float64); a ValueError is raised if
    fewer than `count` pass after `max_rounds` batches.
    """
    if scene not in SCENES:
        raise ValueError(f"unknown scene {scene!r}; choose one of {sorted(SCENES)}")
    if count < 1:
        raise ValueError(f"count must be positive, got {count}")
    g = torch.Generator().manual_seed(seed)
    kept: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
    have = 0
    for _ in range(max_rounds):
        starts = SCENES[scene](g, batch, agents)
        x, u, _ = centralized_plan(starts.x0, starts.goals, dt, T, cost, starts.lateral_limit, g)
        good = ground_truth_checks(x, u, starts, dt, cost, grad_tol, goal_tol)
        kept.append((starts.x0[good], starts.goals[good], x[good], u[good]))
        have += int(good.sum())
        if have >= count:
            x0, goals, x, u = (torch.cat(parts)[:count] for parts in zip(*kept))
            return InteractionData(x0, goals, x, u, dt, scene, seed)
    raise ValueError(f"only {have} of {count} {scene} scenes passed the ground-truth checks "
                     f"after {max_rounds} batches of {batch}")


def save(data: InteractionData, path: str | Path) -> None:
    """Write `data` as the .npz of the module docstring."""
    np.savez(path, x0=data.x0.numpy(), goals=data.goals.numpy(), x=data.x.numpy(),
             u=data.u.numpy(), dt=np.float64(data.dt), scene=np.str_(data.scene),
             seed=np.int64(data.seed))


def load(path: str | Path) -> InteractionData:
    """Read a .npz written by `save` (float64 tensors)."""
    with np.load(path) as f:
        missing = {"x0", "goals", "x", "u", "dt", "scene", "seed"} - set(f.files)
        if missing:
            raise ValueError(f"{path}: not an interactions file, missing {sorted(missing)}")
        return InteractionData(*(torch.from_numpy(f[k]) for k in ("x0", "goals", "x", "u")),
                               float(f["dt"]), str(f["scene"]), int(f["seed"]))
