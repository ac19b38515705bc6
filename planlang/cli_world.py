"""`planlang collect` and `planlang mbrl`: subcommands for `planlang.cli` (hooked in there with
`add_parsers(verbs)`; each parser sets `handler`, which returns the exit code).

    planlang collect FILE [--env [ID]] --steps N [--policy random|plan] [--seed S] [--weights CKPT]
                          [--episode-steps L] [--range NAME=LO:HI] -o transitions.npz
    planlang mbrl FILE [--env ID] --episodes E [--seed S] [--random-episodes R] [--random-hold K] [--epochs N]
                       [--json OUT.json] [-o CKPT] [--plot PNG]

Library code (`planlang.mbrl`) raises; these handlers print a short summary.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import torch

EXIT_OK = 0


def add_parsers(verbs) -> None:
    """Add `collect` and `mbrl` to an argparse subparsers object."""
    collect = verbs.add_parser("collect", help="record transitions (x, u, x_next, ...) for fitting world models")
    collect.add_argument("file", type=Path)
    collect.add_argument("--env", nargs="?", const="", metavar="ID",
                         help="a gymnasium environment (default: the plan's `env` block); without --env the "
                              "plan's own dynamics are the system")
    collect.add_argument("--steps", type=int, required=True, help="transitions to record (whole episodes)")
    collect.add_argument("--policy", choices=("random", "plan"), default="random",
                         help="uniformly random controls, or the plan's own receding-horizon solves")
    collect.add_argument("--seed", type=int, default=0)
    collect.add_argument("--weights", type=Path, metavar="CKPT", help="load trained weights into the plan first")
    collect.add_argument("--episode-steps", type=int, default=50,
                         help="without --env: steps per episode (default 50)")
    collect.add_argument("--range", action="append", default=[], metavar="NAME=LO:HI",
                         help="without --env: draw state, input or param NAME uniformly per episode "
                              "(states default to [default - 1, default + 1]); inputs are recorded as input_NAME")
    collect.add_argument("-o", "--output", type=Path, required=True, metavar="TRANSITIONS.npz")
    collect.set_defaults(handler=run_collect)

    mbrl = verbs.add_parser("mbrl", help="model-based RL: collect, fit the plan's world model, plan through it, repeat")
    mbrl.add_argument("file", type=Path)
    mbrl.add_argument("--env", metavar="ID", help="the gymnasium environment (default: the plan's `env` block)")
    mbrl.add_argument("--episodes", type=int, required=True, help="episodes in all (the random ones included)")
    mbrl.add_argument("--seed", type=int, default=0, help="episode e is reset with seed + e")
    mbrl.add_argument("--random-episodes", type=int, default=1, help="episodes of random actions first (default 1)")
    mbrl.add_argument("--random-hold", type=int, default=10,
                      help="hold each random action for this many steps (default 10: farther than white noise)")
    mbrl.add_argument("--epochs", type=int, help="override the train block's epochs per fit")
    mbrl.add_argument("--json", type=Path, metavar="OUT.json", help="write {returns, episodes, ...} as JSON")
    mbrl.add_argument("-o", "--output", type=Path, metavar="CKPT", help="fit on all the data and write the weights")
    mbrl.add_argument("--plot", type=Path, metavar="PNG", help="plot the return per episode")
    mbrl.add_argument("--float64", action="store_true", help="plan and fit in float64 (default float32)")
    mbrl.set_defaults(handler=run_mbrl)


def run_collect(args) -> int:
    import planlang
    from planlang.mbrl import collect_env, collect_plan
    from planlang.training import parse_range
    from runtime.transitions import save_transitions

    plan = planlang.load(args.file)
    module = planlang.compile(plan, dtype=torch.float64, weights=args.weights)
    start = time.perf_counter()
    if args.env is not None:
        if args.range:
            raise ValueError("--range draws the plan's own initial states and inputs; with --env the environment resets itself")
        data = collect_env(module, args.env or None, args.steps, args.policy, args.seed)
        source = f"environment {args.env or module.info.env.id}"
    else:
        ranges = dict(parse_range(r) for r in args.range)
        data = collect_plan(module, args.steps, args.episode_steps, args.policy, args.seed, ranges)
        source = f"plan '{module.plan_name}' (its own dynamics)"
    save_transitions(args.output, data)
    episodes = int(data["episode"].max()) + 1
    extra = f", mean episode return {float(data['reward'].sum()) / episodes:.4g}" if "reward" in data else ""
    print(f"{data['x'].shape[0]} transitions in {episodes} episodes from {source}, policy {args.policy}{extra}, "
          f"written to {args.output} in {time.perf_counter() - start:.2f} s")
    return EXIT_OK


def run_mbrl(args) -> int:
    import planlang
    from planlang.mbrl import mbrl
    from planlang.training import plan_train_config, save_weights
    from planlang.world_models import fit_world_model

    plan = planlang.load(args.file)
    config = plan_train_config(plan)
    if args.epochs is not None:
        config = replace(config, epochs=args.epochs)

    def show(record: dict) -> None:
        fit = f"  fit {record['fit_epochs']} epochs, val mse {record['val_mse']:.3g}" if "fit_epochs" in record else ""
        if "val_reward_mse" in record:
            fit += f", reward mse {record['val_reward_mse']:.3g}"
        print(f"episode {record['episode']:3d}  {record['policy']:6s} return {record['return']:10.2f}  "
              f"{record['time_s']:6.1f} s{fit}", flush=True)

    result = mbrl(plan, args.env, args.episodes, args.seed, args.random_episodes, config,
                  torch.float64 if args.float64 else torch.float32, on_episode=show, random_hold=args.random_hold)
    module = result.pop("module")
    data = result.pop("data")
    if args.output:
        fit_world_model(module, data, replace(config, progress=False, checkpoint=None, log=None, plot=None),
                        refit_normalization=True)
        save_weights(module, args.output, plan, trained_by="planlang mbrl", returns=result["returns"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**result, "plan": str(args.file), "episodes_run": args.episodes,
                                         "random_episodes": args.random_episodes}, indent=1))
    if args.plot:
        plot_returns(result["returns"], args.plot, f"{module.plan_name} on {result['env']}")
    returns = result["returns"]
    print(f"returns   {', '.join(f'{r:.1f}' for r in returns)}\n"
          f"best      {max(returns):.2f}   last {returns[-1]:.2f}\n"
          f"time      {result['wall_s']:.1f} s")
    return EXIT_OK


def plot_returns(returns: list[float], path: Path, title: str) -> None:
    """The return of each episode as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(range(1, len(returns) + 1), returns, marker="o")
    ax.set(xlabel="episode", ylabel="return", title=title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
