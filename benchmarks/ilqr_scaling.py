"""iLQR time per iteration against horizon T and state size n, and the example plans' solves.

Runtime level: a chain of n/2 damped pendulums driven by n/2 torques in [-1, 1]
(x = (angles, velocities), explicit Euler, dt 0.05), batch 1, float32, `torch.set_num_threads(1)`:
`runtime.ilqr.ilqr` with tol=0 (never converges early) and a fixed iteration budget; CPU time
per iteration (process time, minimum over repeats). Plan level: `planlang.compile` of
examples/two_link_arm.plan (single and multiple shooting), examples/pendulum.plan,
examples/planar_quadrotor.plan and examples/cartpole_upright_long.plan, one solve each after a
warm-up (process time / iterations), and a closed loop of the arm (`module.simulate`,
warm-started solves).

Run from the repository root (add --threads 0 for torch's default thread count):

    python benchmarks/ilqr_scaling.py
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from runtime.ilqr import ILQROptions, ILQRProblem, ilqr  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def pendulum_chain(n: int) -> ILQRProblem:
    half = n // 2

    def dynamics(x, u):
        p, v = x[:, :half], x[:, half:]
        return torch.cat((p + 0.05 * v, v + 0.05 * (-9.81 * torch.sin(p) - 0.1 * v + 4 * u)), 1)

    def stage_cost(x, u):
        return 0.1 * (1 + torch.cos(x[:, :half])).sum(1) + 0.01 * (u * u).sum(1)

    def final_cost(x):
        return 100 * (1 + torch.cos(x[:, :half])).sum(1) + (x[:, half:] ** 2).sum(1)

    return ILQRProblem(dynamics, stage_cost, final_cost, lower=-1.0, upper=1.0)


def per_iteration(n: int, T: int, iterations: int, repeats: int) -> float:
    problem = pendulum_chain(n)
    x0 = torch.full((1, n), 0.1)
    u0 = torch.zeros(1, T, n // 2)
    options = ILQROptions(max_iters=iterations, tol=0.0, cost_tol=0.0)
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        with torch.no_grad():
            sol = ilqr(problem, x0, u0, options)
        best = min(best, (time.process_time() - start) / max(1, int(sol.iterations.max())))
    return 1e3 * best


def plan_solve(path: str, shooting: str | None = None) -> tuple[float, int, str, float]:
    """(CPU seconds, iterations, status, cost) of one solve after a warm-up solve."""
    import planlang
    options = None if shooting is None else {"shooting": shooting}
    module = planlang.compile(planlang.load(os.path.join(ROOT, path)), options=options)
    with torch.no_grad():
        module()
        start = time.process_time()
        sol = module()
    elapsed = time.process_time() - start
    return elapsed, int(sol.iterations.max()), sol.status_names()[0], float(sol.cost[0])


def closed_loop(path: str, steps: int) -> float:
    import planlang
    module = planlang.compile(planlang.load(os.path.join(ROOT, path)))
    start = time.perf_counter()
    module.simulate(steps)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads; 0 keeps torch's default")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-plans", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"threads {torch.get_num_threads()}")
    print("ms per iteration, pendulum chain (n states, n/2 controls), batch 1, float32")
    horizons = (60, 500, 2000)
    print(f"{'n':>4} " + " ".join(f"{'T=' + str(T):>9}" for T in horizons))
    for n in (2, 4, 8):
        row = [per_iteration(n, T, args.iterations if T < 1000 else 2, args.repeats if T < 1000 else 1)
               for T in horizons]
        print(f"{n:>4} " + " ".join(f"{v:9.1f}" for v in row), flush=True)
    if args.skip_plans:
        return
    for path, shooting in (("examples/two_link_arm.plan", None), ("examples/two_link_arm.plan", "multiple"),
                           ("examples/pendulum.plan", None), ("examples/planar_quadrotor.plan", None),
                           ("examples/cartpole_upright_long.plan", "multiple")):
        elapsed, iters, status, cost = plan_solve(path, shooting)
        print(f"{path} (shooting {shooting or 'as written'}): {elapsed:.2f} s CPU, {iters} iterations, "
              f"{1e3 * elapsed / max(1, iters):.1f} ms/iteration, status {status}, cost {cost:.4g}", flush=True)
    print(f"two_link_arm closed loop, 30 steps: {closed_loop('examples/two_link_arm.plan', 30):.1f} s wall")


if __name__ == "__main__":
    main()
