"""The generated numeric code (compiler/codegen.py) against the IR evaluator (compiler/evaluate.py)
on the builtins it writes inline (elementwise min, max, clip): the same values, NaNs and
gradients, ties included."""
import torch

import planlang
from compiler.codegen import NumericFunction
from compiler.evaluate import evaluate

PLAN = """plan selects
horizon 2
state p[2] = [0.0, 0.0]
state q = 0.0
control u in [-1, 1]
param lo = -0.5
dynamics p' = clip(p + u, lo, 0.5)
dynamics q' = max(q, u) + min(p[0], q) + max(p)
cost stage = p[0]^2 + q^2 + u^2
solve mppi
"""


def test_inline_min_max_clip_match_the_evaluator_in_values_and_gradients():
    module = planlang.compile(planlang.loads(PLAN), dtype=torch.float64)
    info = module.info
    refs = {name: info.variables[name].ref for name in ("p", "q", "u", "lo")}
    p = torch.tensor([[0.2, -0.9], [-0.5, 0.5], [torch.nan, 0.1], [0.3, 0.3]], dtype=torch.float64)
    q = torch.tensor([0.3, 0.0, 0.2, -0.2], dtype=torch.float64)
    u = torch.tensor([[0.3], [0.0], [0.1], [-0.3]], dtype=torch.float64)[:, 0]     # ties: u == q, p + u == lo
    lo = torch.tensor([-0.5], dtype=torch.float64)
    transition = module.backend.transition
    for var in module.layout.states:
        expr = transition.exprs[var.ref]
        generated = NumericFunction(expr)
        calls = generated.source.count("CALL[")           # max(p), over a vector's elements, stays a call
        assert calls == (1 if var.ref.name == "q" else 0) and "torch.where" in generated.source
        values = [t.clone().requires_grad_() for t in (p, q, u, lo)]
        env = dict(zip(refs.values(), values))
        want = evaluate(expr, env, values[0])
        got = generated(env, values[0])
        torch.testing.assert_close(got, want, equal_nan=True, rtol=0, atol=0)
        finite = torch.isfinite(want).reshape(want.shape[0], -1).all(1)
        weights = torch.linspace(0.5, 1.5, want[finite].numel(), dtype=torch.float64).reshape(want[finite].shape)
        grads_want = torch.autograd.grad((want[finite] * weights).sum(), values, allow_unused=True)
        grads_got = torch.autograd.grad((got[finite] * weights).sum(), values, allow_unused=True)
        for a, b in zip(grads_got, grads_want):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, equal_nan=True, rtol=0, atol=0)
