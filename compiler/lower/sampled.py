"""Callables for planners that roll out K candidate plans per batch element at once.

The compiled dynamics and costs act on one batch axis (B, n); sampling planners call them on
(B, K, n). `SampledCallables` flattens (B, K) to B*K rows and repeats the bound per-element
values (params, inputs of batch B) K times, once per solve and sample count.
"""
from __future__ import annotations

import torch

from compiler.evaluate import Env
from runtime.world_model import WorldModel, trajectory_sampling


class SampledCallables:
    """dynamics(x (B, K, n), u (B, K, m), t) -> (B, K, n); stage_cost(x, u, t) -> (B, K) or, with
    all stages at once, x (B, K, T, n), u (B, K, T, m) -> (B, K, T); final_cost(x (B, K, n)) -> (B, K)."""

    def __init__(self, lowered, env: Env, like: torch.Tensor, batch: int):
        self.lowered, self.batch = lowered, batch
        self.rebind(env, like)

    def rebind(self, env: Env, like: torch.Tensor) -> None:
        """Use the values of another call (same batch size)."""
        self.env, self.like = env, like
        self._envs: dict[int, Env] = {}

    def env_for(self, repeats: int) -> Env:
        """The bound values with every row of batch B repeated `repeats` times (B * repeats rows)."""
        if repeats not in self._envs:
            self._envs[repeats] = {
                ref: v.repeat_interleave(repeats, dim=0) if torch.is_tensor(v) and v.shape[0] == self.batch > 1 else v
                for ref, v in self.env.items()}
        return self._envs[repeats]

    def dynamics(self, x: torch.Tensor, u: torch.Tensor, t) -> torch.Tensor:
        """With K > 1 samples, each sample follows one member of every world-model ensemble
        (trajectory sampling, seeded by the solver's `seed`); K = 1 (the plan itself) uses the
        members' mean."""
        B, K, n = x.shape
        ensembles = [v for v in self.env.values() if isinstance(v, WorldModel) and v.members > 1] if K > 1 else []
        with trajectory_sampling(ensembles, B, K, int(self.lowered.info.options.get("seed", 0))):
            nxt = self.lowered.step(self.env_for(K), x.reshape(B * K, n), u.reshape(B * K, -1), self.like)
        return nxt.reshape(B, K, n)

    def stage_cost(self, x: torch.Tensor, u: torch.Tensor, t) -> torch.Tensor:
        lead = x.shape[:-1]
        rows = lead.numel() // self.batch
        cost = self.lowered.stage_cost(self.env_for(rows), x.reshape(-1, x.shape[-1]), u.reshape(-1, u.shape[-1]),
                                       self.like)
        return cost.reshape(lead)

    def final_cost(self, x: torch.Tensor) -> torch.Tensor:
        B, K, n = x.shape
        return self.lowered.final_cost(self.env_for(K), x.reshape(B * K, n), self.like).reshape(B, K)
