"""The DeepMind Control adapter (`runtime.dmc_env`): its logic against a fake dm_env environment
(no dm_control needed), and the real pendulum-swingup when dm_control is installed."""
from __future__ import annotations

from collections import OrderedDict
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from runtime.dmc_env import DMCEnv, parse_dmc_id
from runtime.gym_env import make_env, run_episode


class FakeSuiteEnv:
    """A dm_env-like task: state s starts at the seed, s += a per step, reward s, `limit` steps."""

    def __init__(self, seed, limit=5, terminal_at=None):
        self.start, self.limit, self.terminal_at = float(seed or 0), limit, terminal_at
        self.sent = []

    def action_spec(self):
        return SimpleNamespace(minimum=-2.0, maximum=np.array([2.0]), shape=(1,), dtype=np.float32)

    def _step(self, first, reward=None, discount=None):
        last = not first and (self.t >= self.limit or self.s == self.terminal_at)
        observation = OrderedDict(position=np.array([self.s, -self.s]), velocity=np.array(float(self.t)))
        return SimpleNamespace(observation=observation, reward=reward, last=lambda: last,
                               discount=(0.0 if self.s == self.terminal_at else 1.0) if last else discount)

    def reset(self):
        self.s, self.t = self.start, 0
        return self._step(first=True)

    def step(self, action):
        self.sent.append(np.array(action))
        self.s += float(action[0])
        self.t += 1
        return self._step(first=False, reward=self.s)


def fake_loader(**kwargs):
    loads = []

    def load(seed):
        loads.append(seed)
        return FakeSuiteEnv(seed, **kwargs)
    return load, loads


def test_reset_reloads_with_the_seed_and_flattens_the_observation_in_order():
    load, loads = fake_loader()
    env = DMCEnv(load, action_repeat=1)
    assert env.action_space.shape == (1,) and env.action_space.dtype == np.float32
    np.testing.assert_array_equal(env.action_space.low, [-2.0])
    obs, info = env.reset(seed=3)
    np.testing.assert_array_equal(obs, [3.0, -3.0, 0.0])
    assert info == {} and loads == [None, 3]
    env.reset()                                          # no seed: the same task, no reload
    assert loads == [None, 3]


def test_actions_are_repeated_and_their_rewards_summed_until_the_time_limit():
    load, _ = fake_loader(limit=5)
    env = DMCEnv(load, action_repeat=2)
    env.reset(seed=1)
    obs, reward, terminated, truncated, _ = env.step(np.array([0.5]))
    assert reward == pytest.approx(1.5 + 2.0) and not terminated and not truncated
    np.testing.assert_array_equal(obs, [2.0, -2.0, 2.0])
    env.step(np.array([0.5]))
    obs, reward, terminated, truncated, _ = env.step(np.array([1.0]))    # step 5 ends it: one repeat only
    assert reward == pytest.approx(4.0) and truncated and not terminated
    assert len(env._env.sent) == 5 and env._env.sent[-1].dtype == np.float32


def test_a_terminal_step_is_terminated_not_truncated():
    load, _ = fake_loader(limit=50, terminal_at=3.0)
    env = DMCEnv(load, action_repeat=3)
    env.reset(seed=0)
    _, reward, terminated, truncated, _ = env.step(np.array([1.0]))
    assert terminated and not truncated and reward == pytest.approx(6.0)


def test_run_episode_drives_the_adapter_like_a_gymnasium_environment():
    load, _ = fake_loader(limit=6)
    episode = run_episode(DMCEnv(load, action_repeat=2), lambda obs: torch.tensor([1.0]), steps=10, seed=0)
    assert episode.actions.shape == (3, 1) and episode.truncated
    assert episode.return_ == pytest.approx(sum(range(1, 7)))
    assert episode.observations.shape == (4, 3)


@pytest.mark.parametrize("bad", ["dmc:pendulum", "dmc:pendulum-swingup:two", "dmc:-swingup"])
def test_bad_ids_are_refused(bad):
    with pytest.raises(ValueError, match="dmc:DOMAIN-TASK"):
        parse_dmc_id(bad)
    assert parse_dmc_id("dmc:ball_in_cup-catch:4") == ("ball_in_cup", "catch", 4)


def test_a_bad_action_repeat_is_refused():
    with pytest.raises(ValueError, match="action repeat must be >= 1"):
        DMCEnv(fake_loader()[0], action_repeat=0)


def test_the_real_pendulum_swingup():
    pytest.importorskip("dm_control")
    env = make_env("dmc:pendulum-swingup:2")
    obs, _ = env.reset(seed=4)
    again, _ = make_env("dmc:pendulum-swingup:2").reset(seed=4)
    np.testing.assert_array_equal(obs, again)                       # the seed fixes the initial state
    assert obs.shape == (3,) and obs[0] ** 2 + obs[1] ** 2 == pytest.approx(1.0)
    steps, total = 0, 0.0
    while True:
        obs, reward, terminated, truncated, _ = env.step(np.array([0.0]))
        steps, total = steps + 1, total + reward
        assert 0.0 <= reward <= 2.0
        if terminated or truncated:
            break
    assert steps == 500 and truncated and not terminated            # 1000 control steps, repeat 2
    with pytest.raises(ValueError, match="no DeepMind Control task pendulum-balance"):
        make_env("dmc:pendulum-balance")
