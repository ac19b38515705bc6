"""Sampling planners: planlang's `runtime.sampling` (MPPI, CEM) against pytorch_mppi's `MPPI`.

1. Pendulum-v1 swing-up in closed loop (gymnasium), the true model for both planners: the
   environment's dynamics (g = 10, m = l = 1, dt = 0.05, |u| <= 2, |thdot| <= 8) and its own
   reward as the cost, c(th, thdot, u) = angle_normalize(th)^2 + .1 thdot^2 + .001 u^2.
   Samples 100, horizon 15, temperature 1, noise: pytorch_mppi's `noise_sigma=10` is the
   covariance, so ours is std sqrt(10) (the same distribution); 200 steps from [pi, 1], five
   seeds. Both plan from the observation (th = atan2(sin, cos)), keep their plan as the next
   warm start shifted by one step (new last control 0), and are timed around the controller
   call only. pytorch_mppi's cost is c(x_{t+1}, u_t) summed over t < T; ours is c(x_t, u_t)
   over t < T plus c(x_T, 0): the same objective up to the constant c(x_0, 0).
2. Throughput: rollouts per second of one MPPI iteration at samples 1024, horizon 30, batch 8
   on the cart-pole of examples/cartpole.plan (RK4, dt 0.05), against pytorch_mppi's
   `MPPI_Batched` (its one-call batched variant).

The planlang side of the pendulum table is examples/pendulum_mppi.plan compiled and driven by
`PlanModule.controller` (`planlang_controller`); the throughput table uses runtime/sampling.py
with the cart-pole dynamics written by hand below.

Anchor: pytorch_mppi (github UM-ARM-Lab/pytorch_mppi) and its pure-Python dependencies must be
importable (see benchmarks/README.md). Run from the repository root:

    PYTHONPATH=/tmp/anchors/pytorch_mppi/src:/tmp/anchors/pydeps python benchmarks/mppi.py
"""
import argparse
import dataclasses
import functools
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import planlang  # noqa: E402
from runtime.gym_env import make_env, run_episode  # noqa: E402
from runtime.sampling import CEMOptions, MPPIOptions, SamplingProblem, mppi  # noqa: E402

DT, G, MAX_SPEED, MAX_TORQUE = 0.05, 10.0, 8.0, 2.0
START = (math.pi, 1.0)


def import_anchor():
    try:
        from pytorch_mppi import MPPI, MPPI_Batched
    except ImportError as err:
        raise SystemExit("pytorch_mppi is not importable: see benchmarks/README.md for the "
                         "set-up and put it on PYTHONPATH") from err
    return MPPI, MPPI_Batched


# ---- Pendulum-v1 as torch callables --------------------------------------------------------

def angle_normalize(th: torch.Tensor) -> torch.Tensor:
    return torch.remainder(th + math.pi, 2 * math.pi) - math.pi


