"""Benchmark: differentiable box-constrained linear MPC, `runtime.qp` against two anchors.

Problem (float64, batch B = 64 instances sharing A, B_u, costs; x0 differs per instance):

    minimize   sum_{t<T} 1/2 (x_t'Q x_t + u_t'R u_t) + 1/2 x_T'Q_T x_T
    subject to x_{t+1} = A x_t + B_u u_t,  x_0 = x0,  |u_t|_inf <= 1        n = 8, m = 4, T = 40

with a random A scaled to spectral radius 1.02 (mildly unstable) and initial states large
enough that the bounds are active. Loss l = sum(W_x * x) + sum(W_u * u) with fixed random
weights; the parameters are theta = (A, B_u, x0).

Methods, timed side by side in one process, forward + backward of the whole batch:
  (a) cvxpylayers (github cvxpy/cvxpylayers): one `CvxpyLayer` call with x0 batched (its own
      batching: a loop over instances in diffcp), solve_method Clarabel, one job; per-instance
      time = batch time / B.
  (b) mpc.pytorch (github locuslab/mpc.pytorch): `mpc.MPC` with `LinDx` and u_lower/u_upper
      (box-DDP); horizon T + 1 with cost blkdiag(Q_T, R) on the last stage, whose control is then 0.
  (c) ours: `runtime.qp.qp`.

Gradients: for three random unit directions d in theta-space, each method's directional
derivative <grad l, d> is compared with central differences (l(theta + h d) - l(theta - h d)) / 2h
of re-solves (a) by cvxpy + Clarabel at tight tolerances (independent of all three methods, but
its ~1e-9 solution error, summed over the loss, limits it to ~1e-5 relative at h = 1e-5) and
(b) by runtime.qp at tol 1e-13 (polished: exact to rounding; not independent of (c)).

Anchors are imported from $PLANLANG_ANCHORS (see benchmarks/README.md, section QP):
    $PLANLANG_ANCHORS/mpc.pytorch  (git archive of locuslab/mpc.pytorch)
    $PLANLANG_ANCHORS/pydeps       (pip install --target ... --no-deps diffcp cvxpylayers threadpoolctl)
Run:  PLANLANG_ANCHORS=/tmp/anchors python benchmarks/qp.py
A missing anchor is reported and skipped.
"""
import argparse
import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from runtime.qp import QPOptions, qp  # noqa: E402
from runtime.status import status_names  # noqa: E402


@dataclass(frozen=True)
class Setup:
    A: torch.Tensor    # (n,n)
    Bu: torch.Tensor   # (n,m)
    x0: torch.Tensor   # (B,n)
    Q: torch.Tensor    # (n,n)
    R: torch.Tensor    # (m,m)
    QT: torch.Tensor   # (n,n)
    Wx: torch.Tensor   # (B,T+1,n) loss weights
    Wu: torch.Tensor   # (B,T,m)
    T: int

    @property
    def theta(self) -> tuple[torch.Tensor, ...]:
        return self.A, self.Bu, self.x0


def make_setup(B: int = 64, n: int = 8, m: int = 4, T: int = 40, seed: int = 0) -> Setup:
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64
    A = torch.randn(n, n, generator=g, dtype=dt)
    A = 1.02 * A / torch.linalg.eigvals(A).abs().max()
    Bu = torch.randn(n, m, generator=g, dtype=dt) / m ** 0.5
    x0 = 4 * torch.randn(B, n, generator=g, dtype=dt)
    Q, R, QT = torch.eye(n, dtype=dt), 0.1 * torch.eye(m, dtype=dt), 10 * torch.eye(n, dtype=dt)
    Wx = torch.randn(B, T + 1, n, generator=g, dtype=dt)
    Wu = torch.randn(B, T, m, generator=g, dtype=dt)
    return Setup(A, Bu, x0, Q, R, QT, Wx, Wu, T)


