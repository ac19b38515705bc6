"""Tests of the closed-loop adapter (runtime/gym_env.py): a fake environment with gymnasium's
reset/step contract, and Pendulum-v1 itself (skipped without gymnasium)."""
import math
import sys

import numpy as np
import pytest
import torch

from runtime.gym_env import make_env, run_episode


class Box:
    def __init__(self, shape, dtype):
        self.shape, self.dtype = shape, dtype


class CountingEnv:
    """obs = position; reward = -|position|; terminates once |position| >= 3."""

    def __init__(self):
        self.action_space = Box((1,), np.float32)
        self.resets, self.sent = [], []

    def reset(self, seed=None, options=None):
        self.resets.append((seed, options))
        self.position = 0.5 if options is None else options["position"]
        return np.array([self.position], dtype=np.float32), {}

    def step(self, action):
        self.sent.append(action)
        self.position += float(action[0])
        reward = -abs(self.position)
        return (np.array([self.position], dtype=np.float32), reward, abs(self.position) >= 3,
                False, {})


def test_runs_the_controller_in_closed_loop_until_the_step_budget():
    env = CountingEnv()
    episode = run_episode(env, lambda obs: -0.5 * obs, steps=4, seed=3, options={"position": 2.0})
    assert env.resets == [(3, {"position": 2.0})]
    positions = torch.tensor([2.0, 1.0, 0.5, 0.25, 0.125], dtype=torch.float64)
    torch.testing.assert_close(episode.observations, positions[:, None])
    torch.testing.assert_close(episode.actions[:, 0], -0.5 * positions[:-1])
    torch.testing.assert_close(episode.rewards, -positions[1:])
    assert episode.return_ == pytest.approx(-positions[1:].sum().item())
    assert not episode.terminated and not episode.truncated
    assert all(a.dtype == np.float32 and a.shape == (1,) for a in env.sent)


def test_stops_when_the_environment_terminates_and_start_sets_the_state():
    env = CountingEnv()

    def start(e):
        e.position = 1.0
        return np.array([e.position], dtype=np.float32)

    episode = run_episode(env, lambda obs: torch.ones(1), steps=10, start=start,
                          dtype=torch.float32)
    assert episode.terminated and len(episode.rewards) == 2      # 1 -> 2 -> 3
    assert episode.observations.dtype == torch.float32
    assert episode.observations[0].item() == 1.0


def test_rejects_an_empty_episode():
    with pytest.raises(ValueError, match="steps >= 1"):
        run_episode(CountingEnv(), lambda obs: obs, steps=0)


def test_missing_gymnasium_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gymnasium", None)
    with pytest.raises(ImportError, match=r"pip install -e \.\[gym\]"):
        make_env("Pendulum-v1")


def test_pendulum_follows_its_own_equations():
    pytest.importorskip("gymnasium")
    env = make_env("Pendulum-v1")

    def start(e):
        e.unwrapped.state = np.array([math.pi, 1.0])
        return e.unwrapped._get_obs()

    torques = iter([2.0, -1.0, 3.0])             # 3 is clipped to 2 by the environment
    episode = run_episode(env, lambda obs: torch.tensor([next(torques)]), steps=3, seed=0,
                          start=start)
    env.close()
    th, thdot = math.pi, 1.0
    for k, u in enumerate([2.0, -1.0, 2.0]):
        angle = (th + math.pi) % (2 * math.pi) - math.pi
        reward = -angle ** 2 - 0.1 * thdot ** 2 - 0.001 * u ** 2
        assert episode.rewards[k].item() == pytest.approx(reward, rel=1e-5)
        thdot = min(max(thdot + 0.05 * (15.0 * math.sin(th) + 3.0 * u), -8.0), 8.0)
        th = th + 0.05 * thdot
        obs = episode.observations[k + 1]
        assert obs.tolist() == pytest.approx([math.cos(th), math.sin(th), thdot], abs=1e-6)
