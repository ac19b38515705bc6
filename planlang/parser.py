"""Text -> `PlanAST`: a cached LALR parser with positions, and syntax errors in words."""
from __future__ import annotations

import functools
import threading
from pathlib import Path

import lark
from lark import Token, Transformer, v_args
from lark.lexer import PatternStr

from planlang import ast
from planlang.declarations import DECLARATIONS, extension_grammar, extension_keywords
from planlang.errors import Diagnostic, PlanError, did_you_mean
from planlang.source import Source, Span

GRAMMAR = Path(__file__).with_name("grammar.lark")
KEYWORDS = ("plan", "const", "horizon", "state", "control", "param", "input", "learn",
            "dynamics", "cost", "constraint", "solve") + extension_keywords()
_OPEN = {"(": ")", "[": "]"}
_CLOSE = {v: k for k, v in _OPEN.items()}


class _BracketPostLexer:
    """Drops newlines inside `( )` and `[ ]` and reports unbalanced brackets by position.

    One instance serves the cached parser in every thread, so the per-parse bracket stack lives
    in thread-local storage: a parse runs in one thread, start to end.
    """

    always_accept = ("_NL",)

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def open(self) -> list[Token]:
        """The brackets open at the last token this thread's parse handed to the parser."""
        return getattr(self._local, "open", [])

    def process(self, stream):
        stack = self._local.open = []
        for tok in stream:
            if tok.value in _OPEN:
                stack.append(tok)
            elif tok.value in _CLOSE:
                if not stack or _OPEN[stack[-1].value] != tok.value:
                    raise _bracket_error(tok, stack)
                stack.pop()
            elif tok.type == "_NL" and stack:
                continue
            yield tok
        if stack:
            opener = stack[-1]
            raise PlanError(Diagnostic(_token_span(opener), f"unclosed bracket '{opener.value}'",
                                       f"add the matching '{_OPEN[opener.value]}'"))


def _bracket_error(tok: Token, stack: list[Token]) -> PlanError:
    if not stack:
        return PlanError(Diagnostic(_token_span(tok), f"unmatched closing bracket '{tok.value}'",
                                    "remove it or add the opening bracket"))
    opener = stack[-1]
    return PlanError(Diagnostic(
        _token_span(tok), f"'{tok.value}' does not close '{opener.value}' opened at {opener.line}:{opener.column}",
        f"expected '{_OPEN[opener.value]}'"))


def _token_span(tok: Token) -> Span:
    return Span(tok.line, tok.column, tok.end_line or tok.line, tok.end_column or tok.column + len(tok))


@functools.lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    return lark.Lark(GRAMMAR.read_text() + extension_grammar(), parser="lalr", lexer="contextual",
                     propagate_positions=True, postlex=_BracketPostLexer(), maybe_placeholders=True)


def parse(source: Source) -> ast.PlanAST:
    """Parse a whole `.plan` source; raises `PlanError` with a located, worded message."""
    text = source.text if source.text.endswith("\n") else source.text + "\n"
    try:
        tree = _parser().parse(text)
    except PlanError as err:
        raise err.with_source(source) from None
    except lark.exceptions.UnexpectedInput as err:
        raise PlanError(_unclosed_bracket(err) or _describe(err, text), source) from None
    try:
        return _ToAST().transform(tree)
    except lark.exceptions.VisitError as err:             # a located error raised while building the AST
        if isinstance(err.orig_exc, PlanError):
            raise err.orig_exc.with_source(source) from None
        raise


# ------------------------------------------------------------ syntax messages

def _unclosed_bracket(err: lark.exceptions.UnexpectedInput) -> Diagnostic | None:
    """A bracket left open on an earlier line swallows the following lines: say so."""
    opened = _parser().options.postlex.open
    if opened and getattr(err, "line", 0) > opened[-1].line:
        opener = opened[-1]
        return Diagnostic(_token_span(opener), f"unclosed bracket '{opener.value}'",
                          f"add the matching '{_OPEN[opener.value]}'")
    return None


