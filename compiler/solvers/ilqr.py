"""`solve ilqr(...)`: box-constrained iLQR (runtime.ilqr), differentiated at its fixed point."""
from compiler.lower.backends import ILQRBackend
from compiler.options import Number, Option, Schema, Symbol
from compiler.solvers.base import ConstraintSupport, Solver
from planlang.ast import VarKind


class ILQR(Solver):
    name = "ilqr"
    doc = "iLQR; smooth dynamics and costs, control bounds, nonlinear constraints (augmented Lagrangian)"
    options = Schema(
        iters=Option(Number(integer=True, minimum=1), 50, "maximum iterations"),
        tol=Option(Number(minimum=0), 1e-6, "convergence tolerance"),
        backward=Option(Symbol(("implicit", "unroll")), "implicit", "gradient mode"),
        model=Option(Symbol(("gauss_newton", "newton")), "gauss_newton",
                     "stage model: Gauss-Newton, or Newton with the dynamics curvature"),
        constraint_tol=Option(Number(minimum=0), None, "tolerance on the constraint violation (default sqrt(eps))"),
        shooting=Option(Symbol(("single", "multiple")), "single",
                        "single: the states are the rollout of the controls; multiple: the states are "
                        "variables too, joined by the dynamics as constraints (runtime.ilqr_shooting)"),
        cost_tol=Option(Number(minimum=0), None, "relative predicted cost decrease that also stops a solve "
                                                 "(default eps^(3/4); 0 switches it off)"),
        kernels=Option(Symbol(("auto", "native", "torch")), "auto",
                       "native: the iterations run in C generated from the plan (runtime.native; CPU, "
                       "single shooting, no neural blocks); auto: native where "
                       "the plan allows it and a C compiler is found, else torch"))
    constraints = ConstraintSupport.NONLINEAR
    state_guess = True

    def validate(self, options, info):
        states = [name for name in info.guesses if info.variables[name].ref.kind is VarKind.STATE]
        if states and options["shooting"] != "multiple":
            return [f"a guess of state '{states[0]}' sets the nodes of multiple shooting: "
                    f"add shooting=multiple"]
        return []

    def backend(self, graph, info, layout):
        return ILQRBackend(graph, info, layout)

    def check_options(self, options):
        return {"tol": 1e-12, "cost_tol": 0.0, "iters": max(2 * int(options["iters"]), 200)}
