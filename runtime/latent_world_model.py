"""A recurrent latent world model (PlaNet / Dreamer's RSSM, Gaussian latents), for observations
larger than the state; a plan's `block m = world_model(kind=latent, ...)` (compiler.latent_block).

A latent state is s = [h; z] (B, deter + stoch): h the GRU's deterministic state, z the stochastic
latent. With observations o_t (B, T+1, k) (normalized by fitted buffers) and actions a_t (B, T, m):

    sequence model   h_t = GRU(h_{t-1}, [z_{t-1}, a_{t-1}])     (h, z, a)_{-1} = 0: every step, the
                                                                 first included, is one GRU update
    encoder          e_t = enc(o_t)
    posterior        q(z_t | h_t, e_t) = N(μ_q, σ_q²)         prior  p(z_t | h_t) = N(μ_p, σ_p²)
    decoder          p(o_t | h_t, z_t) = N(dec(h_t, z_t), σ² I)       (σ = `likelihood_std`, normalized units)
    reward head      p(r_t | h_t, z_t, a_t) = N(rew(h_t, z_t, a_t), σ²)  (the reward of the step
                                                                 from o_t under a_t, gymnasium's r_t;
                                                                 normalized by fitted buffers)
    continue head    p(c_t | h_t, z_t) = Bernoulli(σ(cont(h_t, z_t)))   (c_t = 1 - done, step into t)

    L_pred = -log p(o_t | ·) - log p(r_t | ·) - log p(c_t | ·)    (the terms the batch has data for)
    L_dyn  = max(free_bits, KL[sg(q) ‖ p]),   L_rep = max(free_bits, KL[q ‖ sg(p)])
    L_ol   = mean_t (½ |dec(ŝ_t+1) - o_t+1|² + ½ (r̂(ŝ_t, a_t) - r_t)²) / σ²    (normalized units)
             with ŝ_0 = [h_0; z_0] filtered, ŝ_t+1 = the prior step's mean from ŝ_t under a_t:
             the open-loop error of what a planner rolls out (latent overshooting in observation space)
    L      = mean_t (L_pred + β_dyn L_dyn + β_rep L_rep) + w_ol L_ol   (DreamerV3: β_dyn 0.5, β_rep 0.1)

sg is stop-gradient; the KL is summed over latent dimensions (free bits: nats per step). With
few observation entries (a pendulum's 3, not an image's thousands) a unit σ lets the KL terms
outweigh the predictions; σ = 0.1 (the default) weights the squared errors by 1/σ² = 100.

Planning in the latent state (s (B, deter + stoch), a (B, m)):

    encode(o)        [h_0; μ_q(h_0, e(o))]          the latent of a first observation (h_0 = GRU(0, 0))
    filter(s, a, o)  [h'; μ_q(h', e(o))],  h' = GRU(h, [z, a])     the next observation's latent
    forward(s, a)    [h'; μ_p(h')]                  the prior step (the mean model; iLQR, descent)
                     [h'; μ_p(h') + σ_p(h') ⊙ ε]    inside `latent_sampling([model], seed)`: ε ~ N(0, I)
                                                    per row from a generator seeded by `seed` (MPPI, CEM)
    reward(s, a)     the reward head's mean (B,)

The GRU is written out (same parameters and math as nn.GRUCell) so torch.func.vmap can batch it.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Normal, kl_divergence
from torch.nn import functional as F

from runtime.neural import MLP

MIN_STD = 0.1


class LatentWorldModel(nn.Module):
    """See the module docstring. obs: k, actions: m, deter: |h|, stoch: |z|."""

    def __init__(self, obs: int, actions: int, deter: int = 64, stoch: int = 16, hidden: int = 64,
                 free_bits: float = 1.0, beta_dyn: float = 0.5, beta_rep: float = 0.1,
                 likelihood_std: float = 0.1):
        super().__init__()
        if min(obs, actions, deter, stoch, hidden) < 1:
            raise ValueError(f"a latent world model needs obs, actions, deter, stoch, hidden >= 1; got "
                             f"{obs}, {actions}, {deter}, {stoch}, {hidden}")
        self.obs, self.actions, self.deter, self.stoch = obs, actions, deter, stoch
        self.free_bits, self.beta_dyn, self.beta_rep = free_bits, beta_dyn, beta_rep
        self.precision = 1.0 / likelihood_std ** 2
        self.cell = nn.GRUCell(stoch + actions, deter)
        self.encoder = MLP(obs, hidden, (hidden,), "elu")
        self.posterior_net = MLP(deter + hidden, 2 * stoch, (hidden,), "elu")
        self.prior_net = MLP(deter, 2 * stoch, (hidden,), "elu")
        self.decoder = MLP(deter + stoch, obs, (hidden, hidden), "elu")
        self.reward_head = MLP(deter + stoch + actions, 1, (hidden,), "elu")
        self.continue_head = MLP(deter + stoch, 1, (hidden,), "elu")
        self.register_buffer("obs_mean", torch.zeros(obs))
        self.register_buffer("obs_std", torch.ones(obs))
        self.register_buffer("reward_mean", torch.zeros(()))
        self.register_buffer("reward_std", torch.ones(()))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self._noise: Optional[torch.Generator] = None

    @property
    def latent(self) -> int:
        """The size of a latent state s = [h; z]."""
        return self.deter + self.stoch

    @torch.no_grad()
    def fit_normalization(self, obs: Tensor, reward: Optional[Tensor] = None) -> None:
        """μ, σ of the observations (..., k) and of the rewards (any shape) (constant ones keep σ = 1)."""
        for mean, std, data in ((self.obs_mean, self.obs_std, obs.reshape(-1, self.obs)),
                                (self.reward_mean, self.reward_std, None if reward is None else reward.reshape(-1))):
            if data is None:
                continue
            mu, sigma = data.mean(0), data.std(0, unbiased=False)
            mean.copy_(mu)
            std.copy_(torch.where(sigma > 1e-6, sigma, torch.ones_like(sigma)))
        self.fitted.fill_(True)

    @staticmethod
    def _gaussian(stats: Tensor) -> Normal:
        mean, raw = stats.chunk(2, dim=-1)
        return Normal(mean, F.softplus(raw) + MIN_STD)

    def _gru(self, x: Tensor, h: Tensor) -> Tensor:
        """nn.GRUCell's update h' (B, deter) from input x and h, in plain tensor ops."""
        gi = F.linear(x, self.cell.weight_ih, self.cell.bias_ih)
        gh = F.linear(h, self.cell.weight_hh, self.cell.bias_hh)
        i_r, i_z, i_n = gi.chunk(3, -1)
        h_r, h_z, h_n = gh.chunk(3, -1)
        reset, update = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        candidate = torch.tanh(i_n + reset * h_n)
        return (1 - update) * candidate + update * h

    def _split(self, s: Tensor) -> tuple[Tensor, Tensor]:
        if s.shape[-1] != self.latent:
            raise ValueError(f"a latent state has deter + stoch = {self.latent} entries, got {s.shape[-1]}")
        return s[..., :self.deter], s[..., self.deter:]

    def _next_h(self, h: Tensor, z: Tensor, a: Tensor) -> Tensor:
        return self._gru(torch.cat([z, a], -1), h)

    def _first_h(self, like: Tensor, batch: int) -> Tensor:
        zeros = like.new_zeros(batch, self.stoch + self.actions)
        return self._gru(zeros, like.new_zeros(batch, self.deter))

    def _posterior(self, h: Tensor, obs: Tensor) -> Normal:
        embed = self.encoder((obs - self.obs_mean) / self.obs_std)
        return self._gaussian(self.posterior_net(torch.cat([h, embed], -1)))

    # ------------------------------------------------------------------ planning
    def encode(self, obs: Tensor) -> Tensor:
        """The latent state (B, deter + stoch) of first observations obs (B, k) (posterior mean)."""
        h = self._first_h(obs, obs.shape[0])
        return torch.cat([h, self._posterior(h, obs).mean], -1)

    def filter(self, s: Tensor, a: Tensor, obs: Tensor) -> Tensor:
        """The latent state (B, deter + stoch) of the next observation obs (B, k), from the latent
        s (B, deter + stoch) and the action a (B, m) that led to it (posterior mean)."""
        h, z = self._split(s)
        h = self._next_h(h, z, a)
        return torch.cat([h, self._posterior(h, obs).mean], -1)

    def forward(self, s: Tensor, a: Tensor) -> Tensor:
        """The prior step s (B, deter + stoch), a (B, m) -> s' (module docstring)."""
        h, z = self._split(s)
        h = self._next_h(h, z, a)
        prior = self._gaussian(self.prior_net(h))
        z = prior.mean
        if self._noise is not None:
            noise = torch.randn(z.shape, generator=self._noise, dtype=z.dtype).to(z.device)
            z = z + prior.stddev * noise
        return torch.cat([h, z], -1)

    def reward(self, s: Tensor, a: Tensor) -> Tensor:
        """The predicted reward (B,) of the step from latent s (B, deter + stoch) under a (B, m)."""
        return self.reward_mean + self.reward_std * self.reward_head(torch.cat([s, a], -1))[..., 0]

    # ------------------------------------------------------------------ learning
    def observe(self, obs: Tensor, actions: Tensor, sample: bool = True):
        """Filter o_0..o_T (B, T+1, k) under a_0..a_{T-1} (B, T, m): h, z (B, T+1, ·) and the
        posterior and prior distributions of every step (batch shape (B, T+1, |z|))."""
        B, T1, _ = obs.shape
        embed = self.encoder((obs - self.obs_mean) / self.obs_std)
        h = self._first_h(obs, B)
        hs, zs, post, prior = [], [], [], []
        z = None
        for t in range(T1):
            if t > 0:
                h = self._next_h(h, z, actions[:, t - 1])
            q_stats = self.posterior_net(torch.cat([h, embed[:, t]], -1))
            q = self._gaussian(q_stats)
            z = q.rsample() if sample else q.mean
            hs.append(h)
            zs.append(z)
            post.append(q_stats)
            prior.append(self.prior_net(h))
        stack = lambda xs: torch.stack(xs, 1)
        return stack(hs), stack(zs), self._gaussian(stack(post)), self._gaussian(stack(prior))

    def decode(self, h: Tensor, z: Tensor) -> Tensor:
        """The predicted observation (unnormalized), (..., k)."""
        return self.obs_mean + self.obs_std * self.decoder(torch.cat([h, z], -1))

    def imagine(self, h: Tensor, z: Tensor, actions: Tensor) -> Tensor:
        """Open-loop predictions of the next k observations (B, k, obs) from (h, z) (B, ·) under
        actions (B, k, m), the prior's mean as the latent."""
        out = []
        s = torch.cat([h, z], -1)
        for t in range(actions.shape[1]):
            s = self(s, actions[:, t])
            out.append(self.decode(*self._split(s)))
        return torch.stack(out, 1)

    def loss(self, obs: Tensor, actions: Tensor, reward: Optional[Tensor] = None,
             done: Optional[Tensor] = None, open_loop_weight: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
        """The module docstring's L for one batch of sequences obs (B, T+1, k), actions (B, T, m);
        reward (B, T) is r_t of the step from o_t under a_t, done (B, T) ends after step t. In
        training mode z is sampled from the posterior (reparametrized), in eval mode its mean (a
        deterministic validation loss).
        `open_loop_weight` is w_ol. Returns (loss, metrics): `mse` (decoded observation,
        normalized, per entry), `kl`, `rollout_mse` (the open-loop observation error at the last
        step, per entry), and `reward_mse` (normalized) / `continue` when given."""
        h, z, q, p = self.observe(obs, actions, sample=self.training)
        feat = torch.cat([h, z], -1)
        target = (obs - self.obs_mean) / self.obs_std
        sq = (self.decoder(feat) - target).pow(2)                                         # (B, T+1, k)
        pred = 0.5 * self.precision * sq.sum(-1).mean()
        metrics = {"mse": sq.mean().detach()}
        if reward is not None:
            predicted = self.reward_head(torch.cat([feat[:, :-1], actions], -1))[..., 0]
            r_sq = (predicted - (reward - self.reward_mean) / self.reward_std).pow(2).mean()
            pred = pred + 0.5 * self.precision * r_sq
            metrics["reward_mse"] = r_sq.detach()
        if done is not None:
            c_loss = F.binary_cross_entropy_with_logits(self.continue_head(feat[:, 1:])[..., 0], 1.0 - done.to(obs.dtype))
            pred = pred + c_loss
            metrics["continue"] = c_loss.detach()
        dyn, rep = self.kl_terms(q, p)
        metrics["kl"] = kl_divergence(q, p).sum(-1).mean().detach()
        open_loop, rollout_mse = self._open_loop(feat[:, 0], target, actions, reward)
        metrics["rollout_mse"] = rollout_mse
        return pred + self.beta_dyn * dyn + self.beta_rep * rep + open_loop_weight * open_loop, metrics

    def _open_loop(self, s0: Tensor, target: Tensor, actions: Tensor, reward: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """(L_ol, the last step's observation error per entry) of the prior's mean rollout from
        s0 (B, latent) under actions (B, T, m), against normalized observations target (B, T+1, k)
        and rewards reward (B, T) (or None)."""
        s, obs_sq, reward_sq = s0, [], []
        for t in range(actions.shape[1]):
            if reward is not None:
                predicted = self.reward_head(torch.cat([s, actions[:, t]], -1))[..., 0]
                reward_sq.append((predicted - (reward[:, t] - self.reward_mean) / self.reward_std).pow(2))
            s = self(s, actions[:, t])
            obs_sq.append((self.decoder(s) - target[:, t + 1]).pow(2))
        errors = torch.stack(obs_sq, 1)                                                   # (B, T, k)
        loss = 0.5 * errors.sum(-1).mean()
        if reward is not None:
            loss = loss + 0.5 * torch.stack(reward_sq, 1).mean()
        return self.precision * loss, errors[:, -1].mean().detach()

    def kl_terms(self, q: Normal, p: Normal) -> tuple[Tensor, Tensor]:
        """(L_dyn, L_rep): KL balancing with free bits; L_dyn trains the prior only, L_rep the
        posterior only."""
        sg_q = Normal(q.mean.detach(), q.stddev.detach())
        sg_p = Normal(p.mean.detach(), p.stddev.detach())
        dyn = kl_divergence(sg_q, p).sum(-1).clamp_min(self.free_bits).mean()
        rep = kl_divergence(q, sg_p).sum(-1).clamp_min(self.free_bits).mean()
        return dyn, rep


@contextmanager
def latent_sampling(models: Sequence[LatentWorldModel], seed: int) -> Iterator[None]:
    """Within the block, every model in `models` samples its prior step (`forward`, module
    docstring), model i with noise from a generator seeded by seed + i (the same seed, the same
    draws, in the order of the calls)."""
    previous = [model._noise for model in models]
    for i, model in enumerate(models):
        model._noise = torch.Generator().manual_seed(int(seed) + i)
    try:
        yield
    finally:
        for model, noise in zip(models, previous):
            model._noise = noise
