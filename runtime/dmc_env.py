"""DeepMind Control Suite tasks behind gymnasium's reset/step contract (what `runtime.gym_env`
drives): `make_env("dmc:pendulum-swingup")`, `make_env("dmc:pendulum-swingup:2")`.

An id `dmc:DOMAIN-TASK[:R]` is the suite task `suite.load(DOMAIN, TASK)` with every action
repeated R times (default 1; R = 2 is the setting of TD-MPC2 and DreamerV3 on DMC). The adapter
(`DMCEnv`) maps dm_env's `TimeStep`s to gymnasium's tuples:

    reset(seed=None) -> (obs, {})        obs: the observation dict's arrays flattened and
                                         concatenated in the suite's order (pendulum: orientation
                                         (cos θ, sin θ) then angular velocity, θ = 0 upright)
    step(a) -> (obs, r, terminated, truncated, {})
                                         a is sent R times (fewer if the episode ends); r is the
                                         sum of the R rewards; the episode ends at the suite's time
                                         limit (truncated) or at a terminal step (discount 0)

`reset(seed=s)` reloads the task with `task_kwargs={"random": s}` (the suite draws its initial
states from that generator), so an episode is reproducible from its seed; `reset()` continues the
current generator. `action_space` has gymnasium's Box fields (low, high, shape, dtype).

dm_control is an optional dependency (`pip install -e .[dmc]`, which pins mujoco 3.17.0: mujoco
4.x breaks dm-control 1.0.50 at load); it is imported only when a `dmc:` id is made.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

PREFIX = "dmc:"


@dataclass(frozen=True)
class BoxSpace:
    """The fields of a gymnasium Box action space that `runtime.gym_env` reads."""

    low: np.ndarray
    high: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return self.low.shape

    @property
    def dtype(self) -> np.dtype:
        return self.low.dtype


class DMCEnv:
    """A dm_env environment (from `load(seed)`) with gymnasium's reset/step (module docstring)."""

    def __init__(self, load: Callable[[Optional[int]], Any], action_repeat: int = 1, name: str = "dmc"):
        if action_repeat < 1:
            raise ValueError(f"{name}: the action repeat must be >= 1, got {action_repeat}")
        self._load, self.action_repeat, self.name = load, int(action_repeat), name
        self._env = load(None)
        spec = self._env.action_spec()
        self.action_space = BoxSpace(np.broadcast_to(np.asarray(spec.minimum, dtype=spec.dtype), spec.shape).copy(),
                                     np.broadcast_to(np.asarray(spec.maximum, dtype=spec.dtype), spec.shape).copy())

    @staticmethod
    def flatten(observation) -> np.ndarray:
        """The observation dict's arrays, flattened and concatenated in its order (1-D float64)."""
        return np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1) for v in observation.values()])

    def reset(self, seed: Optional[int] = None, options: Optional[dict] = None) -> tuple[np.ndarray, dict]:
        if options:
            raise ValueError(f"{self.name}: reset takes no options, got {sorted(options)}")
        if seed is not None:
            self._env = self._load(int(seed))
        return self.flatten(self._env.reset().observation), {}

    def step(self, action) -> tuple[np.ndarray, float, bool, bool, dict]:
        action = np.asarray(action, dtype=self.action_space.dtype).reshape(self.action_space.shape)
        total = 0.0
        for _ in range(self.action_repeat):
            step = self._env.step(action)
            total += float(step.reward or 0.0)
            if step.last():
                break
        ended = bool(step.last())
        terminated = ended and step.discount is not None and float(step.discount) == 0.0
        return self.flatten(step.observation), total, terminated, ended and not terminated, {}


def parse_dmc_id(env_id: str) -> tuple[str, str, int]:
    """`dmc:DOMAIN-TASK[:R]` -> (domain, task, R)."""
    body = env_id[len(PREFIX):] if env_id.startswith(PREFIX) else env_id
    name, _, repeat = body.partition(":")
    domain, _, task = name.partition("-")
    if not domain or not task or (repeat and not repeat.isdigit()):
        raise ValueError(f"'{env_id}': a DeepMind Control id is dmc:DOMAIN-TASK[:REPEAT], e.g. "
                         "dmc:pendulum-swingup or dmc:pendulum-swingup:2 (action repeat 2)")
    return domain, task, int(repeat) if repeat else 1


def make_dmc(env_id: str) -> DMCEnv:
    """The suite task of `dmc:DOMAIN-TASK[:R]` (module docstring); clear errors for a missing
    dm_control or an unknown task."""
    domain, task, repeat = parse_dmc_id(env_id)
    try:
        from dm_control import suite
    except ImportError as err:
        raise ImportError(f"'{env_id}' needs dm_control: pip install -e .[dmc] "
                          "(dm-control with mujoco==3.17.0)") from err
    if (domain, task) not in suite.ALL_TASKS:
        known = ", ".join(f"{d}-{t}" for d, t in suite.ALL_TASKS if d == domain) or \
            ", ".join(sorted({d for d, _ in suite.ALL_TASKS}))
        raise ValueError(f"'{env_id}': no DeepMind Control task {domain}-{task} (known: {known})")

    def load(seed: Optional[int]):
        return suite.load(domain, task, task_kwargs={"random": seed})
    return DMCEnv(load, repeat, env_id)
