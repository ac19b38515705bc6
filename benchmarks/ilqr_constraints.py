"""Constrained iLQR (augmented Lagrangian) against scipy SLSQP on a small nonlinear NLP.

A 2-D point mass (x = position, velocity; u = acceleration; dt 0.2, T 12) passes a disc
obstacle of radius 0.5 (state inequality), with |u| <= 1.5 (mixed nonlinear inequality), a
final equality (at the goal) and a final inequality (nearly at rest); float64, one thread.
SLSQP solves the single-shooting NLP of each element (exact torch gradients and Jacobians);
`runtime.ilqr.ilqr` solves the batch at once from u = 0; SLSQP starts from our solution
perturbed by 0.1 (from u = 0 it stops on its LSQ-subproblem iteration limit). Reported: max |u - u_SLSQP|, relative cost
difference, max violation, and CPU time (the whole batch for ours; the sum over elements for
SLSQP).

    python benchmarks/ilqr_constraints.py
"""
import os
import sys
import time

import torch
from scipy.optimize import minimize

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from runtime.ilqr import ILQROptions, ILQRProblem, ilqr  # noqa: E402
from runtime.ilqr_constraints import ConstraintOptions  # noqa: E402

DT, T, B = 0.2, 15, 8


def problem(obstacle, goal) -> ILQRProblem:
    def dynamics(x, u):
        return torch.cat((x[:, :2] + DT * x[:, 2:] + 0.5 * DT ** 2 * u, x[:, 2:] + DT * u), 1)

    def inequality(x, u):
        d = x[:, :2] - obstacle
        return torch.stack((0.25 - (d * d).sum(1), (u * u).sum(1) - 1.5 ** 2), 1)

    return ILQRProblem(dynamics, lambda x, u: 0.1 * (u * u).sum(1) + 0.01 * (x[:, 2:] ** 2).sum(1),
                       lambda x: 0.1 * (x[:, 2:] ** 2).sum(1), inequality=inequality,
                       final_inequality=lambda x: ((x[:, 2:] ** 2).sum(1) - 0.01)[:, None],
                       final_equality=lambda x: x[:, :2] - goal)


def slsqp(p: ILQRProblem, x0: torch.Tensor, start: torch.Tensor):
    def rollout(flat):
        u = flat.reshape(1, T, 2)
        xs, J = [x0], 0.0
        for t in range(T):
            J = J + p.stage_cost(xs[-1], u[:, t])
            xs.append(p.dynamics(xs[-1], u[:, t]))
        return torch.stack(xs, 1), u, (J + p.final_cost(xs[-1])).sum()

    def ineq(flat):
        x, u, _ = rollout(flat)
        return -torch.cat([p.inequality(x[:, t], u[:, t]) for t in range(T)]
                          + [p.final_inequality(x[:, -1])], 1).flatten()

    def eq(flat):
        x, _, _ = rollout(flat)
        return p.final_equality(x[:, -1]).flatten()

    def fn(f):
        return lambda v: f(torch.tensor(v)).detach().numpy()

    def jac(f):
        return lambda v: torch.autograd.functional.jacobian(f, torch.tensor(v)).numpy()

    cost = lambda v: rollout(v)[2]
    res = minimize(fn(cost), start.flatten().numpy(), jac=jac(cost), method="SLSQP",
                   constraints=[dict(type="ineq", fun=fn(ineq), jac=jac(ineq)),
                                dict(type="eq", fun=fn(eq), jac=jac(eq))],
                   options=dict(maxiter=500, ftol=1e-12))
    return torch.tensor(res.x).reshape(T, 2), float(res.fun), res.success


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    obstacle = torch.tensor([1.0, 0.15], dtype=torch.float64)
    goal = torch.tensor([2.0, 0.0], dtype=torch.float64)
    x0 = torch.cat((0.1 * torch.randn(B, 2, generator=g, dtype=torch.float64),
                    torch.zeros(B, 2, dtype=torch.float64)), 1)
    p = problem(obstacle, goal)
    options = ILQROptions(max_iters=200, constraints=ConstraintOptions(tol=1e-8))
    start = time.process_time()
    with torch.no_grad():
        sol = ilqr(p, x0, torch.zeros(B, T, 2, dtype=torch.float64), options)
    ours = time.process_time() - start
    # SLSQP from u = 0 stops on its LSQ-subproblem limit here; it starts from our solution
    # perturbed by 0.1 (agreement then means the same strict local minimum).
    guess = sol.u + 0.1 * torch.randn(sol.u.shape, generator=g, dtype=torch.float64)
    start = time.process_time()
    refs = [slsqp(p, x0[b:b + 1], guess[b]) for b in range(B)]
    theirs = time.process_time() - start
    du = max(float((sol.u[b] - refs[b][0]).abs().max()) for b in range(B))
    dJ = max(abs(float(sol.cost[b]) - refs[b][1]) / max(1.0, abs(refs[b][1])) for b in range(B))
    print(f"batch {B}: ours {ours:.2f} s CPU (statuses {sol.status.tolist()}, iterations "
          f"{sol.iterations.tolist()}, max violation {float(sol.violation.max()):.1e}); "
          f"SLSQP {theirs:.2f} s CPU (success {[r[2] for r in refs]})")
    print(f"max |u - u_SLSQP| {du:.1e}, max relative cost difference {dJ:.1e}")


if __name__ == "__main__":
    main()
