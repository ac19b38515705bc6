"""Callables for planners that roll out K candidate plans per batch element at once.

The compiled dynamics and costs act on one batch axis (B, n); sampling planners call them on
(B, K, n). `SampledCallables` flattens (B, K) to B*K rows and repeats the bound per-element
values (params, inputs of batch B) K times. The generated functions are bound to the values
once per `rebind` (per solve, or once for a closed-loop controller), not once per stage.
"""
from __future__ import annotations

from typing import Callable

import torch

from compiler.evaluate import Env
from runtime.latent_world_model import LatentWorldModel, latent_sampling
from runtime.world_model import WorldModel, trajectory_sampling


LATENT_SEED_STRIDE = 1_000_003          # latent noise at stage t of a solver seeded s: seed s * stride + t


class SampledCallables:
    """dynamics(x (B, K, n), u (B, K, m), t) -> (B, K, n); stage_cost(x, u, t) -> (B, K) or, with
    all stages at once, x (B, K, T, n), u (B, K, T, m) -> (B, K, T); final_cost(x (B, K, n)) -> (B, K).

    `samples` and `horizon` name the row counts bound up front (K and 1 samples per element);
    others are bound on first use."""

    def __init__(self, lowered, batch: int, samples: int, horizon: int):
        self.lowered, self.batch, self.samples, self.horizon = lowered, batch, samples, horizon
        self.env: Env | None = None

    def rebind(self, env: Env, like: torch.Tensor) -> None:
        """Use the values of another call (same batch size)."""
        self.env, self.like = env, like
        self._ensembles = [v for v in env.values() if isinstance(v, WorldModel) and v.members > 1]
        self._latents = [v for v in env.values() if isinstance(v, LatentWorldModel)]
        self._seed = int(self.lowered.info.options.get("seed", 0))
        self._dynamics: dict[int, Callable] = {}
        self._stage: dict[int, Callable] = {}
        self._final: dict[int, Callable] = {}
        for repeats in (self.samples, 1):
            self._bind(repeats)
            self._bind_stage(repeats * self.horizon)

    def _repeated(self, repeats: int) -> Env:
        """The bound values with every row of batch B repeated `repeats` times (B * repeats rows)."""
        return {ref: v.repeat_interleave(repeats, dim=0) if torch.is_tensor(v) and v.shape[0] == self.batch > 1 else v
                for ref, v in self.env.items()}

    def _bind(self, repeats: int) -> None:
        env = self._repeated(repeats)
        self._dynamics[repeats] = self.lowered.dynamics(env, self.like)
        self._final[repeats] = self.lowered.final_costs_of(env, self.like)

    def _bind_stage(self, repeats: int) -> None:
        self._stage[repeats] = self.lowered.stage_costs_of(self._repeated(repeats), self.like)

    def dynamics(self, x: torch.Tensor, u: torch.Tensor, t) -> torch.Tensor:
        """With K > 1 samples, each sample follows one member of every world-model ensemble
        (trajectory sampling, seeded by the solver's `seed`) and draws its own latent from every
        latent world model's prior (noise seeded by `seed` and t); K = 1 (the plan itself) uses
        the members' mean and the prior's mean."""
        B, K, n = x.shape
        if K not in self._dynamics:
            self._bind(K)
        sampled = K > 1
        with trajectory_sampling(self._ensembles if sampled else [], B, K, self._seed), \
                latent_sampling(self._latents if sampled else [], self._seed * LATENT_SEED_STRIDE + int(t)):
            return self._dynamics[K](x.reshape(B * K, n), u.reshape(B * K, -1)).reshape(B, K, n)

    def stage_cost(self, x: torch.Tensor, u: torch.Tensor, t) -> torch.Tensor:
        lead = x.shape[:-1]
        rows = lead.numel() // self.batch
        if rows not in self._stage:
            self._bind_stage(rows)
        return self._stage[rows](x.reshape(-1, x.shape[-1]), u.reshape(-1, u.shape[-1])).reshape(lead)

    def final_cost(self, x: torch.Tensor) -> torch.Tensor:
        B, K, n = x.shape
        if K not in self._final:
            self._bind(K)
        return self._final[K](x.reshape(B * K, n)).reshape(B, K)
