"""Imitation training and evaluation of a VIN on grid-world data (`runtime.gridworld`).

Loss: mean cross-entropy of the VIN's logits at each expert state against the expert's action,
over every (state, action) pair of the maps in a batch. A batch is a set of maps, as in the
paper's code (Theano VIN: `--batchsize 12 --statebatchsize 10`, 12 maps and 10 of their states);
here all of a map's expert states share one value-iteration pass, which is what makes CPU training
affordable. Optimizer: RMSprop(lr, eps=1e-6) as in the PyTorch port (`train.py`: lr 0.005 for 8x8,
0.002 for 16x16 and 28x28, 30 epochs).

Evaluation on held-out maps:
* action accuracy: argmax of the logits equals the expert's action, over all expert pairs (the
  paper's and the port's metric);
* optimal-action rate: argmax of the logits is *a* shortest-path move (the expert breaks ties by
  action index, so a different optimal move counts as an error in the accuracy but not here);
* success rate: the greedy rollout of argmax logits from each expert start reaches the goal without
  entering an obstacle or leaving the map within 2 L + 1 moves, L the expert path's length (the
  port's `test.py` rolls out for 2 (L + 1) - 1 moves).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from runtime.grid import bellman_q, greedy_path, move_rewards, value_iteration
from runtime.gridworld import TIE_TOLERANCE, GridworldData
from runtime.vin import VIN


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 30
    lr: float = 0.002
    maps_per_batch: int = 12
    rmsprop_eps: float = 1e-6
    seed: int = 0


class ExpertTensors(NamedTuple):
    """A data set as tensors: maps and goals per map, expert pairs sorted by map (CSR offsets)."""

    occupancy: Tensor   # (M, H, W)
    goal: Tensor        # (M, 2) int64
    map_index: Tensor   # (N,) int64, non-decreasing
    states: Tensor      # (N, 2) int64
    actions: Tensor     # (N,) int64
    offsets: np.ndarray  # (M + 1,) pairs of map m are offsets[m]:offsets[m + 1]

    @classmethod
    def from_data(cls, data: GridworldData, dtype=torch.float32, device=None) -> "ExpertTensors":
        map_index, states, actions = data.state_action_pairs()
        offsets = np.searchsorted(map_index, np.arange(len(data.maps) + 1))
        return cls(torch.as_tensor(data.maps, dtype=dtype, device=device),
                   torch.as_tensor(data.goals.astype(np.int64), device=device),
                   torch.as_tensor(map_index, device=device), torch.as_tensor(states, device=device),
                   torch.as_tensor(actions, device=device), offsets)

    def pairs_of(self, maps: np.ndarray) -> np.ndarray:
        """Indices of the expert pairs of the given maps."""
        return np.concatenate([np.arange(self.offsets[m], self.offsets[m + 1]) for m in maps])


def map_batches(data: GridworldData, dtype=torch.float32, device=None) -> dict[str, Tensor]:
    """The data set as one example per map, for `runtime.training.Trainer` (which batches maps):

        occupancy (M, H, W) float, goal (M, 2) int64,
        expert_states (M, P, 2) int64 and expert_actions (M, P) int64 with P = T * L the map's
        (state, action) pairs, padded with -1 (T trajectories of at most L moves).
    """
    M = len(data.maps)
    return {"occupancy": torch.as_tensor(data.maps, dtype=dtype, device=device),
            "goal": torch.as_tensor(data.goals.astype(np.int64), device=device),
            "expert_states": torch.as_tensor(data.expert_states[:, :, :-1].reshape(M, -1, 2).astype(np.int64),
                                             device=device),
            "expert_actions": torch.as_tensor(data.expert_actions.reshape(M, -1).astype(np.int64), device=device)}


def imitation_loss(model: VIN, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Cross-entropy of the VIN's logits at every expert state of the batch's maps against the
    expert's action, averaged over the (state, action) pairs; metric `accuracy`: the fraction of
    pairs whose argmax is the expert's action. `batch` as made by `map_batches` (B maps):

        L = -(1 / N) sum_{(b, s, a)} log softmax(fc(q_b[:, s]))_a,   N pairs with action a >= 0.
    """
    _, q = model.q_map(batch["occupancy"], batch["goal"])
    valid = batch["expert_actions"] >= 0                                            # (B, P)
    map_index = torch.arange(valid.shape[0], device=valid.device)[:, None].expand_as(valid)[valid]
    logits = model.logits_at(q, map_index, batch["expert_states"][valid])           # (N, A)
    target = batch["expert_actions"][valid]
    return F.cross_entropy(logits, target), {"accuracy": (logits.argmax(1) == target).to(logits.dtype).mean()}


