"""Lowering a trajectory plan to C for the native iLQR kernels (`runtime.native`).

The generated code defines NS (states), NX (states and a clock, if any), NU, NZ, NP and, from the typed IR (`compiler.ccode`):
    field_*   the plan's dynamics right-hand side (or its discrete map),
    step_*    one step of the plan's integrator around it (runtime/native_ilqr.c calls step_v
              for rollouts and step_d1 for the Jacobian [phi_x phi_u]),
    stage_*   the summed stage costs, final_* the summed final costs (v: value, d2: gradient
              and Hessian),
each a straight-line function of x, u and the parameter vector p (one row per batch element,
`NativePlan.params` packs it from the bound values).

`native_plan` returns None with the reason when the plan is outside what the kernels cover.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from compiler.ccode import CBody, NotNative, instantiate
from compiler.ir import VarRef
from compiler.lower.stages import StageValues
from compiler.problem import Placement, TrajectoryProblem
from planlang.ast import Cmp

_NUMBERS = {"v": ("V", "v_"), "d1": ("D1", "d1_"), "d2": ("D2", "d2_")}
MAX_DIRECTIONS = 24      # NZ: a second-order dual holds 1 + NZ + NZ^2 doubles, on the C stack


@dataclass(frozen=True)
class NativePlan:
    """A plan's generated C model and the layout of its parameter vector."""

    source: str
    params: tuple[tuple[VarRef, int], ...]

    def pack(self, env: dict, batch: int) -> torch.Tensor:
        """p (B, NP) float64: the bound values of the parameters, flattened and side by side."""
        if not self.params:
            return torch.zeros(batch, 0, dtype=torch.float64)
        parts = []
        for ref, size in self.params:
            value = torch.as_tensor(env[ref], dtype=torch.float64).detach().cpu()
            value = value.reshape(value.shape[0] if value.dim() else 1, -1)
            parts.append(value.expand(batch, size))
        return torch.cat(parts, 1).contiguous()


def native_plan(parts: TrajectoryProblem, stage_values: StageValues | None = None
                ) -> tuple[NativePlan | None, str]:
    """(the generated model, "") or (None, why the plan has no native kernels). A plan with
    stage values carries the clock as state NS (after its NS states, as the torch lowering):
    x' = x + 1, and the values are read from their tables at its row."""
    layout = parts.layout
    n, m = layout.n, layout.m
    clocked = bool(stage_values)
    clock = f"x[{n}]" if clocked else None
    rows = {ref: stage_values.rows(ref) for ref in stage_values.refs} if clocked else {}
    if n + clocked + m > MAX_DIRECTIONS:
        return None, (f"{n + m} states and controls: the native kernels' dense second-order duals "
                      f"take at most {MAX_DIRECTIONS}")
    decision, offsets = {}, layout.offsets()
    for var in layout.states + layout.controls:
        s = offsets[var.ref]
        decision[var.ref] = ("x", s.start) if s.start < n else ("u", s.start - n)
    states = {ref: place for ref, place in decision.items() if place[0] == "x"}
    params: list = []
    try:
        field = CBody(tuple(parts.transition.exprs[v.ref] for v in layout.states), decision, params, clock, rows)
        stage = CBody(tuple(parts.stage_costs), decision, params, clock, rows)
        final = CBody(tuple(parts.final_costs), states, params, clock, rows)
        step = _integrator(parts.transition.integrator, clocked)
        lines = [(CBody((ir,), decision, params, clock, rows), sense, where)
                 for ir, sense, where in parts.constraints]
    except NotNative as why:
        return None, str(why)
    constraints = [_function(f"static void con{i}_SUFFIX(const NUM *x, const NUM *u, const double *p, NUM *out)",
                             body, [f"out[{j}] = {r};" for j, r in enumerate(_flat(body))])
                   for i, (body, _, _) in enumerate(lines)]
    counts = {sense: sum(len(_flat(body)) for body, s, _ in lines if s is sense) for sense in (Cmp.LE, Cmp.EQ)}
    size = sum(s for _, s in params)
    nx = n + clocked
    head = (f"#define NS {n}\n#define NX {nx}\n#define NU {m}\n#define NZ {nx + m}\n#define NP {size}\n"
            f"#define NC {counts[Cmp.LE]}\n#define NE {counts[Cmp.EQ]}\n/* model */\n")
    template = "\n".join([
        _function("static void field_SUFFIX(const NUM *x, const NUM *u, const double *p, NUM *out)",
                  field, [f"out[{i}] = {r};" for i, r in enumerate(_flat(field))]),
        step,
        _function("static NUM stage_SUFFIX(const NUM *x, const NUM *u, const double *p)",
                  stage, [f"return {_sum(_flat(stage))};"]),
        _function("static NUM final_SUFFIX(const NUM *x, const double *p)",
                  final, [f"return {_sum(_flat(final))};"]),
        *constraints,
        _rows("ineq", [(i, where) for i, (_, sense, where) in enumerate(lines) if sense is Cmp.LE], lines),
        _rows("eq", [(i, where) for i, (_, sense, where) in enumerate(lines) if sense is Cmp.EQ], lines),
        _AUGMENTED,
    ])
    body = "\n".join(instantiate(template, *_NUMBERS[suffix]).replace("SUFFIX", suffix)
                     for suffix in ("v", "d1", "d2"))
    return NativePlan(head + body, tuple(params)), ""


