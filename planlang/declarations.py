"""Declaration kinds: one class per keyword, collected in `DECLARATIONS`, the only list of them.

A declaration kind says how its AST node becomes a graph node (id, kind, declared name, main
expression, extra attributes), which of its expressions are *values* (every name there must
resolve, and each is an edge of the graph) and which are *options* (solver and block settings
such as `backward=implicit(cg, iters=20)`: a name there is a symbol unless it names a declared
value, and a typed schema validates it later), and how it prints. The graph builder, the
resolve pass and the dumps go through this registry instead of switching on AST types.
"""
from __future__ import annotations

from enum import Enum
from typing import Callable

from planlang import ast


class NodeKind(Enum):
    PLAN = "plan"
    CONST = "const"
    HORIZON = "horizon"
    STATE = "state"
    CONTROL = "control"
    PARAM = "param"
    INPUT = "input"
    LEARN = "learn"
    LET = "let"
    DYNAMICS = "dynamics"
    COST = "cost"
    CONSTRAINT = "constraint"
    GUESS = "guess"
    BLOCK = "block"
    CONTINUAL = "continual"
    TRAIN = "train"
    ENV = "env"
    GRID = "grid"
    ACTIONS = "actions"
    AGENTS = "agents"
    ENERGY = "energy"
    SOLVE = "solve"


Ordinal = Callable[[str], str]      # prefix -> "prefix#k", k counting from 1 per prefix


class Declaration:
    """How one kind of declaration parses and enters the graph. Subclasses override what differs.

    Core declarations are parsed by rules in `grammar.lark`; an extension declaration brings its
    own Lark `rule` (defining `<kind>_decl`, its keyword a string literal) and `build`s its AST
    node from the rule's children, so adding one touches this file only."""

    ast_type: type
    kind: NodeKind
    rule = ""

    @property
    def rule_name(self) -> str:
        return f"{self.kind.value}_decl"

    def build(self, span, children: list, token_span):
        """The AST node of a parsed `rule` (`token_span(tok)` locates a token)."""
        raise NotImplementedError(f"{type(self).__name__} is parsed by grammar.lark")
    local_names = False     # True: names in options may be the block's own (checked by its consumer)

    def node_id(self, decl, ordinal: Ordinal) -> str:
        return self.kind.value

    def name(self, decl) -> str | None:
        """The value or block name this declaration introduces (None: it introduces none)."""
        return None

    def expr(self, decl) -> ast.Expr | None:
        """The main expression (what dumps show as `= ...`)."""
        return None

    def values(self, decl) -> list[ast.Expr]:
        """Expressions whose names must all resolve to declared values."""
        expr = self.expr(decl)
        return [] if expr is None else [expr]

    def options(self, decl) -> list[ast.Expr]:
        """Option expressions: names are symbols unless they name a declared value."""
        return []

    def compile_time_names(self, decl) -> list[ast.Name]:
        """Names used where only compile-time constants are allowed (sizes, defaults)."""
        return []

    def attrs(self, decl) -> dict:
        return {}

    def text(self, decl) -> str:
        expr = self.expr(decl)
        return "" if expr is None else ast.to_text(expr)


class Variable(Declaration):
    ast_type = ast.VarDecl

    def __init__(self, kind: NodeKind):
        self.kind = kind

    def node_id(self, decl, ordinal):
        return f"{self.kind.value}:{decl.name}"

    def name(self, decl):
        return decl.name

    def expr(self, decl):
        return decl.init

    def values(self, decl):
        return [e for e in (decl.init, *(decl.bounds or ())) if e is not None]

    def compile_time_names(self, decl):
        sizes = [ast.Name(s.span, s.value) for s in decl.shape if isinstance(s.value, str)]
        return sizes + ast.names_in(decl.init)

    def attrs(self, decl):
        return {"shape": tuple(s.value if not s.offset else s.text for s in decl.shape)}


class Const(Declaration):
    ast_type, kind = ast.ConstDecl, NodeKind.CONST

    def node_id(self, decl, ordinal):
        return f"const:{decl.name}"

    def name(self, decl):
        return decl.name

    def expr(self, decl):
        return decl.value

    def compile_time_names(self, decl):
        return ast.names_in(decl.value)


class Horizon(Declaration):
    ast_type, kind = ast.HorizonDecl, NodeKind.HORIZON

    def expr(self, decl):
        return decl.value

    def compile_time_names(self, decl):
        return ast.names_in(decl.value)