def _describe(err: lark.exceptions.UnexpectedInput, text: str) -> Diagnostic:
    """Turn a Lark parser state into words: missing `=`, unknown keyword, unexpected token."""
    if isinstance(err, lark.exceptions.UnexpectedCharacters):
        char = text[err.pos_in_stream]
        span = Span(err.line, err.column, err.line, err.column + 1)
        if char == "'":
            return Diagnostic(span, "unexpected quote '", "strings use double quotes: \"...\"")
        if char == '"':
            return Diagnostic(span, "unclosed string", "a string ends with \" on the same line")
        return Diagnostic(span, f"unexpected character '{char}'", "")
    tok: Token = err.token
    expected = set(err.interactive_parser.accepts()) if isinstance(err, lark.exceptions.UnexpectedToken) else set()
    if tok.type == "$END":
        line = text.rstrip("\n").count("\n") + 1
        col = len(text.rstrip("\n").split("\n")[-1]) + 1
        return Diagnostic(Span(line, col, line, col + 1), "unexpected end of file", _expected_words(expected))
    span = _token_span(tok)
    shown = "end of line" if tok.type == "_NL" else f"'{tok.value}'"
    at_line_start = tok.type == "NAME" and text.split("\n")[tok.line - 1][: tok.column - 1].strip() == ""
    if at_line_start and tok.type == "NAME":
        hint = did_you_mean(tok.value, KEYWORDS) or f"a line starts with one of: {', '.join(KEYWORDS)}"
        return Diagnostic(span, f"unknown keyword '{tok.value}'", hint)
    if "EQUAL" in expected and tok.type in {"LSQB", "LPAR", "NUMBER", "NAME", "MINUS"}:
        return Diagnostic(span, f"missing '=' before {shown}", "a declaration reads `name = expression`")
    if "PRIME" in expected:
        return Diagnostic(span, f"expected ' after the state name, found {shown}",
                          "dynamics read `x' = expression` (x' is the state at t+1)")
    if tok.type == "NAME" and ({"POSITIVE", "PSD"} & expected):
        hint = did_you_mean(tok.value, ["positive", "psd"])
        if hint:
            return Diagnostic(span, f"unknown modifier '{tok.value}'", hint)
    if tok.type == "PRIME":
        return Diagnostic(span, "unexpected quote '", "strings use double quotes: \"...\"; x' is the state at t+1 "
                                                      "only on the left of a dynamics line")
    if tok.type == "_NL":
        return Diagnostic(span, "unexpected end of line", _expected_words(expected))
    return Diagnostic(span, f"unexpected {shown}", _expected_words(expected))


def _expected_words(expected: set[str]) -> str:
    if not expected:
        return ""
    terminals = {t.name: t for t in _parser().terminals}
    words = []
    for name in sorted(expected - {"$END"}):
        term = terminals.get(name)
        if name == "_NL":
            words.append("end of line")
        elif term is not None and isinstance(term.pattern, PatternStr):
            words.append(f"'{term.pattern.value}'")
        else:
            words.append({"NAME": "a name", "NUMBER": "a number", "INT": "an integer", "CMP": "'<=', '>=' or '=='",
                          "VAR_KIND": "a declaration keyword", "WHEN": "'stage' or 'final'",
                          "DOCSTRING": "a doc string", "STRING": "a string"}.get(name, name.lower()))
    return "expected " + (words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1])


# ----------------------------------------------------------- tree -> AST

def _span(meta) -> Span:
    return Span(meta.line, meta.column, meta.end_line, meta.end_column)


