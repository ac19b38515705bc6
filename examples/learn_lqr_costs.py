"""Recover hidden cost weights from demonstrations by backpropagating through the LQR module.

An expert solves `double_integrator.plan` with hidden state weights q*; a learner with the same
plan but wrong initial weights imitates the expert's trajectories from the same start states,
minimizing || x - x_expert ||^2 + || u - u_expert ||^2. Gradients flow through the implicit LQR
backward into the `positive` learnable q. Optimal trajectories do not change when every cost
weight is scaled by the same factor, so weights are identifiable only up to scale: the control
weight r is known (fixed at the expert's value) and sets that scale.

    python examples/learn_lqr_costs.py [--steps 150]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import planlang

PLAN = Path(__file__).with_name("double_integrator.plan")
TRUE_Q, TRUE_R = torch.tensor([4.0, 0.5]), torch.tensor(0.3)


def demonstrations(plan: planlang.Plan, starts: torch.Tensor):
    """Expert trajectories: the plan solved with the hidden true weights."""
    expert = planlang.compile(plan, dtype=torch.float64)
    with torch.no_grad():
        expert.learnables["q"].copy_(torch.log(torch.expm1(TRUE_Q.double())))   # softplus^{-1}
        expert.learnables["r"].copy_(torch.log(torch.expm1(TRUE_R.double())))
        sol = expert(x=starts)
    return sol.x, sol.u


def learn(steps: int = 150, batch: int = 32, seed: int = 0, log_every: int = 10, verbose: bool = True):
    """Fit q, r by imitation; returns (losses, learned q, learned r)."""
    torch.manual_seed(seed)
    plan = planlang.load(PLAN)
    starts = torch.randn(batch, 2, dtype=torch.float64) * torch.tensor([2.0, 1.0], dtype=torch.float64)
    x_demo, u_demo = demonstrations(plan, starts)

    learner = planlang.compile(plan, dtype=torch.float64)       # starts from q = [1, 1]
    with torch.no_grad():
        learner.learnables["r"].copy_(torch.log(torch.expm1(TRUE_R.double())))
    learner.learnables["r"].requires_grad_(False)              # the known scale
    optimizer = torch.optim.Adam([learner.learnables["q"]], lr=0.1)
    losses = []
    for step in range(steps + 1):
        sol = learner(x=starts)
        loss = ((sol.x - x_demo) ** 2).mean() + ((sol.u - u_demo) ** 2).mean()
        losses.append(loss.item())
        if verbose and step % log_every == 0:
            q, r = learner.learned("q").detach(), learner.learned("r").detach()
            print(f"step {step:4d}  loss {loss.item():.3e}  q = [{q[0]:.3f}, {q[1]:.3f}]  r = {r:.3f}")
        if step < steps:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return losses, learner.learned("q").detach(), learner.learned("r").detach()


def main() -> None:
    torch.set_num_threads(1)       # small batched problems: extra threads only add synchronization
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    print(f"hidden truth: q = [{TRUE_Q[0]:.3f}, {TRUE_Q[1]:.3f}]  r = {TRUE_R:.3f}")
    losses, q, r = learn(args.steps)
    error = ((q - TRUE_Q.double()).abs() / TRUE_Q.double()).max().item()
    print(f"loss {losses[0]:.3e} -> {losses[-1]:.3e}; learned q = [{q[0]:.3f}, {q[1]:.3f}] "
          f"(max relative error {error:.1e}), r = {r:.3f} (fixed)")


if __name__ == "__main__":
    main()
