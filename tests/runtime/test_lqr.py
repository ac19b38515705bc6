"""Tests of the Riccati LQR solver (runtime/riccati.py) and its implicit backward (runtime/lqr.py).

Gradients are checked by finite differences (gradcheck, float64) and against an independent
reference: a dense solve of the KKT system of the same equality-constrained QP over
tau = (z_0, ..., z_{T-1}, x_T), differentiated by plain autograd.
"""
import pytest
import torch

from runtime.lqr import lqr
from runtime.riccati import factor, solve
from runtime.status import Status

INPUTS = ("x0", "C", "c", "F", "f", "CT", "cT")


def random_problem(B=3, T=5, n=3, m=2, dtype=torch.float64, seed=0, time_invariant=False):
    """Leaf tensors of a well-posed LQR problem; time-invariant data as expanded views."""
    g = torch.Generator().manual_seed(seed)
    N = n + m

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    def pd(*shape):
        M = randn(*shape)
        return M @ M.mT / shape[-1] + 0.5 * torch.eye(shape[-1], dtype=torch.float64)

    lead = (B,) if time_invariant else (B, T)
    data = dict(x0=randn(B, n), C=pd(*lead, N, N), c=randn(*lead, N),
                F=torch.cat([torch.eye(n, dtype=torch.float64) + 0.3 * randn(*lead, n, n),
                             randn(*lead, n, m)], -1),
                f=randn(*lead, n), CT=pd(B, n, n), cT=randn(B, n))
    return {k: v.to(dtype).requires_grad_() for k, v in data.items()}


def problem_args(leaves, T):
    """The lqr arguments; time-invariant leaves (no T dimension) are expanded over time."""
    B = leaves["x0"].shape[0]
    args = []
    for name in INPUTS:
        v = leaves[name]
        if name in ("C", "c", "F", "f") and v.dim() == (3 if name in ("C", "F") else 2):
            v = v[:, None].expand(B, T, *v.shape[1:])
        args.append(v)
    return args


def dense_lqr(x0, C, c, F, f, CT, cT):
    """(x, u, cost, lam) from the KKT system [[H, G'], [G, 0]] [tau; lam] = -[h; g]."""
    B, T, n, N = F.shape
    D = T * N + n
    like = dict(dtype=C.dtype)
    H = torch.zeros(B, D, D, **like)
    G = torch.zeros(B, (T + 1) * n, D, **like)
    eye = torch.eye(n, **like)
    G[:, :n, :n] = -eye                                         # x0 - x_0 = 0
    for t in range(T):
        z_t = slice(t * N, (t + 1) * N)
        H[:, z_t, z_t] = 0.5 * (C[:, t] + C[:, t].mT)
        rows = slice((t + 1) * n, (t + 2) * n)                  # F_t z_t + f_t - x_{t+1} = 0
        G[:, rows, z_t] = F[:, t]
        G[:, rows, (t + 1) * N:(t + 1) * N + n] = -eye
    H[:, T * N:, T * N:] = 0.5 * (CT + CT.mT)
    h = torch.cat([c.flatten(1), cT], -1)
    g = torch.cat([x0, f.flatten(1)], -1)
    KKT = torch.cat([torch.cat([H, G.mT], -1),
                     torch.cat([G, torch.zeros(B, (T + 1) * n, (T + 1) * n, **like)], -1)], -2)
    sol = torch.linalg.solve(KKT, -torch.cat([h, g], -1))
    tau, lam = sol[:, :D], sol[:, D:]
    cost = 0.5 * (tau[:, None] @ H @ tau[..., None]).flatten() + (h * tau).sum(-1)
    z = tau[:, :T * N].reshape(B, T, N)
    x = torch.cat([z[..., :n], tau[:, None, T * N:]], 1)
    return x, z[..., n:], cost, lam.reshape(B, T + 1, n)


def loss_weights(x, u, lam, seed=1):
    g = torch.Generator().manual_seed(seed)
    B = x.shape[0]
    return {name: torch.randn(shape, generator=g, dtype=torch.float64).to(x.dtype)
            for name, shape in (("x", x.shape), ("u", u.shape), ("cost", (B,)),
                                ("lam", lam.shape))}


def weighted_loss(outputs, weights, terms):
    return sum((weights[k] * outputs[k]).sum() for k in terms)


def grads(loss, leaves):
    return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))


def assert_close(actual, expected, tol):
    scale = expected.abs().max().clamp(min=1.0)
    err = (actual - expected).abs().max() / scale
    assert err <= tol, f"relative error {err:.2e} > {tol:.0e}"


