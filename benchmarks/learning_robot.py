"""docs/learning.md, row "2-D robot around an obstacle (iLQR), imitation": held-out trajectory error
and task success of robot_obstacle.plan before and after training, next to the teacher.

Success on a held-out start: the planned final position is within 0.25 of the goal and no
planned position comes within 0.4 of the obstacle's centre (the barrier's scale is radius 0.6).

    planlang demos examples/robot_obstacle_teacher.plan --n 48 --seed 0 --range p=-0.5:0.5 --range v=0:0 -o /tmp/robot_train.npz
    planlang demos examples/robot_obstacle_teacher.plan --n 32 --seed 1 --range p=-0.5:0.5 --range v=0:0 -o /tmp/robot_test.npz
    planlang train examples/robot_obstacle.plan --data /tmp/robot_train.npz --epochs 20 --batch 16 --lr 0.1 -o /tmp/robot.pt
    PYTHONPATH=$PWD python benchmarks/learning_robot.py --weights /tmp/robot.pt --test /tmp/robot_test.npz
"""
from __future__ import annotations

import argparse

import torch

import planlang
from planlang.training import PlanPlanner, check_demos, load_weights
from runtime.demos import load_demos
from runtime.losses import trajectory_error

LEARNER, TEACHER = "examples/robot_obstacle.plan", "examples/robot_obstacle_teacher.plan"
REACH, CLEARANCE = 0.25, 0.4


def evaluate(module, demos) -> dict[str, float]:
    planner = PlanPlanner(module)
    with torch.no_grad():
        sol = module(**planner.values(demos))
    p = sol["p"]                                                                   # (N, T+1, 2)
    goal, obstacle = module.default("goal"), module.default("obstacle")
    reached = (p[:, -1] - goal).norm(dim=-1) < REACH
    clear = (p - obstacle).norm(dim=-1).min(dim=1).values >= CLEARANCE
    return {"error": trajectory_error(sol.x, demos["x"]).mean().item(),
            "success": (reached & clear).double().mean().item(), "solved": sol.ok.double().mean().item()}


def main() -> None:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--test", required=True)
    args = parser.parse_args()
    plan = planlang.load(LEARNER)
    before = planlang.compile(plan, dtype=torch.float64)
    after = load_weights(planlang.compile(plan, dtype=torch.float64), args.weights, plan)
    teacher = planlang.compile(planlang.load(TEACHER), dtype=torch.float64)
    demos = check_demos(before, load_demos(args.test))
    print(f"learned: {', '.join(f'{k} = {v.item():.3g}' for k, v in after.learned_values().items())} "
          f"(teacher: {', '.join(f'{k} = {v.item():.3g}' for k, v in teacher.learned_values().items())})")
    for name, module in (("before", before), ("after", after), ("teacher", teacher)):
        r = evaluate(module, demos)
        print(f"{name:<8} held-out trajectory error {r['error']:.4f}   success {100 * r['success']:.0f}%   "
              f"solved {100 * r['solved']:.0f}%")


if __name__ == "__main__":
    main()