def loss(s: Setup, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    return (s.Wx * x).sum() + (s.Wu * u).sum()


# ----------------------------------------------------------------------------------- methods
class Ours:
    name = "ours (runtime.qp)"

    def __init__(self, s: Setup, options: QPOptions = QPOptions()):
        self.options = options
        B, n = s.x0.shape
        m, T = s.Bu.shape[1], s.T
        N = n + m
        C = torch.block_diag(s.Q, s.R)
        eye = torch.eye(m, dtype=C.dtype)
        G = torch.cat([torch.zeros(2 * m, n, dtype=C.dtype), torch.cat([eye, -eye])], dim=1)
        self.fixed = dict(C=C.expand(B, T, N, N), c=C.new_zeros(B, T, N), f=C.new_zeros(B, T, n),
                          CT=s.QT.expand(B, n, n), cT=C.new_zeros(B, n), G=G.expand(B, T, 2 * m, N),
                          h=C.new_ones(B, T, 2 * m))
        self.shape = (B, T, n, N)
        self.last = None

    def __call__(self, A, Bu, x0):
        B, T, n, N = self.shape
        F = torch.cat([A, Bu], dim=1).expand(B, T, n, N)
        sol = qp(x0, F=F, **self.fixed, options=self.options)
        self.last = sol
        return sol.x, sol.u


class MPCPytorch:
    name = "mpc.pytorch (box-DDP)"

    def __init__(self, s: Setup, mpc_module):
        self.mpc = mpc_module
        B, n = s.x0.shape
        m, T = s.Bu.shape[1], s.T
        N = n + m
        stage = torch.block_diag(s.Q, s.R).expand(T, B, N, N)
        last = torch.block_diag(s.QT, s.R).expand(1, B, N, N)
        self.cost = mpc_module.QuadCost(torch.cat([stage, last]), torch.zeros(T + 1, B, N, dtype=s.Q.dtype))
        self.shape = (B, T, n, m)

    def __call__(self, A, Bu, x0):
        B, T, n, m = self.shape
        F = torch.cat([A, Bu], dim=1).expand(T, B, n, n + m)
        ones = torch.ones(T + 1, B, m, dtype=A.dtype)
        controller = self.mpc.MPC(n, m, T + 1, u_lower=-ones, u_upper=ones, lqr_iter=50, verbose=-1,
                                  eps=1e-10, back_eps=1e-10, exit_unconverged=False,
                                  detach_unconverged=False, n_batch=B)
        x, u, _ = controller(x0, self.cost, self.mpc.LinDx(F, None))
        return x.transpose(0, 1), u[:-1].transpose(0, 1)


class CvxpyLayers:
    name = "cvxpylayers (diffcp, Clarabel)"

    def __init__(self, s: Setup, layer_cls):
        import cvxpy as cp
        n, m, T = s.A.shape[0], s.Bu.shape[1], s.T
        A, Bu, x0 = cp.Parameter((n, n)), cp.Parameter((n, m)), cp.Parameter(n)
        x, u = cp.Variable((T + 1, n)), cp.Variable((T, m))
        Q, R, QT = (M.numpy() for M in (s.Q, s.R, s.QT))
        cost = sum(0.5 * cp.quad_form(x[t], Q) + 0.5 * cp.quad_form(u[t], R) for t in range(T))
        cost += 0.5 * cp.quad_form(x[T], QT)
        cons = [x[0] == x0, cp.abs(u) <= 1] + [x[t + 1] == A @ x[t] + Bu @ u[t] for t in range(T)]
        problem = cp.Problem(cp.Minimize(cost), cons)
        self.layer = layer_cls(problem, parameters=[A, Bu, x0], variables=[x, u],
                               solver_args=dict(solve_method="Clarabel", n_jobs_forward=1, n_jobs_backward=1))

    def __call__(self, A, Bu, x0):
        return self.layer(A, Bu, x0)


# --------------------------------------------------------------------------------- reference
def reference_loss(s: Setup, A, Bu, x0) -> float:
    """l at theta from cvxpy + Clarabel re-solves at tight tolerances (one problem per instance)."""
    import cvxpy as cp
    n, m, T = A.shape[0], Bu.shape[1], s.T
    x0p = cp.Parameter(n)
    x, u = cp.Variable((T + 1, n)), cp.Variable((T, m))
    An, Bn = A.numpy(), Bu.numpy()
    cost = sum(0.5 * cp.quad_form(x[t], s.Q.numpy()) + 0.5 * cp.quad_form(u[t], s.R.numpy()) for t in range(T))
    cost += 0.5 * cp.quad_form(x[T], s.QT.numpy())
    cons = [x[0] == x0p, cp.abs(u) <= 1] + [x[t + 1] == An @ x[t] + Bn @ u[t] for t in range(T)]
    problem = cp.Problem(cp.Minimize(cost), cons)
    total = 0.0
    for b in range(x0.shape[0]):
        x0p.value = x0[b].numpy()
        problem.solve(solver=cp.CLARABEL, tol_feas=1e-12, tol_gap_abs=1e-12, tol_gap_rel=1e-12,
                      tol_ktratio=1e-10, max_iter=200)
        total += float((s.Wx[b].numpy() * x.value).sum() + (s.Wu[b].numpy() * u.value).sum())
    return total


def fd_directions(s: Setup, k: int, step: float, seed: int = 1):
    """[(direction, FD by Clarabel re-solves, FD by our re-solves at tol 1e-13)] for k unit directions."""
    g = torch.Generator().manual_seed(seed)
    tight = Ours(s, QPOptions(tol=1e-13))
    out = []
    for _ in range(k):
        d = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in s.theta]
        norm = torch.sqrt(sum((v * v).sum() for v in d))
        d = [v / norm for v in d]
        plus = [p + step * v for p, v in zip(s.theta, d)]
        minus = [p - step * v for p, v in zip(s.theta, d)]
        clarabel = (reference_loss(s, *plus) - reference_loss(s, *minus)) / (2 * step)
        ours = (loss(s, *tight(*plus)) - loss(s, *tight(*minus))).item() / (2 * step)
        out.append((d, clarabel, ours))
    return out