@pytest.mark.parametrize("time_invariant", [False, True], ids=["time-varying", "expanded"])
@pytest.mark.parametrize("B", [1, 2])
def test_gradcheck_every_input_and_output(time_invariant, B):
    T = 4
    leaves = random_problem(B=B, T=T, n=3, m=2, time_invariant=time_invariant)

    def fn(*values):
        sol = lqr(*problem_args(dict(zip(INPUTS, values)), T))
        return sol.x, sol.u, sol.cost, sol.lam

    assert torch.autograd.gradcheck(fn, tuple(leaves[k] for k in INPUTS))


@pytest.mark.parametrize("terms", [("x", "u"), ("cost",), ("lam",), ("x", "u", "cost", "lam")])
@pytest.mark.parametrize("time_invariant", [False, True], ids=["time-varying", "expanded"])
@pytest.mark.parametrize("B", [1, 3])
def test_matches_dense_kkt_solution_and_gradients(terms, time_invariant, B):
    T = 6
    leaves = random_problem(B=B, T=T, time_invariant=time_invariant, seed=B)
    args = problem_args(leaves, T)
    sol = lqr(*args)
    x, u, cost, lam = dense_lqr(*args)
    assert (sol.status == Status.SOLVED).all()
    for ours, ref in ((sol.x, x), (sol.u, u), (sol.cost, cost), (sol.lam, lam)):
        assert_close(ours, ref, 1e-9)
    weights = loss_weights(x, u, lam)
    ours = grads(weighted_loss(sol._asdict(), weights, terms), leaves)
    ref = grads(weighted_loss(dict(x=x, u=u, cost=cost, lam=lam), weights, terms), leaves)
    for name in INPUTS:
        assert ours[name].shape == leaves[name].shape
        assert_close(ours[name], ref[name], 1e-9)


def test_costates_satisfy_the_documented_stationarity_conditions():
    leaves = random_problem()
    x0, C, c, F, f, CT, cT = (leaves[k].detach() for k in INPUTS)
    sol = lqr(x0, C, c, F, f, CT, cT)
    n = x0.shape[-1]
    z = torch.cat([sol.x[:, :-1], sol.u], -1)
    # C_t z_t + c_t + F_t' lam_{t+1} = [lam_t; 0] and lam_T = CT x_T + cT
    grad_z = (C @ z[..., None]).squeeze(-1) + c + (F.mT @ sol.lam[:, 1:, :, None]).squeeze(-1)
    assert_close(grad_z[..., :n], sol.lam[:, :-1], 1e-10)
    assert_close(grad_z[..., n:], torch.zeros_like(sol.u), 1e-10)
    assert_close(sol.lam[:, -1], (CT @ sol.x[:, -1, :, None]).squeeze(-1) + cT, 1e-10)
    assert_close(sol.x[:, 1:], (F @ z[..., None]).squeeze(-1) + f, 1e-10)


def test_factorization_is_reused_for_new_linear_data():
    leaves = random_problem(seed=3)
    x0, C, c, F, f, CT, cT = (leaves[k].detach() for k in INPUTS)
    fac = factor(C, F, CT)
    for scale in (1.0, -2.5):
        new = (scale * c + 1, scale * f, scale * cT - 1, scale * x0)
        x, u, lam = solve(fac, *new)
        ref = lqr(new[3], C, new[0], F, new[1], CT, new[2])
        for ours, expected in ((x, ref.x), (u, ref.u), (lam, ref.lam)):
            assert_close(ours, expected, 1e-12)


def test_cost_matrices_are_read_through_their_symmetric_part():
    leaves = random_problem(seed=4)
    x0, C, c, F, f, CT, cT = (leaves[k].detach() for k in INPUTS)
    skew = torch.randn(C.shape, dtype=C.dtype, generator=torch.Generator().manual_seed(5))
    skewT = torch.randn(CT.shape, dtype=C.dtype, generator=torch.Generator().manual_seed(6))
    ours = lqr(x0, C + skew - skew.mT, c, F, f, CT + skewT - skewT.mT, cT)
    ref = lqr(x0, C, c, F, f, CT, cT)
    for a, b in zip(ours, ref):
        assert_close(a.double(), b.double(), 1e-10)


def test_float32_runs_and_is_close_to_float64():
    T = 20
    leaves = random_problem(B=4, T=T, n=4, m=2, seed=7)
    leaves32 = {k: v.detach().float().requires_grad_() for k, v in leaves.items()}
    sol64, sol32 = lqr(*problem_args(leaves, T)), lqr(*problem_args(leaves32, T))
    assert sol32.x.dtype == torch.float32 and (sol32.status == Status.SOLVED).all()
    for a, b in zip((sol32.x, sol32.u, sol32.cost, sol32.lam),
                    (sol64.x, sol64.u, sol64.cost, sol64.lam)):
        assert_close(a.double(), b, 1e-4)
    weights = loss_weights(sol64.x, sol64.u, sol64.lam)
    terms = ("x", "u", "cost", "lam")
    g64 = grads(weighted_loss(sol64._asdict(), weights, terms), leaves)
    w32 = {k: v.float() for k, v in weights.items()}
    g32 = grads(weighted_loss(sol32._asdict(), w32, terms), leaves32)
    for name in INPUTS:
        assert g32[name].dtype == torch.float32
        assert_close(g32[name].double(), g64[name], 1e-3)


