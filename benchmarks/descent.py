"""`runtime.descent`: implicit against unrolled (and truncated) backward.

Problem: the damped pendulum swing-up of tests/runtime/test_descent.py (x = (theta, omega),
torque u, quadratic costs with a learnable damping, goal and control weight), float64, one
thread, zero warm start. The loss is a fixed random linear function of (x, u).

1. Gradient agreement: L-BFGS to a projected-gradient norm of 1e-12, gradients of the loss
   w.r.t. (damping, weight, goal, x0) by implicit(cg), implicit(neumann), unroll, truncated(10)
   and one central finite difference (h = 1e-5) of tight re-solves per parameter group along a
   random unit direction.
2. Peak memory and time of forward + backward at 50, 200 and 800 forward iterations of Adam
   (tol = 0, so that every configuration runs all its iterations) for implicit(cg, iters=20),
   unroll and truncated(10). Each configuration runs in a fresh subprocess: a 2-iteration
   warm-up of the same configuration (so that code paged in for the first time does not
   count), then the kernel's peak-RSS mark is reset (`/proc/self/clear_refs`, Linux), and the
   figure is the peak resident set during forward + backward (VmHWM) minus the one before.

Run from the repository root:

    python benchmarks/descent.py     # --batch 16 --horizon 30 --iters 50 200 800 --only memory
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from runtime.descent import DescentMethod, DescentOptions, DescentProblem, descent  # noqa: E402
from runtime.implicit import Backward  # noqa: E402
from runtime.status import status_names  # noqa: E402

F64 = torch.float64
DT = 0.1
BACKWARDS = {"implicit": Backward.implicit("cg", iters=20),
             "implicit-neumann": Backward.implicit("neumann", iters=400, alpha=0.5),
             "unroll": Backward.unroll(),
             "truncated(10)": Backward.truncated(10)}


class Pendulum:
    def __init__(self, batch: int, horizon: int):
        g = torch.Generator().manual_seed(0)
        self.params = [torch.tensor(0.3, dtype=F64), torch.tensor(0.05, dtype=F64),
                       torch.tensor([1.0, 0.0], dtype=F64),
                       0.5 * torch.randn(batch, 2, generator=g, dtype=F64)]
        for p in self.params:
            p.requires_grad_()
        self.wx = torch.randn(batch, horizon + 1, 2, generator=g, dtype=F64)
        self.wu = torch.randn(batch, horizon, 1, generator=g, dtype=F64)
        self.u0 = torch.zeros(batch, horizon, 1, dtype=F64)

    def problem(self) -> DescentProblem:
        damping, weight, goal, _ = self.params

        def dynamics(x, u):
            th, om = x.unbind(-1)
            om = om + DT * (-9.8 * torch.sin(th) - damping * om + u[..., 0])
            return torch.stack((th + DT * om, om), -1)

        def stage_cost(x, u):
            return 0.1 * ((x - goal) ** 2).sum(-1) + weight * (u ** 2).sum(-1)

        def final_cost(x):
            return 10.0 * ((x - goal) ** 2).sum(-1)

        return DescentProblem(dynamics, stage_cost, final_cost)

    def loss(self, options: DescentOptions):
        sol = descent(self.problem(), self.params[3], self.u0, options)
        return (self.wx * sol.x).sum() + (self.wu * sol.u).sum(), sol


def agreement(args) -> None:
    pend = Pendulum(args.batch, args.horizon)
    lbfgs = dict(iters=300, lr=1.0, method=DescentMethod.LBFGS, tol=1e-12)
    grads = {}
    for name, backward in BACKWARDS.items():
        L, sol = pend.loss(DescentOptions(**lbfgs, backward=backward))
        grads[name] = torch.cat([g.reshape(-1) for g in torch.autograd.grad(L, pend.params)])
    g = torch.Generator().manual_seed(1)
    directions = [torch.randn(p.shape, generator=g, dtype=F64) for p in pend.params]
    directions = [d / d.norm() for d in directions]
    fd, h = [], 1e-5
    for i, d in enumerate(directions):
        values = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                pend.params[i].add_(sign * h * d)
                values.append(pend.loss(DescentOptions(**lbfgs))[0].item())
                pend.params[i].sub_(sign * h * d)
        fd.append((values[0] - values[1]) / (2 * h))
    fd = torch.tensor(fd, dtype=F64)
    print(f"L-BFGS, B={args.batch}, T={args.horizon}: status {set(status_names(sol.status))}, "
          f"iterations {sol.iterations.min().item()}-{sol.iterations.max().item()}, "
          f"max residual {sol.residual.max().item():.1e}")
    print("| backward | max rel. diff vs implicit(cg) | "
          "central FD, 4 unit directions: max abs err / max abs FD |")
    print("|---|---:|---:|")
    sizes = [p.numel() for p in pend.params]
    for name, grad in grads.items():
        diff = ((grad - grads["implicit"]).abs().max() / grads["implicit"].abs().max()).item()
        directional = torch.stack([(piece * d.reshape(-1)).sum() for piece, d in
                                   zip(grad.split(sizes), directions)])
        err = ((directional - fd).abs().max() / fd.abs().max()).item()
        print(f"| {name} | {diff:.1e} | {err:.1e} |")


def read_status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> int:
    """Reset the peak-RSS mark (VmHWM) to the current resident set; return that, in kB."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    return read_status_kb("VmRSS")


