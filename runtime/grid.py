"""Grid worlds on occupancy maps: moves, exact value iteration, a Dijkstra reference, greedy rollouts.

A batch of maps is an occupancy tensor O (B, H, W), 1 = obstacle, 0 = free; cells are (row, col)
pairs of int64, goal and start (B, 2). The moves follow the generator and expert of the VIN paper
(Tamar et al. 2016, `avivt/VIN` and its PyTorch port `kentsommer/pytorch-value-iteration-networks`):

    index:   0     1     2     3     4      5      6      7
    name:    N     S     E     W     NE     NW     SE     SW
    (dr,dc): (-1,0) (1,0) (0,1) (0,-1) (-1,1) (-1,-1) (1,1) (1,-1)
    length:  1     1     1     1     sqrt2  sqrt2  sqrt2  sqrt2

`actions=4` uses the first four. As in the paper's 8-connected expert, a diagonal move has length
sqrt(2) and may pass between two diagonal obstacles (only the cell entered must be free).

Cost model (exact solvers): a move from s to s' = s + (dr, dc) is allowed if s' lies in the map
and is free; it costs length(a) * cost[s'], so cost = 1 on free cells gives Euclidean path length,
the paper's shortest-path metric. The goal is absorbing with value 0. Values are *rewards to go*
(higher is better), i.e. the negated discounted cost to go:

    V(goal) = 0,    V(s) = max_a [ -length(a) cost[s + d_a] + gamma V(s + d_a) ]   (s free, s != goal)

V = -inf on obstacles and on cells from which the goal cannot be reached; with gamma = 1,
-V is the shortest-path distance that `shortest_path_distances` (Dijkstra) computes.
"""
from __future__ import annotations

import heapq
import math
from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor

MOVES = ((-1, 0), (1, 0), (0, 1), (0, -1), (-1, 1), (-1, -1), (1, 1), (1, -1))
ACTION_NAMES = ("N", "S", "E", "W", "NE", "NW", "SE", "SW")


class GridSolution(NamedTuple):
    """What a grid planner returns (the module contract of `solve value_iteration` and `solve vin`)."""

    values: Tensor    # (B, H, W) value map (rewards to go; -inf on obstacles for exact solvers)
    logits: Tensor    # (B, A)    action scores at the start cell
    path: Tensor      # (B, L, 2) int64 greedy rollout from start, L <= max_steps + 1
    reached: Tensor   # (B,) bool the rollout hit the goal without entering an obstacle or leaving


def check_actions(actions: int) -> None:
    if actions not in (4, 8):
        raise ValueError(f"a grid has 4 or 8 actions, got {actions}")


def move_offsets(actions: int, device=None) -> Tensor:
    """(A, 2) int64 (dr, dc) of each action, in the order of `MOVES`."""
    check_actions(actions)
    return torch.tensor(MOVES[:actions], dtype=torch.int64, device=device)


def move_lengths(actions: int, dtype=torch.float32, device=None) -> Tensor:
    """(A,) Euclidean length of each move: 1 straight, sqrt(2) diagonal."""
    check_actions(actions)
    return torch.tensor([math.hypot(dr, dc) for dr, dc in MOVES[:actions]], dtype=dtype, device=device)


def check_maps(occupancy: Tensor, *cells: Tensor) -> None:
    """Raise ValueError unless occupancy is (B, H, W) and each cell tensor is (B, 2) inside the map."""
    if occupancy.dim() != 3:
        raise ValueError(f"occupancy must be (B, H, W), got shape {tuple(occupancy.shape)}")
    B, H, W = occupancy.shape
    for cell in cells:
        if cell.shape != (B, 2):
            raise ValueError(f"cells must be (B, 2) = ({B}, 2) (row, col), got shape {tuple(cell.shape)}")
        if cell.dtype.is_floating_point:
            raise ValueError(f"cells must be integer (row, col), got {cell.dtype}")
        if ((cell[:, 0] < 0) | (cell[:, 0] >= H) | (cell[:, 1] < 0) | (cell[:, 1] >= W)).any():
            raise ValueError(f"a cell lies outside the {H} x {W} map")


