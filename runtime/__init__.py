"""planlang's solver runtime: batched, differentiable planners over plain tensors.

The runtime never imports the language: it takes tensors and callables.
"""
