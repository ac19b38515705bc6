"""World-model figures for docs/world_models.md (run from the repository root, 1 thread).

    python benchmarks/world_models.py baselines --plan examples/pendulum_mppi.plan --episodes 10 --seed 0
        true-model MPPI (the plan's own dynamics) and uniformly random actions on the plan's env,
        episode e reset with seed + e: the returns, as JSON on stdout.
    python benchmarks/world_models.py accuracy --plan examples/pendulum_wm.plan --train 2000 --test 1000
        fit `kind=mlp` and `kind=ensemble` versions of the plan's world model, and the latent
        plan's `world_model(kind=latent)` block (--latent-plan, on Pendulum observations
        (cos, sin, thdot), its own train block), on random-action transitions of the
        env (--kinds picks which), and report on held-out episodes: the state error (RMSE, angles wrapped) 1 and 30
        open-loop steps after step 10 of each 40-step window under the recorded actions, one-step
        MSE, and the one-step Gaussian NLL per state entry (ensemble: the moment-matched mixture of
        its members; mlp and latent: not defined).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import planlang  # noqa: E402
from planlang.mbrl import collect_env, run_env_episode  # noqa: E402
from planlang.training import plan_train_config  # noqa: E402
from planlang.world_models import fit_world_model, the_world_model  # noqa: E402
from runtime.gym_env import make_env  # noqa: E402
from runtime.latent_world_model import LatentWorldModel  # noqa: E402


def baselines(args) -> dict:
    module = planlang.compile(planlang.load(args.plan), dtype=torch.float32)
    gym = make_env(module.info.env.id)
    out = {}
    for policy in ("plan", "random"):
        start = time.perf_counter()
        with torch.no_grad():
            returns = [run_env_episode(module, gym, policy, args.seed + e).return_ for e in range(args.episodes)]
        out[policy] = {"returns": returns, "mean": sum(returns) / len(returns), "wall_s": time.perf_counter() - start}
    return out


def _variant(text: str, kind: str) -> str:
    return re.sub(r"kind=\w+", f"kind={kind}", text, count=1)


def accuracy(args) -> dict:
    text = Path(args.plan).read_text()
    base = planlang.compile(planlang.load(args.plan), dtype=torch.float32)
    train = collect_env(base, None, args.train, "random", seed=args.seed)
    test = collect_env(base, None, args.test, "random", seed=args.seed + 10_000)
    windows = test_windows(test, CONTEXT + args.horizon)
    out = {"test_windows": int(windows.shape[0])}
    kinds = args.kinds.split(",")
    for kind in [k for k in ("mlp", "ensemble") if k in kinds]:
        plan = planlang.loads(_variant(text, kind), args.plan)
        torch.manual_seed(args.seed)
        module = planlang.compile(plan, dtype=torch.float32)
        config = replace(plan_train_config(plan), epochs=args.epochs, progress=False, patience=10)
        start = time.perf_counter()
        history = fit_world_model(module, train, config)
        seconds = time.perf_counter() - start
        out[kind] = {**evaluate(module, test, windows, args.horizon), "fit_s": seconds, "epochs": len(history)}
    if "latent" in kinds:
        plan = planlang.load(args.latent_plan)
        torch.manual_seed(args.seed)
        module = planlang.compile(plan, dtype=torch.float32)
        observed = collect_env(module, None, args.train, "random", seed=args.seed)   # train's episodes, observed
        config = replace(plan_train_config(plan), epochs=args.latent_epochs, progress=False, patience=10)
        start = time.perf_counter()
        history = fit_world_model(module, observed, config)
        out["latent"] = {**evaluate_latent(module.blocks[the_world_model(module).block], test, windows, args.horizon),
                         "fit_s": time.perf_counter() - start, "epochs": len(history)}
    return out


CONTEXT = 10         # steps a latent model filters before it predicts (the state models start there too)


def test_windows(data: dict, length: int) -> torch.Tensor:
    """(W, length) row indices: consecutive non-overlapping windows inside each test episode."""
    rows = []
    for e in data["episode"].unique():
        index = (data["episode"] == e).nonzero().flatten()
        rows += [index[s:s + length] for s in range(0, index.numel() - length + 1, length)]
    return torch.stack(rows)


@torch.no_grad()
def evaluate(module, data: dict, windows: torch.Tensor, horizon: int) -> dict:
    """One-step MSE on every test transition and NLL (ensemble), the error after 1 and `horizon`
    open-loop steps from step CONTEXT of each window (state units, angles wrapped)."""
    block = module.blocks[the_world_model(module).block]
    x, u, x_next = data["x"], data["u"], data["x_next"]
    result = {"one_step_mse": float(block.difference(module.step(x, u), x_next).pow(2).mean())}
    mean, logvar = block.normalized(x, u)
    if logvar is not None:
        # the members' mixture, moment matched, in state units: mean mu, variance E[var] + Var[mean]
        mu = block.out_mean + block.out_std * mean                                 # (M, N, n)
        var = (block.out_std ** 2 * logvar.exp()).mean(0) + mu.var(0, unbiased=False)
        err = block.difference(x + mu.mean(0), x_next)
        result["nll"] = float((0.5 * (err ** 2 / var + var.log() + math.log(2 * math.pi))).mean())
    s, errors = x[windows[:, CONTEXT]], []
    for t in range(horizon):
        s = module.step(s, u[windows[:, CONTEXT + t]])
        errors.append(block.difference(s, x_next[windows[:, CONTEXT + t]]).pow(2).sum(-1).mean())
    result["rmse_1_step"] = float(errors[0].sqrt())
    result[f"rmse_{horizon}_step"] = float(errors[-1].sqrt())
    return result


def pendulum_obs(x: torch.Tensor) -> torch.Tensor:
    """Pendulum-v1's observation (cos th, sin th, thdot) of states (th, thdot)."""
    return torch.stack([torch.cos(x[..., 0]), torch.sin(x[..., 0]), x[..., 1]], -1)