def neighbours(x: Tensor, actions: int, fill: float) -> Tensor:
    """x[b, r + dr_a, c + dc_a] for every action a: (B, H, W) -> (B, A, H, W), `fill` outside the map."""
    H, W = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), value=fill)
    return torch.stack([padded[:, 1 + dr:1 + dr + H, 1 + dc:1 + dc + W] for dr, dc in MOVES[:actions]], 1)


def one_hot_cells(cells: Tensor, H: int, W: int, dtype=torch.float32) -> Tensor:
    """(B, 2) cells -> (B, H, W) maps with a 1 at each cell."""
    out = torch.zeros(cells.shape[0], H * W, dtype=dtype, device=cells.device)
    out.scatter_(1, (cells[:, 0] * W + cells[:, 1]).long()[:, None], 1.0)
    return out.view(-1, H, W)


def move_rewards(cost: Tensor, occupancy: Tensor, actions: int) -> Tensor:
    """-length(a) cost[s + d_a] (B, A, H, W); -inf where s + d_a is outside the map or an obstacle."""
    lengths = move_lengths(actions, cost.dtype, cost.device)[None, :, None, None]
    blocked = neighbours(occupancy.to(cost.dtype), actions, fill=1.0) > 0.5
    return (-lengths * neighbours(cost, actions, fill=0.0)).masked_fill(blocked, -math.inf)


def bellman_q(values: Tensor, rewards: Tensor, discount: float) -> Tensor:
    """Q(s, a) = rewards[a, s] + gamma V(s + d_a): values (B, H, W), rewards (B, A, H, W) of `move_rewards`."""
    return rewards + discount * neighbours(values, rewards.shape[1], fill=-math.inf)


def value_iteration(cost: Tensor, occupancy: Tensor, goal: Tensor, iters: Optional[int] = None,
                    discount: float = 1.0, actions: int = 8) -> Tensor:
    """Exact batched value iteration of the module's Bellman equation (no loop over the batch).

    cost (B, H, W) >= 0 per unit length on the cell entered (a reward map is -cost);
    occupancy (B, H, W), 1 = obstacle; goal (B, 2) int64. Returns V (B, H, W), -inf on obstacles
    and unreachable cells. Starts from V = 0 at the goal, -inf elsewhere and applies the Bellman
    update until V stops changing or `iters` sweeps are done. The default is H * W for gamma = 1
    (exact: after n sweeps V is the best over paths of at most n moves, and a shortest path visits
    each cell at most once), plus ceil(log(eps) / log(gamma)) for gamma < 1 (the error then
    shrinks like gamma^n, below the dtype's eps). Differentiable in `cost` (autograd through the
    max, almost everywhere).
    """
    check_maps(occupancy, goal)
    if cost.shape != occupancy.shape:
        raise ValueError(f"cost {tuple(cost.shape)} and occupancy {tuple(occupancy.shape)} must match")
    if not 0.0 < discount <= 1.0:
        raise ValueError(f"discount must lie in (0, 1], got {discount}")
    B, H, W = occupancy.shape
    if iters is None:
        eps = torch.finfo(cost.dtype).eps
        iters = H * W + (0 if discount == 1.0 else math.ceil(math.log(eps) / math.log(discount)))
    at_goal = one_hot_cells(goal, H, W, torch.bool)
    obstacle = occupancy > 0.5
    if (obstacle & at_goal).any():
        raise ValueError("a goal lies on an obstacle")
    rewards = move_rewards(cost, occupancy, actions)
    values = torch.full_like(cost, -math.inf).masked_fill(at_goal, 0.0)
    for _ in range(iters):
        best = bellman_q(values, rewards, discount).amax(1)
        updated = best.masked_fill(at_goal, 0.0).masked_fill(obstacle, -math.inf)
        if torch.equal(updated, values):
            break
        values = updated
    return values


