"""`planlang check`: the compiled module against an independent cvxpy reference and finite differences.

For one plan, at its default values (or `values=`), the check

1. solves it with the compiled module in float64, and differentiates the scalar loss

       L = <Wx, x> + <Wu, u> + cost          (Wx, Wu fixed random weights, `seed`)

   by autograd with respect to every tensor the solution depends on: the states' initial values,
   every input and param, and every learnable's VALUE (its constrained value: softplus(raw) for
   `positive`, L L' for `psd`), bound directly instead of through the module's parametrization;
2. builds the same plan as a cvxpy problem from the same checked graph
   (`compiler.lower.cvxpy_ref`), solves it with Clarabel at tight tolerance, and differentiates L
   by central finite differences of re-solves (never cvxpy's `backward()`, which can be far off);
3. arbitrates with central finite differences of the module's own forward solve (float64).

A tensor with more than `max_entries` entries is checked along `directions` random unit
directions d (directional derivatives g.d), which the table says. Verdicts, one row per quantity:

- solutions (x, u, cost): the project agrees with the reference within `solution_tol` -> ok.
  Otherwise the project's trajectory is judged inside the reference problem: if it is feasible and
  the plan's cost, minimized on the segment between the two trajectories, is least at the
  project's end (or the reference's own trajectory is infeasible) -> ok, "reference off"; else FAIL.
- gradients: the project agrees with FD within `grad_tol` -> ok (and "reference off" when the
  cvxpy gradient does not); within 100 times the relative distance of the checked solve's
  controls from the tight re-solve's -> "ok (solve tol)" (a solve stopped by its tolerance is
  differentiated where it stopped); a kink (below) -> "ok (kink)"; otherwise -> FAIL.

Plans that cvxpy cannot represent (nonlinear dynamics, non-convex costs) are checked against FD
only, and the report says why.

The module solves with the plan's own options, so the check judges the solve that `planlang run`
makes (the same stopping rule; no tolerance the plan never reaches). A solve that does not
converge (any status but `solved`) is reported as such and fails the check: gradients of an
unconverged solve are not judged (FD and the reference are skipped). The FD arbiter instead
differences re-solves at the solver's tight settings (`Solver.check_options`: for iLQR tol 1e-12
and no cost-decrease stop), warm-started from the checked solution. A solve stopped by a
relative rule has an accurate cost, but its controls, off by about the last step in flat
directions, move with the inputs in a way that is not the derivative of the solution (FD 6e-5
off on a one-state iLQR plan whose implicit gradient is right to 3e-7), so FD of such solves
cannot arbitrate; FD of tight re-solves approximate the exact solution map, which the implicit
gradient claims to differentiate.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, Mapping

import numpy as np
import torch

from planlang import api
from planlang.ast import VarKind


# ------------------------------------------------------------------- options

def tight_options(solver: str, options: dict) -> dict | None:
    """Tight solver options (the solver's `check_options`: a tight tolerance, a larger iteration
    budget) for the FD arbiter of the gradient check and for `check --cross`, which compares
    solvers to 1e-8. The solve being checked keeps the plan's own options."""
    from compiler.solvers import SOLVERS

    return SOLVERS[solver].check_options(options)

@dataclass(frozen=True)
class CheckOptions:
    """What `check_plan(plan, **options)` accepts."""

    values: Mapping[str, Any] | None = None   # bindings by name (initial states, inputs, params, learnable values)
    seed: int = 0                              # the loss weights and the random directions
    fd_step: float = 1e-5                      # central-difference step of the project's FD (relative)
    reference_step: float = 1e-5               # central-difference step of the cvxpy re-solves (relative)
    grad_tol: float = 1e-5                     # relative tolerance on gradients (vs FD)
    solution_tol: float = 1e-6                 # relative tolerance on x, u, cost (vs cvxpy)
    reference_tol: float = 1e-10               # the cvxpy solver's tolerances
    reference_solver: str = "CLARABEL"
    max_entries: int = 32                      # larger tensors: directional derivatives ...
    directions: int = 4                        # ... along this many random unit directions
    reference: bool = True                     # False: FD only

    @staticmethod
    def of(options: Mapping[str, Any]) -> "CheckOptions":
        known = {f.name for f in fields(CheckOptions)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"check: unknown option(s) {', '.join(unknown)}; options: {', '.join(sorted(known))}")
        return CheckOptions(**options)