class Let(Declaration):
    ast_type, kind = ast.LetDecl, NodeKind.LET
    rule = 'let_decl: "let" NAME "=" expr'

    def build(self, span, children, token_span):
        return ast.LetDecl(span, str(children[0]), children[1])

    def node_id(self, decl, ordinal):
        return f"let:{decl.name}"

    def name(self, decl):
        return decl.name

    def expr(self, decl):
        return decl.expr


class Dynamics(Declaration):
    ast_type, kind = ast.DynamicsDecl, NodeKind.DYNAMICS

    def node_id(self, decl, ordinal):
        return f"dynamics:{decl.state}"

    def expr(self, decl):
        return decl.expr

    def values(self, decl):
        method = [] if decl.method is None else list(decl.method.args) + [k.value for k in decl.method.keywords]
        return [decl.expr] + method

    def attrs(self, decl):
        return {"defines": decl.state}


class Cost(Declaration):
    ast_type, kind = ast.CostDecl, NodeKind.COST

    def node_id(self, decl, ordinal):
        return f"cost:{decl.name}" if decl.name else ordinal(f"cost:{decl.when.value}")

    def name(self, decl):
        return decl.name

    def expr(self, decl):
        return decl.expr

    def attrs(self, decl):
        return {"when": decl.when}


class Constraint(Declaration):
    ast_type, kind = ast.ConstraintDecl, NodeKind.CONSTRAINT

    def node_id(self, decl, ordinal):
        return ordinal("constraint")

    def values(self, decl):
        return [decl.lhs, decl.rhs]

    def text(self, decl):
        return f"{ast.to_text(decl.lhs)} {decl.cmp.value} {ast.to_text(decl.rhs)}"


class Guess(Declaration):
    ast_type, kind = ast.GuessDecl, NodeKind.GUESS
    rule = 'guess_decl: "guess" NAME "=" expr'

    def build(self, span, children, token_span):
        name, expr = children
        return ast.GuessDecl(span, str(name), token_span(name), expr)

    def node_id(self, decl, ordinal):
        return f"guess:{decl.target}"

    def expr(self, decl):
        return decl.expr

    def attrs(self, decl):
        return {"guesses": decl.target}


class Block(Declaration):
    ast_type, kind = ast.BlockDecl, NodeKind.BLOCK
    rule = 'block_decl: "block" NAME "=" call_expr'

    def build(self, span, children, token_span):
        return ast.BlockDecl(span, str(children[0]), children[1])

    def node_id(self, decl, ordinal):
        return f"block:{decl.name}"

    def name(self, decl):
        return decl.name

    def values(self, decl):
        return []

    def options(self, decl):
        return list(decl.spec.args) + [k.value for k in decl.spec.keywords]

    def text(self, decl):
        return ast.to_text(decl.spec)


class Continual(Declaration):
    ast_type, kind = ast.ContinualDecl, NodeKind.CONTINUAL
    rule = 'continual_decl: "continual" NAME "by" call_expr (PLUS call_expr)*'

    def build(self, span, children, token_span):
        name, *methods = children
        return ast.ContinualDecl(span, str(name), token_span(name), tuple(m for m in methods if isinstance(m, ast.Call)))

    def node_id(self, decl, ordinal):
        return f"continual:{decl.block}"

    def options(self, decl):
        return [a for m in decl.methods for a in list(m.args) + [k.value for k in m.keywords]]

    def attrs(self, decl):
        return {"block": decl.block}

    def text(self, decl):
        return " + ".join(ast.to_text(m) for m in decl.methods)


class Braced(Declaration):
    """`train { ... }` and `env "..." { ... }`: settings validated by their consumers' schemas."""

    ast_type = ast.BracedDecl
    local_names = True

    def __init__(self, kind: NodeKind):
        self.kind = kind
        # its own newline rule: sharing `_NL+` with the top level would let a setting's NAME shadow keywords
        self.rule = f'{kind.value}_decl: "{kind.value}" [STRING] "{{" (_NL | setting _NL)* "}}"'

    def build(self, span, children, token_span):
        label, *settings = children
        label = ast.String(token_span(label), str(label)[1:-1]) if label is not None else None
        return ast.BracedDecl(span, self.kind.value, label, tuple(settings))

    def options(self, decl):
        return [s.value for s in decl.settings if s.value is not None]

    def text(self, decl):
        label = f'"{decl.label.value}" ' if decl.label else ""
        body = "; ".join(s.name + ("" if s.value is None else " " + ast.to_text(s.value)) for s in decl.settings)
        return label + "{" + body + "}"


