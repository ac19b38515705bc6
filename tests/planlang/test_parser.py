"""Parser: every construct of the core language parses to the right AST, with exact spans.

Expressions are compared as s-expressions (`sx`), which ignore spans; spans are checked on their
own. A hypothesis test prints random expression trees with the fewest parentheses the grammar
allows (and random line breaks and comments inside brackets) and parses them back.
"""
from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planlang import ast
from planlang.ast import Cmp, UnOp, VarKind, When
from planlang.errors import PlanError
from planlang.parser import _parser, parse
from planlang.source import Source, Span


# ------------------------------------------------------------------ helpers

def sx(e) -> tuple:
    """A span-free structural form of an expression (or slice)."""
    if isinstance(e, ast.Number):
        return ("num", e.value, e.is_int)
    if isinstance(e, ast.Name):
        return ("name", e.id)
    if isinstance(e, ast.Unary):
        return ("neg" if e.op is UnOp.NEG else "pos", sx(e.operand))
    if isinstance(e, ast.Binary):
        return (e.op.value, sx(e.left), sx(e.right))
    if isinstance(e, ast.Call):
        return ("call", e.func, tuple(sx(a) for a in e.args), tuple((k.name, sx(k.value)) for k in e.keywords))
    if isinstance(e, ast.Array):
        return ("array", tuple(sx(i) for i in e.items))
    if isinstance(e, ast.Index):
        return ("index", sx(e.base), tuple(sx(i) for i in e.indices))
    if isinstance(e, ast.Slice):
        return ("slice", None if e.start is None else sx(e.start), None if e.stop is None else sx(e.stop))
    raise TypeError(e)


def parse_text(text: str) -> ast.PlanAST:
    return parse(Source(text, "t.plan"))


def expr_of(text: str) -> ast.Expr:
    """Parse one expression (as the value of a const)."""
    decl = parse_text(f"const k = {text}\n").decls[0]
    assert isinstance(decl, ast.ConstDecl)
    return decl.value


def n(value, is_int=None):
    return ("num", float(value), isinstance(value, int) if is_int is None else is_int)


def v(name):
    return ("name", name)


def text_at(text: str, span: Span) -> str:
    """The source text a span covers (lines and columns from 1, end exclusive)."""
    lines = text.split("\n")
    if span.line == span.end_line:
        return lines[span.line - 1][span.col - 1: span.end_col - 1]
    parts = [lines[span.line - 1][span.col - 1:]] + lines[span.line: span.end_line - 1]
    return "\n".join(parts + [lines[span.end_line - 1][: span.end_col - 1]])


CORE = '''plan double_integrator
"""A point mass on a line, driven to a goal."""      # optional doc string

const dt = 0.1                     # compile-time constant (number, vector or matrix)
horizon 30                         # T: states x_0..x_T, controls u_0..u_{T-1}

state x[2] = [1.0, 0.0]            # initial state x_0 (the default; callers may pass another)
control u[1] in [-2, 2]            # box bounds

param A[2, 2] = [[1, dt], [0, 1]]  # fixed tensor (a buffer; callers may pass another)
input goal[2] = [0, 0]             # runtime input with an optional default
learn q[2] = [1, 1] positive       # learnable: an nn.Parameter; `positive` or `psd` keep it so
learn r = 0.1 positive
learn Q[2, 2] psd

dynamics x' = A @ x + [0, dt] * u  # x' is the state at t+1; x and u are at t
cost stage = sum(q * (x - goal)^2) + r * sum(u^2)    # summed over t = 0..T-1
cost stage effort = sum(u^2)
cost final = 10 * sum((x - goal)^2)                  # at t = T, on states only
constraint x[1] <= 3
constraint u[0] + x[0] == 0
constraint x[0] >= -1
constraint x[0:1] in [-5, 5]
solve ilqr(iters=50, tol=1e-6)
'''


# ------------------------------------------------------------ declarations

@pytest.fixture(scope="module")
def core() -> ast.PlanAST:
    return parse_text(CORE)


def test_header_and_doc_string(core):
    assert core.name == "double_integrator"
    assert core.doc == "A point mass on a line, driven to a goal."