def indefinite_problem():
    """Batch of 3 whose element 1 has an indefinite Q_uu at the last stage."""
    leaves = random_problem(B=3, seed=8)
    with torch.no_grad():
        leaves["C"][1, -1, 3:, 3:] -= 50 * torch.eye(2, dtype=torch.float64)
    return leaves


def test_not_convex_element_is_flagged_and_the_others_are_unaffected():
    leaves = indefinite_problem()
    sol = lqr(*(leaves[k] for k in INPUTS))
    assert sol.status.dtype == torch.int64
    assert sol.status.tolist() == [Status.SOLVED, Status.NOT_CONVEX, Status.SOLVED]
    for y in (sol.x, sol.u, sol.cost, sol.lam):
        assert y[1].isnan().all() and y[[0, 2]].isfinite().all()
    for b in (0, 2):
        alone = lqr(*(leaves[k][b:b + 1] for k in INPUTS))
        for ours, ref in zip((sol.x, sol.u, sol.cost, sol.lam),
                             (alone.x, alone.u, alone.cost, alone.lam)):
            assert_close(ours[b], ref[0], 1e-12)


def test_factor_replaces_a_failed_cholesky_factor_by_the_identity():
    leaves = indefinite_problem()
    fac = factor(*(leaves[k].detach() for k in ("C", "F", "CT")))
    assert fac.status.tolist() == [Status.SOLVED, Status.NOT_CONVEX, Status.SOLVED]
    assert torch.equal(fac.L[1, -1], torch.eye(2, dtype=torch.float64))
    assert fac.K[1].isfinite().all()


def test_not_convex_gradients_are_zero_when_masked_and_nan_when_read():
    leaves = indefinite_problem()
    sol = lqr(*(leaves[k] for k in INPUTS))
    ok = sol.status == Status.SOLVED
    masked = grads(torch.where(ok, sol.cost + sol.x.sum((1, 2)), 0.0).sum(), leaves)
    for b in (0, 2):
        alone = {k: v[b:b + 1] for k, v in leaves.items()}
        sol_b = lqr(*(alone[k] for k in INPUTS))
        ref = grads(sol_b.cost.sum() + sol_b.x.sum(), leaves)
        for name in INPUTS:
            assert_close(masked[name][b], ref[name][b], 1e-12)
    for name in INPUTS:
        assert (masked[name][1] == 0).all()
    read = grads(lqr(*(leaves[k] for k in INPUTS)).x.sum(), leaves)
    for name in INPUTS:
        assert read[name][1].isnan().all() and read[name][[0, 2]].isfinite().all()


@pytest.mark.parametrize("where", ["c", "C"])
def test_nan_data_is_reported_as_numerical(where):
    leaves = {k: v.detach() for k, v in random_problem(seed=9).items()}
    leaves[where] = leaves[where].clone()
    leaves[where][0, 2] = torch.nan
    sol = lqr(*(leaves[k] for k in INPUTS))
    assert sol.status.tolist() == [Status.NUMERICAL, Status.SOLVED, Status.SOLVED]
    assert sol.x[0].isnan().all() and sol.x[1:].isfinite().all()


def test_only_requested_gradients_are_computed():
    leaves = {k: v.detach() for k, v in random_problem(seed=10).items()}
    leaves["c"].requires_grad_()
    sol = lqr(*(leaves[k] for k in INPUTS))
    (dc,) = torch.autograd.grad(sol.u.sum(), [leaves["c"]])
    assert dc.shape == leaves["c"].shape and dc.abs().sum() > 0


@pytest.mark.parametrize("name, shape", [("C", (3, 5, 5, 4)), ("c", (3, 4, 5)),
                                         ("CT", (3, 2, 3)), ("x0", (2, 3))])
def test_bad_shapes_raise_value_error(name, shape):
    leaves = {k: v.detach() for k, v in random_problem().items()}
    leaves[name] = torch.zeros(shape, dtype=torch.float64)
    with pytest.raises(ValueError, match=name):
        lqr(*(leaves[k] for k in INPUTS))


def test_mixed_dtypes_raise_value_error():
    leaves = {k: v.detach() for k, v in random_problem().items()}
    leaves["c"] = leaves["c"].float()
    with pytest.raises(ValueError, match="c is torch.float32"):
        lqr(*(leaves[k] for k in INPUTS))