# -------------------------------------------------------------------- report

class Verdict(Enum):
    OK = "ok"
    REFERENCE_OFF = "ok (reference off)"
    KINK = "ok (kink)"             # not differentiable here: one-sided derivatives differ
    SOLVE_TOL = "ok (solve tol)"   # off FD by no more than the solve's own inaccuracy allows
    UNCHECKED = "unchecked"
    FAIL = "FAIL"


@dataclass
class Row:
    """One quantity: the project's value, the cvxpy reference's, FD's, and the verdict.

    For solutions (x, u, cost) `rel_project` is the project against the reference and `fd` is None;
    for gradients both `rel_project` and `rel_reference` are against FD. Relative errors are
    max|a - b| / max(|a|_max, |b|_max) over the tensor's entries (or directions).
    """

    quantity: str
    kind: str                              # "solution" | "gradient"
    entries: int                           # entries of the tensor
    project: np.ndarray
    reference: np.ndarray | None
    fd: np.ndarray | None
    rel_project: float | None
    rel_reference: float | None
    verdict: Verdict
    note: str = ""
    directions: int | None = None          # random directions checked (None: every entry)

    @property
    def ok(self) -> bool:
        return self.verdict is not Verdict.FAIL


@dataclass
class CheckReport:
    plan: str
    solver: str
    rows: list[Row]
    reference: str                         # what the reference is, or why there is none
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    unconverged: str = ""                  # why the solve did not converge ("" when it did)

    @property
    def ok(self) -> bool:
        return not self.unconverged and all(row.ok for row in self.rows)

    def __getitem__(self, quantity: str) -> Row:
        for row in self.rows:
            if row.quantity == quantity:
                return row
        raise KeyError(f"no row '{quantity}' (rows: {', '.join(r.quantity for r in self.rows)})")

    def render(self) -> str:
        head = ("quantity", "entries", "project", "cvxpy", "FD", "rel err", "rel err", "verdict")
        sub = ("", "", "max|.|", "max|.|", "max|.|", "project", "cvxpy", "")
        body = []
        for row in self.rows:
            entries = str(row.entries) if row.directions is None else f"{row.entries} ({row.directions} dir)"
            body.append((row.quantity, entries, _mag(row.project), _mag(row.reference), _mag(row.fd),
                         _err(row.rel_project), _err(row.rel_reference), row.verdict.value))
        widths = [max(len(r[i]) for r in [head, sub] + body) for i in range(len(head))]

        def line(cells):
            out = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:-1], widths[1:-1])]
            return "  ".join(out + [cells[-1]]).rstrip()

        lines = [f"check {self.plan} (solve {self.solver})", f"reference: {self.reference}"]
        lines += [f"  {n}" for n in self.notes]
        lines += ["", line(head), line(sub), line(tuple("-" * w for w in widths))]
        lines += [line(cells) for cells in body]
        footnotes = [(row.quantity, row.note) for row in self.rows if row.note]
        if footnotes:
            lines.append("")
            lines += [f"  {q}: {note}" for q, note in footnotes]
        failed = [r.quantity for r in self.rows if not r.ok]
        off = [r.quantity for r in self.rows if r.verdict is Verdict.REFERENCE_OFF]
        lines.append("")
        if self.unconverged:
            lines.append(f"check FAILED: the solve did not converge ({self.unconverged}); its gradients are not judged")
        elif failed:
            lines.append(f"check FAILED: {len(failed)} of {len(self.rows)} quantities disagree ({', '.join(failed)})")
        else:
            extra = f"; the reference, not the project, is off on {', '.join(off)}" if off else ""
            lines.append(f"check passed: the project is right on all {len(self.rows)} quantities{extra} "
                         f"({self.seconds:.1f} s)")
        return "\n".join(lines)


