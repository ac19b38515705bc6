"""Checking a compiled plan: gradients against a cvxpy reference and finite differences
(`gradients.check_plan`, `planlang check`), and solvers against each other (`cross.cross_check`,
`planlang check --cross`). Public entry points of the compiled module only: `bind`, `solve_with`
(learnables by value), `trajectory_cost`."""
from planlang.checks.cross import CrossReport, cross_check
from planlang.checks.gradients import CheckOptions, CheckReport, Verdict, check_plan, tight_options

__all__ = ["CheckOptions", "CheckReport", "CrossReport", "Verdict", "check_plan", "cross_check", "tight_options"]
