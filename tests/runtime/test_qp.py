"""Tests of runtime.qp: cvxpy (Clarabel) references, statuses, gradcheck and finite differences."""
import cvxpy as cp
import numpy as np
import pytest
import torch

from runtime.lqr import lqr
from runtime.qp import QPOptions, qp
from runtime.status import Status

F64 = torch.float64


def box_problem(B, T, n, m, seed, bound=1.0, x0_scale=2.0):
    """Random convex LQ data with the control box |u| <= bound as G rows (G z <= h)."""
    g = torch.Generator().manual_seed(seed)
    N = n + m
    A = torch.eye(n, dtype=F64) + 0.2 * torch.randn(B, T, n, n, generator=g, dtype=F64)
    Bu = 0.5 * torch.randn(B, T, n, m, generator=g, dtype=F64)
    L = torch.randn(B, T, N, N, generator=g, dtype=F64)
    LT = torch.randn(B, n, n, generator=g, dtype=F64)
    eye = torch.eye(m, dtype=F64)
    G = torch.cat([torch.zeros(2 * m, n, dtype=F64), torch.cat([eye, -eye])], dim=1)
    bound = torch.as_tensor(bound, dtype=F64).reshape(-1, 1, 1)
    return dict(
        x0=x0_scale * torch.randn(B, n, generator=g, dtype=F64),
        C=0.3 * L @ L.mT / N + torch.eye(N, dtype=F64),
        c=0.5 * torch.randn(B, T, N, generator=g, dtype=F64),
        F=torch.cat([A, Bu], dim=-1),
        f=0.1 * torch.randn(B, T, n, generator=g, dtype=F64),
        CT=LT @ LT.mT / n + torch.eye(n, dtype=F64),
        cT=torch.randn(B, n, generator=g, dtype=F64),
        G=G.expand(B, T, 2 * m, N),
        h=bound * torch.ones(B, T, 2 * m, dtype=F64),
    )


def terminal_row(data, target):
    """E, e holding the single row x_T[0] = target (B,), written on z_{T-1} through the dynamics."""
    F, f = data["F"], data["f"]
    B, T, n, N = F.shape
    E = torch.zeros(B, T, 1, N, dtype=F64)
    e = torch.zeros(B, T, 1, dtype=F64)
    E[:, -1, 0] = F[:, -1, 0]
    e[:, -1, 0] = target - f[:, -1, 0]
    return E, e


def clarabel(data, b):
    """(status, x, u, cost) of element b by cvxpy + Clarabel at tight tolerances."""
    d = {k: v[b].detach().numpy() for k, v in data.items() if v is not None}
    T, N = d["c"].shape
    n = d["x0"].shape[0]
    x, u = cp.Variable((T + 1, n)), cp.Variable((T, N - n))
    cons, cost = [x[0] == d["x0"]], 0
    for t in range(T):
        z = cp.hstack([x[t], u[t]])
        cost += 0.5 * cp.quad_form(z, cp.psd_wrap(0.5 * (d["C"][t] + d["C"][t].T))) + d["c"][t] @ z
        cons += [x[t + 1] == d["F"][t] @ z + d["f"][t], d["G"][t] @ z <= d["h"][t]]
        if "E" in d:
            cons.append(d["E"][t] @ z == d["e"][t])
    cost += 0.5 * cp.quad_form(x[T], cp.psd_wrap(0.5 * (d["CT"] + d["CT"].T))) + d["cT"] @ x[T]
    problem = cp.Problem(cp.Minimize(cost), cons)
    problem.solve(solver=cp.CLARABEL, tol_feas=1e-11, tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_ktratio=1e-10)
    return problem.status, x.value, u.value, problem.value


def assert_matches_clarabel(sol, data, b, atol=1e-7):
    status, x, u, cost = clarabel(data, b)
    assert status == "optimal"
    np.testing.assert_allclose(sol.x[b].detach().numpy(), x, atol=atol)
    np.testing.assert_allclose(sol.u[b].detach().numpy(), u, atol=atol)
    assert abs(sol.cost[b].item() - cost) <= atol * (1 + abs(cost))