def _vec(v: np.ndarray) -> str:
    return "[" + ", ".join(f"{x:.6g}" for x in v[:4]) + (", ..." if v.size > 4 else "") + "]"


def _mag(v: np.ndarray | None) -> str:
    return "—" if v is None else f"{float(np.max(np.abs(v))) if v.size else 0.0:.3e}"


def _err(e: float | None) -> str:
    return "—" if e is None else f"{e:.1e}"


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """max|a - b| / max(|a|_max, |b|_max) (0 when both are zero; inf on NaN)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return float("inf")
    scale = max(float(np.max(np.abs(a), initial=0.0)), float(np.max(np.abs(b), initial=0.0)))
    diff = float(np.max(np.abs(a - b), initial=0.0))
    return 0.0 if diff == 0.0 else diff / max(scale, 1e-300)


# ------------------------------------------------------------- the tensors

@dataclass
class CheckedTensor:
    """A tensor the solution depends on, at its nominal value, with the directions it is checked along."""

    name: str
    kind: VarKind
    value: np.ndarray                       # float64, the declared shape
    directions: np.ndarray | None = None   # (D, size) unit rows
    steps: np.ndarray | None = None         # (D,) relative step scales: max(1, |value| on the direction's support)
    random: bool = False

    @property
    def label(self) -> str:
        return f"dL/d{self.name}_0" if self.kind is VarKind.STATE else f"dL/d{self.name}"


def checked_tensors(module, values: Mapping[str, Any]) -> list[CheckedTensor]:
    accepted = set(module.inputs()) | set(module.learnables)
    unknown = sorted(set(values) - accepted)
    if unknown:
        raise TypeError(f"check: unknown value(s) {', '.join(unknown)}; bindable: {', '.join(sorted(accepted))}")
    out = []
    for name, var in module.info.variables.items():
        if var.ref.kind is VarKind.CONTROL:
            continue
        if name in values:
            value = torch.as_tensor(values[name], dtype=torch.float64)
        elif var.ref.kind is VarKind.LEARN:
            value = module.learned(name).detach()
        else:
            value = module.default(name)
            if value is None:
                raise TypeError(f"check: {var.ref.kind.value} '{name}' has no default; pass values={{'{name}': ...}}")
        value = value.to(torch.float64).cpu().numpy()
        if value.shape != var.shape:
            raise ValueError(f"check: '{name}' has shape {value.shape}; expected {var.shape}")
        out.append(CheckedTensor(name, var.ref.kind, value.copy()))
    return out


def choose_directions(tensors: list[CheckedTensor], opts: CheckOptions, rng: np.random.Generator) -> None:
    for t in tensors:
        size = t.value.size
        flat = np.abs(t.value.reshape(-1))
        if size <= opts.max_entries:
            t.directions = np.eye(size)
            t.steps = np.maximum(1.0, flat)
        else:
            d = rng.standard_normal((opts.directions, size))
            t.directions = d / np.linalg.norm(d, axis=1, keepdims=True)
            t.steps = np.full(opts.directions, max(1.0, float(flat.max())))
            t.random = True


# ---------------------------------------------------------------- project side

def project_solve(module, tensors: list[CheckedTensor], values: dict[str, torch.Tensor], warm_start=None):
    """Solve with every value given batch-first, learnables by VALUE (bypassing the parametrization)."""
    learned = {t.name: values[t.name] for t in tensors if t.kind is VarKind.LEARN}
    return module.solve_with({t.name: values[t.name] for t in tensors if t.kind is not VarKind.LEARN}, learned,
                             warm_start)


def _torch_loss(sol, Wx: np.ndarray, Wu: np.ndarray) -> torch.Tensor:
    wx = torch.as_tensor(Wx, dtype=sol.x.dtype)
    wu = torch.as_tensor(Wu, dtype=sol.u.dtype)
    return (sol.x * wx).sum(dim=(1, 2)) + (sol.u * wu).sum(dim=(1, 2)) + sol.cost


@dataclass
class Side:
    """One side's solution at the nominal values and its derivatives of L along each direction."""

    x: np.ndarray
    u: np.ndarray
    cost: float
    ok: bool
    status: str
    derivatives: dict[str, np.ndarray]           # name -> (D,)
    detail: str = ""                             # iterations and residual of an iterative solve


