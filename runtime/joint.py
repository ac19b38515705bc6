"""Joint inference over K candidate trajectories per agent (a discrete pairwise graphical model).

Each of N agents picks one of its K candidates, s = (s_1, ..., s_N) in {0..K-1}^N, with

    E(s) = sum_i U_i(s_i) + sum_{i<j} S_ij(s_i, s_j),       p(s) = exp(-E(s)) / Z

    unary U: (B, N, K)      pairwise P: (B, N, N, K, K), P[b, i, j, a, c] = E(s_i = a, s_j = c)

The pairwise tensor is read through its symmetric part S_ij(a, c) = 1/2 (P_ij(a, c) + P_ji(c, a))
with the diagonal i = j ignored, so each unordered pair counts once and any input is valid (a
symmetric P is used as is; the gradient reaching P is split evenly between P_ij and P_ji).

Inference methods (small frozen classes, each callable as `method(unary, pairwise)`):

  `Exact()`: enumeration of the K^N configurations: exact marginals, log Z and the MAP
      configuration. Memory ~ B K^N N(N-1)/2 numbers; refused (ValueError) above
      `MAX_EXACT_CONFIGURATIONS` configurations.
  `BeliefPropagation(iters, damping)`: loopy belief propagation in log space on the complete
      graph, all messages updated in parallel (flooding):
          m_{i->j}(c) = log sum_a exp( -U_i(a) - S_ij(a, c) + sum_{k != i, j} m_{k->i}(a) )
      (normalized to log-sum-exp 0 over c), damped as m <- damping m_old + (1 - damping) m_new,
      beliefs log b_i(a) = log softmax_a( -U_i(a) + sum_{k != i} m_{k->i}(a) ). Sum-product
      (above) gives the marginals and is unrolled for autograd; max-product (max instead of
      log-sum-exp, same schedule, no autograd graph) gives the joint plan as the argmax of each
      agent's max-marginal belief. On a tree (e.g. N = 2, or pairwise terms that vanish outside
      a tree) both are exact once iters >= the tree's diameter with damping 0. Each iteration
      costs O(B N^2 K^2); backpropagation keeps `iters` tensors of B N^2 K^2 numbers.
  `MeanField(iters, damping)`: naive mean field, parallel damped updates
          log q_i(a) = log softmax_a( -U_i(a) - sum_{j != i} sum_c q_j(c) S_ij(a, c) ),
      plan = argmax_a q_i(a).

Every method returns a `JointResult`: marginals and log-marginals (B, N, K), the joint plan
(B, N) int64, its energy E(plan) (B,), and log Z (B,) for `Exact` (None otherwise). The marginals
and log Z are differentiable in (U, P) (BP and mean field by unrolling their iterations); the
plan's energy is differentiable through `joint_energy` at the (piecewise constant) plan.

`classification_loss` is the structured-prediction training loss: the negative log of each
agent's marginal at its ground-truth candidate, summed over agents.
"""
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
from torch import Tensor

MAX_EXACT_CONFIGURATIONS = 2 ** 20


class JointResult(NamedTuple):
    """Output of an inference method (see the module docstring)."""

    marginals: Tensor            # (B, N, K) p(s_i = k)
    log_marginals: Tensor        # (B, N, K) log p(s_i = k)
    plan: Tensor                 # (B, N) int64 joint plan (MAP estimate)
    energy: Tensor               # (B,) E(plan)
    log_z: Optional[Tensor]      # (B,) log partition function (Exact only)


def symmetric_pairwise(pairwise: Tensor) -> Tensor:
    """S (B, N, N, K, K): 1/2 (P_ij(a, c) + P_ji(c, a)), zero on the diagonal i = j."""
    N = pairwise.shape[1]
    off_diagonal = ~torch.eye(N, dtype=torch.bool, device=pairwise.device)
    S = 0.5 * (pairwise + pairwise.permute(0, 2, 1, 4, 3))
    return S * off_diagonal[None, :, :, None, None].to(S.dtype)


def check_energies(unary: Tensor, pairwise: Tensor) -> None:
    """Raise ValueError unless unary is (B, N, K) and pairwise (B, N, N, K, K), same dtype."""
    if unary.dim() != 3:
        raise ValueError(f"unary energies must be (B, N, K), got shape {tuple(unary.shape)}")
    B, N, K = unary.shape
    if tuple(pairwise.shape) != (B, N, N, K, K):
        raise ValueError(f"pairwise energies must be (B, N, N, K, K) = {(B, N, N, K, K)} to match "
                         f"unary {(B, N, K)}, got shape {tuple(pairwise.shape)}")
    if unary.dtype != pairwise.dtype or unary.device != pairwise.device:
        raise ValueError(f"unary ({unary.dtype}, {unary.device}) and pairwise ({pairwise.dtype}, "
                         f"{pairwise.device}) energies must share dtype and device")


