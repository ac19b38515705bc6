"""Experience for world models and model-based RL: `planlang collect` and `planlang mbrl`.

    data = collect_env(module, "Pendulum-v1", steps=1000, policy="random", seed=0)
    data = collect_plan(module, steps=1000, seed=0, ranges={"m": (0.5, 2.0)})   # the plan as simulator
    result = mbrl(plan, env="Pendulum-v1", episodes=10, seed=0)                   # result["returns"]

Transitions follow `runtime.transitions` (x, u, x_next, reward, done, episode, input_NAME). From a
gymnasium environment, x is the plan's state of each observation (the `env` block's
`state = ...`) and u the action sent; from a plan, the plan's own dynamics (`module.step`) are
the system, every episode run in parallel from random initial states (and inputs) drawn as in
`planlang demos` (default ± 1, or `ranges`).

`mbrl` is the loop of PETS (Chua et al. 2018): `random_episodes` episodes of uniformly random
actions, then for every episode: fit the plan's world model to all the data so far (`loss
model`, the plan's `train { }` settings, warm-started from the previous fit, normalization
refitted), and drive the environment with the plan's sampling planner through the model (one
solve per step, warm-started), appending what it saw.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable, Mapping, Optional

import torch
from torch import Tensor

from planlang.ast import VarKind
from planlang.training import DEFAULT_HALF_RANGE
from runtime.gym_env import Episode, make_env, run_episode
from runtime.training import EarlyStopping, TrainConfig
from runtime.transitions import INPUT_PREFIX, check_transitions, concat_transitions

POLICIES = ("random", "plan")


# ------------------------------------------------------------------------- controllers

def _like(module) -> Tensor:
    witness = next(iter(module.parameters()), None)
    dtype = witness.dtype if witness is not None else module.dtype
    return torch.zeros((), dtype=dtype)


def random_controller(action_space, seed: int, dtype: torch.dtype, hold: int = 1) -> Callable[[Tensor], Tensor]:
    """Uniform actions in a gymnasium Box action space, from a generator seeded by `seed`, each
    held for `hold` steps (held actions drive the system farther than white noise)."""
    if hold < 1:
        raise ValueError(f"random actions are held for >= 1 steps, got {hold}")
    low = torch.as_tensor(action_space.low, dtype=dtype)
    high = torch.as_tensor(action_space.high, dtype=dtype)
    generator = torch.Generator().manual_seed(seed)
    state = {"step": 0, "action": low}

    def controller(_obs: Tensor) -> Tensor:
        if state["step"] % hold == 0:
            state["action"] = low + (high - low) * torch.rand(low.shape, generator=generator, dtype=dtype)
        state["step"] += 1
        return state["action"]
    return controller


def episode_transitions(module, episode: Episode, index: int, bound: dict, like: Tensor) -> dict[str, Tensor]:
    """An environment episode as transitions of the plan's states (the env block's observe), or
    of the raw observations when the plan's world model is latent (it learns its own state)."""
    spec = module.info.env
    observations = episode.observations.to(like).reshape(episode.observations.shape[0], -1)
    states = observations if _latent_plan(module) else spec.observe(bound, observations, like)
    S = episode.actions.shape[0]
    done = torch.zeros(S, dtype=torch.bool)
    done[-1] = True
    return {"x": states[:-1], "u": episode.actions.to(like).reshape(S, -1), "x_next": states[1:],
            "reward": episode.rewards.to(like), "done": done, "episode": torch.full((S,), index, dtype=torch.long)}


def _latent_plan(module) -> bool:
    """The plan has a latent world model (and so learns from observations, not states)."""
    from planlang.latent_models import is_latent

    return any(is_latent(module, name) for name in module.info.blocks)


def _env_setup(module, env):
    spec = module.info.env
    if spec is None:
        raise ValueError(f"{module.plan_name}: the plan has no `env` block, so it cannot say how an observation "
                         "maps to its state (add `env \"ID\" {{ observe obs[k] ... }}`)")
    return spec, make_env(env or spec.id) if env is None or isinstance(env, str) else env


