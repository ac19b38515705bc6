"""`solve descent(...)`: the argmin over the controls of a smooth plan by Adam or L-BFGS on the
shooting objective (runtime.descent), differentiated implicitly (or unrolled, or truncated)."""
from __future__ import annotations

from compiler.lower.backends import _Lowered
from compiler.options import Number, Option, Schema, Symbol, Variant
from compiler.solution import Solution
from compiler.solvers.base import ConstraintSupport, Solver
from runtime.descent import DescentMethod, DescentOptions, DescentProblem, descent
from runtime.implicit import Backward

BACKWARD = Variant({
    "implicit": Schema(solver=Option(Symbol(("cg", "neumann")), "cg", "linear solver"),
                       iters=Option(Number(integer=True, minimum=1), 20, "linear-solver iterations")),
    "unroll": Schema(),
    "truncated": Schema(k=Option(Number(integer=True, minimum=1), 1, "recorded last iterations")),
})


class DescentBackend(_Lowered):
    def __call__(self, env, x0, like, warm=None) -> Solution:
        o = self.info.options
        backward = o["backward"]
        options = DescentOptions(iters=o["iters"], lr=o["lr"], method=DescentMethod(o["method"]), tol=o["tol"],
                                 backward=Backward.parse(backward.name, **backward.args))
        lower, upper = self.control_bounds(env, like)
        env = self.stage_values.with_tables(env, like)
        problem = DescentProblem(lambda x, u: self.step(env, x, u, like), lambda x, u: self.stage_cost(env, x, u, like),
                                 lambda x: self.final_cost(env, x, like), lower, upper)
        sol = descent(problem, self.with_clock(x0), self.initial_controls(env, x0.shape[0], like, warm), options)
        return Solution(self.without_clock(sol.x), sol.u, sol.cost, sol.status, "descent", iterations=sol.iterations,
                        residual=sol.residual)


class Descent(Solver):
    name = "descent"
    doc = "gradient descent (Adam or L-BFGS) on the controls through the dynamics; implicit backward"
    options = Schema(iters=Option(Number(integer=True, minimum=0), 100, "iterations"),
                     lr=Option(Number(minimum=1e-12), 0.1, "step size (Adam) or initial scaling (L-BFGS)"),
                     method=Option(Symbol(("adam", "lbfgs")), "adam", "the descent method"),
                     tol=Option(Number(minimum=0), None, "projected-gradient tolerance (None: sqrt(eps))"),
                     backward=Option(BACKWARD, BACKWARD.parse_default("implicit"),
                                     "unroll | truncated(k) | implicit(cg|neumann, iters=)"))
    constraints = ConstraintSupport.CONTROL_BOX
    exact = False          # first order: its accuracy is that of its gradient tolerance

    def backend(self, graph, info, layout):
        return DescentBackend(graph, info, layout)

    def check_options(self, options):
        return {"tol": 1e-10, "iters": max(int(options["iters"]), 2000), "method": "lbfgs"}