def joint_energy(unary: Tensor, pairwise: Tensor, config: Tensor) -> Tensor:
    """E(config) (B,) for configurations config (B, N) int64; differentiable in the energies."""
    check_energies(unary, pairwise)
    B, N, K = unary.shape
    if tuple(config.shape) != (B, N):
        raise ValueError(f"configuration must be (B, N) = {(B, N)}, got {tuple(config.shape)}")
    if config.numel() and (int(config.min()) < 0 or int(config.max()) >= K):
        raise ValueError(f"configuration indices must lie in [0, {K}), got "
                         f"[{int(config.min())}, {int(config.max())}]")
    S = symmetric_pairwise(pairwise)
    unary_part = unary.gather(2, config[..., None]).squeeze(2).sum(1)
    i, j = torch.triu_indices(N, N, 1, device=unary.device)
    batch = torch.arange(B, device=unary.device)[:, None]
    pair_part = S[batch, i, j, config[:, i], config[:, j]].sum(1)
    return unary_part + pair_part


def _result(unary: Tensor, pairwise: Tensor, log_marginals: Tensor, plan: Tensor,
            log_z: Optional[Tensor] = None) -> JointResult:
    return JointResult(log_marginals.exp(), log_marginals, plan,
                       joint_energy(unary, pairwise, plan), log_z)


