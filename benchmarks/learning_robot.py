"""docs/learning.md, the robot rows: held-out trajectory error, one-step prediction error and task
success of a learned robot plan before and after training, next to the teacher.

Success on a held-out start: the robot, driven by the plan's controls through the TRUE system (the
teacher's dynamics), ends within 0.25 of the goal and never comes within 0.4 of the obstacle's
centre (the barrier's scale is radius 0.6). Open loop (default): the plan solved once from the
start, its controls executed; `--closed-loop N`: N steps of receding-horizon control
(`PlanModule.simulate` with the teacher as the system). Prediction error: RMS over held-out
transitions of ||x_{t+1} - f(x_t, u_t)|| for the plan's dynamics f.

    planlang demos examples/robot_obstacle_teacher.plan --n 48 --seed 0 --range p=-0.5:0.5 --range v=0:0 -o /tmp/robot_train.npz
    planlang demos examples/robot_obstacle_teacher.plan --n 32 --seed 1 --range p=-0.5:0.5 --range v=0:0 -o /tmp/robot_test.npz
    planlang train examples/robot_obstacle.plan --data /tmp/robot_train.npz --epochs 20 --batch 16 --lr 0.1 -o /tmp/robot.pt
    PYTHONPATH=$PWD python benchmarks/learning_robot.py --weights /tmp/robot.pt --test /tmp/robot_test.npz
"""
from __future__ import annotations

import argparse
import json

import torch

import planlang
from planlang.training import PlanPlanner, check_demos, load_weights
from runtime.demos import load_demos
from runtime.losses import trajectory_error

LEARNER, TEACHER = "examples/robot_obstacle.plan", "examples/robot_obstacle_teacher.plan"
REACH, CLEARANCE = 0.25, 0.4


def evaluate(module, teacher, demos, closed_loop: int | None = None) -> dict[str, float]:
    planner, system = PlanPlanner(module), PlanPlanner(teacher)
    with torch.no_grad():
        sol = module(**planner.values(demos))
        if closed_loop:
            x = module.simulate(closed_loop, system=teacher, **planner.values(demos)).x
        else:
            x = system.rollout(sol.u, demos)                                        # (N, T+1, n) executed
        predicted = torch.stack([planner.rollout(demos["u"][:, t:t + 1], {**demos, "x0": demos["x"][:, t]})[:, 1]
                                 for t in range(demos["u"].shape[1])], dim=1)
    p = x[..., :2]                                                                   # the position states
    goal, obstacle = module.default("goal"), module.default("obstacle")
    reached = (p[:, -1] - goal).norm(dim=-1) < REACH
    clear = (p - obstacle).norm(dim=-1).min(dim=1).values >= CLEARANCE
    return {"error": trajectory_error(sol.x, demos["x"]).mean().item(),
            "prediction_error": (predicted - demos["x"][:, 1:]).norm(dim=-1).pow(2).mean().sqrt().item(),
            "success": (reached & clear).double().mean().item(), "solved": sol.ok.double().mean().item()}


def main() -> None:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, nargs="+", help="checkpoints of the learner plan")
    parser.add_argument("--test", required=True)
    parser.add_argument("--learner", default=LEARNER)
    parser.add_argument("--teacher", default=TEACHER, help="the teacher plan: the true system")
    parser.add_argument("--closed-loop", type=int, metavar="STEPS", help="closed-loop success over STEPS steps")
    parser.add_argument("--json", action="store_true", help="one JSON line per model instead of text")
    args = parser.parse_args()
    plan = planlang.load(args.learner)
    teacher = planlang.compile(planlang.load(args.teacher), dtype=torch.float64)
    before = planlang.compile(plan, dtype=torch.float64)
    demos = check_demos(before, load_demos(args.test))
    models = [("before", before)] + [(str(path), load_weights(planlang.compile(plan, dtype=torch.float64), path, plan))
                                     for path in args.weights] + [("teacher", teacher)]
    for name, module in models:
        r = evaluate(module, teacher, demos, args.closed_loop)
        learned = {k: round(v.item(), 4) for k, v in module.learned_values().items()}
        if args.json:
            print(json.dumps({"model": name, "learned": learned, **r}), flush=True)
        else:
            print(f"{name}: {learned}\n    held-out trajectory error {r['error']:.4f}   prediction error "
                  f"{r['prediction_error']:.4f}   success {100 * r['success']:.0f}%   solved {100 * r['solved']:.0f}%",
                  flush=True)


if __name__ == "__main__":
    main()