def greedy_path(action_scores: Tensor, occupancy: Tensor, start: Tensor, goal: Tensor,
                max_steps: Union[int, Tensor, None] = None) -> tuple[Tensor, Tensor]:
    """Roll out a = argmax_a action_scores[b, a, r, c] from start until the goal (or failure).

    action_scores (B, A, H, W): a policy's scores at every cell (exact solvers: the Q map of
    `bellman_q`; VIN: its action logits at every cell). occupancy (B, H, W), start and goal (B, 2).
    max_steps: int or (B,) int tensor, default H * W (no shortest path is longer). An element stops
    when it reaches the goal (reached = True), or fails when a move leaves the map or enters an
    obstacle (the path stays at the last valid cell), or after max_steps moves.

    Returns path (B, L, 2) int64 with L = 1 + the number of steps until every element stopped
    (at most max_steps + 1; stopped elements repeat their last cell) and reached (B,) bool.
    """
    check_maps(occupancy, start, goal)
    B, A, H, W = action_scores.shape
    if (B, H, W) != occupancy.shape:
        raise ValueError(f"action_scores {tuple(action_scores.shape)} must be (B, A, H, W) for occupancy "
                         f"{tuple(occupancy.shape)}")
    offsets = move_offsets(A, start.device)
    limit = torch.as_tensor(H * W if max_steps is None else max_steps, device=start.device).expand(B)
    batch = torch.arange(B, device=start.device)
    free = occupancy <= 0.5
    position = start.to(torch.int64).clone()
    reached = (position == goal).all(1)
    active = ~reached & free[batch, position[:, 0], position[:, 1]] & (limit > 0)
    path = [position]
    step = 0
    while bool(active.any()):
        action = action_scores[batch, :, position[:, 0], position[:, 1]].argmax(1)
        target = position + offsets[action]
        inside = (target[:, 0] >= 0) & (target[:, 0] < H) & (target[:, 1] >= 0) & (target[:, 1] < W)
        row, col = target[:, 0].clamp(0, H - 1), target[:, 1].clamp(0, W - 1)
        valid = inside & free[batch, row, col]
        moves = active & valid
        position = torch.where(moves[:, None], target, position)
        reached |= moves & (position == goal).all(1)
        path.append(position)
        step += 1
        active &= valid & ~reached & (step < limit)
    return torch.stack(path, 1), reached


def solve_value_iteration(cost: Tensor, occupancy: Tensor, goal: Tensor, start: Tensor,
                          iters: Optional[int] = None, discount: float = 1.0, actions: int = 8,
                          max_steps: Union[int, Tensor, None] = None) -> GridSolution:
    """`solve value_iteration`: exact values, Q at the start cell as logits, greedy rollout on Q.

    Shapes as in `value_iteration` and `greedy_path`; logits (B, A) = Q(start, a) (-inf for
    blocked moves).
    """
    check_maps(occupancy, start)
    values = value_iteration(cost, occupancy, goal, iters, discount, actions)
    q = bellman_q(values, move_rewards(cost, occupancy, actions), discount)
    batch = torch.arange(start.shape[0], device=start.device)
    logits = q[batch, :, start[:, 0], start[:, 1]]
    path, reached = greedy_path(q.detach(), occupancy, start, goal, max_steps)
    return GridSolution(values, logits, path, reached)


def shortest_path_distances(cost: Tensor, occupancy: Tensor, goal: Tensor, actions: int = 8) -> Tensor:
    """Reference: Dijkstra from the goal on the reversed move graph, one map at a time (Python).

    Returns d (B, H, W) float64: the least total cost length(a) * cost[s'] of a path from each
    cell to the goal; inf on obstacles and unreachable cells. For tests and data, not speed.
    """
    check_maps(occupancy, goal)
    B, H, W = occupancy.shape
    blocked = (occupancy > 0.5).cpu().tolist()
    cell_cost = cost.detach().cpu().double().tolist()
    lengths = move_lengths(actions, torch.float64).tolist()
    out = []
    for b in range(B):
        dist = [[math.inf] * W for _ in range(H)]
        gr, gc = (int(v) for v in goal[b])
        dist[gr][gc] = 0.0
        heap = [(0.0, gr, gc)]
        done = set()
        while heap:
            d, r, c = heapq.heappop(heap)
            if (r, c) in done:
                continue
            done.add((r, c))
            step_cost = cell_cost[b][r][c]
            for (dr, dc), length in zip(MOVES[:actions], lengths):
                pr, pc = r - dr, c - dc   # predecessor: moving by (dr, dc) from (pr, pc) enters (r, c)
                if 0 <= pr < H and 0 <= pc < W and not blocked[b][pr][pc]:
                    candidate = d + length * step_cost
                    if candidate < dist[pr][pc]:
                        dist[pr][pc] = candidate
                        heapq.heappush(heap, (candidate, pr, pc))
        out.append(dist)
    return torch.tensor(out, dtype=torch.float64, device=cost.device).view(B, H, W)