def batch_loss(model: VIN, data: ExpertTensors, maps: np.ndarray) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy over the expert pairs of `maps`, and the number of correct argmax actions."""
    pairs = torch.as_tensor(data.pairs_of(maps), device=data.goal.device)
    maps_t = torch.as_tensor(maps, device=data.goal.device)
    _, q = model.q_map(data.occupancy[maps_t], data.goal[maps_t])
    logits = model.logits_at(q, _local_index(maps_t, data.map_index[pairs]), data.states[pairs])
    target = data.actions[pairs]
    return F.cross_entropy(logits, target), (logits.argmax(1) == target).sum()


def _local_index(maps: Tensor, map_index: Tensor) -> Tensor:
    """Position of each map_index entry within `maps` (maps distinct, in any order)."""
    order = maps.argsort()
    return order[torch.searchsorted(maps[order], map_index)]


def train_vin(model: VIN, train: ExpertTensors, settings: TrainSettings = TrainSettings(),
              on_epoch: Optional[Callable[[dict], None]] = None) -> list[dict]:
    """Train in place; returns one dict per epoch (epoch, loss, accuracy, seconds), also passed to on_epoch."""
    optimizer = torch.optim.RMSprop(model.parameters(), lr=settings.lr, eps=settings.rmsprop_eps)
    rng = np.random.default_rng(settings.seed)
    history = []
    for epoch in range(settings.epochs):
        began = time.perf_counter()
        total_loss, correct, count = 0.0, 0, 0
        order = rng.permutation(len(train.goal))
        for first in range(0, len(order), settings.maps_per_batch):
            maps = order[first:first + settings.maps_per_batch]
            loss, right = batch_loss(model, train, maps)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            pairs = int(train.offsets[maps + 1].sum() - train.offsets[maps].sum())
            total_loss += float(loss.detach()) * pairs
            correct += int(right)
            count += pairs
        stats = dict(epoch=epoch + 1, loss=total_loss / count, accuracy=correct / count,
                     seconds=time.perf_counter() - began)
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
    return history


@torch.no_grad()
def evaluate_vin(model: VIN, data: GridworldData, maps_per_batch: int = 256, device=None) -> dict:
    """Action accuracy and rollout success rate on `data` (see module docstring), and counts."""
    dtype = next(model.parameters()).dtype
    tensors = ExpertTensors.from_data(data, dtype, device)
    trajs = data.starts.shape[1]
    correct, optimal, reached_total = 0, 0, 0
    for first in range(0, len(data.maps), maps_per_batch):
        maps = np.arange(first, min(first + maps_per_batch, len(data.maps)))
        _, right = batch_loss(model, tensors, maps)
        correct += int(right)
        maps_t = torch.as_tensor(maps, device=device)
        occupancy, goal = tensors.occupancy[maps_t], tensors.goal[maps_t]
        _, q = model.q_map(occupancy, goal)
        optimal += _optimal_moves(model, q, tensors, maps, first)
        scores = model.action_logits(q).repeat_interleave(trajs, 0)
        start = torch.as_tensor(data.starts[maps].reshape(-1, 2).astype(np.int64), device=device)
        limit = torch.as_tensor(2 * data.expert_lengths[maps].reshape(-1).astype(np.int64) + 1, device=device)
        _, reached = greedy_path(scores, occupancy.repeat_interleave(trajs, 0), start,
                                 goal.repeat_interleave(trajs, 0), limit)
        reached_total += int(reached.sum())
    pairs, rollouts = len(tensors.actions), len(data.maps) * trajs
    return dict(action_accuracy=correct / pairs, optimal_action_rate=optimal / pairs,
                success_rate=reached_total / rollouts, pairs=pairs, rollouts=rollouts)


def _optimal_moves(model: VIN, q: Tensor, data: ExpertTensors, maps: np.ndarray, first: int) -> int:
    """How many expert states of `maps` (consecutive, from `first`) get a shortest-path move as argmax."""
    occupancy = data.occupancy[first:first + len(maps)].double()
    unit = torch.ones_like(occupancy)
    exact_q = bellman_q(value_iteration(unit, occupancy, data.goal[first:first + len(maps)]),
                        move_rewards(unit, occupancy, model.actions), 1.0)
    pairs = torch.as_tensor(data.pairs_of(maps), device=q.device)
    local, states = data.map_index[pairs] - first, data.states[pairs]
    chosen = model.logits_at(q, local, states).argmax(1)
    q_at = exact_q[local, :, states[:, 0], states[:, 1]]
    best = q_at.amax(1)
    return int((q_at.gather(1, chosen[:, None])[:, 0] >= best - TIE_TOLERANCE).sum())