# The stage cost of the augmented Lagrangian (runtime/ilqr_constraints.py) with the stage's
# multipliers and penalty w = [lam (NC), nu (NE), rho], or the plain stage cost for w = NULL:
#   l + sum_i (max(0, lam_i + rho c_i)^2 - lam_i^2) / (2 rho) + nu'h + rho/2 ||h||^2
_AUGMENTED = """static NUM stage_aug_SUFFIX(const NUM *x, const NUM *u, const double *p, const double *w) {
    NUM l = stage_SUFFIX(x, u, p);
    if (!w) return l;
    double rho = w[NC + NE];
    NUM c[NC > 0 ? NC : 1], h[NE > 0 ? NE : 1];
    ineq_SUFFIX(x, u, p, c);
    eq_SUFFIX(x, u, p, h);
    for (int i = 0; i < NC; i++) {
        NUM s = OP_add(OP_c(w[i]), OP_mul(OP_c(rho), c[i]));
        if (OP_val(s) > 0) l = OP_add(l, OP_mul(OP_c(0.5 / rho), OP_mul(s, s)));
        l = OP_sub(l, OP_c(w[i] * w[i] / (2 * rho)));
    }
    for (int j = 0; j < NE; j++)
        l = OP_add(l, OP_add(OP_mul(OP_c(w[NC + j]), h[j]), OP_mul(OP_c(0.5 * rho), OP_mul(h[j], h[j]))));
    return l;
}"""


def _rows(name: str, members: list[tuple[int, Placement]], lines: list) -> str:
    """name_SUFFIX(x, u, p, out): the constraint rows of one sense in source order, those placed
    at x_{t+1} evaluated at the next state (as `compiler.lower.backends.ILQRBackend`)."""
    body, offset = [], 0
    if any(where is Placement.NEXT for _, where in members):
        body.append("NUM xn[NX];")
        body.append("step_SUFFIX(x, u, p, xn);")
    for i, where in members:
        body.append(f"con{i}_SUFFIX({'xn' if where is Placement.NEXT else 'x'}, u, p, out + {offset});")
        offset += len(_flat(lines[i][0]))
    signature = f"static void {name}_SUFFIX(const NUM *x, const NUM *u, const double *p, NUM *out) {{"
    return "\n".join([signature, *("    " + line for line in body or ["(void) x; (void) u; (void) p; (void) out;"]), "}"])


def _function(signature: str, body: CBody, tail: list[str]) -> str:
    return "\n".join([signature + " {", *("    " + line for line in body.lines + tail), "}"])


def _flat(body: CBody) -> list[str]:
    return [name for result in body.results for name in result]


def _sum(names: list[str]) -> str:
    if not names:
        return "OP_c(0.0)"
    out = names[0]
    for name in names[1:]:
        out = f"OP_add({out}, {name})"
    return out


def _integrator(integrator: tuple[str, float] | None, clocked: bool) -> str:
    """step_SUFFIX: x' = x + dt f (euler), the classical rk4 step (as `compiler.integrators`), or
    the discrete map itself, on the NS states; a clock (state NS) advances by one and stays
    fixed within the step."""
    head = "static void step_SUFFIX(const NUM *x, const NUM *u, const double *p, NUM *xn) {"
    tick = ["xn[NS] = OP_add(x[NS], OP_c(1.0));"] if clocked else []
    hold = ["s[NS] = x[NS];"] if clocked else []
    axpy = "for (int i = 0; i < NS; i++) {dst}[i] = OP_add({x}[i], OP_mul(OP_c({a!r}), {k}[i]));"
    if integrator is None:
        lines = ["field_SUFFIX(x, u, p, xn);"]
    elif integrator[0] == "euler":
        dt = integrator[1]
        lines = ["NUM k1[NS];", "field_SUFFIX(x, u, p, k1);", axpy.format(dst="xn", x="x", a=dt, k="k1")]
    elif integrator[0] == "rk4":
        dt = integrator[1]
        lines = ["NUM k1[NS], k2[NS], k3[NS], k4[NS], s[NX];", *hold, "field_SUFFIX(x, u, p, k1);",
                 axpy.format(dst="s", x="x", a=dt / 2, k="k1"), "field_SUFFIX(s, u, p, k2);",
                 axpy.format(dst="s", x="x", a=dt / 2, k="k2"), "field_SUFFIX(s, u, p, k3);",
                 axpy.format(dst="s", x="x", a=dt, k="k3"), "field_SUFFIX(s, u, p, k4);",
                 axpy.format(dst="xn", x="x", a=dt / 6, k="k1"),
                 axpy.format(dst="xn", x="xn", a=dt / 3, k="k2"),
                 axpy.format(dst="xn", x="xn", a=dt / 3, k="k3"),
                 axpy.format(dst="xn", x="xn", a=dt / 6, k="k4")]
    else:
        raise NotNative(f"no C integrator {integrator[0]!r}")
    return "\n".join([head, *("    " + line for line in lines + tick), "}"])
