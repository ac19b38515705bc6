"""Forward+backward time of `runtime.lqr.lqr` vs mpc.pytorch's LQR and a dense KKT solve.

    PLANLANG_ANCHORS=/tmp/anchors python benchmarks/lqr.py

One random LQR problem (n=10, m=4, T=50, batch 64, float64, one thread) solved three ways:

* planlang: `lqr` (Riccati factorization + analytic implicit backward);
* mpc.pytorch (github locuslab/mpc.pytorch, `mpc.mpc.MPC` with `QuadCost`/`LinDx`): no control
  bounds (`u_lower=None`, so its backward is one more unconstrained LQR), `lqr_iter=1` (exact
  for linear dynamics and quadratic cost), `max_linesearch_iter=1` (the full step only),
  `detach_unconverged=False`. It is time-major and has T' = T+1 stages of (x_t, u_t) with
  T'-1 dynamics steps, so our final cost becomes its last stage [[CT, 0], [0, I]], [cT; 0]
  whose control u_T is free and decoupled (optimal u_T = 0). It runs unmodified on torch 2.13
  (no compatibility shim);
* dense: autograd through `torch.linalg.solve` of the full KKT system over all (x, u).

The loss is a fixed random linear function of (x, u) (mpc.pytorch does not differentiate its
cost output). Trajectories and the gradients w.r.t. every input are compared with the maximum
relative difference max|a - b| / max|b| over all tensors. Timings (process CPU time and wall
time, leaf tensors built beforehand) are medians of repeats interleaved in this one process.
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.lqr import lqr  # noqa: E402

INPUTS = ("x0", "C", "c", "F", "f", "CT", "cT")


def import_mpc():
    """mpc.pytorch's `mpc.mpc` module, or None (with a message) when it is not importable."""
    anchors = os.environ.get("PLANLANG_ANCHORS")
    if anchors:
        sys.path.insert(0, os.path.join(anchors, "mpc.pytorch"))
    try:
        from mpc import mpc
    except ImportError:
        print("mpc.pytorch not importable: unpack github locuslab/mpc.pytorch into "
              "$PLANLANG_ANCHORS/mpc.pytorch (see benchmarks/README.md); skipping it.")
        return None
    return mpc


def random_problem(B, T, n, m, dtype, generator):
    """A well-posed random LQR problem: PD costs, mildly unstable dynamics."""
    N = n + m

    def randn(*shape):
        return torch.randn(*shape, dtype=dtype, generator=generator)

    def pd(*shape):
        M = randn(*shape)
        return M @ M.mT / shape[-1] + 0.1 * torch.eye(shape[-1], dtype=dtype)

    A = torch.eye(n, dtype=dtype) + 0.1 * randn(B, T, n, n)
    F = torch.cat([A, randn(B, T, n, m)], dim=-1)
    return dict(x0=randn(B, n), C=pd(B, T, N, N), c=randn(B, T, N), F=F, f=randn(B, T, n),
                CT=pd(B, n, n), cT=randn(B, n))


class Planlang:
    """`runtime.lqr.lqr` on leaf copies of the data."""

    name = "planlang lqr"

    def __init__(self, data, weights):
        self.leaves = {k: v.clone().requires_grad_() for k, v in data.items()}
        self.weights = weights

    def run(self):
        sol = lqr(*(self.leaves[k] for k in INPUTS))
        loss = (self.weights["x"] * sol.x).sum() + (self.weights["u"] * sol.u).sum()
        loss.backward()
        return sol.x, sol.u

    def grads(self):
        return {k: self.leaves[k].grad for k in INPUTS}


class Dense(Planlang):
    """Autograd through one dense KKT solve."""

    name = "dense KKT"

    def run(self):
        x, u = dense_kkt_lqr(*(self.leaves[k] for k in INPUTS))
        loss = (self.weights["x"] * x).sum() + (self.weights["u"] * u).sum()
        loss.backward()
        return x, u


class MpcPytorch:
    """The same problem for mpc.pytorch: time-major, T+1 stages (see the module docstring)."""

    name = "mpc.pytorch"

    def __init__(self, mpc, data, weights):
        B, T, n, N = data["F"].shape
        m = N - n
        dtype = data["C"].dtype
        C_last = torch.zeros(B, N, N, dtype=dtype)
        C_last[:, :n, :n] = data["CT"]
        C_last[:, n:, n:] = torch.eye(m, dtype=dtype)
        c_last = torch.cat([data["cT"], torch.zeros(B, m, dtype=dtype)], dim=-1)
        self.leaves = dict(
            x0=data["x0"].clone(),
            C=torch.cat([data["C"].transpose(0, 1), C_last[None]]),   # (T+1, B, N, N)
            c=torch.cat([data["c"].transpose(0, 1), c_last[None]]),   # (T+1, B, N)
            F=data["F"].transpose(0, 1).contiguous(),                 # (T, B, n, N)
            f=data["f"].transpose(0, 1).contiguous(),                 # (T, B, n)
        )
        for v in self.leaves.values():
            v.requires_grad_()
        self.mpc, self.weights, self.shape = mpc, weights, (T, n)
        self.solver = mpc.MPC(n, m, T + 1, u_lower=None, u_upper=None, lqr_iter=1,
                              max_linesearch_iter=1, exit_unconverged=False,
                              detach_unconverged=False, n_batch=B, verbose=-1)

    def run(self):
        T, _ = self.shape
        leaves, mpc = self.leaves, self.mpc
        x, u, _ = self.solver(leaves["x0"], mpc.QuadCost(leaves["C"], leaves["c"]),
                              mpc.LinDx(leaves["F"], leaves["f"]))
        x, u = x.transpose(0, 1), u[:T].transpose(0, 1)
        loss = (self.weights["x"] * x).sum() + (self.weights["u"] * u).sum()
        loss.backward()
        return x, u

    def grads(self):
        T, n = self.shape
        dC, dc = self.leaves["C"].grad, self.leaves["c"].grad
        return dict(x0=self.leaves["x0"].grad, C=dC[:T].transpose(0, 1),
                    c=dc[:T].transpose(0, 1), F=self.leaves["F"].grad.transpose(0, 1),
                    f=self.leaves["f"].grad.transpose(0, 1), CT=dC[T, :, :n, :n],
                    cT=dc[T, :, :n])


