"""Lowering: from the checked graph to a torch module that solves the plan."""
