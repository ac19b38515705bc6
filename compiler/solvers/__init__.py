"""The solvers a plan can name: one plugin module each, listed once here in order of preference
(the first that takes a plan is suggested when the named one cannot)."""
from compiler.solvers.base import ConstraintSupport, Solver
from compiler.solvers.descent import Descent
from compiler.solvers.grid import ValueIteration, ValueIterationNetwork
from compiler.solvers.ilqr import ILQR
from compiler.solvers.joint import Joint
from compiler.solvers.lqr import LQR
from compiler.solvers.qp import QP
from compiler.solvers.sampling import CEM, MPPI

SOLVERS: dict[str, Solver] = {s.name: s for s in (LQR(), QP(), ILQR(), Descent(), MPPI(), CEM(),
                                                  ValueIteration(), ValueIterationNetwork(), Joint())}
PREFERENCE = tuple(SOLVERS)

__all__ = ["ConstraintSupport", "PREFERENCE", "SOLVERS", "Solver"]
