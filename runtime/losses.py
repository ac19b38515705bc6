"""Losses for learning a planner's costs (and models) from demonstrations.

A demonstration batch is a dict of tensors: `x0` (B, n), `x` (B, T+1, n), `u` (B, T, m) and any
per-demo inputs the planner reads (`input_<name>`). Each loss is a callable
`loss(planner, batch) -> (loss, metrics)` over a `Planner` (below); `as_model_loss` turns it into
the `(model, batch)` loss of `runtime.training.Trainer`. The runtime never sees a plan: the planner
protocol is all it needs, and `planlang.training.PlanPlanner` implements it for compiled plans.

With J_θ(τ) the planner's cost of a trajectory τ = (x, u) (its stage costs summed over t < T
plus its final cost) and τ̄ = (x̄, ū) the demonstration:

- `Imitation`: L = mean_{b,t,i} (x - x̄)² + w · mean_{b,t,j} (u - ū)² with (x, u) the planner's
  solution, differentiated through the planner's own (implicit) backward.
- `MaxMargin` (Ratliff, Bagnell & Zinkevich 2006), with the task loss
  Δ(τ, τ̄) = margin · Σ_{t=0..T} ||x_t - x̄_t||² (or its bounded form with a `bandwidth` σ,
  margin · Σ_t (1 - exp(-||x_t - x̄_t||² / σ²))):
      L = mean_b [ max_{τ ∈ C_b} ( J_θ(τ̄_b) - J_θ(τ) + Δ(τ, τ̄_b) ) ]_+
  over candidates C_b = {the loss-augmented plan argmin_τ J_θ(τ) - Δ(τ, τ̄_b)} ∪ {`samples`
  rollouts of its controls plus Gaussian noise of std `sample_noise`}. With the exact
  loss-augmented plan in C_b this is L = [J_θ(τ̄) - min_τ (J_θ(τ) - Δ(τ, τ̄))]_+, which is zero
  exactly when the demonstration beats every trajectory by its task loss. The candidates are
  constants (no autograd through their search): by Danskin's theorem ∇_θ min_τ (J_θ(τ) - Δ) =
  ∇_θ J_θ(τ*) at the minimizer, so the gradient is exact wherever the maximizing candidate is
  unique. J is linear in cost weights, so the weights are recovered up to scale: the margin
  fixes the scale.
- `NLL` (energy-based): E_θ(τ) = J_θ(τ) / temperature, and the demonstration is classified
  against K negatives ỹ_1..K:
      p(τ̄ | x0) = e^{-E(τ̄)} / (e^{-E(τ̄)} + Σ_j e^{-E(ỹ_j)}),   L = mean_b -log p(τ̄_b | x0_b).
  Negatives come from `Langevin` MCMC on the energy (over controls, the states rolled out
  through the dynamics) or from any sampler callable (e.g. `Perturbation`, or a sampling
  planner); they are constants in the loss (the usual contrastive estimator).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Protocol

import torch
from torch import Tensor, nn

Batch = dict[str, Tensor]
TrajectoryCost = Callable[[Tensor, Tensor], Tensor]


class Planner(Protocol):
    """What a cost-learning loss needs from a planner (batch-first; see the module docstring)."""

    def solve(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """The plan from batch["x0"]: x (B, T+1, n), u (B, T, m), cost (B,), differentiable in θ."""

    def rollout(self, u: Tensor, batch: Batch) -> Tensor:
        """States x (B, T+1, n) from batch["x0"] under controls u (B, T, m) through the dynamics."""

    def trajectory_cost(self, x: Tensor, u: Tensor, batch: Batch) -> Tensor:
        """J_θ(x, u) (B,) of a given trajectory, differentiable in θ, x and u."""

    def solve_augmented(self, batch: Batch, extra_cost: TrajectoryCost) -> tuple[Tensor, Tensor]:
        """argmin_τ J_θ(τ) + extra_cost(x, u) from batch["x0"]: (x, u), constants (no autograd)."""


PlannerLoss = Callable[[Planner, Batch], tuple[Tensor, dict[str, Tensor]]]


def repeat_batch(batch: Batch, count: int) -> Batch:
    """Every tensor repeated `count` times along the batch: row b*count + k is example b."""
    return {name: t.repeat_interleave(count, dim=0) for name, t in batch.items()}


def trajectory_error(x: Tensor, x_ref: Tensor) -> Tensor:
    """(B,) root-mean-square over time of the Euclidean state error ||x_t - x̄_t||."""
    return ((x - x_ref) ** 2).sum(-1).mean(-1).sqrt()


# ---------------------------------------------------------------------- imitation

@dataclass(frozen=True)
class Imitation:
    """L = mean (x - x̄)² + control_weight · mean (u - ū)² of the planner's solution."""

    control_weight: float = 1.0

    def __call__(self, planner: Planner, batch: Batch):
        x, u, _ = planner.solve(batch)
        loss = ((x - batch["x"]) ** 2).mean() + self.control_weight * ((u - batch["u"]) ** 2).mean()
        return loss, {"traj_error": trajectory_error(x, batch["x"]).mean()}


