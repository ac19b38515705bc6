"""World-model figures for docs/world_models.md (run from the repository root, 1 thread).

    python benchmarks/world_models.py baselines --plan examples/pendulum_mppi.plan --episodes 10 --seed 0
        true-model MPPI (the plan's own dynamics) and uniformly random actions on the plan's env,
        episode e reset with seed + e: the returns, as JSON on stdout.
    python benchmarks/world_models.py accuracy --plan examples/pendulum_wm.plan --train 2000 --test 1000
        fit `kind=mlp` and `kind=ensemble` versions of the plan's world model on random-action
        transitions of its env, and report on held-out episodes: one-step MSE, the 30-step
        open-loop prediction error (RMSE of the state after 30 steps under the recorded actions,
        angles wrapped) and the one-step Gaussian NLL per state entry (ensemble: the moment-matched
        mixture of its members; mlp: not defined).
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
    out = {}
    for kind in ("mlp", "ensemble"):
        plan = planlang.loads(_variant(text, kind), args.plan)
        torch.manual_seed(args.seed)
        module = planlang.compile(plan, dtype=torch.float32)
        config = replace(plan_train_config(plan), epochs=args.epochs, progress=False, patience=10)
        start = time.perf_counter()
        history = fit_world_model(module, train, config)
        seconds = time.perf_counter() - start
        out[kind] = {**evaluate(module, test, args.horizon), "fit_s": seconds, "epochs": len(history)}
    return out


@torch.no_grad()
def evaluate(module, data: dict, horizon: int) -> dict:
    block = module.blocks[the_world_model(module).block]
    x, u, x_next = data["x"], data["u"], data["x_next"]
    one_step = float(block.difference(module.step(x, u), x_next).pow(2).mean())
    mean, logvar = block.normalized(x, u)
    result = {"one_step_mse": one_step}
    if logvar is not None:
        # the members' mixture, moment matched, in state units: mean mu, variance E[var] + Var[mean]
        mu = block.out_mean + block.out_std * mean                                 # (M, N, n)
        var = (block.out_std ** 2 * logvar.exp()).mean(0) + mu.var(0, unbiased=False)
        err = block.difference(x + mu.mean(0), x_next)
        result["nll"] = float((0.5 * (err ** 2 / var + var.log() + math.log(2 * math.pi))).mean())
    episodes = data["episode"]
    errors = []
    for e in episodes.unique():
        rows = (episodes == e).nonzero().flatten()
        for start in range(0, rows.numel() - horizon + 1, horizon):
            r = rows[start:start + horizon]
            s = x[r[0]].unsqueeze(0)
            for t in range(horizon):
                s = module.step(s, u[r[t]].unsqueeze(0))
            errors.append(block.difference(s[0], x_next[r[-1]]).pow(2).sum())
    result[f"rmse_{horizon}_step"] = float(torch.stack(errors).mean().sqrt())
    return result


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
    a.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    result = baselines(args) if args.verb == "baselines" else accuracy(args)
    result["wall_s"] = time.perf_counter() - start
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
