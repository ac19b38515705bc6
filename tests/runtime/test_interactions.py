"""Tests of the interaction data generator (runtime/interactions.py)."""
import math

import numpy as np
import pytest
import torch

from runtime import interactions
from runtime.interactions import (JointCost, SCENES, double_integrator_rollout, joint_objective,
                                  newton_system)
from runtime.joint_energies import min_distance
from runtime.joint_proposals import double_integrator, rollout


@pytest.fixture(scope="module")
def corridor():
    return interactions.generate("corridor_swap", 2, 3, seed=0, T=24, dt=0.25, batch=6)


def test_closed_form_rollout_matches_the_step():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 2, 4, generator=g, dtype=torch.float64)
    u = torch.randn(3, 2, 9, 2, generator=g, dtype=torch.float64)
    torch.testing.assert_close(double_integrator_rollout(x0, u, 0.3),
                               rollout(double_integrator(0.3), x0, u))


@pytest.mark.parametrize("lateral_limit", [None, 0.4])
def test_newton_system_is_half_the_exact_hessian(lateral_limit):
    g = torch.Generator().manual_seed(1)
    starts = SCENES["intersection"](g, 1, 3)
    u = torch.randn(1, 3, 4, 2, generator=g, dtype=torch.float64)
    cost = JointCost(clearance=20.0, sharpness=0.5)          # every pair and wall term active

    def objective(flat):
        return joint_objective(flat.reshape(1, 3, 4, 2), starts.x0, starts.goals, 0.5, cost,
                               lateral_limit)[0]

    gradient, half_hessian = newton_system(u, starts.x0, starts.goals, 0.5, cost, lateral_limit)
    hessian = torch.autograd.functional.hessian(objective, u.reshape(-1))
    flat = u.reshape(-1).requires_grad_()
    (expected_gradient,) = torch.autograd.grad(objective(flat), flat)
    torch.testing.assert_close(half_hessian[0], hessian / 2, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(gradient[0], expected_gradient, rtol=1e-10, atol=1e-9)


def test_ground_truth_is_collision_free_consistent_and_locally_optimal(corridor):
    x0, goals, x, u = corridor.x0, corridor.goals, corridor.x, corridor.u
    assert x0.shape == (3, 2, 4) and goals.shape == (3, 2, 2)
    assert x.shape == (3, 2, 25, 4) and u.shape == (3, 2, 24, 2)
    torch.testing.assert_close(x, rollout(double_integrator(0.25), x0, u))
    assert (min_distance(x) >= 1.0).all()
    assert (x[..., 1].abs() <= 1.0 + 0.1).all()                     # stays in the corridor
    assert ((x[:, :, -1, :2] - goals).norm(dim=-1) <= 0.5).all()
    gradient, half_hessian = newton_system(u, x0, goals, 0.25, JointCost(), 1.0)
    assert gradient.abs().amax() <= 1e-5
    assert (torch.linalg.eigvalsh(half_hessian) > 0).all()          # a strict local minimum
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        direction = 1e-3 * torch.randn(u.shape, generator=g, dtype=u.dtype)
        assert (joint_objective(u + direction, x0, goals, 0.25, JointCost(), 1.0)
                > joint_objective(u, x0, goals, 0.25, JointCost(), 1.0)).all()
    # the agents had to avoid each other: their straight paths cross head on
    assert (x0[:, 0, 0] < 0).all() and (x0[:, 1, 0] > 0).all()


def test_scene_starts():
    g = torch.Generator().manual_seed(0)
    starts = SCENES["intersection"](g, 50, 4)
    distance = starts.x0[..., :2].norm(dim=-1)
    assert ((distance > 3.0) & (distance < 5.2)).all()
    speed = starts.x0[..., 2:].norm(dim=-1)
    assert (speed <= 1.0).all()
    inward = (starts.x0[..., :2] * starts.x0[..., 2:]).sum(-1)
    assert (inward <= 0).all()
    start_arm = torch.atan2(starts.x0[..., 1], starts.x0[..., 0]).mul(2 / math.pi).round() % 4
    goal_arm = torch.atan2(starts.goals[..., 1], starts.goals[..., 0]).mul(2 / math.pi).round() % 4
    assert (start_arm != goal_arm).all()
    assert (goal_arm.sort(1).values == torch.arange(4.0)).all()     # every arm is someone's goal
    for scene, N in (("corridor_swap", 2), ("merge", 3), ("intersection", 8)):
        starts = SCENES[scene](g, 20, N)
        assert starts.x0.shape == (20, N, 4) and starts.goals.shape == (20, N, 2)
        assert (min_distance(starts.x0[:, :, None]) > 1.2).all()


def test_save_load_round_trip(corridor, tmp_path):
    path = tmp_path / "scenes.npz"
    interactions.save(corridor, path)
    loaded = interactions.load(path)
    for name in ("x0", "goals", "x", "u"):
        assert torch.equal(getattr(loaded, name), getattr(corridor, name))
    assert (loaded.dt, loaded.scene, loaded.seed) == (0.25, "corridor_swap", 0)
    np.savez(tmp_path / "bad.npz", x0=np.zeros(3))
    with pytest.raises(ValueError, match="missing"):
        interactions.load(tmp_path / "bad.npz")


def test_errors():
    with pytest.raises(ValueError, match="unknown scene 'roundabout'"):
        interactions.generate("roundabout", 2, 1, seed=0)
    with pytest.raises(ValueError, match="2..8 agents"):
        SCENES["intersection"](torch.Generator(), 1, 9)