def test_declarations_in_order(core):
    kinds = [type(d).__name__ for d in core.decls]
    assert kinds == ["ConstDecl", "HorizonDecl", "VarDecl", "VarDecl", "VarDecl", "VarDecl", "VarDecl",
                     "VarDecl", "VarDecl", "DynamicsDecl", "CostDecl", "CostDecl", "CostDecl",
                     "ConstraintDecl", "ConstraintDecl", "ConstraintDecl", "ConstraintDecl", "ConstraintDecl",
                     "SolveDecl"]


def test_const_and_horizon(core):
    const, horizon = core.decls[:2]
    assert (const.name, sx(const.value)) == ("dt", n(0.1))
    assert const.span == Span(4, 1, 4, 15)
    assert sx(horizon.value) == n(30) and horizon.span == Span(5, 1, 5, 11)


def test_variable_declarations(core):
    x, u, A, goal, q, r, Q = core.decls[2:9]
    assert (x.kind, x.name, [s.value for s in x.shape]) == (VarKind.STATE, "x", [2])
    assert sx(x.init) == ("array", (n(1.0), n(0.0)))
    assert x.bounds is None and not x.positive and not x.psd
    assert (u.kind, u.init) == (VarKind.CONTROL, None)
    assert [sx(b) for b in u.bounds] == [("neg", n(2)), n(2)]
    assert A.kind is VarKind.PARAM and [s.value for s in A.shape] == [2, 2]
    assert sx(A.init) == ("array", (("array", (n(1), v("dt"))), ("array", (n(0), n(1)))))
    assert goal.kind is VarKind.INPUT
    assert (q.kind, q.positive, q.psd) == (VarKind.LEARN, True, False)
    assert (r.shape, sx(r.init), r.positive) == ((), n(0.1), True)
    assert (Q.psd, Q.positive, Q.init) == (True, False, None)
    assert A.shape[1].span == Span(10, 12, 10, 13)


def test_dynamics(core):
    dyn = core.decls[9]
    assert (dyn.state, dyn.method) == ("x", None)
    assert dyn.state_span == Span(16, 10, 16, 11)
    assert sx(dyn.expr) == ("+", ("@", v("A"), v("x")), ("*", ("array", (n(0), v("dt"))), v("u")))


def test_costs(core):
    stage, effort, final = core.decls[10:13]
    assert (stage.when, stage.name) == (When.STAGE, None)
    assert (effort.when, effort.name) == (When.STAGE, "effort")
    assert (final.when, final.name) == (When.FINAL, None)
    assert sx(final.expr) == ("*", n(10), ("call", "sum", (("^", ("-", v("x"), v("goal")), n(2)),), ()))


def test_constraints_and_box(core):
    le, eq, ge, lo, hi = core.decls[13:18]
    assert (le.cmp, sx(le.lhs), sx(le.rhs)) == (Cmp.LE, ("index", v("x"), (n(1),)), n(3))
    assert eq.cmp is Cmp.EQ and sx(eq.lhs)[0] == "+"
    assert ge.cmp is Cmp.GE and sx(ge.rhs) == ("neg", n(1))
    # `e in [lo, hi]` is two constraints sharing the declaration's span
    assert (lo.cmp, sx(lo.rhs), hi.cmp, sx(hi.rhs)) == (Cmp.GE, ("neg", n(5)), Cmp.LE, n(5))
    assert sx(lo.lhs) == sx(hi.lhs) == ("index", v("x"), (("slice", n(0), n(1)),))
    assert lo.span == hi.span == Span(23, 1, 23, 29)


def test_solve_options(core):
    solve = core.decls[-1]
    assert solve.solver == "ilqr" and solve.positional == ()
    assert [(k.name, sx(k.value)) for k in solve.options] == [("iters", n(50)), ("tol", n(1e-6))]
    assert solve.options[1].span == Span(24, 22, 24, 30)


