"""Task streams: the pendulum regimes follow gymnasium's Pendulum-v1; the digits streams."""
import math

import numpy as np
import pytest
import torch

from runtime.streams import (CARTPOLE_REGIMES, PENDULUM_REGIMES, cartpole_step, cartpole_transitions,
                             pendulum_regimes, pendulum_step, permuted_digits, permuted_gaussian, split_digits)


def test_pendulum_step_matches_gymnasium():
    gym = pytest.importorskip("gymnasium")
    env = gym.make("Pendulum-v1").unwrapped
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for mass, length in PENDULUM_REGIMES:
        env.m, env.l = mass, length
        th, thdot, u = rng.uniform(-math.pi, math.pi), rng.uniform(-8, 8), rng.uniform(-3, 3)
        env.state = np.array([th, thdot])
        env.step(np.array([u]))
        ours = pendulum_step(*(torch.tensor([v], dtype=torch.float64)
                               for v in (th, thdot, u, mass, length)))
        np.testing.assert_allclose([ours[0].item(), ours[1].item()], env.state, rtol=1e-6)


def test_pendulum_regimes_shapes_and_targets():
    tasks = pendulum_regimes(n_train=50, n_test=20)
    assert [t.name for t in tasks][0] == "m=1.0, l=1.0" and len(tasks) == 5
    for task, (mass, length) in zip(tasks, PENDULUM_REGIMES):
        x, y = task.train.x, task.train.y
        assert x.shape == (50, 5) and y.shape == (50, 2) and task.test.x.shape == (20, 5)
        assert torch.all(x[:, 3] == mass) and torch.all(x[:, 4] == length)
        th, thdot = pendulum_step(*x.double().unbind(1))
        torch.testing.assert_close(y, torch.stack([th, thdot], 1).float())


def test_cartpole_step_without_friction_matches_gymnasium():
    gym = pytest.importorskip("gymnasium")
    env = gym.make("CartPole-v1").unwrapped
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for mass, length, _ in CARTPOLE_REGIMES:
        env.masspole, env.length = mass, length
        env.total_mass, env.polemass_length = env.masspole + env.masscart, mass * length
        state, force = rng.uniform(-1, 1, 4), rng.uniform(0, 10)
        env.state, env.force_mag = state.copy(), force             # action 1 pushes with +force_mag
        env.steps_beyond_terminated = None                          # each step is a fresh start
        env.step(1)
        ours = cartpole_step(torch.tensor(state)[None], *(torch.tensor([v], dtype=torch.float64)
                                                           for v in (force, mass, length, 0.0)))
        np.testing.assert_allclose(ours[0].numpy(), env.state, rtol=1e-6, atol=1e-12)


def test_cartpole_friction_slows_the_cart_and_transitions_follow_the_step():
    s = torch.tensor([[0.0, 2.0, 0.0, 0.0]], dtype=torch.float64)
    zero, one = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    free = cartpole_step(s, zero, 0.1 * one, 0.5 * one, zero)
    rubbing = cartpole_step(s, zero, 0.1 * one, 0.5 * one, one)
    torch.testing.assert_close(free[0, 1], s[0, 1])                 # upright pole, no force: no acceleration
    # F = -b xdot = -2: a = F / M, thddot = -a / (l (4/3 - mp / M)), xddot = a - mp l thddot / M (M = 1.1)
    a = -2.0 / 1.1
    thddot = -a / (0.5 * (4 / 3 - 0.1 / 1.1))
    torch.testing.assert_close(rubbing[0], torch.tensor([0.04, 2 + 0.02 * (a - 0.05 * thddot / 1.1), 0, 0.02 * thddot],
                                                        dtype=torch.float64))
    data = cartpole_transitions(64, CARTPOLE_REGIMES[1], torch.Generator().manual_seed(0), torch.float64)
    assert data.x.shape == (64, 8) and data.y.shape == (64, 4)
    assert torch.all(data.x[:, 5:] == torch.tensor(CARTPOLE_REGIMES[1], dtype=torch.float64))
    torch.testing.assert_close(data.y, cartpole_step(data.x[:, :4], data.x[:, 4], *data.x[:, 5:].unbind(1)))


def test_permuted_gaussian_tasks_are_permutations_of_task_zero():
    tasks = permuted_gaussian(n_tasks=3, dim=8, n_train=40, n_test=10)
    base = tasks[0].train.x
    for task in tasks[1:]:
        assert not torch.equal(task.train.x, base)
        torch.testing.assert_close(task.train.x.sort(1).values, base.sort(1).values)
        assert torch.equal(task.train.y, tasks[0].train.y)


def test_digits_streams():
    pytest.importorskip("sklearn")
    permuted = permuted_digits(n_tasks=3)
    assert permuted[0].train.x.shape[1] == 64 and len(permuted) == 3
    assert len(permuted[0].train) + len(permuted[0].test) == 1797
    split = split_digits()
    assert [t.name for t in split] == ["0-1", "2-3", "4-5", "6-7", "8-9"]
    assert set(split[1].train.y.tolist()) == {2, 3}
    assert sum(len(t.train) + len(t.test) for t in split) == 1797
