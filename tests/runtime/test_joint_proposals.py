"""Tests of candidate proposals (runtime/joint_proposals.py) and energies (runtime/joint_energies.py)."""
import pytest
import torch

from runtime.joint_energies import (collides, collision_energy, goal_energy, goal_features,
                                    min_distance, pair_hinge_features)
from runtime.joint_proposals import (Candidates, control_lattice, double_integrator,
                                     double_integrator_endpoint_projection, insert_candidates,
                                     lattice_proposals, rollout, sampled_proposals)


def random_candidates(B=2, N=3, K=4, T=6, dt=0.5, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    x0 = scale * torch.randn(B, N, 4, generator=g, dtype=torch.float64)
    u = torch.randn(B, N, K, T, 2, generator=g, dtype=torch.float64)
    x = rollout(double_integrator(dt), x0[:, :, None].expand(-1, -1, K, -1), u)
    return Candidates(x, u)


def test_double_integrator_rollout():
    dt = 0.3
    x0 = torch.tensor([[1.0, 2.0, 0.5, -0.5]], dtype=torch.float64)
    u = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]], dtype=torch.float64)
    x = rollout(double_integrator(dt), x0, u)
    assert x.shape == (1, 3, 4)
    p, v = x0[0, :2].clone(), x0[0, 2:].clone()
    for t in range(2):
        p, v = p + dt * v + 0.5 * dt ** 2 * u[0, t], v + dt * u[0, t]
        torch.testing.assert_close(x[0, t + 1], torch.cat([p, v]))


def test_control_lattice_and_lattice_proposals():
    levels = torch.tensor([-1.0, 0.0, 1.0])
    controls = control_lattice(levels, m=2, T=5, segments=2)
    assert controls.shape == (81, 5, 2)
    assert len({tuple(c.flatten().tolist()) for c in controls}) == 81
    torch.testing.assert_close(controls[:, 0], controls[:, 1])        # first segment: t = 0..2
    torch.testing.assert_close(controls[:, 3], controls[:, 4])
    x0 = torch.randn(2, 3, 4)
    cands = lattice_proposals(double_integrator(0.2), x0, controls)
    assert cands.x.shape == (2, 3, 81, 6, 4) and cands.u.shape == (2, 3, 81, 5, 2)
    torch.testing.assert_close(cands.x[1, 2, 7], rollout(double_integrator(0.2), x0[1, 2], controls[7]))
    with pytest.raises(ValueError, match="segments"):
        control_lattice(levels, 2, 5, segments=6)


def goal_cost(goals, dt):
    weights = torch.tensor([10.0, 5.0, 1.0], dtype=torch.float64)
    return lambda x, u: goal_energy(x, goals, weights, dt)


def test_sampler_improves_on_zero_controls_and_keeps_endpoint():
    B, N, K, T, dt = 2, 3, 16, 12, 0.25
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(B, N, 4, generator=g, dtype=torch.float64)
    goals = x0[..., :2] + 2.0 * torch.randn(B, N, 2, generator=g, dtype=torch.float64)
    cost = goal_cost(goals, dt)
    cands = sampled_proposals(double_integrator(dt), x0, cost, K, T, 2, iters=8, generator=g,
                              final_noise=double_integrator_endpoint_projection(dt, T))
    assert cands.x.shape == (B, N, K, T + 1, 4) and cands.u.shape == (B, N, K, T, 2)
    zero = rollout(double_integrator(dt), x0[:, :, None], x0.new_zeros(B, N, 1, T, 2))
    assert (cost(cands.x[:, :, :1], cands.u[:, :, :1]) < cost(zero, zero[..., :-1, :2] * 0)).all()
    torch.testing.assert_close(cands.x[..., -1, :], cands.x[:, :, :1, -1, :].expand(-1, -1, K, -1))
    assert (cands.u[:, :, 1:] - cands.u[:, :, :1]).abs().amax() > 0.1          # not all the same
    with pytest.raises(ValueError, match="K >= 2"):
        sampled_proposals(double_integrator(dt), x0, cost, 1, T, 2)


def test_insert_candidates():
    cands = random_candidates()
    x_gt, u_gt = torch.zeros(2, 3, 7, 4, dtype=torch.float64), torch.ones(2, 3, 6, 2, dtype=torch.float64)
    index = torch.tensor([[0, 3, 1], [2, 2, 0]])
    out = insert_candidates(cands, x_gt, u_gt, index)
    for b in range(2):
        for i in range(3):
            k = int(index[b, i])
            assert (out.x[b, i, k] == 0).all() and (out.u[b, i, k] == 1).all()
            others = [j for j in range(4) if j != k]
            torch.testing.assert_close(out.x[b, i, others], cands.x[b, i, others])
    assert not (cands.x == 0).all(-1).all(-1).any()                   # the input is not modified


def test_goal_features_match_their_definition():
    dt = 0.5
    cands = random_candidates(dt=dt)
    goals = torch.randn(2, 3, 2, dtype=torch.float64)
    f = goal_features(cands.x, goals, dt)
    assert f.shape == (2, 3, 4, 3)
    torch.testing.assert_close(f[..., 0], (cands.x[..., -1, :2] - goals[:, :, None]).square().sum(-1))
    torch.testing.assert_close(f[..., 1], cands.x[..., -1, 2:].square().sum(-1))
    torch.testing.assert_close(f[..., 2], dt * cands.u.square().sum((-1, -2)))   # effort = controls
    with pytest.raises(ValueError, match="goals must be"):
        goal_features(cands.x, goals[:, :2], dt)


def test_pair_hinge_features_brute_force_and_symmetry():
    cands = random_candidates(scale=0.7)
    f = pair_hinge_features(cands.x, (1.0, 1.5), (1.0, 2.0))
    assert f.shape == (2, 3, 3, 4, 4, 2)
    p = cands.x[..., :2]
    for (b, i, j, a, c) in [(0, 0, 1, 2, 3), (1, 2, 0, 1, 1), (1, 1, 2, 0, 3)]:
        d = (p[b, i, a] - p[b, j, c]).norm(dim=-1)
        torch.testing.assert_close(f[b, i, j, a, c, 0], torch.relu(1.0 - d).sum())
        torch.testing.assert_close(f[b, i, j, a, c, 1], torch.relu(1.5 - d).square().sum())
    torch.testing.assert_close(f, f.permute(0, 2, 1, 4, 3, 5))
    assert f[..., 1].sum() > 0
    torch.testing.assert_close(collision_energy(cands.x, 3.0), 3.0 * f[..., 0])


def test_energies_gradcheck():
    cands = random_candidates(B=1, N=2, K=2, T=3, scale=0.5)
    goals = torch.randn(1, 2, 2, dtype=torch.float64)
    x = cands.x.clone().requires_grad_()
    weights = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: goal_energy(x, goals, w, 0.5), (x, weights))
    # between different agents (an agent's distance to itself is not differentiable at 0)
    assert torch.autograd.gradcheck(lambda x: pair_hinge_features(x, (3.0,), (2.0,))[:, 0, 1],
                                    (x,))


def test_collisions_and_min_distance():
    x = torch.zeros(2, 3, 4, 4, dtype=torch.float64)
    x[:, 1, :, 0] = 2.0
    x[:, 2, :, 0] = 4.0
    x[1, 2, 2, 0] = 2.9                                               # 0.9 from agent 1 at t=2
    torch.testing.assert_close(min_distance(x), torch.tensor([2.0, 0.9], dtype=torch.float64))
    assert collides(x).tolist() == [False, True]
