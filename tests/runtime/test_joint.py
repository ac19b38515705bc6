"""Tests of joint inference over candidate trajectories (runtime/joint.py).

The reference is a brute-force sum over itertools.product of every joint configuration, written
independently of the batched enumeration in `Exact`.
"""
import itertools
import math

import pytest
import torch

from runtime.joint import (MAX_EXACT_CONFIGURATIONS, BeliefPropagation, Exact, MeanField,
                           classification_loss, joint_energy, symmetric_pairwise)


def random_energies(B, N, K, seed, coupling=1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    unary = torch.randn(B, N, K, generator=g, dtype=torch.float64)
    pairwise = coupling * torch.randn(B, N, N, K, K, generator=g, dtype=torch.float64)
    return unary.to(dtype), pairwise.to(dtype)


def tree_pairwise(pairwise, edges):
    """Zero every pair term outside `edges` (both orders kept), making the graph a tree."""
    N = pairwise.shape[1]
    keep = torch.zeros(N, N, dtype=pairwise.dtype)
    for i, j in edges:
        keep[i, j] = keep[j, i] = 1.0
    return pairwise * keep[None, :, :, None, None]


def brute_force(unary, pairwise):
    """(marginals (B, N, K), log Z (B,), MAP (B, N)) by summing over itertools.product."""
    B, N, K = unary.shape
    marginals = torch.zeros_like(unary)
    log_z = torch.empty(B, dtype=unary.dtype)
    plans = torch.empty(B, N, dtype=torch.long)
    for b in range(B):
        energies = {}
        for s in itertools.product(range(K), repeat=N):
            e = sum(float(unary[b, i, s[i]]) for i in range(N))
            e += sum(0.5 * float(pairwise[b, i, j, s[i], s[j]] + pairwise[b, j, i, s[j], s[i]])
                     for i in range(N) for j in range(i + 1, N))
            energies[s] = e
        shift = min(energies.values())
        weights = {s: math.exp(-(e - shift)) for s, e in energies.items()}
        total = sum(weights.values())
        log_z[b] = math.log(total) - shift
        for s, w in weights.items():
            for i in range(N):
                marginals[b, i, s[i]] += w / total
        plans[b] = torch.tensor(min(energies, key=energies.get))
    return marginals, log_z, plans


@pytest.mark.parametrize("N,K", [(1, 4), (2, 3), (3, 3), (4, 2)])
def test_exact_matches_brute_force(N, K):
    unary, pairwise = random_energies(2, N, K, seed=N * 10 + K)
    result = Exact()(unary, pairwise)
    marginals, log_z, plans = brute_force(unary, pairwise)
    torch.testing.assert_close(result.marginals, marginals, rtol=0, atol=1e-12)
    torch.testing.assert_close(result.log_z, log_z, rtol=0, atol=1e-12)
    assert torch.equal(result.plan, plans)
    torch.testing.assert_close(result.marginals.sum(2), torch.ones(2, N, dtype=torch.float64))


def test_joint_energy_reads_symmetric_part_and_ignores_diagonal():
    unary, pairwise = random_energies(3, 3, 4, seed=1)
    config = torch.tensor([[0, 1, 2], [3, 3, 0], [1, 0, 1]])
    energy = joint_energy(unary, pairwise, config)
    for b in range(3):
        s = config[b].tolist()
        expected = sum(unary[b, i, s[i]] for i in range(3)) + sum(
            0.5 * (pairwise[b, i, j, s[i], s[j]] + pairwise[b, j, i, s[j], s[i]])
            for i in range(3) for j in range(i + 1, 3))
        torch.testing.assert_close(energy[b], expected, rtol=0, atol=1e-12)
    changed_diagonal = pairwise.clone()
    changed_diagonal[:, 1, 1] += 100.0
    torch.testing.assert_close(joint_energy(unary, changed_diagonal, config), energy)
    S = symmetric_pairwise(pairwise)
    torch.testing.assert_close(S, S.permute(0, 2, 1, 4, 3))


@pytest.mark.parametrize("seed", range(4))
def test_bp_equals_exact_on_two_agents(seed):
    unary, pairwise = random_energies(5, 2, 6, seed=seed, coupling=2.0)
    exact = Exact()(unary, pairwise)
    bp = BeliefPropagation(iters=3)(unary, pairwise)
    assert (bp.marginals - exact.marginals).abs().max() <= 1e-10
    assert torch.equal(bp.plan, exact.plan)
    torch.testing.assert_close(bp.energy, exact.energy, rtol=0, atol=1e-12)


@pytest.mark.parametrize("edges", [[(0, 1), (1, 2), (2, 3)], [(0, 1), (0, 2), (0, 3)]],
                         ids=["chain", "star"])
def test_bp_equals_exact_on_trees_with_damping(edges):
    unary, raw = random_energies(3, 4, 3, seed=7, coupling=2.0)
    pairwise = tree_pairwise(raw, edges)
    exact = Exact()(unary, pairwise)
    undamped = BeliefPropagation(iters=4)(unary, pairwise)
    damped = BeliefPropagation(iters=80, damping=0.5)(unary, pairwise)
    for bp in (undamped, damped):
        assert (bp.marginals - exact.marginals).abs().max() <= 1e-10
        assert torch.equal(bp.plan, exact.plan)


@pytest.mark.parametrize("N", [3, 4])
def test_bp_close_to_exact_on_loopy_graphs(N):
    """Complete graphs of 3 or 4 agents; weak coupling keeps loopy BP accurate."""
    unary, pairwise = random_energies(20, N, 3, seed=N, coupling=0.3)
    exact = Exact()(unary, pairwise)
    bp = BeliefPropagation(iters=30, damping=0.2)(unary, pairwise)
    gap = (bp.marginals - exact.marginals).abs().max()
    assert gap < 0.02, f"loopy BP marginal gap {gap:.3g}"
    agreement = (bp.plan == exact.plan).all(dim=1).float().mean()
    assert agreement >= 0.9


def test_mean_field_fixed_point_and_accuracy():
    unary, pairwise = random_energies(10, 3, 3, seed=11, coupling=0.2)
    exact = Exact()(unary, pairwise)
    mf = MeanField(iters=200, damping=0.5)(unary, pairwise)
    S = symmetric_pairwise(pairwise)
    field = -unary - torch.einsum("bijac,bjc->bia", S, mf.marginals)
    torch.testing.assert_close(mf.log_marginals, torch.log_softmax(field, 2), rtol=0, atol=1e-9)
    assert (mf.marginals - exact.marginals).abs().max() < 0.05


def test_mean_field_without_coupling_is_exact():
    unary, pairwise = random_energies(2, 3, 4, seed=3)
    mf = MeanField(iters=5)(unary, torch.zeros_like(pairwise))
    torch.testing.assert_close(mf.marginals, torch.softmax(-unary, 2), rtol=0, atol=1e-12)


def test_float32_agrees_with_float64():
    unary, pairwise = random_energies(4, 3, 5, seed=5)
    for method in (Exact(), BeliefPropagation(iters=10, damping=0.1), MeanField(iters=20)):
        r64 = method(unary, pairwise)
        r32 = method(unary.float(), pairwise.float())
        assert r32.marginals.dtype == torch.float32
        torch.testing.assert_close(r32.marginals.double(), r64.marginals, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", [Exact(), BeliefPropagation(iters=4, damping=0.3),
                                    MeanField(iters=6, damping=0.3)],
                         ids=["exact", "bp", "mean_field"])
