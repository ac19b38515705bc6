"""Cross-solver check: a plan that several solvers take must get the same answer from each.

A plan that `solve lqr` can take is also a QP (with no inequality rows) and a smooth problem
for iLQR; all three must agree on x, u, the cost and the gradients of a scalar loss with
respect to every initial state, input, param and learnable (1e-8 relative in float64).
Iterative solvers run with tight tolerances for this comparison.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from planlang import api
from planlang.checks.gradients import CheckOptions, tight_options, choose_directions, project_autograd, checked_tensors, relative_error


@dataclass
class CrossRow:
    quantity: str
    solver: str
    magnitude: float
    rel_error: float
    ok: bool


@dataclass
class CrossReport:
    plan: str
    baseline: str
    solvers: list[str]
    rows: list[CrossRow] = field(default_factory=list)
    tol: float = 1e-8
    seconds: float = 0.0

    @property
    def compared(self) -> bool:
        """Whether a second solver takes the plan (else there is nothing to compare)."""
        return len(self.solvers) > 1

    @property
    def ok(self) -> bool:
        """No disagreement (true when only one solver takes the plan: see `compared`)."""
        return all(r.ok for r in self.rows)

    def render(self) -> str:
        if not self.compared:
            return (f"cross-check {self.plan}: only {self.baseline} takes this plan: nothing to compare "
                    f"(run `planlang check` to compare it with cvxpy)")
        lines = [f"cross-check {self.plan}: {', '.join(self.solvers)} against {self.baseline} "
                 f"(float64, tolerance {self.tol:g} relative)"]
        lines.append(f"  {'quantity':<14} {'solver':<6} {'max|.|':>10} {'rel err':>9}  verdict")
        for r in self.rows:
            lines.append(f"  {r.quantity:<14} {r.solver:<6} {r.magnitude:>10.4g} {r.rel_error:>9.1e}  "
                         f"{'ok' if r.ok else 'FAIL'}")
        lines.append(f"{'PASS' if self.ok else 'FAIL'} in {self.seconds:.1f} s")
        return "\n".join(lines)


def cross_check(plan, solvers: list[str] | None = None, tol: float = 1e-8, seed: int = 0) -> CrossReport:
    """Solve `plan` with every exact solver that takes it (or `solvers`) and compare against the first.

    Exact solvers converge to the optimum to their tolerance (lqr, qp, ilqr); first-order descent
    and the sampling planners are approximate and are not cross-checked."""
    from compiler.passes.eligibility import accepting_solvers
    from compiler.pipeline import run_passes
    from compiler.solvers import SOLVERS

    start = time.perf_counter()
    if solvers is None:
        solvers = [s for s in accepting_solvers(run_passes(plan.graph, until="classify")) if SOLVERS[s].exact]
    if not solvers:
        api.compile(plan, dtype=torch.float64)      # raises the plan's own PlanError
    if len(solvers) < 2:                            # nothing to compare: no solve
        return CrossReport(plan.name, solvers[0], list(solvers), tol=tol, seconds=time.perf_counter() - start)
    sides = {}
    rng = np.random.default_rng(seed)
    tensors = Wx = Wu = None
    for name in solvers:
        module = api.compile(plan, dtype=torch.float64, solver=name)
        tight = tight_options(name, module.info.options)
        if tight:
            module = api.compile(plan, dtype=torch.float64, solver=name, options=tight)
        if tensors is None:
            tensors = checked_tensors(module, {})
            choose_directions(tensors, CheckOptions(), rng)
            T, n, m = module.horizon, module.layout.n, module.layout.m
            Wx, Wu = rng.standard_normal((T + 1, n)), rng.standard_normal((T, m))
        sides[name] = project_autograd(module, tensors, Wx, Wu)
    report = CrossReport(plan.name, solvers[0], list(solvers), tol=tol)
    base = sides[solvers[0]]
    for name in solvers[1:]:
        side = sides[name]
        items = [("x", side.x, base.x), ("u", side.u, base.u), ("cost", np.array([side.cost]), np.array([base.cost]))]
        items += [(t.label, side.derivatives[t.name], base.derivatives[t.name]) for t in tensors]
        for quantity, mine, theirs in items:
            err = relative_error(mine, theirs)
            ok = side.ok and err <= tol
            report.rows.append(CrossRow(quantity, name, float(np.abs(mine).max()) if mine.size else 0.0, err, ok))
    report.seconds = time.perf_counter() - start
    return report
