"""The solvers a plan can name, what each accepts, and its options: a registry keyed by name."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class ConstraintSupport(Enum):
    NONE = "no constraints"
    CONTROL_BOX = "box bounds on controls"
    AFFINE = "affine constraints and boxes"


@dataclass(frozen=True)
class Option:
    default: object
    kind: type
    doc: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None


@dataclass(frozen=True)
class SolverSpec:
    """What a solver accepts; the eligibility pass checks a plan against it."""

    name: str
    doc: str
    dynamics_degree: int | None        # max polynomial degree of dynamics (None: any smooth function)
    cost_degree: int | None
    constraints: ConstraintSupport
    convex: bool                       # requires convex quadratic costs (checked numerically)
    options: dict[str, Option] = field(default_factory=dict)


SOLVERS: dict[str, SolverSpec] = {s.name: s for s in [
    SolverSpec("lqr", "Riccati recursion; affine dynamics, convex quadratic costs, no constraints",
               dynamics_degree=1, cost_degree=2, constraints=ConstraintSupport.NONE, convex=True),
    SolverSpec("qp", "structured interior-point QP; adds affine constraints and boxes",
               dynamics_degree=1, cost_degree=2, constraints=ConstraintSupport.AFFINE, convex=True,
               options={"iters": Option(50, int, "maximum interior-point iterations", minimum=1),
                        "tol": Option(None, float, "KKT residual tolerance (dtype-dependent default)", minimum=0)}),
    SolverSpec("ilqr", "box-constrained iLQR; smooth dynamics and costs, control bounds",
               dynamics_degree=None, cost_degree=None, constraints=ConstraintSupport.CONTROL_BOX, convex=False,
               options={"iters": Option(50, int, "maximum iterations", minimum=1),
                        "tol": Option(1e-6, float, "convergence tolerance", minimum=0),
                        "backward": Option("implicit", str, "gradient mode", choices=("implicit", "unroll")),
                        "model": Option("gauss_newton", str, "stage model: Gauss-Newton, or Newton with the "
                                        "dynamics curvature", choices=("gauss_newton", "newton"))}),
]}

PREFERENCE = ("lqr", "qp", "ilqr")
