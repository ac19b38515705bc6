"""A recurrent latent world model (PlaNet / Dreamer's RSSM, Gaussian latents), for observations
larger than the state. Runtime only: it is not a block kind of the language yet.

With observations o_t (B, T+1, k) (normalized by fitted buffers), actions a_t (B, T, m):

    sequence model   h_t = GRU(h_{t-1}, [z_{t-1}, a_{t-1}])                 h_0 = 0
    encoder          e_t = enc(o_t)
    posterior        q(z_t | h_t, e_t) = N(μ_q, σ_q²)         prior  p(z_t | h_t) = N(μ_p, σ_p²)
    decoder          p(o_t | h_t, z_t) = N(dec(h_t, z_t), I)
    reward head      p(r_t | h_t, z_t) = N(rew(h_t, z_t), 1)        (reward of the step into t)
    continue head    p(c_t | h_t, z_t) = Bernoulli(σ(cont(h_t, z_t)))   (c_t = 1 - done)

    L_pred = -log p(o_t | ·) - log p(r_t | ·) - log p(c_t | ·)    (the terms the batch has data for)
    L_dyn  = max(free_bits, KL[sg(q) ‖ p]),   L_rep = max(free_bits, KL[q ‖ sg(p)])
    L      = mean_t (L_pred + β_dyn L_dyn + β_rep L_rep)            (DreamerV3: β_dyn 0.5, β_rep 0.1)

sg is stop-gradient; the KL is summed over latent dimensions (free bits: nats per step).
`imagine` rolls the prior forward under given actions (open loop) and decodes.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.distributions import Normal, kl_divergence
from torch.nn import functional as F

from runtime.neural import MLP

MIN_STD = 0.1


class LatentWorldModel(nn.Module):
    """See the module docstring. obs: k, actions: m, deter: |h|, stoch: |z|."""

    def __init__(self, obs: int, actions: int, deter: int = 64, stoch: int = 16, hidden: int = 64,
                 free_bits: float = 1.0, beta_dyn: float = 0.5, beta_rep: float = 0.1):
        super().__init__()
        self.obs, self.actions, self.deter, self.stoch = obs, actions, deter, stoch
        self.free_bits, self.beta_dyn, self.beta_rep = free_bits, beta_dyn, beta_rep
        self.cell = nn.GRUCell(stoch + actions, deter)
        self.encoder = MLP(obs, hidden, (hidden,), "elu")
        self.posterior_net = MLP(deter + hidden, 2 * stoch, (hidden,), "elu")
        self.prior_net = MLP(deter, 2 * stoch, (hidden,), "elu")
        self.decoder = MLP(deter + stoch, obs, (hidden, hidden), "elu")
        self.reward_head = MLP(deter + stoch, 1, (hidden,), "elu")
        self.continue_head = MLP(deter + stoch, 1, (hidden,), "elu")
        self.register_buffer("obs_mean", torch.zeros(obs))
        self.register_buffer("obs_std", torch.ones(obs))

    @torch.no_grad()
    def fit_normalization(self, obs: Tensor) -> None:
        """μ, σ of the observations (N, k) (constant entries keep σ = 1)."""
        flat = obs.reshape(-1, self.obs)
        mu, sigma = flat.mean(0), flat.std(0, unbiased=False)
        self.obs_mean.copy_(mu)
        self.obs_std.copy_(torch.where(sigma > 1e-6, sigma, torch.ones_like(sigma)))

    @staticmethod
    def _gaussian(stats: Tensor) -> Normal:
        mean, raw = stats.chunk(2, dim=-1)
        return Normal(mean, F.softplus(raw) + MIN_STD)

    def initial(self, batch: int, like: Tensor) -> tuple[Tensor, Tensor]:
        return like.new_zeros(batch, self.deter), like.new_zeros(batch, self.stoch)

    def observe(self, obs: Tensor, actions: Tensor, sample: bool = True):
        """Filter o_0..o_T (B, T+1, k) under a_0..a_{T-1} (B, T, m): h, z (B, T+1, ·) and the
        posterior and prior distributions of every step (batch shape (B, T+1, |z|))."""
        B, T1, _ = obs.shape
        embed = self.encoder((obs - self.obs_mean) / self.obs_std)
        h, z = self.initial(B, obs)
        hs, zs, post, prior = [], [], [], []
        for t in range(T1):
            if t > 0:
                h = self.cell(torch.cat([z, actions[:, t - 1]], -1), h)
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
        for t in range(actions.shape[1]):
            h = self.cell(torch.cat([z, actions[:, t]], -1), h)
            z = self._gaussian(self.prior_net(h)).mean
            out.append(self.decode(h, z))
        return torch.stack(out, 1)

    def loss(self, obs: Tensor, actions: Tensor, reward: Optional[Tensor] = None,
             done: Optional[Tensor] = None) -> tuple[Tensor, dict[str, Tensor]]:
        """The module docstring's L for one batch of sequences; reward and done are (B, T) (the
        step into t = 1..T). Returns (loss, metrics)."""
        h, z, q, p = self.observe(obs, actions)
        feat = torch.cat([h, z], -1)
        target = (obs - self.obs_mean) / self.obs_std
        recon = 0.5 * (self.decoder(feat) - target).pow(2).sum(-1)                      # (B, T+1)
        pred = recon.mean()
        metrics = {"recon": recon.mean().detach()}
        if reward is not None:
            r_loss = 0.5 * (self.reward_head(feat[:, 1:])[..., 0] - reward).pow(2).mean()
            pred = pred + r_loss
            metrics["reward"] = r_loss.detach()
        if done is not None:
            c_loss = F.binary_cross_entropy_with_logits(self.continue_head(feat[:, 1:])[..., 0], 1.0 - done.to(obs.dtype))
            pred = pred + c_loss
            metrics["continue"] = c_loss.detach()
        dyn, rep = self.kl_terms(q, p)
        metrics["kl"] = kl_divergence(q, p).sum(-1).mean().detach()
        return pred + self.beta_dyn * dyn + self.beta_rep * rep, metrics

    def kl_terms(self, q: Normal, p: Normal) -> tuple[Tensor, Tensor]:
        """(L_dyn, L_rep): KL balancing with free bits; L_dyn trains the prior only, L_rep the
        posterior only."""
        sg_q = Normal(q.mean.detach(), q.stddev.detach())
        sg_p = Normal(p.mean.detach(), p.stddev.detach())
        dyn = kl_divergence(sg_q, p).sum(-1).clamp_min(self.free_bits).mean()
        rep = kl_divergence(q, sg_p).sum(-1).clamp_min(self.free_bits).mean()
        return dyn, rep