def obs_state(o: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.atan2(o[..., 1], o[..., 0]), o[..., 2]], -1)


@torch.no_grad()
def evaluate_latent(model: LatentWorldModel, data: dict, windows: torch.Tensor, horizon: int) -> dict:
    """Filter the first CONTEXT + 1 observations of each window, imagine `horizon` steps, and
    compare the decoded states (atan2 of the observation) with the true ones."""
    x, u, x_next = data["x"], data["u"], data["x_next"]
    obs = pendulum_obs(x[windows[:, :CONTEXT + 1]])
    h, z, _, _ = model.observe(obs, u[windows[:, :CONTEXT]], sample=False)
    pred = obs_state(model.imagine(h[:, -1], z[:, -1], u[windows[:, CONTEXT:CONTEXT + horizon]]))
    target = x_next[windows[:, CONTEXT:CONTEXT + horizon]]
    diff = pred - target
    diff[..., 0] = torch.remainder(diff[..., 0] + math.pi, 2 * math.pi) - math.pi
    errors = diff.pow(2).sum(-1).mean(0)
    return {"rmse_1_step": float(errors[0].sqrt()), f"rmse_{horizon}_step": float(errors[-1].sqrt())}


def main() -> None:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser()
    verbs = parser.add_subparsers(dest="verb", required=True)
    b = verbs.add_parser("baselines")
    b.add_argument("--plan", default="examples/pendulum_mppi.plan")
    b.add_argument("--episodes", type=int, default=10)
    b.add_argument("--seed", type=int, default=0)
    a = verbs.add_parser("accuracy")
    a.add_argument("--plan", default="examples/pendulum_wm.plan")
    a.add_argument("--train", type=int, default=2000)
    a.add_argument("--test", type=int, default=1000)
    a.add_argument("--epochs", type=int, default=100)
    a.add_argument("--horizon", type=int, default=30)
    a.add_argument("--latent-epochs", type=int, default=100)
    a.add_argument("--latent-plan", default="examples/pendulum_latent.plan")
    a.add_argument("--kinds", default="mlp,ensemble,latent", help="which models to fit (comma separated)")
    a.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    result = baselines(args) if args.verb == "baselines" else accuracy(args)
    result["wall_s"] = time.perf_counter() - start
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
