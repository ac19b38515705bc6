"""QuadForm: second-order forms in z, exact for degree <= 2 and second-order jets beyond.

Every op is checked against plain tensor arithmetic on the values at random z (exact when the
result has degree <= 2), and truncating products against the Taylor expansion at z = 0.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler import quadform as qf
from compiler.quadform import QuadForm

F64 = torch.float64
NZ = 4


def rand(*shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=F64)


def form(batch: int, shape: tuple, degree: int, seed: int = 0) -> qf.Value:
    """A random value of the given degree: (B, *S) tensor, or QuadForm with symmetric H."""
    c = rand(batch, *shape, seed=seed)
    if degree == 0:
        return c
    L = rand(batch, NZ, *shape, seed=seed + 1)
    H = None
    if degree == 2:
        H = rand(batch, NZ, NZ, *shape, seed=seed + 2)
        H = 0.5 * (H + H.transpose(1, 2))
    return QuadForm(c, L, H)


@pytest.fixture
def at(random_expressions):
    return random_expressions.at


Z = rand(3, NZ, seed=99)


# --------------------------------------------------------------- basics

def test_variable_is_the_slice_of_z(at):
    like = torch.zeros((), dtype=F64)
    v = QuadForm.variable(1, 2, NZ, like)
    s = QuadForm.variable(3, 1, NZ, like, scalar=True)
    torch.testing.assert_close(at(v, Z), Z[:, 1:3])
    torch.testing.assert_close(at(s, Z), Z[:, 3])
    assert (v.degree, v.rank, s.rank, v.H) == (1, 1, 0, None)


def test_coefficients_fill_missing_parts():
    c, L, H = qf.coefficients(rand(2, 3), NZ)
    assert L.shape == (2, NZ, 3) and H.shape == (2, NZ, NZ, 3) and not L.any() and not H.any()
    c, L, H = qf.coefficients(form(1, (2,), 1), NZ)
    assert H.shape == (1, NZ, NZ, 2) and not H.any()


def test_plain_results_stay_plain():
    assert isinstance(qf.add(rand(1, 2), rand(3, 2)), torch.Tensor)
    assert isinstance(qf.mul(rand(1), rand(1)), torch.Tensor)
    assert qf.degree(rand(2)) == 0


# ------------------------------------------------------ elementwise ops

SHAPE_PAIRS = [((), ()), ((2,), ()), ((), (3,)), ((2, 3), (3,)), ((2, 1), (1, 3)), ((1,), (2, 2))]


@pytest.mark.parametrize("sa, sb", SHAPE_PAIRS)
@pytest.mark.parametrize("da, db", [(0, 1), (1, 0), (1, 1), (2, 0), (0, 2), (2, 2), (1, 2)])
@pytest.mark.parametrize("batches", [(1, 3), (3, 3), (3, 1)])
def test_add_sub_neg(at, sa, sb, da, db, batches):
    a, b = form(batches[0], sa, da, seed=1), form(batches[1], sb, db, seed=5)
    for op, ref in ((qf.add, torch.add), (qf.sub, torch.sub)):
        out = op(a, b)
        expected = ref(*_aligned(at, a, b))
        torch.testing.assert_close(_at(at, out), expected)
        assert qf.degree(out) == max(da, db)
        # reductions see every broadcast element (the coefficients span the value shape)
        total = qf.sum_axes(out, tuple(range(qf.rank(out))))
        torch.testing.assert_close(_at(at, total), expected.reshape(3, -1).sum(1))
    torch.testing.assert_close(_at(at, qf.neg(a)), -_at(at, a))


def _at(at, v, rank: int = 0):
    """The value at Z, batch-expanded, with leading value axes padded to `rank` (NumPy alignment)."""
    value = at(v, Z)
    value = value.reshape(value.shape[:1] + (1,) * max(0, rank - value.dim() + 1) + value.shape[1:])
    return value.expand((3,) + value.shape[1:])


def _aligned(at, a, b):
    rank = max(qf.rank(a), qf.rank(b))
    return _at(at, a, rank), _at(at, b, rank)


@pytest.mark.parametrize("sa, sb", SHAPE_PAIRS)
@pytest.mark.parametrize("da, db", [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (0, 2)])
def test_mul_is_exact_up_to_degree_two(at, sa, sb, da, db):
    a, b = form(3, sa, da, seed=2), form(1, sb, db, seed=7)
    out = qf.mul(a, b)
    assert qf.degree(out) == da + db
    torch.testing.assert_close(_at(at, out), torch.mul(*_aligned(at, a, b)))
    if isinstance(out, QuadForm) and out.H is not None:
        torch.testing.assert_close(out.H, out.H.transpose(1, 2))


@pytest.mark.parametrize("da, db", [(1, 2), (2, 2), (2, 1)])
def test_mul_beyond_degree_two_is_the_second_order_jet(da, db, random_expressions):
    """A product of degree > 2 keeps its Taylor expansion at z = 0 up to second order."""
    a, b = form(2, (3,), da, seed=3), form(2, (3,), db, seed=4)
    out = qf.mul(a, b)

    def product(z):
        return random_expressions.at(a, z) * random_expressions.at(b, z)

    value, grad, hessian = random_expressions.taylor(product, torch.zeros(2, NZ, dtype=F64))
    c, L, H = random_expressions.flat_coefficients(out, NZ, 2)
    torch.testing.assert_close(c, value)
    torch.testing.assert_close(L, grad)
    torch.testing.assert_close(2 * H, hessian)


def test_apply_elementwise_is_the_chain_rule(random_expressions):
    a = form(2, (2,), 2, seed=8)
    out = qf.apply_elementwise(a, torch.sin(a.c), torch.cos(a.c), -torch.sin(a.c))

    def sin_of(z):
        return torch.sin(random_expressions.at(a, z))

    value, grad, hessian = random_expressions.taylor(sin_of, torch.zeros(2, NZ, dtype=F64))
    c, L, H = random_expressions.flat_coefficients(out, NZ, 2)
    torch.testing.assert_close(c, value)
    torch.testing.assert_close(L, grad)
    torch.testing.assert_close(2 * H, hessian)


def test_broadcast_coefficients_span_the_value_shape(at):
    """A scalar variable plus a vector constant: L and H must cover both elements (sum is 2 z)."""
    like = torch.zeros((), dtype=F64)
    s = QuadForm.variable(0, 1, NZ, like, scalar=True)
    v = qf.add(qf.pad_rank(s, 1), torch.tensor([[1.0, 2.0]], dtype=F64))
    assert v.L.shape == (1, NZ, 2)
    total = qf.sum_axes(v, (0,))
    torch.testing.assert_close(at(total, Z), 2 * Z[:, 0] + 3)
    square = qf.add(qf.pad_rank(qf.mul(s, s), 1), torch.tensor([[1.0, 2.0]], dtype=F64))
    assert square.H.shape == (1, NZ, NZ, 2)
    torch.testing.assert_close(at(qf.sum_axes(square, (0,)), Z), 2 * Z[:, 0] ** 2 + 3)
    stacked = qf.stack([v, qf.add(qf.pad_rank(QuadForm.variable(1, 1, NZ, like, scalar=True), 1),
                                  torch.zeros(1, 2, dtype=F64))])
    torch.testing.assert_close(at(stacked, Z), torch.stack([Z[:, :1] + torch.tensor([1.0, 2.0], dtype=F64),
                                                            Z[:, 1:2].expand(3, 2)], dim=1))


# ------------------------------------------------------ structural ops

@pytest.mark.parametrize("sa, sb", [((3,), (3,)), ((2, 3), (3,)), ((3,), (3, 2)), ((2, 3), (3, 4))])
@pytest.mark.parametrize("da, db", [(0, 1), (1, 0), (1, 1), (0, 2), (2, 0)])
def test_matmul(at, sa, sb, da, db):
    a, b = form(3, sa, da, seed=11), form(1, sb, db, seed=12)
    expected = torch.stack([torch.matmul(x, y) for x, y in zip(_at(at, a), _at(at, b))])   # per sample
    torch.testing.assert_close(_at(at, qf.matmul(a, b)), expected)


@pytest.mark.parametrize("index", [(0,), (-1,), (slice(0, 2),), (1, slice(1, 3)), (slice(None), 2)])
def test_index(at, index):
    v = form(3, (2, 3), 2, seed=13)
    torch.testing.assert_close(at(qf.index(v, index), Z), at(v, Z)[(slice(None),) + index])


@pytest.mark.parametrize("axes", [(0,), (1,), (0, 1)])
def test_sum_axes_and_unsqueeze(at, axes):
    v = form(3, (2, 3), 2, seed=14)
    torch.testing.assert_close(at(qf.sum_axes(v, axes), Z), at(v, Z).sum(dim=tuple(a + 1 for a in axes)))
    torch.testing.assert_close(at(qf.unsqueeze(v, 1), Z), at(v, Z).unsqueeze(2))


def test_stack_mixes_forms_and_tensors(at):
    items = [form(1, (2,), 0, seed=15), form(3, (2,), 1, seed=16), form(1, (2,), 2, seed=17)]
    torch.testing.assert_close(at(qf.stack(items), Z), torch.stack([_at(at, i) for i in items], dim=1))
    plain = qf.stack([rand(1, 2), rand(3, 2)])
    assert isinstance(plain, torch.Tensor) and plain.shape == (3, 2, 2)


def test_diag_and_pad_rank(at):
    v = form(3, (3,), 2, seed=18)
    torch.testing.assert_close(at(qf.diag(v), Z), torch.diag_embed(at(v, Z)))
    padded = qf.pad_rank(v, 3)
    assert padded.rank == 3 and padded.L.shape == (3, NZ, 1, 1, 3)
    torch.testing.assert_close(at(padded, Z), at(v, Z)[:, None, None, :])


@settings(max_examples=40, deadline=None)
@given(da=st.integers(0, 2), db=st.integers(0, 2), pair=st.sampled_from(SHAPE_PAIRS),
       op=st.sampled_from(["add", "sub", "mul"]), seed=st.integers(0, 1000))
def test_random_binary_ops_are_exact_up_to_degree_two(da, db, pair, op, seed, random_expressions):
    at = random_expressions.at
    a, b = form(2, pair[0], da, seed=seed), form(1, pair[1], db, seed=seed + 3)
    z = rand(2, NZ, seed=seed + 6)
    out = getattr(qf, op)(a, b)
    if op == "mul" and da + db > 2:
        return                       # truncated: checked against the Taylor expansion above
    rank = max(len(pair[0]), len(pair[1]))
    va, vb = (qf.pad_rank(at(v, z), rank) for v in (a, b))
    ref = {"add": torch.add, "sub": torch.sub, "mul": torch.mul}[op](va, vb)
    torch.testing.assert_close(at(out, z).expand_as(ref), ref)


def test_coefficients_are_differentiable():
    """Data extracted from forms stays differentiable in the tensors they were built from."""
    M = rand(1, 2, 2, seed=19).requires_grad_(True)

    def hessian_of_quad(M):
        like = torch.zeros((), dtype=F64)
        v = QuadForm.variable(0, 2, 2, like)
        return qf.coefficients(qf.sum_axes(qf.mul(v, qf.matmul(M, v)), (0,)), 2)[2]

    assert torch.autograd.gradcheck(hessian_of_quad, (M,))
    H = hessian_of_quad(M.detach())
    torch.testing.assert_close(2 * H[0], M[0].detach() + M[0].detach().T)