@dataclass(frozen=True)
class Exact:
    """Enumeration of all K^N joint configurations (at most `MAX_EXACT_CONFIGURATIONS`)."""

    def __call__(self, unary: Tensor, pairwise: Tensor) -> JointResult:
        check_energies(unary, pairwise)
        B, N, K = unary.shape
        count = K ** N
        if count > MAX_EXACT_CONFIGURATIONS:
            raise ValueError(f"exact inference enumerates K^N = {K}^{N} = {count} joint "
                             f"configurations, above the limit of {MAX_EXACT_CONFIGURATIONS}; "
                             "use belief propagation or mean field")
        device = unary.device
        code = torch.arange(count, device=device)
        place = K ** torch.arange(N - 1, -1, -1, device=device)
        configs = (code[:, None] // place) % K                             # (C, N)
        S = symmetric_pairwise(pairwise)
        i, j = torch.triu_indices(N, N, 1, device=device)
        pairs = torch.arange(i.numel(), device=device)[:, None]
        S_pairs = S[:, i, j]                                               # (B, L, K, K)
        energy = (unary[:, torch.arange(N, device=device)[:, None], configs.T].sum(1)
                  + S_pairs[:, pairs, configs[:, i].T, configs[:, j].T].sum(1))   # (B, C)
        log_z = torch.logsumexp(-energy, dim=1)
        probability = torch.softmax(-energy, dim=1)
        one_hot = torch.nn.functional.one_hot(configs, K).to(unary.dtype).reshape(count, N * K)
        marginals = (probability @ one_hot).reshape(B, N, K)
        log_marginals = marginals.clamp_min(torch.finfo(unary.dtype).tiny).log()
        plan = configs[energy.argmin(dim=1)]
        return _result(unary, pairwise, log_marginals, plan, log_z)


@dataclass(frozen=True)
class BeliefPropagation:
    """Loopy BP: sum-product marginals (unrolled) and a max-product joint plan."""

    iters: int = 20
    damping: float = 0.0

    def __post_init__(self):
        if self.iters < 1:
            raise ValueError(f"belief propagation needs iters >= 1, got {self.iters}")
        if not 0.0 <= self.damping < 1.0:
            raise ValueError(f"damping must lie in [0, 1), got {self.damping}")

    def __call__(self, unary: Tensor, pairwise: Tensor) -> JointResult:
        check_energies(unary, pairwise)
        S = symmetric_pairwise(pairwise)
        log_beliefs = self._beliefs(unary, S, max_product=False)
        with torch.no_grad():
            plan = self._beliefs(unary, S, max_product=True).argmax(dim=2)
        return _result(unary, pairwise, log_beliefs, plan)

    def _beliefs(self, unary: Tensor, S: Tensor, max_product: bool) -> Tensor:
        """Normalized log beliefs (B, N, K) after `iters` parallel message updates."""
        B, N, K = unary.shape
        off_diagonal = (~torch.eye(N, dtype=torch.bool, device=unary.device)).to(unary.dtype)
        mask = off_diagonal[None, :, :, None]
        messages = unary.new_zeros(B, N, N, K)                  # messages[:, i, j] = m_{i->j}
        for _ in range(self.iters):
            field = -unary + messages.sum(dim=1)                # (B, N, K): sum over senders k
            cavity = field[:, :, None, :] - messages.transpose(1, 2)  # [i, j, a] excludes m_{j->i}
            scores = cavity[..., None] - S                      # (B, N, N, K(a), K(c))
            if max_product:
                update = scores.amax(dim=3)
                update = update - update.amax(dim=3, keepdim=True)
            else:
                update = torch.logsumexp(scores, dim=3)
                update = update - torch.logsumexp(update, dim=3, keepdim=True)
            update = update * mask
            messages = update if self.damping == 0.0 else \
                self.damping * messages + (1.0 - self.damping) * update
        field = -unary + messages.sum(dim=1)
        return torch.log_softmax(field, dim=2)


@dataclass(frozen=True)
class MeanField:
    """Naive mean field with damped parallel updates; plan = argmax of each q_i."""

    iters: int = 50
    damping: float = 0.5

    def __post_init__(self):
        if self.iters < 1:
            raise ValueError(f"mean field needs iters >= 1, got {self.iters}")
        if not 0.0 <= self.damping < 1.0:
            raise ValueError(f"damping must lie in [0, 1), got {self.damping}")

    def __call__(self, unary: Tensor, pairwise: Tensor) -> JointResult:
        check_energies(unary, pairwise)
        S = symmetric_pairwise(pairwise)
        log_q = torch.log_softmax(-unary, dim=2)
        for _ in range(self.iters):
            field = -unary - torch.einsum("bijac,bjc->bia", S, log_q.exp())
            log_q = torch.log_softmax(self.damping * log_q + (1.0 - self.damping)
                                      * torch.log_softmax(field, dim=2), dim=2)
        return _result(unary, pairwise, log_q, log_q.argmax(dim=2).detach())


Inference = Exact | BeliefPropagation | MeanField


def classification_loss(unary: Tensor, pairwise: Tensor, gt_index: Tensor,
                        inference: Inference = BeliefPropagation()) -> Tensor:
    """-sum_i log p(s_i = gt_i) (B,): the ground truth's marginal negative log-likelihood.

    gt_index (B, N) int64 is each agent's ground-truth candidate; the marginals come from
    `inference` (default: 20 undamped BP iterations), differentiable in the energies.
    """
    B, N = gt_index.shape
    log_marginals = inference(unary, pairwise).log_marginals
    if tuple(log_marginals.shape[:2]) != (B, N):
        raise ValueError(f"gt_index must be (B, N) = {tuple(log_marginals.shape[:2])}, "
                         f"got {tuple(gt_index.shape)}")
    return -log_marginals.gather(2, gt_index[..., None]).squeeze(2).sum(1)


def refine_plan(unary: Tensor, pairwise: Tensor, plan: Tensor, steps: int) -> Tensor:
    """Greedy coordinate descent on E from `plan` (B, N): a better (or equal) joint plan (B, N).

    Each step computes, for every agent i and candidate a, the energy of moving agent i alone to
    a, L_i(a) = U_i(a) + sum_{j != i} S_ij(a, s_j), and moves the one agent per scene whose
    move lowers E the most (scenes where no move helps stay put), so E(plan) never increases
    and the result is a local minimum once no move helps (or after `steps` steps). Loopy BP's
    max-product plan on strongly coupled graphs (hard collision energies) can be far from the
    MAP; a few steps fix that. No gradient flows (the plan is discrete).
    """
    check_energies(unary, pairwise)
    B, N, K = unary.shape
    scenes = torch.arange(B, device=unary.device)
    with torch.no_grad():
        S = symmetric_pairwise(pairwise)
        for _ in range(steps):
            others = plan[:, None, :, None, None].expand(B, N, N, K, 1)
            local = unary + S.gather(4, others).squeeze(4).sum(2)          # (B, N(i), K(a))
            gain = local.gather(2, plan[..., None]).squeeze(2) - local.amin(2)
            best_gain, agent = gain.max(1)
            improves = best_gain > 1e-9 * (1.0 + local.abs().amax((1, 2)))
            if not bool(improves.any()):
                break
            moved = plan.clone()
            moved[scenes, agent] = local[scenes, agent].argmin(1)
            plan = torch.where(improves[:, None], moved, plan)
    return plan
