"""The rule for failed batch elements, the same for every solver (docs/language.md, "Statuses"):

a failed element's x, u and cost are NaN; a loss that reads them gets NaN gradients for that
element's own inputs; a loss that masks them -- `torch.where(sol.ok, sol.cost, 0)` or
`sol.cost[sol.ok]` -- gets exactly zero gradients for them, and shared learnables get the
gradient of the solved elements alone.
"""
import pytest
import torch

from runtime.lqr import lqr
from runtime.qp import qp
from runtime.status import Status

F64 = torch.float64
B, T, n, m = 3, 5, 2, 2
N = n + m


def _data(failure: str) -> dict[str, torch.Tensor]:
    """Random convex data; element 1 fails (`not_convex`: indefinite control curvature;
    `infeasible`: the box rows say u <= -1 and u >= 1)."""
    g = torch.Generator().manual_seed(3)
    L = torch.randn(B, T, N, N, generator=g, dtype=F64)
    C = 0.3 * L @ L.mT / N + torch.eye(N, dtype=F64)
    if failure == "not_convex":
        C[1, 2, n:, n:] = -torch.eye(m, dtype=F64)
    eye = torch.eye(m, dtype=F64)
    G = torch.cat([torch.zeros(2 * m, n, dtype=F64), torch.cat([eye, -eye])], dim=1).expand(B, T, 2 * m, N)
    h = 2.0 * torch.ones(B, T, 2 * m, dtype=F64)
    if failure == "infeasible":
        h[1] = -1.0
    return dict(x0=torch.randn(B, n, generator=g, dtype=F64), C=C,
                c=0.5 * torch.randn(B, T, N, generator=g, dtype=F64),
                F=torch.cat([torch.eye(n, dtype=F64).expand(B, T, n, n),
                             0.5 * torch.randn(B, T, n, m, generator=g, dtype=F64)], dim=-1),
                f=0.1 * torch.randn(B, T, n, generator=g, dtype=F64),
                CT=torch.eye(n, dtype=F64).expand(B, n, n).clone(), cT=torch.randn(B, n, generator=g, dtype=F64),
                G=G, h=h)


def _solve(solver: str, data: dict, shared: torch.Tensor, x0: torch.Tensor):
    """Solve with `shared` (N,) added to every element's c (a learnable all elements share)."""
    c = data["c"] + shared
    if solver == "lqr":
        return lqr(x0, data["C"], c, data["F"], data["f"], data["CT"], data["cT"])
    return qp(x0, data["C"], c, data["F"], data["f"], data["CT"], data["cT"], data["G"], data["h"])


CASES = [("lqr", "not_convex"), ("qp", "not_convex"), ("qp", "infeasible")]
MASKS = {
    "where": lambda sol, ok: torch.where(ok, sol.cost, 0.0).sum(),
    "index": lambda sol, ok: sol.cost[ok].sum(),
    "where_x": lambda sol, ok: torch.where(ok[:, None, None], sol.x, 0.0).pow(2).sum(),
}


@pytest.mark.parametrize("solver,failure", CASES)
def test_a_failed_element_is_nan_and_reported(solver, failure):
    data = _data(failure)
    sol = _solve(solver, data, torch.zeros(N, dtype=F64), data["x0"])
    assert sol.status[1] == (Status.NOT_CONVEX if failure == "not_convex" else Status.INFEASIBLE)
    assert (sol.status[[0, 2]] == Status.SOLVED).all()
    for y in (sol.x, sol.u, sol.cost):
        assert y[1].isnan().all() and y[[0, 2]].isfinite().all()


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("solver,failure", CASES)
def test_masking_a_failed_element_leaves_shared_gradients_to_the_solved_ones(solver, failure, mask):
    data = _data(failure)
    shared = torch.zeros(N, dtype=F64, requires_grad=True)
    x0 = data["x0"].clone().requires_grad_()
    sol = _solve(solver, data, shared, x0)
    ok = sol.status == Status.SOLVED
    MASKS[mask](sol, ok).backward()
    assert (x0.grad[1] == 0).all() and x0.grad[[0, 2]].isfinite().all()

    solved = {k: v[[0, 2]] for k, v in data.items()}                 # the solved elements alone
    ref_shared = torch.zeros(N, dtype=F64, requires_grad=True)
    ref_x0 = solved["x0"].clone().requires_grad_()
    ref = _solve(solver, solved, ref_shared, ref_x0)
    MASKS[mask](ref, torch.ones(2, dtype=torch.bool)).backward()
    torch.testing.assert_close(shared.grad, ref_shared.grad, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(x0.grad[[0, 2]], ref_x0.grad, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("read", ["cost", "x", "u"])
@pytest.mark.parametrize("solver,failure", CASES)
def test_reading_a_failed_element_gives_nan_gradients_for_its_own_inputs(solver, failure, read):
    data = _data(failure)
    x0 = data["x0"].clone().requires_grad_()
    sol = _solve(solver, data, torch.zeros(N, dtype=F64), x0)
    loss = getattr(sol, read).sum()
    assert loss.isnan()                              # never a finite loss from a failed element
    loss.backward()
    assert x0.grad[1].isnan().all() and x0.grad[[0, 2]].isfinite().all()