@v_args(meta=True)
class _ToAST(Transformer):
    """Builds frozen AST nodes; every node gets the span Lark propagated."""

    def start(self, meta, decls):
        name = next((d[1] for d in decls if isinstance(d, tuple) and d[0] == "plan"), None)
        doc = next((d[1] for d in decls if isinstance(d, tuple) and d[0] == "doc"), None)
        body = []
        for d in decls:
            if isinstance(d, list):
                body.extend(d)
            elif not isinstance(d, tuple):
                body.append(d)
        return ast.PlanAST(_span(meta) if not meta.empty else Span(1, 1, 1, 1), name, doc, tuple(body))

    # headers
    def plan_header(self, meta, children):
        return ("plan", str(children[0]))

    def docstring(self, meta, children):
        return ("doc", str(children[0])[3:-3].strip())

    # declarations
    def const_decl(self, meta, children):
        return ast.ConstDecl(_span(meta), str(children[0]), children[1])

    def horizon_decl(self, meta, children):
        return ast.HorizonDecl(_span(meta), children[0])

    def var_decl(self, meta, children):
        kind, name, shape, bounds, init, *mods = children
        mods = {str(m) for m in mods}
        return ast.VarDecl(_span(meta), ast.VarKind(str(kind)), str(name), shape or (), init, bounds,
                           positive="positive" in mods, psd="psd" in mods)

    def init(self, meta, children):
        return children[0]

    def shape(self, meta, children):
        return tuple(children)

    def size(self, meta, children):
        tok = children[0]
        offset = int(children[2]) if len(children) == 3 else 0
        return ast.Size(_token_span(tok), int(tok) if tok.type == "INT" else str(tok), offset)

    def bounds(self, meta, children):
        return (children[0], children[1])

    def modifier(self, meta, children):
        return children[0]

    def discrete_dynamics(self, meta, children):
        name, _prime, expr = children
        return ast.DynamicsDecl(_span(meta), str(name), _token_span(name), expr)

    def continuous_dynamics(self, meta, children):
        name, expr, method = children
        return ast.DynamicsDecl(_span(meta), str(name), _token_span(name), expr, method)

    def cost_decl(self, meta, children):
        when, name, expr = children
        return ast.CostDecl(_span(meta), ast.When(str(when)), str(name) if name else None, expr)

    def compare_constraint(self, meta, children):
        lhs, cmp, rhs = children
        return ast.ConstraintDecl(_span(meta), lhs, ast.Cmp(str(cmp)), rhs)

    def box_constraint(self, meta, children):
        expr, lo, hi = children
        span = _span(meta)
        return [ast.ConstraintDecl(span, expr, ast.Cmp.GE, lo), ast.ConstraintDecl(span, expr, ast.Cmp.LE, hi)]

    def solve_decl(self, meta, children):
        name, *args = children
        args = [a for a in args if a is not None]
        return ast.SolveDecl(_span(meta), str(name), tuple(a for a in args if isinstance(a, ast.Keyword)),
                             tuple(a for a in args if not isinstance(a, ast.Keyword)))

    def setting(self, meta, children):
        name, value = children
        return ast.Setting(_span(meta), str(name), value)

    # expressions
    def string(self, meta, children):
        return ast.String(_span(meta), str(children[0])[1:-1])

    def attribute(self, meta, children):
        base, name = children
        return ast.Attribute(_span(meta), base, str(name))

    def number(self, meta, children):
        tok = children[0]
        return ast.Number(_span(meta), float(tok), is_int=tok.isdigit())

    def name(self, meta, children):
        return ast.Name(_span(meta), str(children[0]))

    def binary(self, meta, children):
        left, op, right = children
        return ast.Binary(_span(meta), ast.BinOp(str(op)), left, right)

    def unary(self, meta, children):
        op, operand = children
        return ast.Unary(_span(meta), ast.UnOp(str(op)), operand)

    def array(self, meta, children):
        return ast.Array(_span(meta), tuple(children))

    def index(self, meta, children):
        base, *indices = children
        return ast.Index(_span(meta), base, tuple(indices))

    def point(self, meta, children):
        return children[0]

    def slice(self, meta, children):
        start, _colon, stop = children
        return ast.Slice(_span(meta), start, stop)

    def call_expr(self, meta, children):
        name, *args = children
        args = [a for a in args if a is not None]
        return ast.Call(_span(meta), str(name), tuple(a for a in args if not isinstance(a, ast.Keyword)),
                        tuple(a for a in args if isinstance(a, ast.Keyword)))

    def method_call(self, meta, children):
        """`NAME.method(args)`: a call of block NAME's method (func NAME, method set)."""
        base, method, *args = children
        if not isinstance(base, ast.Name):
            raise PlanError(Diagnostic(_span(meta), f"a method call `.{method}(...)` is made on a block's name",
                                       f"e.g. `dyn.{method}(x, u)` for `block dyn = world_model(...)`"))
        args = [a for a in args if a is not None]
        return ast.Call(_span(meta), base.id, tuple(a for a in args if not isinstance(a, ast.Keyword)),
                        tuple(a for a in args if isinstance(a, ast.Keyword)), method=str(method))

    def positional(self, meta, children):
        return children[0]

    def keyword(self, meta, children):
        return ast.Keyword(_span(meta), str(children[0]), children[1])


def _extension_builder(declaration):
    """A transformer method that hands an extension rule's children to its declaration class."""
    def build(self, meta, children):
        return declaration.build(_span(meta), children, _token_span)
    return v_args(meta=True)(build)


for _declaration in DECLARATIONS:
    if _declaration.rule:
        setattr(_ToAST, _declaration.rule_name, _extension_builder(_declaration))