# --------------------------------------------------------------------- max-margin

@dataclass(frozen=True)
class MaxMargin:
    """Max-margin planning; see the module docstring for the exact objective."""

    margin: float = 1.0
    samples: int = 8
    sample_noise: float = 0.1
    bandwidth: Optional[float] = None

    def task_loss(self, x: Tensor, x_demo: Tensor) -> Tensor:
        """Δ(τ, τ̄) (B,): margin · Σ_t ||x_t - x̄_t||², or with a `bandwidth` σ the bounded
        margin · Σ_t (1 - exp(-||x_t - x̄_t||² / σ²)), which keeps the loss-augmented problem
        bounded below whatever the margin."""
        squared = ((x - x_demo) ** 2).sum(-1)
        if self.bandwidth is not None:
            squared = -torch.expm1(-squared / self.bandwidth ** 2)
        return self.margin * squared.sum(-1)

    def candidates(self, planner: Planner, batch: Batch) -> tuple[Tensor, Tensor]:
        """(x (B, K+1, T+1, n), u (B, K+1, T, m)): the loss-augmented plan, then K noisy rollouts."""
        x_demo = batch["x"]
        x_aug, u_aug = planner.solve_augmented(batch, lambda x, u: -self.task_loss(x, x_demo))
        xs, us = [x_aug.unsqueeze(1)], [u_aug.unsqueeze(1)]
        if self.samples > 0:
            B, K = u_aug.shape[0], self.samples
            u_noisy = u_aug.repeat_interleave(K, 0) + self.sample_noise * torch.randn_like(u_aug.repeat_interleave(K, 0))
            with torch.no_grad():
                x_noisy = planner.rollout(u_noisy, repeat_batch(batch, K))
            xs.append(x_noisy.reshape((B, K) + x_noisy.shape[1:]))
            us.append(u_noisy.reshape((B, K) + u_noisy.shape[1:]))
        return torch.cat(xs, 1).detach(), torch.cat(us, 1).detach()

    def __call__(self, planner: Planner, batch: Batch):
        x_c, u_c = self.candidates(planner, batch)
        return self.loss_given(planner, batch, x_c, u_c)

    def loss_given(self, planner: Planner, batch: Batch, x_c: Tensor, u_c: Tensor):
        """The loss for fixed candidates x_c (B, K, T+1, n), u_c (B, K, T, m)."""
        B, K = x_c.shape[:2]
        J_demo = planner.trajectory_cost(batch["x"], batch["u"], batch)                        # (B,)
        J_c = planner.trajectory_cost(x_c.flatten(0, 1), u_c.flatten(0, 1), repeat_batch(batch, K)).reshape(B, K)
        delta = self.task_loss(x_c, batch["x"].unsqueeze(1))                                    # (B, K)
        violation = (J_demo.unsqueeze(1) - J_c + delta).max(dim=1).values
        loss = torch.relu(violation).mean()
        return loss, {"violated": (violation > 0).double().mean(), "demo_cost": J_demo.mean()}


# ---------------------------------------------------------------- energy-based NLL