class Grid(Declaration):
    ast_type, kind = ast.GridDecl, NodeKind.GRID
    rule = 'grid_decl: "grid" size "x" size'

    def build(self, span, children, token_span):
        return ast.GridDecl(span, children[0], children[1])

    def compile_time_names(self, decl):
        return [ast.Name(s.span, s.value) for s in (decl.height, decl.width) if isinstance(s.value, str)]

    def attrs(self, decl):
        return {"shape": (decl.height.value, decl.width.value)}

    def text(self, decl):
        return f"{decl.height.value} x {decl.width.value}"


class Actions(Declaration):
    ast_type, kind = ast.ActionsDecl, NodeKind.ACTIONS
    rule = 'actions_decl: "actions" size'

    def build(self, span, children, token_span):
        return ast.ActionsDecl(span, children[0])

    def compile_time_names(self, decl):
        return [ast.Name(decl.count.span, decl.count.value)] if isinstance(decl.count.value, str) else []

    def text(self, decl):
        return str(decl.count.value)


class Agents(Declaration):
    ast_type, kind = ast.AgentsDecl, NodeKind.AGENTS
    rule = 'agents_decl: "agents" size'

    def build(self, span, children, token_span):
        return ast.AgentsDecl(span, children[0])

    def compile_time_names(self, decl):
        return [ast.Name(decl.count.span, decl.count.value)] if isinstance(decl.count.value, str) else []

    def text(self, decl):
        return str(decl.count.value)


class Energy(Declaration):
    """`energy agent = e` (unary) or `energy pair = e` (pairwise, reads `other.x`), optionally
    `stage` (the default: summed over t < T) or `final` (at x_T)."""

    ast_type, kind = ast.EnergyDecl, NodeKind.ENERGY
    rule = 'energy_decl: "energy" NAME [WHEN] "=" expr'

    def build(self, span, children, token_span):
        role, when, expr = children
        return ast.EnergyDecl(span, str(role), token_span(role), ast.When(str(when)) if when else ast.When.STAGE, expr)

    def node_id(self, decl, ordinal):
        return ordinal(f"energy:{decl.role}:{decl.when.value}")

    def expr(self, decl):
        return decl.expr

    def attrs(self, decl):
        return {"role": decl.role, "when": decl.when}

    def text(self, decl):
        return f"{decl.role} {decl.when.value} = {ast.to_text(decl.expr)}"


class Solve(Declaration):
    ast_type, kind = ast.SolveDecl, NodeKind.SOLVE

    def values(self, decl):
        return []

    def options(self, decl):
        return [k.value for k in decl.options] + list(decl.positional)

    def attrs(self, decl):
        return {"solver": decl.solver}

    def text(self, decl):
        opts = ", ".join(f"{k.name}={ast.to_text(k.value)}" for k in decl.options)
        return f"{decl.solver}({opts})" if opts else decl.solver


DECLARATIONS: tuple[Declaration, ...] = (
    *(Variable(NodeKind(k.value)) for k in ast.VarKind),
    Const(), Horizon(), Let(), Dynamics(), Cost(), Constraint(), Guess(), Block(), Continual(),
    Braced(NodeKind.TRAIN), Braced(NodeKind.ENV), Grid(), Actions(), Agents(), Energy(), Solve(),
)
_BY_KIND = {d.kind: d for d in DECLARATIONS}
VALUE_KINDS = frozenset({NodeKind.CONST, NodeKind.LET, *(NodeKind(k.value) for k in ast.VarKind)})


def declaration_of(decl) -> Declaration:
    """The declaration kind of an AST declaration."""
    if isinstance(decl, ast.VarDecl):
        return _BY_KIND[NodeKind(decl.kind.value)]
    if isinstance(decl, ast.BracedDecl):
        return _BY_KIND[NodeKind(decl.keyword)]
    for kind in DECLARATIONS:
        if isinstance(decl, kind.ast_type):
            return kind
    raise TypeError(f"no declaration kind for {type(decl).__name__}")


def extension_grammar() -> str:
    """The Lark rules of the extension declarations and `_extension_decl`, their alternation."""
    extensions = [d for d in DECLARATIONS if d.rule]
    return "\n".join([f"_extension_decl: {' | '.join(d.rule_name for d in extensions)}"]
                     + [d.rule for d in extensions]) + "\n"


def extension_keywords() -> tuple[str, ...]:
    return tuple(d.kind.value for d in DECLARATIONS if d.rule)


def kind_of(node_kind: NodeKind) -> Declaration:
    return _BY_KIND[node_kind]