# ------------------------------------------------------------------------------------ driver
def forward_backward(method, s: Setup):
    """((wall s, CPU s), loss, gradients w.r.t. theta, (x, u)) of one forward + backward."""
    theta = [p.clone().requires_grad_() for p in s.theta]
    wall, cpu = time.perf_counter(), time.process_time()
    x, u = method(*theta)
    value = loss(s, x, u)
    value.backward()
    elapsed = (time.perf_counter() - wall, time.process_time() - cpu)
    return elapsed, value.item(), [p.grad for p in theta], (x.detach(), u.detach())


def load_anchors(root: str | None):
    """(mpc module or None, CvxpyLayer class or None, notes)."""
    notes, mpc_module, layer_cls = [], None, None
    if root:
        for sub in ("mpc.pytorch", "pydeps"):
            path = os.path.join(root, sub)
            if os.path.isdir(path):
                sys.path.insert(0, path)
    try:
        from mpc import mpc as mpc_module
    except ImportError as exc:
        notes.append(f"mpc.pytorch not importable ({exc}); set PLANLANG_ANCHORS, see benchmarks/README.md")
    try:
        from cvxpylayers.torch import CvxpyLayer as layer_cls
    except ImportError as exc:
        notes.append(f"cvxpylayers not importable ({exc}); set PLANLANG_ANCHORS, see benchmarks/README.md")
    return mpc_module, layer_cls, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per method (median)")
    parser.add_argument("--cvxpylayers-repeats", type=int, default=3)
    parser.add_argument("--fd-directions", type=int, default=3)
    parser.add_argument("--fd-step", type=float, default=1e-5)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)  # mpc.pytorch's torch deprecation notices

    s = make_setup(B=args.batch)
    mpc_module, layer_cls, notes = load_anchors(os.environ.get("PLANLANG_ANCHORS"))
    methods = [Ours(s)]
    if mpc_module is not None:
        methods.append(MPCPytorch(s, mpc_module))
    if layer_cls is not None:
        methods.append(CvxpyLayers(s, layer_cls))
    for note in notes:
        print("note:", note)

    B = s.x0.shape[0]
    ours = methods[0]
    print(f"box-constrained linear MPC: B={B}, n={s.A.shape[0]}, m={s.Bu.shape[1]}, T={s.T}, float64, "
          f"torch threads={torch.get_num_threads()}")
    results = {}
    for method in methods:
        forward_backward(method, s)  # warm-up (and cvxpylayers' canonicalisation caches)
        repeats = args.cvxpylayers_repeats if isinstance(method, CvxpyLayers) else args.repeats
        runs = [forward_backward(method, s) for _ in range(repeats)]
        medians = tuple(statistics.median(r[0][i] for r in runs) for i in range(2))
        results[method.name] = (medians, runs[-1])
    sol = ours.last
    active = (sol.u.abs() > 1 - 1e-6).sum().item()
    print(f"ours: statuses {sorted(set(status_names(sol.status)))}, iterations "
          f"{sol.iterations.min().item()}-{sol.iterations.max().item()}, active bounds {active} "
          f"of {sol.u.numel()} controls")

    (base_wall, base_cpu), u_ref = results[ours.name][0], results[ours.name][1][3][1]
    print(f"\nforward+backward of the batch, medians; per instance = batch / {B}")
    print(f"{'method':32s} {'wall [s]':>9s} {'CPU [s]':>9s} {'CPU/inst [ms]':>14s} {'wall ratio':>11s} "
          f"{'CPU ratio':>10s} {'max|u - u_ours|':>16s}")
    for name, ((wall, cpu), run) in results.items():
        du = (run[3][1] - u_ref).abs().max().item()
        print(f"{name:32s} {wall:9.3f} {cpu:9.3f} {1e3 * cpu / B:14.2f} {wall / base_wall:10.1f}x "
              f"{cpu / base_cpu:9.1f}x {du:16.2e}")

    print(f"\ndirectional derivatives <grad l, d> vs central differences (step {args.fd_step:g}) of re-solves,\n"
          f"{args.fd_directions} random unit directions d in (A, B_u, x0); relative errors vs "
          f"FD(Clarabel) / FD(ours at tol 1e-13):")
    for k, (d, fd_clarabel, fd_ours) in enumerate(fd_directions(s, args.fd_directions, args.fd_step)):
        row = [f"dir {k}: FD(Clarabel) {fd_clarabel: .8e}  FD(ours) {fd_ours: .8e}"]
        for name, (_, run) in results.items():
            analytic = sum((g * v).sum() for g, v in zip(run[2], d)).item()
            errors = [abs(analytic - fd) / max(abs(fd), 1e-12) for fd in (fd_clarabel, fd_ours)]
            row.append(f"{name.split()[0]} {errors[0]:.1e} / {errors[1]:.1e}")
        print("  " + "\n    ".join(row))


if __name__ == "__main__":
    main()