def project_autograd(module, tensors, Wx, Wu) -> Side:
    leaves = {t.name: torch.tensor(t.value).unsqueeze(0).requires_grad_(True) for t in tensors}
    sol = project_solve(module, tensors, leaves)
    loss = _torch_loss(sol, Wx, Wu).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    derivatives = {}
    for t, g in zip(tensors, grads):
        g = np.zeros(t.value.size) if g is None else g[0].reshape(-1).numpy()
        derivatives[t.name] = t.directions @ g
    detail = []
    if sol.iterations is not None:
        detail.append(f"{int(sol.iterations[0])} iterations")
    if sol.residual is not None:
        detail.append(f"residual {float(sol.residual[0]):.2e}")
    if sol.violation is not None and float(sol.violation[0]) > 0:
        detail.append(f"constraint violation {float(sol.violation[0]):.2e}")
    return Side(sol.x[0].detach().numpy(), sol.u[0].detach().numpy(), float(sol.cost[0].detach()),
                sol.status_names()[0] == "solved", sol.status_names()[0], derivatives, ", ".join(detail))


def _perturbations(tensors: list[CheckedTensor], step: float):
    """Every (tensor, direction j) pair: yields (tensor, j, step h, value + h d_j, value - h d_j)."""
    for t in tensors:
        for j, (d, scale) in enumerate(zip(t.directions, t.steps)):
            h = step * scale
            delta = (h * d).reshape(t.value.shape)
            yield t, j, h, t.value + delta, t.value - delta


@dataclass
class _FiniteDifferences:
    """Central differences, and the one-sided ones that reveal a kink, per tensor and direction."""

    central: dict[str, np.ndarray]
    forward: dict[str, np.ndarray]
    backward: dict[str, np.ndarray]
    nominal_u: np.ndarray | None = None       # the arbiter's controls at the nominal values (T, m)


def _project_fd(module, tensors, Wx, Wu, step: float, warm_start: np.ndarray | None = None) -> _FiniteDifferences:
    """Finite differences of the module's forward solve: every perturbation in one batched solve
    (iterative solvers warm-started from `warm_start` (T, m), the nominal solution, if given)."""
    pairs = list(_perturbations(tensors, step))
    batch = 2 * len(pairs) + 1                       # the last row is the nominal point
    values = {t.name: np.broadcast_to(t.value, (batch,) + t.value.shape).copy() for t in tensors}
    for p, (t, _, _, plus, minus) in enumerate(pairs):
        values[t.name][2 * p] = plus
        values[t.name][2 * p + 1] = minus
    with torch.no_grad():
        warm = None if warm_start is None else torch.from_numpy(warm_start)
        sol = project_solve(module, tensors, {k: torch.from_numpy(v) for k, v in values.items()}, warm)
        loss = _torch_loss(sol, Wx, Wu).numpy()
    out = _FiniteDifferences(*({t.name: np.zeros(len(t.directions)) for t in tensors} for _ in range(3)))
    out.nominal_u = sol.u[-1].numpy()
    for p, (t, j, h, _, _) in enumerate(pairs):
        out.central[t.name][j] = (loss[2 * p] - loss[2 * p + 1]) / (2 * h)
        out.forward[t.name][j] = (loss[2 * p] - loss[-1]) / h
        out.backward[t.name][j] = (loss[-1] - loss[2 * p + 1]) / h
    return out


