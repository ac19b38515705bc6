"""The planlang compiler: checked passes over the plan graph, then lowering to torch."""