def test_gradients_of_marginals_and_plan_energy(method):
    unary, pairwise = random_energies(2, 3, 3, seed=2)
    unary.requires_grad_()
    pairwise.requires_grad_()
    weights = torch.randn(2, 3, 3, dtype=torch.float64)

    def outputs(u, p):
        result = method(u, p)
        extra = () if result.log_z is None else (result.log_z,)
        return ((result.marginals * weights).sum((1, 2)), result.energy) + extra

    assert torch.autograd.gradcheck(outputs, (unary, pairwise), eps=1e-6, atol=1e-7)


def test_exact_log_z_gradient_is_the_marginal():
    """d log Z / d U_i(a) = -p(s_i = a): an analytic check of the backward pass."""
    unary, pairwise = random_energies(2, 3, 3, seed=4)
    unary.requires_grad_()
    result = Exact()(unary, pairwise)
    (grad,) = torch.autograd.grad(result.log_z.sum(), unary)
    torch.testing.assert_close(grad, -result.marginals.detach(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", [Exact(), BeliefPropagation(iters=5)], ids=["exact", "bp"])
def test_classification_loss_gradient_and_value(method):
    unary, pairwise = random_energies(3, 2, 4, seed=6)
    gt = torch.tensor([[0, 1], [3, 2], [1, 1]])
    loss = classification_loss(unary, pairwise, gt, method)
    marginals, _, _ = brute_force(unary, pairwise)
    expected = -marginals.log().gather(2, gt[..., None]).squeeze(2).sum(1)
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-10)
    unary.requires_grad_()
    pairwise.requires_grad_()
    assert torch.autograd.gradcheck(lambda u, p: classification_loss(u, p, gt, method),
                                    (unary, pairwise), eps=1e-6, atol=1e-7)


def test_errors_name_the_problem():
    unary, pairwise = random_energies(2, 3, 4, seed=0)
    with pytest.raises(ValueError, match=r"pairwise energies must be \(B, N, N, K, K\)"):
        Exact()(unary, pairwise[:, :, :, :3])
    with pytest.raises(ValueError, match=r"unary energies must be \(B, N, K\)"):
        BeliefPropagation()(unary[0], pairwise)
    with pytest.raises(ValueError, match="share dtype"):
        MeanField()(unary.float(), pairwise)
    with pytest.raises(ValueError, match="damping"):
        BeliefPropagation(damping=1.0)
    with pytest.raises(ValueError, match="iters"):
        MeanField(iters=0)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 4\)"):
        joint_energy(unary, pairwise, torch.full((2, 3), 4))
    with pytest.raises(ValueError, match="gt_index must be"):
        classification_loss(unary, pairwise, torch.zeros(2, 2, dtype=torch.long), Exact())
    K, N = 32, 5
    assert K ** N > MAX_EXACT_CONFIGURATIONS
    big_unary = torch.zeros(1, N, K)
    with pytest.raises(ValueError, match="above the limit"):
        Exact()(big_unary, torch.zeros(1, N, N, K, K))
