"""`solve qp`: the structured interior-point QP (runtime.qp), differentiated through its KKT system."""
from compiler.lower.backends import QPBackend
from compiler.options import Number, Option, Schema
from compiler.solvers.base import ConstraintSupport, Solver


class QP(Solver):
    name = "qp"
    doc = "structured interior-point QP; adds affine constraints and boxes"
    options = Schema(iters=Option(Number(integer=True, minimum=1), 50, "maximum interior-point iterations"),
                     tol=Option(Number(minimum=0), None, "KKT residual tolerance (dtype-dependent default)"))
    dynamics_degree, cost_degree = 1, 2
    constraints = ConstraintSupport.AFFINE
    convex = True
    takes_blocks = False

    def backend(self, graph, info, layout):
        return QPBackend(graph, info, layout)

    def check_options(self, options):
        return {"tol": 1e-12, "iters": max(2 * int(options["iters"]), 200)}