def one(args) -> None:
    """One configuration: forward + backward, peak RSS over the baseline, JSON on stdout."""
    torch.set_num_threads(1)
    pend = Pendulum(args.batch, args.horizon)
    options = DescentOptions(iters=args.one_iters, lr=0.05, tol=0.0,
                             backward=BACKWARDS[args.one_backward])
    warm_up = DescentOptions(iters=2, lr=0.05, tol=0.0, backward=options.backward)
    torch.autograd.grad(pend.loss(warm_up)[0], pend.params)    # pages in the code it runs
    baseline = reset_peak_rss()
    cpu, wall = time.process_time(), time.perf_counter()
    L, sol = pend.loss(options)
    forward = time.perf_counter() - wall
    grads = torch.autograd.grad(L, pend.params)
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    print(json.dumps({"peak_mb": (read_status_kb("VmHWM") - baseline) / 1024,
                      "wall_s": wall, "cpu_s": cpu, "forward_s": forward,
                      "residual": sol.residual.max().item(),
                      "grad": torch.cat([g.reshape(-1) for g in grads]).tolist()}))


def memory(args) -> None:
    print(f"Adam (lr 0.05, tol 0), B={args.batch}, T={args.horizon}: forward + backward, "
          "peak RSS above the pre-solve baseline, one fresh process per row")
    print("| backward | forward iters | peak MB | wall s | CPU s | max residual | "
          "grad rel. diff vs unroll |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for iters in args.iters:
        results = {}
        for name in ("implicit", "truncated(10)", "unroll"):
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--batch",
                                  str(args.batch), "--horizon", str(args.horizon),
                                  "--one-backward", name, "--one-iters", str(iters)],
                                 check=True, capture_output=True, text=True)
            results[name] = json.loads(out.stdout)
        reference = torch.tensor(results["unroll"]["grad"], dtype=F64)
        for name, r in results.items():
            diff = ((torch.tensor(r["grad"], dtype=F64) - reference).abs().max()
                    / reference.abs().max()).item()
            print(f"| {name} | {iters} | {r['peak_mb']:.1f} | {r['wall_s']:.2f} | "
                  f"{r['cpu_s']:.2f} | {r['residual']:.1e} | {diff:.1e} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--horizon", type=int, default=30)
    parser.add_argument("--iters", type=int, nargs="+", default=[50, 200, 800])
    parser.add_argument("--only", choices=["agreement", "memory"], help="run one part")
    parser.add_argument("--one-backward", choices=list(BACKWARDS), help=argparse.SUPPRESS)
    parser.add_argument("--one-iters", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.one_backward is not None:
        one(args)
        return
    print(f"torch {torch.__version__}, float64, one thread")
    if args.only != "memory":
        agreement(args)
        print()
    if args.only != "agreement":
        memory(args)


if __name__ == "__main__":
    main()