def kink(forward: np.ndarray, backward: np.ndarray, mine: np.ndarray, tol: float) -> bool:
    """One-sided derivatives differ by far more than FD error, and `mine` lies between them."""
    scale = max(float(np.abs(forward).max(initial=0)), float(np.abs(backward).max(initial=0)), 1e-300)
    if float(np.abs(forward - backward).max(initial=0)) <= 1e3 * tol * scale:
        return False
    lo, hi = np.minimum(forward, backward), np.maximum(forward, backward)
    slack = tol * scale
    return bool(np.all((mine >= lo - slack) & (mine <= hi + slack)))


def _reference(graph, tensors, Wx, Wu, opts: CheckOptions):
    """(problem, nominal `Reference`, `Side`) of the cvxpy reference; derivatives by central differences of re-solves."""
    from compiler.lower import cvxpy_ref

    def solve(values):
        return cvxpy_ref.solve(graph, values, tol=opts.reference_tol, solver=opts.reference_solver)

    def loss(ref) -> float:
        return float(np.sum(Wx * ref.x) + np.sum(Wu * ref.u) + ref.cost)

    def perturbed(values) -> float:
        try:
            _, solved = solve(values)
        except cvxpy_ref.Unrepresentable:                     # e.g. a PSD value perturbed out of the cone
            return np.nan
        return loss(solved) if solved.ok else np.nan

    nominal = {t.name: t.value for t in tensors}
    problem, ref = solve(nominal)
    derivatives = {t.name: np.zeros(len(t.directions)) for t in tensors}
    for t, j, h, plus, minus in _perturbations(tensors, opts.reference_step):
        up, down = perturbed({**nominal, t.name: plus}), perturbed({**nominal, t.name: minus})
        derivatives[t.name][j] = (up - down) / (2 * h)
    side = Side(ref.x, ref.u, ref.cost, ref.ok, ref.status, derivatives)
    return problem, ref, side


def arbitrate(problem, ref, x: np.ndarray, u: np.ndarray, tol: float) -> tuple[bool, str]:
    """Is the project's trajectory (x, u) the better solution of the reference problem?

    True ("the reference is off") when (x, u) is feasible there and either the reference's own
    trajectory is not, or the plan's cost restricted to the segment between the two trajectories
    (a convex quadratic in a in [0, 1]; a = 1 is the project's end) is least at a >= 0.9.
    """
    scale = max(1.0, float(np.max(np.abs(x), initial=0.0)))
    feasible = tol * scale
    mine = problem.violation(x, u)
    if not mine <= feasible:
        return False, f"the project's trajectory violates the reference's constraints by {mine:.1e}"
    if not ref.ok:
        return True, f"the reference did not solve (status {ref.status}); the project's trajectory is feasible"
    theirs = ref.residual
    if not theirs <= feasible:
        return True, f"the reference's trajectory violates its own constraints by {theirs:.1e}; the project's does not"
    f0 = problem.objective(ref.x, ref.u)
    fh = problem.objective(0.5 * (ref.x + x), 0.5 * (ref.u + u))
    f1 = problem.objective(x, u)
    b, c = 4 * fh - 3 * f0 - f1, 2 * (f0 + f1 - 2 * fh)       # f(a) = f0 + b a + c a^2
    if not c > 0:
        return False, "the plan's cost is flat between the two trajectories: cannot tell which is right"
    best = float(np.clip(-b / (2 * c), 0.0, 1.0))
    where = f"the plan's cost on the segment from the reference's solution (a=0) to the project's (a=1) is least at a={best:.2f}"
    return best >= 0.9, where


# ------------------------------------------------------------------- the check

