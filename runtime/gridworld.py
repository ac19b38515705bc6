"""The VIN paper's grid-world data: random rectangular obstacles, border walls, shortest-path experts.

Follows the generator of Tamar et al. (2016) (`avivt/VIN`, scripts/make_data_gridworld_nips.m, and
its PyTorch port `kentsommer/pytorch-value-iteration-networks`, dataset/make_training_data.py):

1. a goal cell, uniform over the interior (the paper draws it anywhere and rejects maps whose border
   wall would cover it, which is the same distribution);
2. `max_obstacles` attempts to place a rectangle of height and width uniform in 1..max_obstacle_size
   with its top-left corner uniform in 1..size-1 (clipped at the map's edge); an attempt that would
   cover the goal is dropped; a map where every attempt was dropped is redrawn;
3. border walls;
4. `trajs` distinct start cells, uniform over the free cells other than the goal from which the goal
   can be reached (a map with fewer such cells is redrawn);
5. for each start, the expert's shortest path to the goal on the 8-connected grid (diagonal moves of
   length sqrt(2); `runtime.grid` states the move model), found by exact value iteration with unit
   cost and followed greedily; among optimal moves (Q within 1e-9 of the best, so rounding does not
   decide) the expert takes the lowest action index, i.e. straight moves before diagonal ones.

The paper's per-size limits (`PAPER_OBSTACLES`): 8x8: 30 obstacles of size up to 0 (a MATLAB
rectangle of size 0, drawn here as one cell), 16x16: 40 of size 1, 28x28: 50 of size 2 (36x36:
70 of size 3).

Saved as .npz with these arrays (M maps of H x W, T trajectories, L the longest expert path):

    maps            (M, H, W)        uint8  1 = obstacle
    goals           (M, 2)           int16  (row, col)
    starts          (M, T, 2)        int16  (row, col)
    expert_states   (M, T, L + 1, 2) int16  cells visited from start to goal, padded with -1
    expert_actions  (M, T, L)        int8   action index (runtime.grid.MOVES) at each state, pad -1
    expert_lengths  (M, T)           int16  number of moves of each expert path
    meta            ()               str    JSON: size, maps, trajs, seed, obstacle limits, actions
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

from runtime.grid import ACTION_NAMES, MOVES, bellman_q, greedy_path, move_rewards, value_iteration

PAPER_OBSTACLES = {8: (30, 1), 16: (40, 1), 28: (50, 2), 36: (70, 3)}   # size: (max obstacles, max size)
TIE_TOLERANCE = 1e-9   # moves whose Q is within this of the best are optimal (path lengths a + b sqrt 2)
_FIELDS = ("maps", "goals", "starts", "expert_states", "expert_actions", "expert_lengths")


@dataclass(frozen=True)
class GridworldData:
    """A grid-world data set (numpy arrays as in the module docstring) and its metadata."""

    maps: np.ndarray
    goals: np.ndarray
    starts: np.ndarray
    expert_states: np.ndarray
    expert_actions: np.ndarray
    expert_lengths: np.ndarray
    meta: dict

    def save(self, path: Union[str, Path]) -> None:
        np.savez_compressed(path, meta=json.dumps(self.meta), **{k: getattr(self, k) for k in _FIELDS})

    @classmethod
    def load(cls, path: Union[str, Path]) -> "GridworldData":
        with np.load(path) as data:
            missing = [k for k in (*_FIELDS, "meta") if k not in data]
            if missing:
                raise ValueError(f"{path}: missing arrays {', '.join(missing)}")
            return cls(**{k: data[k] for k in _FIELDS}, meta=json.loads(str(data["meta"])))

    def state_action_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every expert (state, action) pair: map index (N,), state (N, 2) and action (N,), int64."""
        moves = self.expert_actions >= 0                                   # (M, T, L)
        map_index = np.broadcast_to(np.arange(len(self.maps))[:, None, None], moves.shape)[moves]
        states = self.expert_states[:, :, :-1][moves]
        return map_index.astype(np.int64), states.astype(np.int64), self.expert_actions[moves].astype(np.int64)


def generate(size: int, maps: int, trajs: int = 7, seed: int = 0, max_obstacles: Optional[int] = None,
             max_obstacle_size: Optional[int] = None, chunk: int = 512) -> GridworldData:
    """Generate `maps` square maps of side `size` with `trajs` expert trajectories each (see module).

    Obstacle limits default to the paper's for its sizes (`PAPER_OBSTACLES`) and must be given for
    other sizes. Deterministic for a given seed (and chunk). Maps are made `chunk` at a time.
    """
    if size < 4:
        raise ValueError(f"a map needs size >= 4 (border walls plus a free interior), got {size}")
    if max_obstacles is None or max_obstacle_size is None:
        if size not in PAPER_OBSTACLES:
            raise ValueError(f"the paper has no obstacle limits for size {size}; give max_obstacles "
                             f"and max_obstacle_size (paper sizes: {sorted(PAPER_OBSTACLES)})")
        default_count, default_size = PAPER_OBSTACLES[size]
        max_obstacles = default_count if max_obstacles is None else max_obstacles
        max_obstacle_size = default_size if max_obstacle_size is None else max_obstacle_size
    if max_obstacles < 1 or max_obstacle_size < 1 or trajs < 1 or maps < 1:
        raise ValueError("maps, trajs, max_obstacles and max_obstacle_size must be positive")
    gen = torch.Generator().manual_seed(seed)
    parts = []
    made = 0
    while made < maps:
        occupancy, goal, start = _maps_with_starts(min(chunk, maps - made), size, trajs, max_obstacles,
                                                   max_obstacle_size, gen)
        parts.append((occupancy, goal, start, *_expert_paths(occupancy, goal, start)))
        made += len(goal)
    longest = max(p[4].shape[-1] for p in parts)
    meta = dict(size=size, maps=maps, trajs=trajs, seed=seed, max_obstacles=max_obstacles,
                max_obstacle_size=max_obstacle_size, actions=list(ACTION_NAMES), moves=[list(m) for m in MOVES],
                generator="runtime.gridworld.generate")
    return GridworldData(
        maps=np.concatenate([p[0].numpy().astype(np.uint8) for p in parts]),
        goals=np.concatenate([p[1].numpy().astype(np.int16) for p in parts]),
        starts=np.concatenate([p[2].numpy().astype(np.int16) for p in parts]),
        expert_states=np.concatenate([_pad(p[3], longest + 1).astype(np.int16) for p in parts]),
        expert_actions=np.concatenate([_pad(p[4], longest).astype(np.int8) for p in parts]),
        expert_lengths=np.concatenate([p[5].numpy().astype(np.int16) for p in parts]),
        meta=meta)