def pendulum_step(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """gymnasium Pendulum-v1 step on (..., 2) states (th, thdot) and (..., 1) torques."""
    th, thdot = x.unbind(-1)
    u = u.squeeze(-1).clamp(-MAX_TORQUE, MAX_TORQUE)
    thdot = torch.clamp(thdot + DT * (1.5 * G * torch.sin(th) + 3.0 * u), -MAX_SPEED, MAX_SPEED)
    return torch.stack((th + DT * thdot, thdot), -1)


def pendulum_cost(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The environment's cost (minus its reward) on (..., 2) states and (..., 1) torques."""
    th, thdot = x.unbind(-1)
    a = angle_normalize(th)
    return a * a + 0.1 * thdot * thdot + 0.001 * u.squeeze(-1) ** 2


def observation_state(obs: torch.Tensor) -> torch.Tensor:
    """Pendulum-v1 observation (cos th, sin th, thdot) -> state (th, thdot)."""
    return torch.stack((torch.atan2(obs[1], obs[0]), obs[2]))


def start_at_bottom(env):
    env.unwrapped.state = np.array(START)
    return env.unwrapped._get_obs()


# ---- the planners as closed-loop controllers ---------------------------------------------

PLAN = Path(__file__).resolve().parents[1] / "examples" / "pendulum_mppi.plan"


def planlang_controller(solver: str, options, horizon: int, seed: int, dtype: torch.dtype,
                        fuse: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """obs -> torque by the compiled examples/pendulum_mppi.plan solved by `solver` ("mppi" or
    "cem"), receding horizon through the module's controller (values bound once, warm-started
    with its previous plan shifted by one step, the last control repeated)."""
    settings = {**dataclasses.asdict(options), "seed": seed, "fuse": "on" if fuse else "off"}
    module = planlang.compile(planlang.load(PLAN), dtype=dtype, solver=solver, options=settings)
    if module.horizon != horizon:
        raise SystemExit(f"{PLAN.name} has horizon {module.horizon}; run with --horizon {module.horizon}")
    controller = module.controller()

    def control(obs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return controller(observation_state(obs).unsqueeze(0)).u[0, 0]
    return control


def anchor_controller(MPPI, samples: int, horizon: int, lambda_: float, covariance: float,
                      seed: int, dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    """obs -> torque by pytorch_mppi's MPPI (it draws from torch's global generator)."""
    torch.manual_seed(seed)
    controller = MPPI(pendulum_step, lambda x, u: pendulum_cost(x, u), 2,
                      torch.tensor(covariance, dtype=dtype), num_samples=samples,
                      horizon=horizon, lambda_=lambda_,
                      u_min=torch.tensor(-MAX_TORQUE, dtype=dtype),
                      u_max=torch.tensor(MAX_TORQUE, dtype=dtype))

    def control(obs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return controller.command(observation_state(obs))
    return control


def timed(control):
    """The controller, and a list that receives (wall s, thread CPU s) of each call."""
    times = []

    def wrapped(obs):
        start, cpu = time.perf_counter(), time.thread_time()
        action = control(obs)
        times.append((time.perf_counter() - start, time.thread_time() - cpu))
        return action
    return wrapped, times


def pendulum_table(args, dtype):
    MPPI, _ = import_anchor()
    sigma = math.sqrt(args.covariance)
    mppi_options = MPPIOptions(samples=args.samples, temperature=args.temperature, noise=sigma)
    methods = {
        "pytorch_mppi MPPI": lambda seed: anchor_controller(
            MPPI, args.samples, args.horizon, args.temperature, args.covariance, seed, dtype),
        "planlang mppi, eager": lambda seed: planlang_controller(
            "mppi", mppi_options, args.horizon, seed, dtype, fuse=False),
        "planlang mppi, fused": lambda seed: planlang_controller(
            "mppi", mppi_options, args.horizon, seed, dtype, fuse=True),
    }
    for iters in args.cem_iters:
        options = CEMOptions(samples=args.samples, elites=args.elites, iters=iters, noise=sigma,
                             temperature=args.temperature)
        methods[f"planlang cem (iters {iters}), fused"] = functools.partial(
            planlang_controller, "cem", options, args.horizon, dtype=dtype, fuse=True)
    returns = {name: [] for name in methods}
    times = {name: [] for name in methods}
    first = {}
    env = make_env("Pendulum-v1")
    for seed in range(args.seeds):
        for name, build in methods.items():     # interleaved: the same machine load for all
            control, step_times = timed(build(seed))
            episode = run_episode(env, control, args.steps, seed=seed, start=start_at_bottom,
                                  dtype=dtype)
            returns[name].append(episode.return_)
            first.setdefault(name, step_times[0][0])
            times[name].extend(step_times[args.warmup:])
    env.close()
    anchor_ms, anchor_cpu = (1e3 * statistics.median(t[i] for t in times["pytorch_mppi MPPI"]) for i in (0, 1))
    print(f"\nPendulum-v1 swing-up, {args.steps} steps from {list(START)}, samples {args.samples},"
          f" horizon {args.horizon}, temperature {args.temperature}, noise covariance "
          f"{args.covariance}, {args.seeds} seeds, {dtype}")
    print("| method | mean return | min .. max | ms / step (median) | speed-up | CPU ms / step | CPU speed-up "
          "| first call s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in methods:
        ms, cpu = (1e3 * statistics.median(t[i] for t in times[name]) for i in (0, 1))
        r = returns[name]
        print(f"| {name} | {statistics.mean(r):.1f} | {min(r):.1f} .. {max(r):.1f} | {ms:.3f} "
              f"| {anchor_ms / ms:.1f}x | {cpu:.3f} | {anchor_cpu / cpu:.1f}x | {first[name]:.1f} |")


# ---- throughput on the cart-pole -------------------------------------------------------------

def cartpole_rate(s: torch.Tensor, force: torch.Tensor) -> torch.Tensor:
    """examples/cartpole.plan: d/dt (x, xdot, th, thdot) on (..., 4) states, (..., 1) forces."""
    mc, mp, l, g = 1.0, 0.3, 0.5, 9.81
    xdot, th, thdot = s[..., 1], s[..., 2], s[..., 3]
    f = force.squeeze(-1)
    sin, cos = torch.sin(th), torch.cos(th)
    d = mc + mp * sin * sin
    xdd = (f + mp * sin * (l * thdot * thdot + g * cos)) / d
    thdd = (-f * cos - mp * l * thdot * thdot * cos * sin - (mc + mp) * g * sin) / (l * d)
    return torch.stack((xdot, xdd, thdot, thdd), -1)


def cartpole_step(s: torch.Tensor, force: torch.Tensor, dt: float = 0.05) -> torch.Tensor:
    k1 = cartpole_rate(s, force)
    k2 = cartpole_rate(s + 0.5 * dt * k1, force)
    k3 = cartpole_rate(s + 0.5 * dt * k2, force)
    k4 = cartpole_rate(s + dt * k3, force)
    return s + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def cartpole_cost(s: torch.Tensor, force: torch.Tensor) -> torch.Tensor:
    f = force.squeeze(-1)
    return (0.1 * s[..., 0] ** 2 + 0.5 * (1 + torch.cos(s[..., 2])) + 0.01 * s[..., 1] ** 2
            + 0.01 * s[..., 3] ** 2 + 0.001 * f * f)


def cartpole_final_cost(s: torch.Tensor) -> torch.Tensor:
    return (50 * s[..., 0] ** 2 + 200 * (1 + torch.cos(s[..., 2])) + 5 * s[..., 1] ** 2
            + 5 * s[..., 3] ** 2)


def throughput(args, dtype):
    _, MPPI_Batched = import_anchor()
    B, K, T = args.tp_batch, args.tp_samples, args.tp_horizon
    x0 = torch.tensor([0.0, 0.0, 0.1, 0.0], dtype=dtype).repeat(B, 1)
    x0[:, 0] = torch.linspace(-1, 1, B, dtype=dtype)
    lo, hi = torch.tensor(-20.0, dtype=dtype), torch.tensor(20.0, dtype=dtype)
    problem = SamplingProblem(lambda s, u, t: cartpole_step(s, u),
                              lambda s, u, t: cartpole_cost(s, u), cartpole_final_cost, lo, hi,
                              vectorized_cost=True)
    fused = dataclasses.replace(problem, fuse=True)
    per_stage = dataclasses.replace(problem, vectorized_cost=False)
    options = MPPIOptions(samples=K, temperature=1.0, noise=5.0)
    generator = torch.Generator().manual_seed(0)
    plan = torch.zeros(B, T, 1, dtype=dtype)
    torch.manual_seed(0)
    anchor = MPPI_Batched(lambda s, u: cartpole_step(s, u), lambda s, u: cartpole_cost(s, u), 4,
                          torch.tensor(25.0, dtype=dtype), num_envs=B, num_samples=K,
                          horizon=T, lambda_=1.0, u_min=lo, u_max=hi)
    runs = {"pytorch_mppi MPPI_Batched": lambda: anchor.command(x0),
            "planlang mppi, eager": lambda: mppi(problem, x0, plan, options, generator),
            "planlang mppi, eager, per-stage cost": lambda: mppi(per_stage, x0, plan, options,
                                                                 generator)}
    if not args.tp_eager_only:
        runs["planlang mppi, fused"] = lambda: mppi(fused, x0, plan, options, generator)
    times = {name: [] for name in runs}
    with torch.no_grad():
        for repeat in range(args.tp_repeats + 1):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                if repeat:                      # the first call of each is a warm-up
                    times[name].append(time.perf_counter() - start)
    print(f"\nCart-pole rollouts (examples/cartpole.plan dynamics, RK4), batch {B}, samples {K},"
          f" horizon {T}, one MPPI iteration per call, {args.tp_repeats} calls, {dtype}")
    print("| method | ms / call (median) | rollouts / s | speed-up |")
    print("|---|---:|---:|---:|")
    anchor_s = statistics.median(times["pytorch_mppi MPPI_Batched"])
    for name in runs:
        s = statistics.median(times[name])
        print(f"| {name} | {1e3 * s:.2f} | {B * K / s:,.0f} | {anchor_s / s:.1f}x |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--horizon", type=int, default=15)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--covariance", type=float, default=10.0)
    parser.add_argument("--elites", type=int, default=10)
    parser.add_argument("--cem-iters", type=int, nargs="*", default=[1, 3])
    parser.add_argument("--warmup", type=int, default=5, help="untimed first steps per episode")
    parser.add_argument("--tp-batch", type=int, default=8)
    parser.add_argument("--tp-samples", type=int, default=1024)
    parser.add_argument("--tp-horizon", type=int, default=30)
    parser.add_argument("--tp-repeats", type=int, default=20)
    parser.add_argument("--tp-eager-only", action="store_true",
                        help="skip the fused throughput run (its compilation takes minutes)")
    parser.add_argument("--float32", action="store_true", help="default: float64")
    parser.add_argument("--skip", choices=["pendulum", "throughput"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    dtype = torch.float32 if args.float32 else torch.float64
    print("load average at start: %.1f %.1f %.1f" % os.getloadavg())
    if args.skip != "pendulum":
        pendulum_table(args, dtype)
    if args.skip != "throughput":
        throughput(args, dtype)
    print("load average at end: %.1f %.1f %.1f" % os.getloadavg())


if __name__ == "__main__":
    main()