def test_batch_in_different_regimes_matches_clarabel():
    # element 0: loose box (nothing active); 1: tight box (active bounds); 2: a terminal equality the box
    # cannot reach (infeasible). Elements 0 and 1 carry a reachable terminal equality.
    data = box_problem(3, 8, 3, 2, seed=5, bound=[100.0, 0.5, 0.5])
    data["E"], data["e"] = terminal_row(data, torch.tensor([0.1, 0.1, 1e3], dtype=F64))
    sol = qp(**data)
    assert sol.status.tolist() == [Status.SOLVED, Status.SOLVED, Status.INFEASIBLE]
    active = (sol.u.abs() > data["h"][:, :1, :1] - 1e-9).flatten(1).sum(1)
    assert active[0] == 0 and active[1] >= 3
    assert_matches_clarabel(sol, data, 0)
    assert_matches_clarabel(sol, data, 1)
    assert clarabel(data, 2)[0] == "infeasible"
    assert torch.isfinite(sol.x[:2]).all()
    assert (sol.residuals.primal[:2] < 1e-10).all() and (sol.residuals.dual[:2] < 1e-10).all()


def test_equality_rows_of_every_kind_match_clarabel():
    data = box_problem(2, 6, 3, 2, seed=4, bound=3.0, x0_scale=1.0)
    B, T, n, N = data["F"].shape
    E, e = torch.zeros(B, T, 3, N, dtype=F64), torch.zeros(B, T, 3, dtype=F64)
    E[:, -1, 0], e[:, -1, 0] = data["F"][:, -1, 0], 0.3 - data["f"][:, -1, 0]  # terminal state
    E[:, 1, 0, 1], e[:, 1, 0] = 1.0, 0.1                                       # pure state row
    E[:, 2, 1] = torch.randn(B, N, generator=torch.Generator().manual_seed(0), dtype=F64)
    e[:, 2, 1] = 0.2                                                            # mixed row
    E[:, 2, 2], e[:, 2, 2] = 2 * E[:, 2, 1], 0.4                                # redundant copy
    data["E"], data["e"] = E, e
    sol = qp(**data)
    assert sol.status.tolist() == [Status.SOLVED] * B
    z = torch.cat([sol.x[:, :-1], sol.u], dim=-1)
    assert ((E @ z.unsqueeze(-1)).squeeze(-1) - e).abs().max() < 1e-10
    for b in range(B):
        assert_matches_clarabel(sol, data, b)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_general_stage_constraints_match_clarabel(seed):
    # Random mixed state-control rows G z <= h (and one equality row per stage for odd seeds),
    # feasible by construction around a random rollout.
    g = torch.Generator().manual_seed(100 + seed)
    B, T, n, m, p = 3, 6, 3, 2, 4
    data = box_problem(B, T, n, m, seed=seed)
    x, zs = data["x0"], []
    for t in range(T):
        zs.append(torch.cat([x, 0.3 * torch.randn(B, m, generator=g, dtype=F64)], dim=-1))
        x = (data["F"][:, t] @ zs[-1].unsqueeze(-1)).squeeze(-1) + data["f"][:, t]
    Z = torch.stack(zs, 1).unsqueeze(-1)
    data["G"] = torch.randn(B, T, p, n + m, generator=g, dtype=F64)
    data["h"] = (data["G"] @ Z).squeeze(-1) + 0.1 * torch.rand(B, T, p, generator=g, dtype=F64)
    if seed % 2:
        data["E"] = torch.randn(B, T, 1, n + m, generator=g, dtype=F64)
        data["e"] = (data["E"] @ Z).squeeze(-1)
    sol = qp(**data)
    assert sol.status.tolist() == [Status.SOLVED] * B
    for b in range(B):
        assert_matches_clarabel(sol, data, b)


def test_inconsistent_equalities_are_infeasible():
    data = box_problem(2, 4, 2, 1, seed=1, bound=5.0)
    B, T, n, N = data["F"].shape
    E, e = torch.zeros(B, T, 2, N, dtype=F64), torch.zeros(B, T, 2, dtype=F64)
    E[:, 1, :, n] = 1.0
    e[:, 1] = torch.tensor([[0.5, 0.5], [0.5, -0.5]], dtype=F64)  # u_1 = 0.5 twice / u_1 = +-0.5
    sol = qp(**data, E=E, e=e)
    assert sol.status.tolist() == [Status.SOLVED, Status.INFEASIBLE]
    assert abs(sol.u[0, 1, 0].item() - 0.5) < 1e-10


