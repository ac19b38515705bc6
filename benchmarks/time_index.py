"""Time-indexed data: figure-eight tracking with `ref[t]` against the shift-register plan, and
iLQR time per iteration against horizon and state size through compiled plans.

1. Tracking (examples/tracking.plan's model: a point mass in the plane, q = 10, r = 0.1) of a
   figure eight over T stages, written two ways:
     - `input ref[T, 2]` read as `ref[t]` (n = 4 states);
     - the workaround before time-indexed data: the reference as 2T extra states shifted by one
       row per stage (`r' = cat(r[2:], r[2T-2:])`, cost on r[0:2]; n = 4 + 2T).
   Both are solved by `lqr` and `ilqr`; the script reports the largest difference of the
   controls and costs (same optimum) and the time per solve (median of repeats, after one
   untimed solve; process time, one thread, float64, no_grad).
2. iLQR per iteration (process time of one solve / its iterations, float64) on
   examples/two_link_arm.plan at horizons T and on a chain of N masses with nonlinear springs
   (n = 2N states) at T = 60.

Run from the repository root:

    python benchmarks/time_index.py [--horizons 20 40 80] [--repeats 5]
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import planlang  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

COMMON = """plan figure_eight
const dt = 0.1
horizon {T}
state p[2] = [0, 0]
state v[2] = [0, 0]
control a[2]
dynamics p' = p + dt * v + 0.5 * dt^2 * a
dynamics v' = v + dt * a
"""

INDEXED = COMMON + """input ref[T, 2]
cost stage = 10 * sum((p - ref[t])^2) + 0.1 * sum(a^2)
cost final = 10 * sum((p - ref[T-1])^2) + sum(v^2)
solve {solver}
"""

SHIFTED = COMMON + """state r[{n}]
dynamics r' = cat(r[2:], r[{last}:])
cost stage = 10 * sum((p - r[0:2])^2) + 0.1 * sum(a^2)
cost final = 10 * sum((p - r[0:2])^2) + sum(v^2)
solve {solver}
"""


def figure_eight(T: int) -> torch.Tensor:
    s = 2 * torch.pi * torch.arange(T, dtype=torch.float64) / T
    return torch.stack([2 * torch.sin(s), torch.sin(2 * s)], 1)


def timed(fn, repeats: int) -> tuple[float, object]:
    out = fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        out = fn()
        times.append(time.process_time() - start)
    return statistics.median(times), out


def tracking(T: int, solver: str, repeats: int) -> dict:
    ref = figure_eight(T)
    indexed = planlang.compile(planlang.loads(INDEXED.format(T=T, solver=solver)), dtype=torch.float64)
    shifted = planlang.compile(planlang.loads(SHIFTED.format(T=T, solver=solver, n=2 * T, last=2 * T - 2)),
                               dtype=torch.float64)
    with torch.no_grad():
        t_indexed, a = timed(lambda: indexed(ref=ref), repeats)
        t_shifted, b = timed(lambda: shifted(r=ref.reshape(-1)), repeats)
    return dict(T=T, solver=solver, du=float((a.u - b.u).abs().max()),
                dcost=float((a.cost - b.cost).abs().max() / b.cost.abs().max()),
                status=(a.status_names()[0], b.status_names()[0]), indexed_ms=1e3 * t_indexed,
                shifted_ms=1e3 * t_shifted, n=(indexed.layout.n, shifted.layout.n))


def per_iteration(text: str) -> tuple[float, int, str]:
    module = planlang.compile(planlang.loads(text), dtype=torch.float64)
    with torch.no_grad():
        module()
        start = time.process_time()
        sol = module()
        elapsed = time.process_time() - start
    iterations = int(sol.iterations.sum())
    return 1e3 * elapsed / max(iterations, 1), iterations, sol.status_names()[0]


CHAIN = """plan chain
const dt = 0.05
horizon 60
state p[{N}] = {p0}
state v[{N}] = zeros({N})
control f[{N}] in [-5, 5]
dynamics dot(p) = v by rk4(dt)
dynamics dot(v) = -4 * (p + 0.5 * p^3) - 0.2 * v + f by rk4(dt)
cost stage = sum(p^2) + 0.1 * sum(v^2) + 0.05 * sum(f^2)
cost final = 10 * sum(p^2) + 10 * sum(v^2)
solve ilqr(iters=100)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--horizons", type=int, nargs="+", default=[20, 40, 80])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--arm-horizons", type=int, nargs="+", default=[30, 60, 120])
    parser.add_argument("--chain", type=int, nargs="+", default=[2, 4, 8])
    args = parser.parse_args()
    torch.set_num_threads(1)

    print("| T | solver | n (ref[t] / shift) | max abs du | rel cost diff | ref[t] ms | shift ms | speed-up |")
    print("|---:|---|---|---:|---:|---:|---:|---:|")
    for T in args.horizons:
        for solver in ("lqr", "ilqr"):
            r = tracking(T, solver, args.repeats)
            print(f"| {T} | {solver} | {r['n'][0]} / {r['n'][1]} | {r['du']:.1e} | {r['dcost']:.1e} | "
                  f"{r['indexed_ms']:.1f} | {r['shifted_ms']:.1f} | {r['shifted_ms'] / r['indexed_ms']:.1f}x |",
                  flush=True)

    arm = open(os.path.join(ROOT, "examples", "two_link_arm.plan")).read()
    print("\n| plan | T | n | ms / iteration | iterations | status |")
    print("|---|---:|---:|---:|---:|---|")
    for T in args.arm_horizons:
        ms, its, status = per_iteration(arm.replace("horizon 60", f"horizon {T}"))
        print(f"| two_link_arm | {T} | 4 | {ms:.1f} | {its} | {status} |", flush=True)
    for N in args.chain:
        p0 = "[" + ", ".join(f"{0.5 * (-1) ** k:g}" for k in range(N)) + "]"
        ms, its, status = per_iteration(CHAIN.format(N=N, p0=p0))
        print(f"| chain | 60 | {2 * N} | {ms:.1f} | {its} | {status} |", flush=True)


if __name__ == "__main__":
    main()
