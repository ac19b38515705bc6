"""Learned dynamics models (`block f = world_model(kind=mlp | ensemble, ...)`) as torch modules.

A `WorldModel` predicts the next value of a state s (B, n) from s and the other arguments of its
call flattened to c (B, r) (controls, then conditioning values such as a pendulum's mass):

    features  φ(s, c) = [s with every `angles` entry i replaced by (sin s_i, cos s_i); c]   (B, F)
    input     z = (φ - μ_in) / σ_in                                  (normalization buffers)
    member k  (μ_k, log σ²_k) = net_k(z)                             ensemble of M networks
    target    y = s' - s (`residual`, angle entries wrapped to [-π, π)) or s'
    output    ŷ_k = μ_out + σ_out ⊙ μ_k,   s'_k = s + ŷ_k (residual) or ŷ_k

`forward(s, c)` is the mean model s + mean_k ŷ_k (what iLQR, descent and `step` use). A
probabilistic model (`ensemble`) also predicts a log-variance per member, bounded smoothly to
[min_logvar, max_logvar] with learned bounds (Chua et al. 2018):
    lv = max_lv - softplus(max_lv - raw),  lv = min_lv + softplus(lv - min_lv).
The normalization buffers (μ_in, σ_in, μ_out, σ_out, `fitted`) are part of the state_dict and
are set once from data by `fit_normalization` (constant columns get σ = 1).

Trajectory sampling: `member_index` (B,) in `sampling(...)` makes every row of a batch follow one
member's mean prediction instead of the ensemble mean (PETS' TS∞).

Reward head (`reward=True`): one more network on the same normalized features z predicts the
reward r of the transition (s, c) -> s' (its own trunk, so fitting the reward leaves the dynamics'
features alone):

    (ρ, log ς²) = reward_net(z)                           (ρ only for a deterministic model)
    reward      r̂ = μ_r + σ_r ρ                           `reward(s, c)` (B,)

with μ_r, σ_r normalization buffers fitted from data like the others and the log-variance bounded
smoothly to [min_logvar, max_logvar] with fixed bounds. It is one network, not M: a planner
evaluates the reward on every sample and stage at once (outside trajectory sampling, so a
member's own reward would not follow its trajectory), where M networks would cost M times as
much; an ensemble's bootstrap weights are averaged over its members for it.
"""
from __future__ import annotations

import math
from contextlib import ExitStack, contextmanager
from typing import Iterator, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from runtime.neural import ACTIVATIONS

TWO_PI = 2 * math.pi


def wrap_angle(a: Tensor) -> Tensor:
    """a wrapped to [-π, π)."""
    return torch.remainder(a + math.pi, TWO_PI) - math.pi


class EnsembleLinear(nn.Module):
    """M independent affine maps: h (M, B, a) -> h W_k + b_k (M, B, b); nn.Linear's init per member."""

    def __init__(self, members: int, inputs: int, outputs: int):
        super().__init__()
        bound = 1.0 / math.sqrt(inputs)
        self.weight = nn.Parameter(torch.empty(members, inputs, outputs).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, outputs).uniform_(-bound, bound))

    def forward(self, h: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, h, self.weight)


