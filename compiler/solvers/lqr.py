"""`solve lqr`: Riccati recursion on exactly extracted LQR data (runtime.lqr)."""
from compiler.lower.backends import LQRBackend
from compiler.solvers.base import ConstraintSupport, Solver


class LQR(Solver):
    name = "lqr"
    doc = "Riccati recursion; affine dynamics, convex quadratic costs, no constraints"
    dynamics_degree, cost_degree = 1, 2
    constraints = ConstraintSupport.NONE
    convex = True
    takes_blocks = False

    def backend(self, graph, info, layout):
        return LQRBackend(graph, info, layout)