def check_plan(plan, **options) -> CheckReport:
    """Check `plan`'s compiled module against a cvxpy reference and finite differences (see module doc)."""
    start = time.perf_counter()
    opts = CheckOptions.of(options)
    module = api.compile(plan, dtype=torch.float64)
    tensors = checked_tensors(module, opts.values or {})
    rng = np.random.default_rng(opts.seed)
    T, n, m = module.horizon, module.layout.n, module.layout.m
    Wx, Wu = rng.standard_normal((T + 1, n)), rng.standard_normal((T, m))
    choose_directions(tensors, opts, rng)

    project = project_autograd(module, tensors, Wx, Wu)
    if not project.ok:
        return _unconverged(module, tensors, project, time.perf_counter() - start)
    tight = tight_options(module.solver, module.info.options)
    arbiter = api.compile(plan, dtype=torch.float64, options=tight) if tight else module
    fd = _project_fd(arbiter, tensors, Wx, Wu, opts.fd_step, project.u if tight else None)

    problem = ref = reference = None
    description = "none (reference=False): solutions unchecked, gradients checked against finite differences only"
    if opts.reference:
        from compiler.lower.cvxpy_ref import Unrepresentable
        import cvxpy

        try:
            problem, ref, reference = _reference(module.graph, tensors, Wx, Wu, opts)
            description = (f"cvxpy {cvxpy.__version__} / {opts.reference_solver} (tol {opts.reference_tol:g}), "
                           f"status {ref.status}; gradients by central differences of re-solves "
                           f"(step {opts.reference_step:g})")
        except Unrepresentable as err:
            description = (f"none: cvxpy cannot represent this plan ({err}); solutions unchecked, "
                           "gradients checked against finite differences only")

    rows = _solution_rows(project, reference, problem, ref, opts)
    # How far the checked solve (stopped by the plan's rule) is from the tight one: its gradient
    # can be off by about as much (a first-order effect), which the verdicts allow for.
    solve_error = relative_error(project.u, fd.nominal_u) if tight else 0.0
    rows += _gradient_rows(tensors, project, fd, reference, opts, solve_error)
    settings = f" at {', '.join(f'{k}={v:g}' if isinstance(v, float) else f'{k}={v}' for k, v in tight.items())}" \
        if tight else ""
    notes = [f"L = <Wx, x> + <Wu, u> + cost with fixed random weights (seed {opts.seed}); "
             f"FD: central differences of the module's forward solve{settings} (step {opts.fd_step:g}, relative)",
             f"tolerances: solutions {opts.solution_tol:g}, gradients {opts.grad_tol:g} (relative)"]
    if module.learnables:
        notes.append("learnables are checked with respect to their values (positive: softplus(raw); psd: L L'), "
                     "not their raw parameters")
    if any(t.random for t in tensors):
        notes.append(f"tensors with more than {opts.max_entries} entries are checked along {opts.directions} "
                     "random unit directions (directional derivatives)")
    return CheckReport(module.plan_name, module.solver, rows, description, notes, time.perf_counter() - start)


def _unconverged(module, tensors: list[CheckedTensor], project: Side, seconds: float) -> CheckReport:
    """The report of a solve that did not converge: its solution, and no verdict on gradients."""
    why = f"status {project.status}" + (f", {project.detail}" if project.detail else "")
    rows = [Row(name, "solution", value.size, value, None, None, None, None, Verdict.FAIL, "did not converge: " + why)
            for name, value in (("x", project.x), ("u", project.u), ("cost", np.array([project.cost])))]
    rows += [Row(t.label, "gradient", t.value.size, project.derivatives[t.name], None, None, None, None,
                 Verdict.UNCHECKED, "not judged: the solve did not converge") for t in tensors]
    notes = [f"did not converge: {why} (the plan's own options, as `planlang run` solves it); raise `iters`, "
             "add a `guess`, or loosen `tol`"]
    return CheckReport(module.plan_name, module.solver, rows, "none: the solve did not converge", notes, seconds,
                       unconverged=why)