@pytest.mark.parametrize("text, solver, options, positional", [
    ("solve lqr", "lqr", [], []),
    ("solve qp()", "qp", [], []),
    ("solve ilqr(backward=unroll)", "ilqr", [("backward", v("unroll"))], []),
    ("solve ilqr(5, tol=0.1)", "ilqr", [("tol", n(0.1))], [n(5)]),
])
def test_solve_forms(text, solver, options, positional):
    decl = parse_text(text).decls[0]
    assert decl.solver == solver
    assert [(k.name, sx(k.value)) for k in decl.options] == options
    assert [sx(p) for p in decl.positional] == positional


def test_sizes_may_name_consts():
    decl = parse_text("state e[n] = 0\nparam M[n, 3] = 1\n").decls
    assert [s.value for s in decl[0].shape] == ["n"]
    assert [s.value for s in decl[1].shape] == ["n", 3]
    assert decl[1].shape[0].span == Span(2, 9, 2, 10)


def test_bounds_then_init_then_modifiers():
    (decl,) = parse_text("learn w[2] = [1, 2] positive\n").decls
    assert decl.positive and sx(decl.init) == ("array", (n(1), n(2)))
    (decl,) = parse_text("state s in [0, 1] = 0.5\n").decls
    assert [sx(b) for b in decl.bounds] == [n(0), n(1)] and sx(decl.init) == n(0.5)


def test_continuous_dynamics_parse():
    (decl,) = parse_text("dynamics dot(x) = -x by rk4(dt)\n").decls
    assert decl.state == "x" and sx(decl.expr) == ("neg", v("x"))
    assert sx(decl.method) == ("call", "rk4", (v("dt"),), ())


def test_no_header_no_doc():
    plan = parse_text("horizon 3\n")
    assert plan.name is None and plan.doc is None and len(plan.decls) == 1


def test_multiline_doc_string():
    plan = parse_text('plan p\n"""First line.\n\n   # not a comment\n   Last line."""\nhorizon 3\n')
    assert plan.doc == "First line.\n\n   # not a comment\n   Last line."
    assert plan.decls[0].span.line == 6


# ------------------------------------------------------ layout and comments

def test_comments_blank_lines_and_no_final_newline():
    text = "# a comment\n\n   # indented comment\nplan p   # trailing\n\n\nhorizon 3 # three\nsolve lqr"
    plan = parse_text(text)
    assert plan.name == "p"
    assert [type(d).__name__ for d in plan.decls] == ["HorizonDecl", "SolveDecl"]
    assert plan.decls[1].span == Span(8, 1, 8, 10)


def test_crlf_line_endings_parse_the_same():
    assert [sx(d.expr) for d in parse_text(CORE.replace("\n", "\r\n")).decls if hasattr(d, "expr")] == \
        [sx(d.expr) for d in parse_text(CORE).decls if hasattr(d, "expr")]


def test_multiline_bracketed_expressions():
    text = ("param M[2, 2] = [[1, 2],   # first row\n"
            "                 [3, 4]]   # second row\n"
            "cost stage = sum(\n"
            "    q * (x\n"
            "         - goal)^2\n"
            ")\n"
            "horizon 3\n")
    M, cost, horizon = parse_text(text).decls
    assert sx(M.init) == ("array", (("array", (n(1), n(2))), ("array", (n(3), n(4)))))
    assert M.span == Span(1, 1, 2, 25) and M.init.span == Span(1, 17, 2, 25)
    assert sx(cost.expr) == ("call", "sum", (("*", v("q"), ("^", ("-", v("x"), v("goal")), n(2))),), ())
    assert cost.span == Span(3, 1, 6, 2)
    assert horizon.span.line == 7


def test_newline_outside_brackets_ends_a_declaration():
    with pytest.raises(PlanError) as info:
        parse_text("cost stage = x +\n  y\n")
    assert info.value.diagnostics[0].span.line == 1


# ----------------------------------------------------- expressions