Sampler = Callable[[Planner, Batch, int], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class Langevin:
    """K chains of Langevin MCMC on the energy E(u) = J_θ(rollout(u)) / temperature, per demo:

        u_0 = ū + noise · ε_0,   u_{k+1} = u_k - step_size · ∇_u E(u_k) + noise · ε_k,

    ε_k ~ N(0, I) (noise = sqrt(2 step_size) is the exact unadjusted Langevin algorithm; smaller
    noise samples a sharpened distribution). Returns (x, u) of shapes (B, K, T+1, n), (B, K, T, m),
    detached; θ receives no gradient from the chains.
    """

    steps: int = 20
    step_size: float = 0.01
    noise: float = 0.1
    temperature: float = 1.0

    def __call__(self, planner: Planner, batch: Batch, count: int):
        B = batch["u"].shape[0]
        many = repeat_batch(batch, count)
        u = many["u"] + self.noise * torch.randn_like(many["u"])
        with torch.enable_grad():
            for _ in range(self.steps):
                u = u.detach().requires_grad_(True)
                energy = planner.trajectory_cost(planner.rollout(u, many), u, many).sum() / self.temperature
                grad, = torch.autograd.grad(energy, u)
                u = u - self.step_size * grad + self.noise * torch.randn_like(u)
        return _rolled_out(planner, u.detach(), many, B, count)


@dataclass(frozen=True)
class Perturbation:
    """Negatives by perturbing the demonstration's controls: u = ū + noise · ε, rolled out."""

    noise: float = 0.3

    def __call__(self, planner: Planner, batch: Batch, count: int):
        B = batch["u"].shape[0]
        many = repeat_batch(batch, count)
        return _rolled_out(planner, many["u"] + self.noise * torch.randn_like(many["u"]), many, B, count)


def _rolled_out(planner: Planner, u: Tensor, many: Batch, B: int, count: int) -> tuple[Tensor, Tensor]:
    """Negatives u (B * count, T, m) of the repeated batch `many` rolled out, both reshaped to
    (B, count, ...) and detached."""
    with torch.no_grad():
        x = planner.rollout(u, many)
    return x.reshape((B, count) + x.shape[1:]), u.reshape((B, count) + u.shape[1:])


SAMPLERS: dict[str, Callable[..., Sampler]] = {"langevin": Langevin, "perturbation": Perturbation}


@dataclass(frozen=True)
class NLL:
    """Energy-based negative log-likelihood of the demo against `samples` negatives."""

    negatives: Sampler = Langevin()
    samples: int = 8
    temperature: float = 1.0

    def __call__(self, planner: Planner, batch: Batch):
        x_neg, u_neg = self.negatives(planner, batch, self.samples)
        return self.loss_given(planner, batch, x_neg.detach(), u_neg.detach())

    def loss_given(self, planner: Planner, batch: Batch, x_neg: Tensor, u_neg: Tensor):
        """The loss for fixed negatives x_neg (B, K, T+1, n), u_neg (B, K, T, m)."""
        B, K = x_neg.shape[:2]
        E_demo = planner.trajectory_cost(batch["x"], batch["u"], batch) / self.temperature          # (B,)
        E_neg = planner.trajectory_cost(x_neg.flatten(0, 1), u_neg.flatten(0, 1),
                                        repeat_batch(batch, K)).reshape(B, K) / self.temperature
        logits = torch.cat([-E_demo.unsqueeze(1), -E_neg], dim=1)                                   # (B, K+1)
        log_p = torch.log_softmax(logits, dim=1)[:, 0]
        accuracy = (E_demo < E_neg.min(dim=1).values).double().mean()
        return -log_p.mean(), {"accuracy": accuracy, "energy_gap": (E_neg.mean(1) - E_demo).mean()}


# ------------------------------------------------------------------------ world models

@dataclass(frozen=True)
class ModelLoss:
    """Fit a `runtime.world_model.WorldModel` to k-step windows of transitions.

    batch: `state` (B, k+1, n) the model's state along the window, `others` (B, k, r) its other
    arguments at each step, optionally `bootstrap` (B, M) per-member example weights (bootstrap
    resampling counts). With w_bk the weights (1 without), and everything in normalized target
    units (σ_out):
        one-step   L1 = mean_k [Σ_b w_bk mean_t ℓ_k(s_t, c_t, s_t+1) / Σ_b w_bk]
                   (ℓ: Gaussian NLL for a probabilistic model, squared error otherwise, teacher forced)
        multi-step Lk = mean_k [Σ_b w_bk mean_{t=1..k} |(ŝ^k_t ⊖ s_t) / σ_out|² / n / Σ_b w_bk]
                   with ŝ^k_0 = s_0, ŝ^k_t+1 = member k's mean prediction from ŝ^k_t (its own rollout)
        L = L1 + multistep_weight · Lk + Lr + the log-variance bound penalty.
    Lr is the reward head's one-step loss (`WorldModel.reward_losses`, weighted by the members'
    mean weight w̄_b = mean_k w_bk) on `reward` (B, k), the reward of each transition of the
    window; a model with a reward head needs it, a model without one has Lr = 0.
    Metrics: `mse` (one-step squared error, normalized units, mean over members and steps),
    `rollout_mse` (squared error of the members' rollouts after k steps), `nll` (probabilistic)
    and, with a reward head, `reward_mse` (the members' squared reward error, in reward units).
    """

    multistep_weight: float = 1.0

    def __call__(self, model, batch: Batch):
        s, c = batch["state"], batch["others"]
        B, k = c.shape[:2]
        M = model.members
        weights = batch["bootstrap"].T if "bootstrap" in batch else s.new_ones(M, B)      # (M, B)
        norm = weights.sum(1).clamp_min(1e-12)
        per, sq = model.member_losses(s[:, :-1].reshape(B * k, -1), c.reshape(B * k, -1), s[:, 1:].reshape(B * k, -1))
        per, sq = per.reshape(M, B, k).mean(-1), sq.reshape(M, B, k).mean(-1)
        one_step = ((weights * per).sum(1) / norm).mean()
        pred, errors = s[:, 0].unsqueeze(0).expand(M, -1, -1), []
        for t in range(k):
            pred = model.members_next(pred, c[:, t])
            errors.append((model.difference(pred, s[:, t + 1].unsqueeze(0)) / model.out_std).pow(2).mean(-1))
        rollout = torch.stack(errors, -1)                                                    # (M, B, k)
        multistep = ((weights * rollout.mean(-1)).sum(1) / norm).mean()
        loss = one_step + self.multistep_weight * multistep + model.logvar_bound_penalty()
        metrics = {"mse": sq.mean().detach(), "rollout_mse": rollout[..., -1].mean().detach()}
        if model.probabilistic:
            metrics["nll"] = per.mean().detach()
        if getattr(model, "has_reward", False):
            if "reward" not in batch:
                raise ValueError("the world model has a reward head, and the batch has no 'reward' (B, k)")
            r_per, r_sq = model.reward_losses(s[:, :-1].reshape(B * k, -1), c.reshape(B * k, -1),
                                              batch["reward"].reshape(B * k))
            mean_weight = weights.mean(0)                                                    # (B,)
            loss = loss + (mean_weight * r_per.reshape(B, k).mean(-1)).sum() / mean_weight.sum().clamp_min(1e-12)
            metrics["reward_mse"] = (r_sq.mean() * model.reward_std ** 2).detach()
        return loss, metrics


# ------------------------------------------------------------------------ registry

LOSSES: dict[str, Callable[..., PlannerLoss]] = {"imitation": Imitation, "max_margin": MaxMargin, "nll": NLL}


def make_loss(name: str, options: Optional[Mapping] = None) -> PlannerLoss:
    """A loss by name with keyword options. For `nll`, `negatives` may be a sampler callable, a
    sampler name (`langevin`, `perturbation`), or `{"name": ..., **options}`."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss '{name}' (losses: {', '.join(LOSSES)})")
    options = dict(options or {})
    if name == "nll" and "negatives" in options:
        options["negatives"] = make_sampler(options["negatives"])
    try:
        return LOSSES[name](**options)
    except TypeError:
        fields = ", ".join(LOSSES[name].__dataclass_fields__)
        raise ValueError(f"loss {name} takes options: {fields}; got {', '.join(options)}") from None


def make_sampler(spec) -> Sampler:
    if callable(spec) and not isinstance(spec, str):
        return spec
    options = dict(spec) if isinstance(spec, Mapping) else {"name": spec}
    name = options.pop("name", None)
    if name not in SAMPLERS:
        raise ValueError(f"unknown negatives '{name}' (samplers: {', '.join(SAMPLERS)})")
    try:
        return SAMPLERS[name](**options)
    except TypeError:
        fields = ", ".join(SAMPLERS[name].__dataclass_fields__)
        raise ValueError(f"negatives {name} takes options: {fields}; got {', '.join(options)}") from None


def as_model_loss(loss: PlannerLoss, planner_of: Callable[[nn.Module], Planner]):
    """The `(model, batch) -> (loss, metrics)` callable of `runtime.training.Trainer`."""
    def model_loss(model: nn.Module, batch: Batch):
        return loss(planner_of(model), batch)
    return model_loss
