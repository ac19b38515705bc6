"""Closed-loop control of a gymnasium environment.

Follows gymnasium's `Env` contract as it is: `env.reset(seed=, options=) -> (obs, info)` once,
then `env.step(action) -> (obs, reward, terminated, truncated, info)` until `steps` actions
have been taken or the episode terminates or is truncated. The controller maps the
observation, as a tensor of `dtype` (obs_dim,), to an action tensor; it keeps its own state
(a receding-horizon planner keeps its warm start). The action goes to the environment as a
numpy array of the action space's dtype and shape.

gymnasium is an optional dependency (`pip install -e .[gym]`); `make_env` imports it when
called. `run_episode` itself takes any object with gymnasium's reset/step contract.
"""
from typing import Any, Callable, NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor

Controller = Callable[[Tensor], Tensor]
Start = Callable[[Any], Any]


class Episode(NamedTuple):
    return_: float            # sum of the rewards
    observations: Tensor      # (S+1, *obs_shape): the first observation, then one per step
    actions: Tensor           # (S, *action_shape)
    rewards: Tensor           # (S,)
    terminated: bool          # the environment reached a terminal state
    truncated: bool           # the environment cut the episode (e.g. its time limit)


def make_env(env_id: str, **kwargs: Any):
    """`gymnasium.make(env_id, **kwargs)`, with a clear error when gymnasium is missing; an id
    `dmc:DOMAIN-TASK[:REPEAT]` is a DeepMind Control Suite task (`runtime.dmc_env`)."""
    from runtime.dmc_env import PREFIX, make_dmc
    if env_id.startswith(PREFIX):
        if kwargs:
            raise ValueError(f"'{env_id}': DeepMind Control tasks take no options, got {sorted(kwargs)}")
        return make_dmc(env_id)
    try:
        import gymnasium
    except ImportError as err:
        raise ImportError("closed-loop control of an environment needs gymnasium: "
                          "pip install -e .[gym]") from err
    return gymnasium.make(env_id, **kwargs)


def run_episode(env, controller: Controller, steps: int, seed: Optional[int] = None,
                options: Optional[dict] = None, start: Optional[Start] = None,
                dtype: torch.dtype = torch.float64) -> Episode:
    """Run `controller` on `env` for at most `steps` steps from `env.reset(seed, options)`.

    `start(env) -> obs`, if given, is called after the reset to put the environment in a
    chosen state and returns the observation of that state (e.g. for Pendulum-v1:
    set `env.unwrapped.state` and return `env.unwrapped._get_obs()`).
    S = the number of steps taken (< steps if the episode ended first).
    """
    if steps < 1:
        raise ValueError(f"run_episode needs steps >= 1, got {steps}")
    obs, _ = env.reset(seed=seed, options=options)
    if start is not None:
        obs = start(env)
    space = env.action_space
    observations, actions, rewards = [_tensor(obs, dtype)], [], []
    terminated = truncated = False
    for _ in range(steps):
        action = controller(observations[-1])
        sent = np.asarray(action.detach().cpu().numpy(), dtype=space.dtype).reshape(space.shape)
        obs, reward, terminated, truncated, _ = env.step(sent)
        observations.append(_tensor(obs, dtype))
        actions.append(torch.as_tensor(sent, dtype=dtype))
        rewards.append(float(reward))
        if terminated or truncated:
            break
    reward_tensor = torch.tensor(rewards, dtype=dtype)
    return Episode(float(reward_tensor.sum()), torch.stack(observations), torch.stack(actions),
                   reward_tensor, bool(terminated), bool(truncated))


def _tensor(obs: Any, dtype: torch.dtype) -> Tensor:
    return torch.as_tensor(np.asarray(obs), dtype=dtype)