@pytest.mark.parametrize("text, expected", [
    ("-x^2", ("neg", ("^", v("x"), n(2)))),
    ("-x * y", ("*", ("neg", v("x")), v("y"))),
    ("a @ b * c", ("*", ("@", v("a"), v("b")), v("c"))),
    ("a * b @ c", ("@", ("*", v("a"), v("b")), v("c"))),
    ("a / b @ c * d", ("*", ("@", ("/", v("a"), v("b")), v("c")), v("d"))),
    ("a - b - c", ("-", ("-", v("a"), v("b")), v("c"))),
    ("a - b + c", ("+", ("-", v("a"), v("b")), v("c"))),
    ("a + b * c", ("+", v("a"), ("*", v("b"), v("c")))),
    ("(a + b) * c", ("*", ("+", v("a"), v("b")), v("c"))),
    ("a ^ b ^ c", ("^", v("a"), ("^", v("b"), v("c")))),
    ("2 ^ -x", ("^", n(2), ("neg", v("x")))),
    ("a - -b", ("-", v("a"), ("neg", v("b")))),
    ("+a", ("pos", v("a"))),
    ("x[0]^2", ("^", ("index", v("x"), (n(0),)), n(2))),
    ("-x[0]", ("neg", ("index", v("x"), (n(0),)))),
    ("(x - g)^2", ("^", ("-", v("x"), v("g")), n(2))),
    ("f(x)[1]", ("index", ("call", "f", (v("x"),), ()), (n(1),))),
    ("M[1][0]", ("index", ("index", v("M"), (n(1),)), (n(0),))),
    ("A @ x + [0, dt] * u", ("+", ("@", v("A"), v("x")), ("*", ("array", (n(0), v("dt"))), v("u")))),
])
def test_precedence_and_associativity(text, expected):
    assert sx(expr_of(text)) == expected


@pytest.mark.parametrize("text, indices", [
    ("x[0]", (n(0),)),
    ("x[0:2]", (("slice", n(0), n(2)),)),
    ("x[:2]", (("slice", None, n(2)),)),
    ("x[1:]", (("slice", n(1), None),)),
    ("x[:]", (("slice", None, None),)),
    ("M[0, 1:3]", (n(0), ("slice", n(1), n(3)))),
    ("M[n - 1, :k]", (("-", v("n"), n(1)), ("slice", None, v("k")))),
    ("x[-1]", (("neg", n(1)),)),
])
def test_indexing_and_slices(text, indices):
    e = expr_of(text)
    assert isinstance(e, ast.Index) and sx(e)[2] == indices


@pytest.mark.parametrize("text, value, is_int", [
    ("7", 7.0, True), ("1.5", 1.5, False), (".25", 0.25, False), ("3.", 3.0, False),
    ("1e-3", 1e-3, False), ("2.5E+2", 250.0, False),
])
def test_numbers(text, value, is_int):
    assert sx(expr_of(text)) == ("num", value, is_int)


def test_calls_arrays_and_pi():
    assert sx(expr_of("clip(u, -1, 1)")) == ("call", "clip", (v("u"), ("neg", n(1)), n(1)), ())
    assert sx(expr_of("eye(2)")) == ("call", "eye", (n(2),), ())
    assert sx(expr_of("dot(a, b)")) == ("call", "dot", (v("a"), v("b")), ())
    assert sx(expr_of("f()")) == ("call", "f", (), ())
    assert sx(expr_of("g(x, k=2)")) == ("call", "g", (v("x"),), (("k", n(2)),))
    assert sx(expr_of("[[1], [pi]]")) == ("array", (("array", (n(1),)), ("array", (v("pi"),))))


def test_expression_spans():
    text = "const k = (x - g)^2 * 3 + f(a, [b, c])[0]\n"
    e = parse_text(text).decls[0].value
    assert e.span == Span(1, 11, 1, 42)
    pow_ = e.left.left
    assert pow_.span == Span(1, 11, 1, 20)             # starts at the '('
    assert pow_.left.span == Span(1, 12, 1, 17)        # the parenthesized difference itself
    index = e.right
    assert index.span == Span(1, 27, 1, 42) and index.base.span == Span(1, 27, 1, 39)
    assert text_at(text, index.base.args[1].span) == "[b, c]"


def test_parser_is_built_once():
    assert _parser() is _parser()


def test_to_text_round_trips(core):
    for decl in core.decls:
        for e in (getattr(decl, "expr", None), getattr(decl, "init", None), getattr(decl, "lhs", None)):
            if e is not None:
                assert sx(expr_of(ast.to_text(e))) == sx(e)


