"""iLQR time per iteration against horizon T and state size n, and the example plans' solves,
on the torch kernels and on the native (C) kernels (`solve ilqr(kernels=...)`, runtime/native.py).

Chain: n/2 damped pendulums driven by n/2 torques in [-1, 1] (x = (angles, velocities),
explicit Euler, dt 0.05), batch 1, float32, `torch.set_num_threads(1)`, written as a plan and
solved with tol=0 and cost_tol=0 (never converges early) for a fixed iteration budget; CPU time
per iteration (process time, minimum over repeats; the native library is compiled before the
clock starts). Plan level: examples/two_link_arm.plan (single and multiple shooting),
examples/pendulum.plan, examples/planar_quadrotor.plan and examples/cartpole_upright_long.plan,
one solve each after a warm-up (process time / iterations), and a closed loop of the arm
(`module.simulate`, warm-started solves).

Run from the repository root (add --threads 0 for torch's default thread count):

    python benchmarks/ilqr_scaling.py
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import planlang  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def pendulum_chain(n: int, T: int) -> str:
    h = n // 2
    return f"""plan chain
horizon {T}
state p[{h}] = 0.1
state v[{h}] = 0.1
control tau[{h}] in [-1, 1]
dynamics p' = p + 0.05 * v
dynamics v' = v + 0.05 * (-9.81 * sin(p) - 0.1 * v + 4 * tau)
cost stage = 0.1 * sum(1 + cos(p)) + 0.01 * sum(tau^2)
cost final = 100 * sum(1 + cos(p)) + sum(v^2)
solve ilqr(tol=0, cost_tol=0)
"""


def per_iteration(n: int, T: int, iterations: int, repeats: int, kernels: str) -> float:
    module = planlang.compile(planlang.loads(pendulum_chain(n, T)),
                              options={"iters": iterations, "kernels": kernels})
    best = float("inf")
    with torch.no_grad():
        module()
        for _ in range(repeats):
            start = time.process_time()
            sol = module()
            best = min(best, (time.process_time() - start) / max(1, int(sol.iterations.max())))
    return 1e3 * best


def plan_solve(path: str, options: dict) -> tuple[float, int, str, float]:
    """(CPU seconds, iterations, status, cost) of one solve after a warm-up solve."""
    module = planlang.compile(planlang.load(os.path.join(ROOT, path)), options=options)
    with torch.no_grad():
        module()
        start = time.process_time()
        sol = module()
    elapsed = time.process_time() - start
    return elapsed, int(sol.iterations.max()), sol.status_names()[0], float(sol.cost[0])


def profile_arm() -> None:
    """Where a native iteration of the arm goes: cProfile of 20 solves after a warm-up."""
    import cProfile
    import pstats
    module = planlang.compile(planlang.load(os.path.join(ROOT, "examples/two_link_arm.plan")),
                              dtype=torch.float64, options={"kernels": "native"})
    with torch.no_grad():
        module()
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(20):
            sol = module()
        profile.disable()
    print(f"20 solves of {int(sol.iterations.max())} iterations")
    pstats.Stats(profile).sort_stats("tottime").print_stats(8)


def closed_loop(path: str, steps: int, kernels: str) -> tuple[float, float]:
    """(wall, CPU) seconds of `steps` closed-loop steps (after compiling the native library)."""
    module = planlang.compile(planlang.load(os.path.join(ROOT, path)), options={"kernels": kernels})
    with torch.no_grad():                       # as `planlang run --closed-loop`
        module.simulate(1)
        start, cpu = time.perf_counter(), time.process_time()
        module.simulate(steps)
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads; 0 keeps torch's default")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-plans", action="store_true")
    parser.add_argument("--skip-chain", action="store_true")
    parser.add_argument("--profile", action="store_true",
                        help="only: cProfile of 20 native solves of the arm (float64), the top entries")
    parser.add_argument("--kernels", nargs="+", default=["torch", "native"], choices=["torch", "native"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.profile:
        return profile_arm()
    print(f"threads {torch.get_num_threads()}")
    horizons = (60, 500, 2000)
    for kernels in [] if args.skip_chain else args.kernels:
        print(f"ms per iteration, pendulum chain (n states, n/2 controls), batch 1, float32, kernels={kernels}")
        print(f"{'n':>4} " + " ".join(f"{'T=' + str(T):>9}" for T in horizons))
        for n in (2, 4, 8):
            row = [per_iteration(n, T, args.iterations if T < 1000 else 2, args.repeats if T < 1000 else 1, kernels)
                   for T in horizons]
            print(f"{n:>4} " + " ".join(f"{v:9.2f}" for v in row), flush=True)
    if args.skip_plans:
        return
    for kernels in args.kernels:
        for path, extra in (("examples/two_link_arm.plan", {}),
                            ("examples/two_link_arm.plan", {"shooting": "multiple"}),
                            ("examples/two_link_arm.plan", {"model": "newton"}),
                            ("examples/pendulum.plan", {}), ("examples/planar_quadrotor.plan", {}),
                            ("examples/cartpole_upright_long.plan", {"shooting": "multiple"})):
            # multiple shooting runs on torch only
            options = {"kernels": "auto" if extra.get("shooting") == "multiple" else kernels, **extra}
            elapsed, iters, status, cost = plan_solve(path, options)
            print(f"{path} ({', '.join(f'{k}={v}' for k, v in options.items())}): {elapsed:.3f} s CPU, "
                  f"{iters} iterations, {1e3 * elapsed / max(1, iters):.2f} ms/iteration, status {status}, "
                  f"cost {cost:.4g}", flush=True)
        wall, cpu = closed_loop("examples/two_link_arm.plan", 30, kernels)
        print(f"two_link_arm closed loop, 30 steps, kernels {kernels}: {wall:.2f} s wall, {cpu:.2f} s CPU", flush=True)


if __name__ == "__main__":
    main()
