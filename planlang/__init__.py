"""planlang: a declarative language for learnable planning.

    plan = planlang.load("examples/double_integrator.plan")
    module = planlang.compile(plan)       # a torch.nn.Module
    sol = module(x=x0, goal=g)            # sol.x (B, T+1, n), sol.u (B, T, m), sol.cost (B,)
"""
from planlang.api import check, compile, load, loads
from planlang.errors import PlanError, SolveError
from planlang.plan import Plan
from planlang.training import train

__all__ = ["Plan", "PlanError", "SolveError", "check", "compile", "load", "loads", "train"]
__version__ = "0.1.0"