class WorldModel(nn.Module):
    """See the module docstring. state: n; others: r (the flattened size of the other arguments)."""

    def __init__(self, state: int, others: int, hidden: Sequence[int] = (200, 200), members: int = 1,
                 probabilistic: bool = False, residual: bool = True, act: str = "silu",
                 angles: Sequence[int] = (), min_logvar: float = -10.0, max_logvar: float = 0.5,
                 reward: bool = False):
        super().__init__()
        if state < 1 or others < 0 or members < 1:
            raise ValueError(f"a world model needs state >= 1, others >= 0, members >= 1; got {state}, {others}, {members}")
        bad = [i for i in angles if not 0 <= i < state]
        if bad:
            raise ValueError(f"angles {bad} are not entries of a state of size {state} (0-based)")
        self.state, self.others, self.members = state, others, members
        self.probabilistic, self.residual = probabilistic, residual
        self.angles = tuple(sorted(set(int(i) for i in angles)))
        features = state + len(self.angles) + others
        widths = [features, *hidden]
        self.layers = nn.ModuleList(EnsembleLinear(members, a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.head = EnsembleLinear(members, widths[-1], state * (2 if probabilistic else 1))
        self.act = ACTIVATIONS[act]()
        if probabilistic:
            self.max_logvar = nn.Parameter(torch.full((members, 1, state), float(max_logvar)))
            self.min_logvar = nn.Parameter(torch.full((members, 1, state), float(min_logvar)))
        self.register_buffer("in_mean", torch.zeros(features))
        self.register_buffer("in_std", torch.ones(features))
        self.register_buffer("out_mean", torch.zeros(state))
        self.register_buffer("out_std", torch.ones(state))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.member_index: Optional[Tensor] = None
        self._order: Optional[Tensor] = None       # rows sorted by member, when the assignment is balanced
        self.has_reward = bool(reward)
        if self.has_reward:
            self.reward_layers = nn.ModuleList(EnsembleLinear(1, a, b) for a, b in zip(widths[:-1], widths[1:]))
            self.reward_head = EnsembleLinear(1, widths[-1], 2 if probabilistic else 1)
            self.reward_logvar_bounds = (float(min_logvar), float(max_logvar))
            self.register_buffer("reward_mean", torch.zeros(()))
            self.register_buffer("reward_std", torch.ones(()))

    # ------------------------------------------------------------------ features and targets
    def features(self, s: Tensor, c: Tensor) -> Tensor:
        """φ(s, c) (B, F): angle entries of s as (sin, cos), then c."""
        if not self.angles:
            return torch.cat([s, c], dim=-1)
        index = list(self.angles)
        keep = [i for i in range(self.state) if i not in self.angles]
        a = s[..., index]
        return torch.cat([s[..., keep], torch.sin(a), torch.cos(a), c], dim=-1)

    def difference(self, a: Tensor, b: Tensor) -> Tensor:
        """a - b with angle entries wrapped to [-π, π)."""
        d = a - b
        if self.angles:
            index = list(self.angles)
            d = d.clone()
            d[..., index] = wrap_angle(d[..., index])
        return d

    def target(self, s: Tensor, s_next: Tensor) -> Tensor:
        """y: s' - s (wrapped angles) for a residual model, else s'."""
        return self.difference(s_next, s) if self.residual else s_next

    @torch.no_grad()
    def fit_normalization(self, s: Tensor, c: Tensor, s_next: Tensor) -> None:
        """Set μ_in, σ_in, μ_out, σ_out from transitions s (N, n), c (N, r), s' (N, n)."""
        phi, y = self.features(s, c), self.target(s, s_next)
        for mean, std, data in ((self.in_mean, self.in_std, phi), (self.out_mean, self.out_std, y)):
            mu, sigma = data.mean(0), data.std(0, unbiased=False)
            mean.copy_(mu)
            std.copy_(torch.where(sigma > 1e-6 * (1 + mu.abs()), sigma, torch.ones_like(sigma)))
        self.fitted.fill_(True)

    @torch.no_grad()
    def fit_reward_normalization(self, r: Tensor) -> None:
        """Set μ_r, σ_r from rewards r (N,) (σ_r = 1 when the rewards are constant)."""
        self._require_reward()
        mu, sigma = r.mean(), r.std(unbiased=False)
        self.reward_mean.copy_(mu)
        self.reward_std.copy_(torch.where(sigma > 1e-6 * (1 + mu.abs()), sigma, torch.ones_like(sigma)))

    # ------------------------------------------------------------------ prediction
    def normalized(self, s: Tensor, c: Tensor, with_logvar: bool = True) -> tuple[Tensor, Optional[Tensor]]:
        """Per member, in normalized target units: mean (M, B, n) and log-variance (M, B, n) (None
        for a deterministic model). s (B, n) feeds every member; s (M, B, n) gives member k its own
        s[k] (c (B, r) is shared)."""
        if s.dim() == 3:
            c = c.unsqueeze(0).expand(s.shape[0], -1, -1)
        h = (self.features(s, c) - self.in_mean) / self.in_std
        if h.dim() == 2:
            h = h.unsqueeze(0).expand(self.members, -1, -1)
        return self._heads(h, with_logvar)

    def _heads(self, h: Tensor, with_logvar: bool = True) -> tuple[Tensor, Optional[Tensor]]:
        """The members' networks on normalized features h (M, B, F): mean and log-variance (M, B, n)
        (None for a deterministic model or when `with_logvar` is false)."""
        for layer in self.layers:
            h = self.act(layer(h))
        out = self.head(h)
        if not self.probabilistic:
            return out, None
        mean, raw = out.split(self.state, dim=-1)
        if not with_logvar:
            return mean, None
        logvar = self.max_logvar - F.softplus(self.max_logvar - raw)
        return mean, self.min_logvar + F.softplus(logvar - self.min_logvar)

    def members_next(self, s: Tensor, c: Tensor) -> Tensor:
        """Every member's mean next state (M, B, n), from s (B, n) or per member s (M, B, n)."""
        mean, _ = self.normalized(s, c, with_logvar=False)
        y = self.out_mean + self.out_std * mean
        if not self.residual:
            return y
        return (s if s.dim() == 3 else s.unsqueeze(0)) + y

    def forward(self, s: Tensor, c: Tensor) -> Tensor:
        """The next state (B, n): the members' mean, or under `sampling` each row's own member."""
        if self.member_index is None:
            return self.members_next(s, c).mean(0)
        index, order = self.member_index, self._order
        B, M = s.shape[0], self.members
        if index.shape[0] != B:
            raise ValueError(f"trajectory sampling assigns {index.shape[0]} rows to members, the batch has {B}")
        if order is None:                       # unbalanced: every member on every row, then pick
            return self.members_next(s, c)[index.to(s.device), torch.arange(B, device=s.device)]
        order = order.to(s.device)              # balanced: row groups of B/M, one per member
        h = ((self.features(s, c) - self.in_mean) / self.in_std)[order].reshape(M, B // M, -1)
        mean, _ = self._heads(h, with_logvar=False)
        y = (self.out_mean + self.out_std * mean).reshape(B, -1)
        y = torch.empty_like(y).index_copy_(0, order, y)
        return s + y if self.residual else y

    @contextmanager
    def sampling(self, member_index: Tensor) -> Iterator[None]:
        """Within the block, row b of a batch follows member member_index[b] ((B,) integers in [0, M))."""
        if member_index.dim() != 1 or bool(((member_index < 0) | (member_index >= self.members)).any()):
            raise ValueError(f"member_index must be (B,) integers in [0, {self.members})")
        counts = torch.bincount(member_index, minlength=self.members)
        balanced = bool((counts == member_index.shape[0] // self.members).all())
        previous = self.member_index, self._order
        self.member_index = member_index
        self._order = torch.argsort(member_index, stable=True) if balanced else None
        try:
            yield
        finally:
            self.member_index, self._order = previous

    # ------------------------------------------------------------------ reward head
    def _require_reward(self) -> None:
        if not self.has_reward:
            raise ValueError("this world model has no reward head (build it with reward=True)")

    def reward_normalized(self, s: Tensor, c: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """In normalized reward units: mean ρ (B,) and log-variance (B,) (None for a deterministic
        model), from s (B, n), c (B, r)."""
        self._require_reward()
        h = ((self.features(s, c) - self.in_mean) / self.in_std).unsqueeze(0)
        for layer in self.reward_layers:
            h = self.act(layer(h))
        out = self.reward_head(h)[0]
        if not self.probabilistic:
            return out[:, 0], None
        low, high = self.reward_logvar_bounds
        logvar = high - F.softplus(high - out[:, 1])
        return out[:, 0], low + F.softplus(logvar - low)

    def reward(self, s: Tensor, c: Tensor) -> Tensor:
        """The predicted reward (B,) of the transition from s (B, n) under c (B, r)."""
        mean, _ = self.reward_normalized(s, c)
        return self.reward_mean + self.reward_std * mean

    def reward_losses(self, s: Tensor, c: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
        """Per example: (loss (B,), squared error (B,)) of the reward r (B,) in normalized reward
        units; loss is ½ [(y - ρ)² e^{-lv} + lv + log 2π] (probabilistic) or (y - ρ)²,
        y = (r - μ_r) / σ_r."""
        mean, logvar = self.reward_normalized(s, c)
        sq = ((r - self.reward_mean) / self.reward_std - mean) ** 2
        if logvar is None:
            return sq, sq
        return 0.5 * (sq * torch.exp(-logvar) + logvar + math.log(TWO_PI)), sq

    # ------------------------------------------------------------------ losses
    def member_losses(self, s: Tensor, c: Tensor, s_next: Tensor) -> tuple[Tensor, Tensor]:
        """Per member and example: (loss (M, B), squared error (M, B)) in normalized target units.
        loss is the Gaussian NLL ½ Σ_i [(y_i - μ_i)² e^{-lv_i} + lv_i] (+ ½ n log 2π) for a
        probabilistic model, the mean squared error Σ_i (y_i - μ_i)² / n otherwise."""
        mean, logvar = self.normalized(s, c)
        y = (self.target(s, s_next) - self.out_mean) / self.out_std
        sq = (y.unsqueeze(0) - mean) ** 2
        if logvar is None:
            return sq.mean(-1), sq.mean(-1)
        nll = 0.5 * (sq * torch.exp(-logvar) + logvar + math.log(TWO_PI)).sum(-1)
        return nll, sq.mean(-1)

    def logvar_bound_penalty(self) -> Tensor:
        """0.01 (Σ max_lv - Σ min_lv): keeps the learned log-variance bounds tight (0 if deterministic)."""
        if not self.probabilistic:
            return self.in_mean.new_zeros(())
        return 0.01 * (self.max_logvar.sum() - self.min_logvar.sum())


def member_assignment(samples: int, members: int, seed: int, device=None) -> Tensor:
    """(samples,) the member each of K samples follows: 0..M-1 repeated, shuffled by `seed`
    (balanced: every member gets ⌊K/M⌋ or ⌈K/M⌉ samples; the same seed, the same assignment)."""
    order = torch.randperm(samples, generator=torch.Generator().manual_seed(seed))
    return (order % members).to(device)


@contextmanager
def trajectory_sampling(models: Sequence[WorldModel], batch: int, samples: int, seed: int) -> Iterator[None]:
    """Within the block, rows b*K + k of a (B*K)-row batch follow member assignment[k] of each
    ensemble in `models` (PETS' TS∞: a sample keeps its member along the horizon)."""
    with ExitStack() as stack:
        for model in models:
            if model.members > 1:
                index = member_assignment(samples, model.members, seed, model.in_mean.device)
                stack.enter_context(model.sampling(index.repeat(batch)))
        yield