def _pad(x: Tensor, length: int) -> np.ndarray:
    """Pad the time axis (axis 2) of x with -1 to `length`."""
    pad = [(0, 0)] * x.dim()
    pad[2] = (0, length - x.shape[2])
    return np.pad(x.numpy(), pad, constant_values=-1)


def _random_maps(n: int, size: int, max_obstacles: int, max_obstacle_size: int, gen: torch.Generator
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """occupancy (n, size, size) float64, goal (n, 2) int64, and whether any obstacle was placed (n,)."""
    goal = torch.randint(1, size - 1, (n, 2), generator=gen)
    height, width = torch.randint(1, max_obstacle_size + 1, (2, n, max_obstacles), generator=gen)
    top, left = torch.randint(1, size, (2, n, max_obstacles), generator=gen)
    covers_goal = ((top <= goal[:, :1]) & (goal[:, :1] < top + height)
                   & (left <= goal[:, 1:]) & (goal[:, 1:] < left + width))
    placed = ~covers_goal                                                        # (n, K)
    rows = torch.arange(size)[None, None, :, None]
    cols = torch.arange(size)[None, None, None, :]
    inside = ((top[..., None, None] <= rows) & (rows < (top + height)[..., None, None])
              & (left[..., None, None] <= cols) & (cols < (left + width)[..., None, None]))
    occupancy = (inside & placed[..., None, None]).any(1)
    occupancy[:, [0, -1], :] = True
    occupancy[:, :, [0, -1]] = True
    return occupancy.double(), goal, placed.any(1)


def _maps_with_starts(n: int, size: int, trajs: int, max_obstacles: int, max_obstacle_size: int,
                      gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """n valid maps with `trajs` distinct reachable starts each: occupancy, goal (n, 2), start (n, T, 2)."""
    kept = []
    count = 0
    while count < n:
        occupancy, goal, any_obstacle = _random_maps(n - count, size, max_obstacles, max_obstacle_size, gen)
        values = value_iteration(torch.ones_like(occupancy), occupancy, goal)
        candidate = torch.isfinite(values) & (values < 0)                        # reachable, not the goal
        valid = any_obstacle & (candidate.flatten(1).sum(1) >= trajs)
        keys = torch.rand(candidate.shape, generator=gen, dtype=torch.float64).masked_fill(~candidate, -1.0)
        flat = keys.flatten(1).topk(trajs, dim=1).indices                        # (n, T) distinct cells
        start = torch.stack([flat // size, flat % size], -1)
        kept.append((occupancy[valid], goal[valid], start[valid]))
        count += int(valid.sum())
    return tuple(torch.cat([k[i] for k in kept])[:n] for i in range(3))


def _expert_paths(occupancy: Tensor, goal: Tensor, start: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Shortest paths from each start: states (n, T, L+1, 2), actions (n, T, L), lengths (n, T)."""
    n, trajs = start.shape[:2]
    rewards = move_rewards(torch.ones_like(occupancy), occupancy, len(MOVES))
    q = bellman_q(value_iteration(torch.ones_like(occupancy), occupancy, goal), rewards, 1.0)
    optimal = q >= q.amax(1, keepdim=True) - TIE_TOLERANCE                     # rounding-proof ties
    first_optimal = optimal.to(torch.int8).argmax(1)                             # (n, H, W)
    policy = torch.nn.functional.one_hot(first_optimal, len(MOVES)).permute(0, 3, 1, 2).to(torch.int8)
    path, reached = greedy_path(policy.repeat_interleave(trajs, 0), occupancy.repeat_interleave(trajs, 0),
                                start.flatten(0, 1), goal.repeat_interleave(trajs, 0))
    if not bool(reached.all()):
        raise RuntimeError("an expert path failed to reach the goal (generator bug)")
    step = path.diff(dim=1)                                                      # (nT, L, 2)
    moving = step.abs().sum(-1) > 0
    lookup = torch.full((9,), -1, dtype=torch.int64)
    lookup[torch.tensor([(dr + 1) * 3 + dc + 1 for dr, dc in MOVES])] = torch.arange(len(MOVES))
    actions = torch.where(moving, lookup[(step[..., 0] + 1) * 3 + step[..., 1] + 1], -1)
    lengths = moving.sum(1)
    states = torch.where((torch.arange(path.shape[1]) <= lengths[:, None])[..., None], path, -1)
    return (states.view(n, trajs, -1, 2), actions.view(n, trajs, -1), lengths.view(n, trajs))
