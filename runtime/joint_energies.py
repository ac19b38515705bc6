"""Energies of planar agents' candidate trajectories, for `runtime.joint`.

Candidates x: (B, N, K, T+1, 4) with x = (px, py, vx, vy); goals: (B, N, 2); dt the step.

Unary (per candidate, (B, N, K, F) features, energy = features @ weights):

    goal_features = [ |p_T - g|^2,  |v_T|^2,  dt sum_t |a_t|^2 ],   a_t = (v_{t+1} - v_t) / dt

(terminal distance to the goal, terminal speed, control effort; a_t is the control of a
double integrator, recovered from the states).

Pairwise (per pair of agents and pair of candidates, (B, N, N, K, K) each):

    hinge_i j(a, c) = sum_t relu(threshold - d_t)^power,   d_t = |p_i,a,t - p_j,c,t|

With threshold 1.0 (two discs of radius 0.5) and power 1 this is the collision penetration;
`collision_energy` is gamma times it. The diagonal blocks i = j are computed but ignored by
`runtime.joint`. Time is a loop (memory (B, NK, NK) per step), agents and candidates batched;
squared distances come from one Gram matrix per step, |p|^2 + |q|^2 - 2 p.q (positions
centred per step first): in float32 a distance near 0 is off by up to ~3e-4 times the scene's
extent, distances near the thresholds by far less.
"""
from typing import Sequence

import torch
from torch import Tensor

COLLISION_DISTANCE = 1.0    # two discs of radius 0.5 collide when their centres are closer
GOAL_FEATURES = ("goal_distance_sq", "final_speed_sq", "effort")


def goal_features(x: Tensor, goals: Tensor, dt: float) -> Tensor:
    """(B, N, K, 3) features of `GOAL_FEATURES` for candidates x (B, N, K, T+1, 4), goals (B, N, 2)."""
    if x.dim() != 5 or x.shape[-1] != 4:
        raise ValueError(f"candidates must be (B, N, K, T+1, 4), got shape {tuple(x.shape)}")
    if tuple(goals.shape) != (x.shape[0], x.shape[1], 2):
        raise ValueError(f"goals must be (B, N, 2) = {(x.shape[0], x.shape[1], 2)}, "
                         f"got {tuple(goals.shape)}")
    final = x[..., -1, :]
    distance = (final[..., :2] - goals[:, :, None]).square().sum(-1)
    speed = final[..., 2:].square().sum(-1)
    acceleration = (x[..., 1:, 2:] - x[..., :-1, 2:]) / dt
    effort = dt * acceleration.square().sum((-1, -2))
    return torch.stack([distance, speed, effort], dim=-1)


def goal_energy(x: Tensor, goals: Tensor, weights: Tensor, dt: float) -> Tensor:
    """Unary energies (B, N, K) = goal_features(x, goals, dt) @ weights (3,)."""
    return goal_features(x, goals, dt) @ weights.to(x)


def pair_hinge_features(x: Tensor, thresholds: Sequence[float], powers: Sequence[float]) -> Tensor:
    """(B, N, N, K, K, F): sum_t relu(thresholds[f] - d_t)^powers[f] for every pair of candidates."""
    if x.dim() != 5:
        raise ValueError(f"candidates must be (B, N, K, T+1, n), got shape {tuple(x.shape)}")
    if len(thresholds) != len(powers) or not thresholds:
        raise ValueError(f"need one power per threshold, got {len(thresholds)} thresholds and "
                         f"{len(powers)} powers")
    B, N, K, steps, _ = x.shape
    positions = x[..., :2].reshape(B, N * K, steps, 2).transpose(1, 2)     # (B, T+1, NK, 2)
    positions = positions - positions.mean(dim=2, keepdim=True)             # smaller |p|^2
    squares = positions.square().sum(-1)
    tiny = torch.finfo(x.dtype).tiny
    totals = [x.new_zeros(B, N * K, N * K) for _ in thresholds]
    for t in range(steps):
        p = positions[:, t]
        gram = torch.baddbmm(squares[:, t, :, None] + squares[:, t, None, :], p, p.mT, alpha=-2.0)
        distance = gram.clamp_min(tiny).sqrt()
        for total, threshold, power in zip(totals, thresholds, powers):
            hinge = torch.relu(threshold - distance)
            total += hinge if power == 1 else hinge ** power
    return torch.stack(totals, -1).reshape(B, N, K, N, K, -1).permute(0, 1, 3, 2, 4, 5)


def collision_energy(x: Tensor, gamma: Tensor | float,
                     distance: float = COLLISION_DISTANCE) -> Tensor:
    """Pairwise energies (B, N, N, K, K): gamma sum_t relu(distance - d_t)."""
    return gamma * pair_hinge_features(x, (distance,), (1.0,))[..., 0]


def min_distance(x: Tensor) -> Tensor:
    """(B,) smallest distance between two agents' centres over time, x (B, N, T+1, n) (inf if N = 1)."""
    p = x[..., :2]
    gaps = (p[:, :, None] - p[:, None]).square().sum(-1).sqrt()      # (B, N, N, T+1)
    N = x.shape[1]
    same = torch.eye(N, dtype=torch.bool, device=x.device)[None, :, :, None]
    return gaps.masked_fill(same, float("inf")).flatten(1).amin(1)


def collides(x: Tensor, distance: float = COLLISION_DISTANCE) -> Tensor:
    """(B,) bool: two agents of trajectories x (B, N, T+1, n) come closer than `distance`."""
    return min_distance(x) < distance