def _solution_rows(project: Side, reference: Side | None, problem, ref, opts: CheckOptions) -> list[Row]:
    items = [("x", project.x, None if reference is None else reference.x),
             ("u", project.u, None if reference is None else reference.u),
             ("cost", np.array([project.cost]), None if reference is None else np.array([reference.cost]))]
    rows = []
    judged: tuple[bool, str] | None = None
    for name, mine, theirs in items:
        entries = mine.size
        if not project.ok:
            rows.append(Row(name, "solution", entries, mine, theirs, None, None, None, Verdict.FAIL,
                            f"the module's solve did not succeed (status {project.status})"))
            continue
        if theirs is None:
            rows.append(Row(name, "solution", entries, mine, None, None, None, None, Verdict.UNCHECKED))
            continue
        err = relative_error(mine, theirs)
        if err <= opts.solution_tol:
            rows.append(Row(name, "solution", entries, mine, theirs, None, err, None, Verdict.OK))
            continue
        if judged is None:
            judged = arbitrate(problem, ref, project.x, project.u, opts.solution_tol)
        off, why = judged
        if off and name == "cost":                       # the project's own cost must be the plan's cost at its x, u
            own = problem.objective(project.x, project.u)
            if relative_error(np.array([project.cost]), np.array([own])) > opts.solution_tol:
                off, why = False, f"the project's cost differs from the plan's cost at its own trajectory ({own:.10g})"
        verdict = Verdict.REFERENCE_OFF if off else Verdict.FAIL
        note = ("reference off: " if off else "project and reference disagree: ") + why
        rows.append(Row(name, "solution", entries, mine, theirs, None, err, None, verdict, note))
    return rows


SOLVE_TOL_FACTOR = 100      # a gradient may be off FD by this many times the solve's relative error


def _gradient_rows(tensors: list[CheckedTensor], project: Side, fd: _FiniteDifferences, reference: Side | None,
                   opts: CheckOptions, solve_error: float = 0.0) -> list[Row]:
    """Verdicts on the gradients; `solve_error`: the checked solve's controls against the tight
    re-solve's (relative), which bounds how exact its gradient can be."""
    rows = []
    for t in tensors:
        mine, arbiter = project.derivatives[t.name], fd.central[t.name]
        theirs = None if reference is None else reference.derivatives[t.name]
        err = relative_error(mine, arbiter)
        ref_err = None if theirs is None else relative_error(theirs, arbiter)
        ref_agrees = ref_err is not None and ref_err <= opts.grad_tol
        if err <= opts.grad_tol:
            verdict = Verdict.OK
            if theirs is not None and not ref_agrees:
                verdict = Verdict.REFERENCE_OFF
                note = ("reference off: " + (f"cvxpy's finite differences differ from FD by {ref_err:.1e}"
                                             if np.all(np.isfinite(theirs)) else "some cvxpy re-solves failed"))
            else:
                note = ""
        elif err <= SOLVE_TOL_FACTOR * solve_error:
            verdict = Verdict.SOLVE_TOL
            note = (f"the solve stopped by its own rule has controls {solve_error:.1e} (relative) off the tight "
                    f"solution; its gradient is {err:.1e} off FD, within {SOLVE_TOL_FACTOR} times that "
                    "(tighten `tol`/`cost_tol` for a closer gradient)")
        elif kink(fd.forward[t.name], fd.backward[t.name], mine, opts.grad_tol):
            verdict = Verdict.KINK
            note = (f"not differentiable here: one-sided derivatives {_vec(fd.forward[t.name])} and "
                    f"{_vec(fd.backward[t.name])} differ (e.g. a weakly active constraint); the project's "
                    "gradient lies between them, a valid generalized gradient")
        else:
            verdict = Verdict.FAIL
            note = f"the project's gradient differs from finite differences by {err:.1e}"
            if ref_agrees:
                note += " (the cvxpy reference agrees with FD)"
            elif theirs is not None and relative_error(mine, theirs) <= opts.grad_tol:
                note += " (it agrees with the cvxpy reference: FD may be unreliable here, e.g. at a kink)"
        rows.append(Row(t.label, "gradient", t.value.size, mine, theirs, arbiter, err, ref_err, verdict, note,
                        directions=len(t.directions) if t.random else None))
    return rows