def test_without_constraints_equals_lqr():
    data = box_problem(3, 7, 3, 2, seed=2)
    data["G"], data["h"] = data["G"][:, :, :0], data["h"][:, :, :0]
    inputs = {k: v.clone().requires_grad_() for k, v in data.items() if k not in ("G", "h")}
    ours = qp(**inputs, G=data["G"], h=data["h"])
    ref = lqr(**{k: v for k, v in inputs.items()})
    assert ours.status.tolist() == [Status.SOLVED] * 3
    torch.testing.assert_close(ours.x, ref.x, atol=1e-11, rtol=0)
    torch.testing.assert_close(ours.u, ref.u, atol=1e-11, rtol=0)
    torch.testing.assert_close(ours.cost, ref.cost, atol=1e-10, rtol=0)
    torch.testing.assert_close(ours.duals.mu, ref.lam, atol=1e-10, rtol=0)
    w = torch.randn_like(ours.u)
    grads = torch.autograd.grad((ours.u * w).sum() + ours.cost.sum(), list(inputs.values()))
    ref_grads = torch.autograd.grad((ref.u * w).sum() + ref.cost.sum(), list(inputs.values()))
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)


def _strictly_complementary(sol, data, margin=1e-4):
    z = torch.cat([sol.x[:, :-1], sol.u], dim=-1)
    slack = data["h"] - (data["G"] @ z.unsqueeze(-1)).squeeze(-1)
    return bool((torch.maximum(slack, sol.duals.lam) > margin).all())


def _loss_outputs(names, data):
    def run(*tensors):
        sol = qp(**{**data, **dict(zip(names, tensors))}, options=QPOptions(tol=1e-12))
        return sol.x, sol.u, sol.cost
    return run


def test_gradcheck_with_active_and_inactive_bounds():
    data = box_problem(2, 3, 2, 1, seed=3, bound=0.6, x0_scale=2.0)
    data["G"] = data["G"].contiguous()
    sol = qp(**data)
    assert sol.status.tolist() == [Status.SOLVED] * 2
    assert (sol.duals.lam > 1e-4).any() and (sol.duals.lam < 1e-8).any()
    assert _strictly_complementary(sol, data)
    for names, fast in ((["x0", "c", "h", "CT"], False), (list(data), True)):
        inputs = [data[k].clone().requires_grad_() for k in names]
        assert torch.autograd.gradcheck(_loss_outputs(names, data), inputs, eps=1e-6, atol=1e-6, rtol=1e-5,
                                        fast_mode=fast)


