"""DeepMind Control pendulum-swingup through a learned model and reward (docs/world_models.md).

    python benchmarks/dmc_pendulum.py mbrl --plan examples/dmc_pendulum_wm.plan --episodes 100 --seed 0 \\
        --log dmc_pendulum.jsonl
        `planlang mbrl` on the plan's env (dmc:pendulum-swingup:2), one JSON line per episode as it
        ends (the return curve survives an interrupted run): episode, policy, return, environment
        steps so far (decisions x action repeat), held-out reward error of the fit, seconds, and
        the learned reward against the true one on the episode just played, by the model that
        played it (before it is refitted on it, so on data it has not seen): the sum of the
        learned rewards over the episode next to its return, and their mean squared difference.
        Every --every episodes (and at the end) the plan's weights and all transitions so far are
        written next to the log (LOG.pt, LOG.npz). With --resume, an interrupted run continues
        from those files after the log's last checkpointed episode, appending to the log (the
        wall and CPU columns then count the resumed process from where the log left them).
    python benchmarks/dmc_pendulum.py true --plan /path/true_model.plan --episodes 5 --seed 0
        the same cost planned through a known model (a plan whose dynamics are written out), for
        the true-model reference: the returns as JSON on stdout.
    python benchmarks/dmc_pendulum.py speed --plan examples/dmc_pendulum_wm.plan [--fuse on] [--calls 40]
        ms per planning step of the plan's prepared controller (`PlanModule.controller`) from a
        swinging state, wall and CPU, after one warm-up call (which with --fuse on compiles).

Needs dm_control (`pip install -e .[dmc]`) for mbrl and true. 1 torch thread.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import planlang  # noqa: E402
from planlang.mbrl import mbrl  # noqa: E402
from planlang.world_models import the_world_model  # noqa: E402
from runtime.transitions import load_transitions, save_transitions  # noqa: E402
from runtime.dmc_env import parse_dmc_id  # noqa: E402


def run_mbrl(args) -> None:
    plan = planlang.load(args.plan)
    env_id = args.env or planlang.compile(plan).info.env.id
    repeat = parse_dmc_id(env_id)[2]
    log = Path(args.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    state = {"env_steps": 0, "start": time.perf_counter(), "cpu": time.process_time(), "episodes": 0}
    resume = None
    if args.resume:
        data = load_transitions(log.with_suffix(".npz"), dtype=torch.float32)
        done = int(data["episode"].max()) + 1
        lines = [json.loads(line) for line in log.read_text().splitlines()][:done]
        log.write_text("".join(json.dumps(line) + "\n" for line in lines))
        last = lines[-1]
        state.update(env_steps=last["env_steps"], episodes=done, start=state["start"] - last["wall_s"],
                     cpu=state["cpu"] - last["cpu_s"])
        resume = (done, torch.load(log.with_suffix(".pt")), data)
    else:
        log.write_text("")
    block = the_world_model(planlang.compile(plan)).block

    def on_data(module, part: dict, data: dict) -> None:
        with torch.no_grad():
            learned = module.blocks[block].reward(part["x"], part["u"])
        state["learned_return"] = float(learned.sum())
        state["reward_mse"] = float(((learned - part["reward"]) ** 2).mean())
        state["episodes"] += 1
        if state["episodes"] % args.every == 0 or state["episodes"] == args.episodes:
            torch.save(module.state_dict(), log.with_suffix(".pt"))
            save_transitions(log.with_suffix(".npz"), data)

    def on_episode(record: dict) -> None:
        state["env_steps"] += record["steps"] * repeat
        line = {"episode": record["episode"], "policy": record["policy"], "return": record["return"],
                "learned_return": state["learned_return"], "learned_reward_mse": state["reward_mse"],
                "env_steps": state["env_steps"], "val_reward_mse": record.get("val_reward_mse"),
                "val_mse": record.get("val_mse"), "episode_s": round(record["time_s"], 1),
                "act_s": round(record["act_s"], 1), "wall_s": round(time.perf_counter() - state["start"], 1),
                "cpu_s": round(time.process_time() - state["cpu"], 1)}
        with log.open("a") as out:
            out.write(json.dumps(line) + "\n")

    mbrl(plan, env_id, args.episodes, args.seed, random_episodes=1, on_episode=on_episode, on_data=on_data,
         resume=resume)


def run_true(args) -> None:
    module = planlang.compile(planlang.load(args.plan))
    returns = []
    for e in range(args.episodes):
        returns.append(module.drive(seed=args.seed + e, env=args.env).return_)
    print(json.dumps({"plan": args.plan, "seed": args.seed, "returns": returns}))


def run_speed(args) -> None:
    text = Path(args.plan).read_text()
    if args.fuse:
        if "fuse=" in text:
            raise SystemExit("the plan sets fuse= itself; drop --fuse")
        text = text.replace("solve mppi(", f"solve mppi(fuse={args.fuse}, ", 1)
    module = planlang.compile(planlang.loads(text, args.plan))
    controller = module.controller()
    x = torch.tensor([[2.0, 3.0]])
    with torch.no_grad():
        start = time.perf_counter()
        controller(x)
        first = time.perf_counter() - start
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.calls):
            controller(x)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({"plan": args.plan, "fuse": args.fuse or "plan's", "first_call_s": round(first, 2),
                      "ms_per_step_wall": round(1e3 * wall / args.calls, 1),
                      "ms_per_step_cpu": round(1e3 * cpu / args.calls, 1)}))


def main() -> None:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("mbrl", "true", "speed"))
    parser.add_argument("--plan", required=True)
    parser.add_argument("--env", help="default: the plan's env block")
    parser.add_argument("--episodes", type=int, default=10, help="mbrl, true: episodes (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log", default="dmc_pendulum.jsonl", help="mbrl: one JSON line per episode")
    parser.add_argument("--every", type=int, default=5, help="mbrl: checkpoint every this many episodes")
    parser.add_argument("--resume", action="store_true", help="mbrl: continue the run of --log from its checkpoint")
    parser.add_argument("--fuse", choices=("on", "off"), help="speed: set mppi's fuse option")
    parser.add_argument("--calls", type=int, default=40, help="speed: timed planning steps")
    args = parser.parse_args()
    {"mbrl": run_mbrl, "true": run_true, "speed": run_speed}[args.what](args)


if __name__ == "__main__":
    main()