# ------------------------------------------------ random expressions

NAMES = ("x", "u", "goal", "A", "dt", "q_1", "pi", "in_", "stage_x")
CALLS = ("sum", "dot", "quad", "clip", "f", "cat", "eye")
NUMBERS = ("0", "7", "42", "1.5", ".25", "3.", "1e-3", "2.5E+2")
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "@": 2, "^": 4}


def _leaf():
    return st.one_of(st.sampled_from(NAMES).map(v),
                     st.sampled_from(NUMBERS).map(lambda t: ("num", float(t), t.isdigit())))


def _tree(children):
    index_item = st.one_of(children, st.tuples(st.just("slice"), st.none() | children, st.none() | children))
    return st.one_of(
        st.tuples(st.sampled_from(list(_PREC)), children, children),
        st.tuples(st.sampled_from(["neg", "pos"]), children),
        st.tuples(st.just("call"), st.sampled_from(CALLS), st.lists(children, max_size=3).map(tuple),
                  st.lists(st.tuples(st.sampled_from(["k", "tol"]), children), max_size=1, unique_by=lambda kv: kv[0])
                  .map(tuple)),
        st.tuples(st.just("array"), st.lists(children, min_size=1, max_size=3).map(tuple)),
        st.tuples(st.just("index"), children, st.lists(index_item, min_size=1, max_size=2).map(tuple)),
    )


TREES = st.recursive(_leaf(), _tree, max_leaves=12)


def _prec(t) -> int:
    if t[0] in _PREC:
        return _PREC[t[0]]
    return {"neg": 3, "pos": 3, "index": 5}.get(t[0], 6)


def render(t, rng: random.Random) -> str:
    """Print a tree with the fewest parentheses; random line breaks and comments inside brackets."""
    def sep() -> str:
        return rng.choice([", ", ", ", ",\n    ", ",  # note\n  "])

    def at_least(sub, need: int) -> str:
        text = go(sub)
        return f"({text})" if _prec(sub) < need else text

    def go(t) -> str:
        kind = t[0]
        if kind == "num":
            value, is_int = t[1], t[2]
            return next(s for s in NUMBERS if float(s) == value and s.isdigit() == is_int)
        if kind == "name":
            return t[1]
        if kind in ("+", "-"):
            return f"{at_least(t[1], 1)} {kind} {at_least(t[2], 2)}"
        if kind in ("*", "/", "@"):
            return f"{at_least(t[1], 2)} {kind} {at_least(t[2], 3)}"
        if kind == "^":
            return f"{at_least(t[1], 5)} ^ {at_least(t[2], 3)}"
        if kind in ("neg", "pos"):
            return ("-" if kind == "neg" else "+") + at_least(t[1], 3)
        if kind == "call":
            args = [go(a) for a in t[2]] + [f"{k}={go(val)}" for k, val in t[3]]
            return f"{t[1]}(" + sep().join(args) + ")"
        if kind == "array":
            return "[" + sep().join(go(i) for i in t[1]) + "]"
        if kind == "index":
            items = [f"{'' if i[1] is None else go(i[1])}:{'' if i[2] is None else go(i[2])}"
                     if i[0] == "slice" else go(i) for i in t[2]]
            return at_least(t[1], 5) + "[" + sep().join(items) + "]"
        raise AssertionError(t)

    return go(t)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=TREES, rng=st.randoms(use_true_random=False))
def test_random_expressions_round_trip(tree, rng):
    text = render(tree, rng)
    source = f"const k = {text}\n"
    e = parse_text(source).decls[0].value
    assert sx(e) == tree, text
    # every sub-expression's span covers exactly its own text, and lies within its parent's
    for node in ast.walk(e):
        if isinstance(node, (ast.Slice, ast.Keyword)):
            continue
        piece = text_at(source, node.span)
        assert sx(expr_of(f"({piece})")) == sx(node), (text, piece)
        assert (e.span.line, e.span.col) <= (node.span.line, node.span.col)
        assert (node.span.end_line, node.span.end_col) <= (e.span.end_line, e.span.end_col)
