"""`runtime.joint.refine_plan` (greedy coordinate descent on the joint energy) and the proposal
helpers of the language's `solve joint`: `endpoint_projector`, `coefficient_lattice`."""
import torch

from runtime.joint import BeliefPropagation, Exact, joint_energy, refine_plan
from runtime.joint_proposals import coefficient_lattice, endpoint_projector


def energies(B=6, N=4, K=5, seed=0, coupling=5.0):
    g = torch.Generator().manual_seed(seed)
    unary = torch.randn(B, N, K, generator=g, dtype=torch.float64)
    pairwise = coupling * torch.rand(B, N, N, K, K, generator=g, dtype=torch.float64) ** 4
    return unary, pairwise


def test_refine_never_raises_the_energy_and_ends_in_a_local_minimum():
    unary, pairwise = energies()
    start = BeliefPropagation(iters=10, damping=0.5)(unary, pairwise).plan
    plan = refine_plan(unary, pairwise, start, steps=100)
    before, after = joint_energy(unary, pairwise, start), joint_energy(unary, pairwise, plan)
    assert (after <= before + 1e-12).all()
    B, N, K = unary.shape
    for i in range(N):                      # no single agent can lower E by moving alone
        moved = plan[:, None].repeat(1, K, 1)
        moved[:, :, i] = torch.arange(K)
        E = torch.stack([joint_energy(unary, pairwise, moved[:, k]) for k in range(K)], 1)
        assert (E.amin(1) >= after - 1e-10).all()


def test_refine_from_a_poor_start_finds_the_exact_map_on_weak_coupling():
    unary, pairwise = energies(coupling=0.05, seed=1)
    exact = Exact()(unary, pairwise)
    worst = unary.argmax(2)
    plan = refine_plan(unary, pairwise, worst, steps=50)
    assert torch.equal(plan, exact.plan)
    assert torch.equal(refine_plan(unary, pairwise, plan, steps=0), plan)


def test_endpoint_projector_removes_the_terminal_directions():
    g = torch.Generator().manual_seed(2)
    G = torch.randn(3, 4, 10, generator=g, dtype=torch.float64)
    P = endpoint_projector(G)
    torch.testing.assert_close(G @ P, torch.zeros(3, 4, 10, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(P @ P, P, atol=1e-12, rtol=0)
    torch.testing.assert_close(P, P.mT, atol=1e-12, rtol=0)
    assert torch.linalg.matrix_rank(P).tolist() == [6, 6, 6]


def test_coefficient_lattice_enumerates_every_combination():
    lattice = coefficient_lattice(3, 2.0, 2, torch.zeros((), dtype=torch.float64))
    assert lattice.shape == (9, 2)
    assert set(map(tuple, lattice.tolist())) == {(a, b) for a in (-2.0, 0.0, 2.0) for b in (-2.0, 0.0, 2.0)}