def dense_kkt_lqr(x0, C, c, F, f, CT, cT):
    """(x, u) from one dense solve of the KKT system over tau = (z_0, ..., z_{T-1}, x_T)."""
    B, T, n, N = F.shape
    D = T * N + n
    eye = torch.eye(n, dtype=C.dtype)
    H = torch.zeros(B, D, D, dtype=C.dtype)
    G = torch.zeros(B, (T + 1) * n, D, dtype=C.dtype)
    G[:, :n, :n] = -eye                                   # x0 - x_0 = 0
    for t in range(T):
        H[:, t * N:(t + 1) * N, t * N:(t + 1) * N] = 0.5 * (C[:, t] + C[:, t].mT)
        rows = slice((t + 1) * n, (t + 2) * n)            # F_t z_t + f_t - x_{t+1} = 0
        G[:, rows, t * N:(t + 1) * N] = F[:, t]
        G[:, rows, (t + 1) * N:(t + 1) * N + n] = -eye
    H[:, T * N:, T * N:] = 0.5 * (CT + CT.mT)            # symmetric parts, as `lqr` reads them
    KKT = torch.cat([torch.cat([H, G.mT], -1),
                     torch.cat([G, torch.zeros(B, (T + 1) * n, (T + 1) * n, dtype=C.dtype)], -1)],
                    -2)
    rhs = torch.cat([c.flatten(1), cT, x0, f.flatten(1)], -1)
    tau = torch.linalg.solve(KKT, -rhs)[:, :D]
    z = tau[:, :T * N].view(B, T, N)
    return torch.cat([z[..., :n], tau[:, None, T * N:]], dim=1), z[..., n:]


def fresh_run(solver):
    """(x, u) of one forward+backward, with the gradients of the leaves zeroed first."""
    for v in solver.leaves.values():
        v.grad = None
    return solver.run()


def timed(solver):
    """(process CPU seconds, wall seconds) of one `fresh_run`."""
    cpu, wall = time.process_time(), time.perf_counter()
    fresh_run(solver)
    return time.process_time() - cpu, time.perf_counter() - wall


def max_rel_diff(a, b):
    """max over x, u and the input gradients of max|a - b| / max|b|."""
    (xa, ua), (xb, ub) = fresh_run(a), fresh_run(b)
    ga, gb = a.grads(), b.grads()
    pairs = [(xa, xb), (ua, ub)] + [(ga[k], gb[k]) for k in INPUTS]
    return max(((p - q).abs().max() / q.abs().max()).item() for p, q in pairs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--dense-repeats", type=int, default=3)
    parser.add_argument("--no-dense", action="store_true", help="skip the slow dense KKT solve")
    args = parser.parse_args()

    torch.set_num_threads(1)
    B, T, n, m = 64, 50, 10, 4
    generator = torch.Generator().manual_seed(0)
    data = random_problem(B, T, n, m, torch.float64, generator)
    weights = dict(x=torch.randn(B, T + 1, n, dtype=torch.float64, generator=generator),
                   u=torch.randn(B, T, m, dtype=torch.float64, generator=generator))
    solvers = [Planlang(data, weights)]
    mpc = import_mpc()
    if mpc is not None:
        solvers.append(MpcPytorch(mpc, data, weights))
    if not args.no_dense:
        solvers.append(Dense(data, weights))
    print(f"LQR n={n} m={m} T={T} B={B} float64, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread; forward+backward, median of {args.repeats} "
          f"interleaved repeats ({args.dense_repeats} for dense); ratio = time / planlang's")

    # Interleaved repeats, so that load from other processes hits every solver alike.
    cpu, wall = {s.name: [] for s in solvers}, {s.name: [] for s in solvers}
    for r in range(args.repeats):
        for solver in solvers:
            if solver.name != Dense.name or r < args.dense_repeats:
                c, w = timed(solver)
                cpu[solver.name].append(c)
                wall[solver.name].append(w)
    ours = solvers[0]
    base_cpu, base_wall = statistics.median(cpu[ours.name]), statistics.median(wall[ours.name])
    print(f"{'':14s} {'CPU ms':>9s} {'ratio':>7s} {'wall ms':>9s} {'ratio':>7s}  "
          f"max rel diff vs planlang (x, u, grads)")
    for solver in solvers:
        c, w = statistics.median(cpu[solver.name]), statistics.median(wall[solver.name])
        diff = "" if solver is ours else f"{max_rel_diff(ours, solver):.1e}"
        print(f"{solver.name:14s} {c * 1e3:9.2f} {c / base_cpu:6.1f}x {w * 1e3:9.2f} "
              f"{w / base_wall:6.1f}x  {diff}")


if __name__ == "__main__":
    main()