def run_env_episode(module, gym, policy: str, seed: int, steps: Optional[int] = None, hold: int = 1) -> Episode:
    """One episode on `gym` from reset(seed): uniformly random actions (each held `hold` steps),
    or the plan's own solves."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got '{policy}'")
    steps = steps or module.info.env.steps
    like = _like(module)
    if policy == "plan":
        return module.drive(steps=steps, seed=seed, env=gym)
    return run_episode(gym, random_controller(gym.action_space, seed, like.dtype, hold), steps, seed=seed, dtype=like.dtype)


def collect_env(module, env=None, steps: int = 1000, policy: str = "random", seed: int = 0) -> dict[str, Tensor]:
    """At least `steps` transitions from whole episodes of a gymnasium environment (default: the
    plan's env block), episode e reset with seed + e."""
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    spec, gym = _env_setup(module, env)
    like = _like(module)
    bound, _, like = module.bind({}, initial_states=False, like=like)
    data, count, index = None, 0, 0
    with torch.no_grad():
        while count < steps:
            episode = run_env_episode(module, gym, policy, seed + index)
            part = episode_transitions(module, episode, index, bound, like)
            data = part if data is None else concat_transitions(data, part)
            count += part["x"].shape[0]
            index += 1
    return data


def collect_plan(module, steps: int = 1000, episode_steps: int = 50, policy: str = "random", seed: int = 0,
                 ranges: Optional[Mapping[str, tuple[float, float]]] = None) -> dict[str, Tensor]:
    """`steps` transitions (rounded up to whole episodes of `episode_steps`) with the plan's own
    dynamics as the system; episodes run in parallel. Random controls are uniform within the
    control bounds (standard normal where a control has none)."""
    if steps < 1 or episode_steps < 1:
        raise ValueError(f"--steps and --episode-steps must be >= 1, got {steps} and {episode_steps}")
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got '{policy}'")
    ranges = dict(ranges or {})
    accepted = module.inputs()
    unknown = [name for name in ranges if name not in accepted]
    if unknown:
        raise ValueError(f"--range {unknown[0]}: plan '{module.plan_name}' has no state, input or param of that name "
                         f"(has: {', '.join(accepted)})")
    E = -(-steps // episode_steps)
    like = _like(module)
    generator = torch.Generator().manual_seed(seed)

    def draw(name: str, shape, default: Optional[Tensor]) -> Tensor:
        if name in ranges:
            lo, hi = ranges[name]
            return lo + (hi - lo) * torch.rand((E,) + tuple(shape), generator=generator, dtype=like.dtype)
        if default is None:
            raise ValueError(f"state '{name}' has no default value; give its range with --range {name}=LO:HI")
        return default.to(like.dtype) + DEFAULT_HALF_RANGE * (
            2 * torch.rand((E,) + tuple(shape), generator=generator, dtype=like.dtype) - 1)

    values = {v.ref.name: draw(v.ref.name, v.shape, module.default(v.ref.name)) for v in module.layout.states}
    conditioning = {name: draw(name, var.shape, None) for name, var in accepted.items()
                    if var.ref.kind is not VarKind.STATE and name in ranges}
    env, x, like = module.bind({**values, **conditioning}, like=like)
    lower, upper = module.backend.control_bounds(env, like)
    m = module.layout.m
    rows: dict[str, list[Tensor]] = {"x": [], "u": [], "x_next": []}
    warm = None
    with torch.no_grad():
        for _ in range(episode_steps):
            if policy == "plan":
                sol = module.backend(env, x, like, warm)
                warm = torch.cat([sol.u[:, 1:], sol.u[:, -1:]], dim=1)
                u = sol.u[:, 0]
            else:
                u = _uniform_controls(E, m, lower, upper, generator, like)
            if lower is not None:                                  # record what the system applies
                u = torch.minimum(torch.maximum(u, lower[:, 0]), upper[:, 0])
            x_next = module.step(x, u, **conditioning)
            rows["x"].append(x)
            rows["u"].append(u)
            rows["x_next"].append(x_next)
            x = x_next
    out = {k: torch.stack(v, 1).reshape(E * episode_steps, -1) for k, v in rows.items()}
    done = torch.zeros(E, episode_steps, dtype=torch.bool)
    done[:, -1] = True
    out["done"] = done.flatten()
    out["episode"] = torch.arange(E).repeat_interleave(episode_steps)
    for name, value in conditioning.items():
        out[INPUT_PREFIX + name] = value.repeat_interleave(episode_steps, dim=0)
    return check_transitions(out, f"plan '{module.plan_name}'", like.dtype)


def _uniform_controls(batch: int, m: int, lower, upper, generator, like: Tensor) -> Tensor:
    noise = torch.rand((batch, m), generator=generator, dtype=like.dtype)
    if lower is None:
        return torch.randn((batch, m), generator=generator, dtype=like.dtype)
    lo, hi = lower[:, 0].expand(batch, m), upper[:, 0].expand(batch, m)
    finite = torch.isfinite(lo) & torch.isfinite(hi)
    normal = torch.randn((batch, m), generator=generator, dtype=like.dtype)
    return torch.where(finite, torch.nan_to_num(lo) + (torch.nan_to_num(hi) - torch.nan_to_num(lo)) * noise, normal)


# ------------------------------------------------------------------------------ mbrl

def _refit(module, data: dict, config: TrainConfig, index: int) -> dict:
    """The refit after episode index + 1 (seeded by it); its record entries."""
    from planlang.world_models import fit_world_model

    fit = replace(config, seed=config.seed + index, progress=False, checkpoint=None, log=None, plot=None)
    history = fit_world_model(module, data, fit, refit_normalization=True, callbacks=[EarlyStopping(config.patience)])
    best = min(history, key=lambda r: r.get("val_loss", r["train_loss"])) if history else {}
    record = dict(fit_epochs=len(history), val_mse=best.get("val_mse"), val_rollout_mse=best.get("val_rollout_mse"))
    if "val_reward_mse" in best:                      # a reward head: its held-out error, reward units
        record["val_reward_mse"] = best["val_reward_mse"]
    return record


def mbrl(plan, env=None, episodes: int = 10, seed: int = 0, random_episodes: int = 1,
         config: Optional[TrainConfig] = None, dtype: torch.dtype = torch.float32,
         on_episode: Optional[Callable[[dict], None]] = None, random_hold: int = 10,
         on_data: Optional[Callable[[object, dict, dict], None]] = None,
         resume: Optional[tuple[int, dict, dict]] = None) -> dict:
    """Model-based RL on a gymnasium environment (module docstring). Returns
    {"returns": [E floats], "episodes": [per-episode records], "module": the trained module, ...}.

    config: the fitting settings (default: the plan's `train { }` block, whose loss must be
    `model`); episode e is reset with seed + e; the random episodes hold each action for
    `random_hold` steps; `on_episode(record)` is called after each; `on_data(module, part, data)`
    after each episode's transitions `part` are added to `data`, before the refit (the module is
    the one that acted: e.g. to check its predictions on data it has not seen, or to checkpoint).
    resume = (k, weights, data) continues a run after its episode k from the module's state_dict
    and the transitions of episodes 1..k as `on_data` saw them then: it refits on the data, as
    the run would have, and plays episodes k+1..episodes (the returns list holds those only).
    """
    import planlang
    from planlang.training import plan_train_config
    from planlang.world_models import the_world_model

    if episodes < 1 or random_episodes < 0:
        raise ValueError(f"--episodes must be >= 1 and random episodes >= 0, got {episodes} and {random_episodes}")
    config = config or plan_train_config(plan)
    if config.loss != "model":
        raise ValueError(f"{plan.source.filename}: mbrl fits the world model with `loss model` in the train block "
                         f"(it says `loss {config.loss}`)")
    torch.manual_seed(seed)
    module = planlang.compile(plan, dtype=dtype)
    the_world_model(module)
    spec, gym = _env_setup(module, env)
    like = _like(module)
    bound, _, like = module.bind({}, initial_states=False, like=like)
    start, data, records, first = time.perf_counter(), None, [], 0
    if resume is not None:
        first, weights, data = resume
        if not 0 < first < episodes:
            raise ValueError(f"resume after episode {first} of {episodes}: nothing to continue")
        module.load_state_dict(weights)
        _refit(module, data, config, first - 1)
    for index in range(first, episodes):
        began = time.perf_counter()
        policy = "random" if index < random_episodes else "plan"
        with torch.no_grad():
            episode = run_env_episode(module, gym, policy, seed + index, hold=random_hold)
        acted = time.perf_counter()
        part = episode_transitions(module, episode, index, bound, like)
        data = part if data is None else concat_transitions(data, part)
        if on_data is not None:
            on_data(module, part, data)
        record = {"episode": index + 1, "policy": policy, "return": episode.return_, "steps": part["x"].shape[0],
                  "transitions": data["x"].shape[0], "act_s": acted - began}
        if index < episodes - 1:
            record.update(_refit(module, data, config, index))
        record["time_s"] = time.perf_counter() - began
        records.append(record)
        if on_episode is not None:
            on_episode(record)
    return {"returns": [r["return"] for r in records], "episodes": records, "env": spec.id if env is None else str(env),
            "seed": seed, "wall_s": time.perf_counter() - start, "module": module, "data": data}