def test_gradcheck_with_equalities():
    # One row per stage (every row nonzero: a zero row is a constraint that a perturbation creates):
    # mixed rows at t = 0, 1, 2 and the terminal row x_T[0] = 0.2 at t = 3.
    data = box_problem(1, 4, 2, 2, seed=8, bound=0.8, x0_scale=2.0)
    data["G"] = data["G"].contiguous()
    E = torch.tensor([[0.3, -0.2, 0.5, 1.0], [0.0, 1.0, 0.5, -0.5], [1.0, 0.4, -0.6, 0.2], [0.0] * 4], dtype=F64)
    E = E.expand(1, 4, 4).clone().unsqueeze(2)
    e = torch.tensor([[[-0.1], [0.1], [0.3], [0.0]]], dtype=F64)
    E[0, 3, 0], e[0, 3, 0] = data["F"][0, 3, 0], 0.2 - data["f"][0, 3, 0]
    data["E"], data["e"] = E, e
    sol = qp(**data)
    assert sol.status.tolist() == [Status.SOLVED]
    assert (sol.duals.lam > 1e-4).any() and _strictly_complementary(sol, data)
    names = list(data)
    inputs = [data[k].clone().requires_grad_() for k in names]
    assert torch.autograd.gradcheck(_loss_outputs(names, data), inputs, eps=1e-6, atol=1e-6, rtol=1e-5,
                                    fast_mode=True)
    names = ["E", "e"]
    inputs = [data[k].clone().requires_grad_() for k in names]
    assert torch.autograd.gradcheck(_loss_outputs(names, data), inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradient_matches_central_differences_of_resolves():
    data = box_problem(4, 12, 4, 2, seed=11, bound=0.7, x0_scale=3.0)
    params = {k: data[k].clone().requires_grad_() for k in ("x0", "F", "h", "C", "c")}
    g = torch.Generator().manual_seed(0)
    wx, wu = torch.randn(4, 13, 4, generator=g, dtype=F64), torch.randn(4, 12, 2, generator=g, dtype=F64)

    def loss(p):
        sol = qp(**{**data, **p}, options=QPOptions(tol=1e-13))
        return (sol.x * wx).sum() + (sol.u * wu).sum() + sol.cost.sum(), sol

    value, sol = loss(params)
    assert (sol.status == Status.SOLVED).all() and (sol.duals.lam > 1e-3).sum() > 10
    grads = torch.autograd.grad(value, list(params.values()))
    for k in range(3):
        d = {name: torch.randn(p.shape, generator=g, dtype=F64) for name, p in params.items()}
        step = 1e-6
        plus = loss({name: p.detach() + step * d[name] for name, p in params.items()})[0]
        minus = loss({name: p.detach() - step * d[name] for name, p in params.items()})[0]
        fd = (plus - minus).item() / (2 * step)
        analytic = sum((gr * d[name]).sum() for gr, name in zip(grads, params)).item()
        assert abs(fd - analytic) <= 1e-6 * (1 + abs(fd)), (k, fd, analytic)


def test_float32_solves_close_to_float64():
    data = box_problem(3, 8, 3, 2, seed=6, bound=[0.5, 1.0, 50.0])
    sol64 = qp(**data)
    sol32 = qp(**{k: v.float() for k, v in data.items()})
    assert sol32.x.dtype == torch.float32
    assert sol32.status.tolist() == [Status.SOLVED] * 3
    torch.testing.assert_close(sol32.u.double(), sol64.u, atol=1e-4, rtol=0)
    torch.testing.assert_close(sol32.cost.double(), sol64.cost, atol=0, rtol=1e-5)
    x0 = data["x0"].float().requires_grad_()
    qp(**{**{k: v.float() for k, v in data.items()}, "x0": x0}).u.sum().backward()
    assert torch.isfinite(x0.grad).all()


def test_batch_elements_are_independent_and_freeze_when_done():
    data = box_problem(3, 6, 3, 2, seed=8, bound=[100.0, 0.4, 1.0])
    batch = qp(**data)
    assert len(set(batch.iterations.tolist())) > 1
    for b in range(3):
        alone = qp(**{k: v[b:b + 1] for k, v in data.items()})
        assert alone.iterations.item() == batch.iterations[b].item()
        torch.testing.assert_close(alone.u[0], batch.u[b], atol=1e-13, rtol=0)


def test_not_convex_and_nan_elements_are_reported_alone():
    data = box_problem(3, 5, 2, 2, seed=9)
    data["C"] = data["C"].clone()
    data["C"][1, 2, 3, 3] = -5.0      # negative control curvature: Q_uu not positive definite
    data["c"] = data["c"].clone()
    data["c"][2, 0, 0] = float("nan")
    c = data["c"].clone().requires_grad_()
    sol = qp(**{**data, "c": c})
    assert sol.status.tolist() == [Status.SOLVED, Status.NOT_CONVEX, Status.NUMERICAL]
    assert_matches_clarabel(sol, data, 0)
    sol.u[0].sum().backward()
    assert torch.isfinite(c.grad).all() and (c.grad[1:] == 0).all()


def test_max_iters_status_and_expanded_inputs_get_input_shaped_gradients():
    data = box_problem(2, 5, 2, 1, seed=13, bound=0.3)
    G = data["G"][0, 0].clone().requires_grad_()        # (p, N), expanded to (B, T, p, N)
    sol = qp(**{**data, "G": G.expand_as(data["G"])}, options=QPOptions(max_iters=1))
    assert sol.status.tolist() == [Status.MAX_ITERS] * 2 and sol.iterations.tolist() == [1, 1]
    assert (sol.residuals.complementarity > 1e-3).all()
    sol = qp(**{**data, "G": G.expand_as(data["G"])})
    sol.u.sum().backward()
    assert G.grad.shape == G.shape and torch.isfinite(G.grad).all() and G.grad.abs().sum() > 0


def test_bad_shapes_raise_value_error():
    data = box_problem(2, 3, 2, 1, seed=0)
    with pytest.raises(ValueError, match="h has shape"):
        qp(**{**data, "h": data["h"][:, :2]})
    with pytest.raises(ValueError, match="both E and e"):
        qp(**data, E=data["G"])
    with pytest.raises(ValueError, match="floating-point tensor like x0"):
        qp(**{**data, "c": data["c"].float()})
