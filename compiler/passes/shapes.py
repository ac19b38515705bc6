"""Pass 2, shapes: fold constants, resolve declared sizes, and type every expression.

Builds the typed IR (`compiler.ir.Expr`) of each declaration with static shapes (NumPy
broadcasting; `@` as in NumPy for vectors and matrices), and checks: defaults broadcast to
their declared shapes, `x' = e` has the shape of x, costs are scalars, constraint sides
broadcast. Results: node attribute `ir` (and `sense` for constraints) and `graph.graph['plan_info']`.

Range checks (each a located error): every number and every folded constant is finite; sizes,
indices and the horizon are integers in range; and three limits keep a plan from exhausting
memory before it is solved:

- `MAX_ELEMENTS`: a declared tensor, a constant or any expression holds at most 10^7 numbers
  (80 MB in float64);
- `MAX_HORIZON`: at most 10^6 stages (the solvers loop over stages in Python);
- `MAX_STAGE_DATA`: horizon * (n + m)^2 <= 10^8, where n and m count the state and control
  numbers: the stage Hessians C (B, T, n+m, n+m) alone take 800 MB per batch element in
  float64 at that size, and the solvers hold several tensors of that size (`solve qp` about ten).
"""
from __future__ import annotations

import math

import networkx as nx
import torch

from compiler.blocks import BLOCK_KINDS, BlockCallee, PythonBlock
from compiler.context import AgentsInfo, GridInfo, PlanInfo, VarInfo
from compiler.latent_block import block_kind
from compiler.continual_block import check_task_boundaries, continual_methods
from compiler.envs import env_spec
from compiler.train_block import train_settings
from compiler.evaluate import evaluate
from compiler.functions import FUNCTIONS, ShapeError, broadcast, format_shape
from compiler.ir import STAGE, STAGE_INDEX, Expr, Op, Shape, VarRef
from compiler.options import ConstLookup
from compiler.passes import PassResult, annotate
from planlang import ast
from compiler.integrators import INTEGRATORS
from planlang.errors import Collector, did_you_mean
from planlang.graph import NodeKind

NAME = "shapes"
_F64 = torch.zeros((), dtype=torch.float64)
MAX_ELEMENTS = 10**7
MAX_HORIZON = 10**6
MAX_STAGE_DATA = 10**8
_BINARY = {ast.BinOp.ADD: Op.ADD, ast.BinOp.SUB: Op.SUB, ast.BinOp.MUL: Op.MUL, ast.BinOp.DIV: Op.DIV,
           ast.BinOp.POW: Op.POW, ast.BinOp.MATMUL: Op.MATMUL}


class Located(Exception):
    def __init__(self, span, message, hint=""):
        self.span, self.message, self.hint = span, message, hint


def run(graph: nx.DiGraph) -> PassResult:
    info = PlanInfo()
    errors = Collector()
    typer = Typer(info)
    modified = False

    for node in _const_order(graph):
        data = graph.nodes[node]
        try:
            value = typer.const_value(data["decl"].value)
        except Located as err:
            errors.add(err.span, err.message, err.hint)
            continue
        info.consts[data["name"]] = value
    try:
        if "grid" in graph:
            info.grid = _grid(graph, typer)
        else:
            info.horizon = _horizon(graph, typer)
    except Located as err:
        errors.add(err.span, err.message, err.hint)
    for node, data in graph.nodes(data=True):
        if data["kind"] is NodeKind.BLOCK:
            callee = _block(data["decl"], constant_lookup(info), errors)
            if callee is not None:
                info.blocks[callee.name] = callee

    for node, data in graph.nodes(data=True):
        if data["kind"] in (NodeKind.STATE, NodeKind.CONTROL, NodeKind.PARAM, NodeKind.INPUT, NodeKind.LEARN):
            try:
                info.variables[data["name"]] = typer.variable(node, data["decl"])
            except Located as err:
                errors.add(err.span, err.message, err.hint)
    errors.raise_if_any()
    if info.grid is not None:
        _check_grid_inputs(graph, info, errors)
    else:
        _check_stage_data(graph, info, errors)
    errors.raise_if_any()

    continual = [d["decl"] for _, d in graph.nodes(data=True) if d["kind"] is NodeKind.CONTINUAL]
    if continual:
        info.continual = continual_methods(continual, info.blocks, constant_lookup(info), errors)
    typer.lets = {d["name"]: d["decl"] for _, d in graph.nodes(data=True) if d["kind"] is NodeKind.LET}
    typer.step = _time_step(graph, typer)
    if "train" in graph:
        info.train = train_settings(graph.nodes["train"]["decl"], constant_lookup(info), errors)
        check_task_boundaries(continual, info.train, errors)
    if "env" in graph:
        info.env = env_spec(graph.nodes["env"]["decl"], info, lambda scope: _scoped(typer, scope), errors)
    for node, data in graph.nodes(data=True):
        decl = data["decl"]
        try:
            if data["kind"] is NodeKind.LET:
                modified |= annotate(graph, node, "ir", typer.let(decl.name), _fp)
            elif data["kind"] is NodeKind.GUESS:
                info.guesses[decl.target] = typer.guess(decl)
                modified |= annotate(graph, node, "ir", info.guesses[decl.target], _fp)
            elif data["kind"] is NodeKind.DYNAMICS:
                modified |= annotate(graph, node, "ir", typer.dynamics(decl), _fp)
                modified |= annotate(graph, node, "integrator", typer.integrator(decl))
            elif data["kind"] is NodeKind.COST and info.grid is not None:
                modified |= annotate(graph, node, "ir", typer.cell_cost(decl), _fp)
            elif data["kind"] is NodeKind.COST:
                modified |= annotate(graph, node, "ir", typer.cost(decl), _fp)
                _check_final_cost(decl, data["ir"])
            elif data["kind"] is NodeKind.ENERGY:
                modified |= annotate(graph, node, "ir", typer.energy(decl, "agents" in graph), _fp)
            elif data["kind"] is NodeKind.CONSTRAINT:
                ir, sense = typer.constraint(decl)
                _check_state_constraint_data(ir, info)
                modified |= annotate(graph, node, "ir", ir, _fp)
                modified |= annotate(graph, node, "sense", sense)
        except Located as err:
            errors.add(err.span, err.message, err.hint)
    for data in (d for _, d in graph.nodes(data=True) if d["kind"] in (NodeKind.STATE, NodeKind.CONTROL, NodeKind.PARAM,
                                                                            NodeKind.INPUT, NodeKind.LEARN)):
        var = info.variables.get(data["name"])
        if var is not None:
            data["shape"] = var.shape
    errors.raise_if_any()
    if "agents" in graph:
        try:
            info.agents = _agents(graph, typer)
        except Located as err:
            errors.add(err.span, err.message, err.hint)
    _check_one_integrator(graph, errors)
    errors.raise_if_any()
    old = graph.graph.get("plan_info")
    graph.graph["plan_info"] = info
    return PassResult(graph, modified or old is None)


def constant_lookup(info: PlanInfo) -> ConstLookup:
    """The value of a scalar constant expression (numbers, `const` names, arithmetic), or None."""
    typer = Typer(info)

    def lookup(expr: ast.Expr) -> float | None:
        if any(isinstance(e, (ast.String, ast.Attribute)) or (isinstance(e, ast.Call) and e.func not in FUNCTIONS)
               for e in ast.walk(expr)):
            return None
        try:
            value = typer.const_value(expr)
        except Located:
            return None
        return float(value.item()) if value.numel() == 1 else None
    return lookup


def _block(decl: ast.BlockDecl, const: ConstLookup, errors: Collector) -> BlockCallee | None:
    """The callee of `block name = kind(options)`; bad kinds and options go to `errors`."""
    spec = decl.spec
    kind = block_kind(spec)
    if kind is None:
        errors.add(spec.span, f"unknown block kind '{spec.func}'",
                   did_you_mean(spec.func, BLOCK_KINDS) or "block kinds: " + ", ".join(BLOCK_KINDS))
        return None
    keywords, extra = spec.keywords, ()
    if isinstance(kind, PythonBlock):      # other keywords go to the user's constructor
        keywords = tuple(k for k in spec.keywords if k.name in kind.schema.options)
        extra = tuple(k for k in spec.keywords if k.name not in kind.schema.options)
    before = len(errors.diagnostics)
    options = kind.schema.parse(keywords, const, errors, positional=spec.args, owner=f"{spec.func}()")
    missing = [name for name, value in options.items() if value is None]
    if missing:
        errors.add(spec.span, f"block '{decl.name}' needs " + ", ".join(f"{m}=..." for m in missing),
                   f"e.g. `block {decl.name} = {spec.func}(in=4, out=2)`")
    if extra:
        options["kwargs"] = {k.name: _literal(k.value, const, errors) for k in extra}
    return None if len(errors.diagnostics) > before else BlockCallee(decl.name, kind, options)


def _literal(expr: ast.Expr, const: ConstLookup, errors: Collector):
    """A constructor argument for a user's block: a number, string, symbol or list of them."""
    if isinstance(expr, ast.String):
        return expr.value
    if isinstance(expr, ast.Array):
        return [_literal(i, const, errors) for i in expr.items]
    value = const(expr)
    if value is not None:
        return int(value) if value == int(value) else value
    if isinstance(expr, ast.Name):
        return expr.id
    errors.add(expr.span, "block arguments must be numbers, strings, names or lists of them")
    return None


def _scoped(typer: "Typer", scope: PlanInfo) -> "Typer":
    """A typer over another scope that still sees the plan's `let` definitions."""
    local = Typer(scope)
    local.lets = typer.lets
    return local


def _check_final_cost(decl: ast.CostDecl, ir: Expr) -> None:
    """`cost final` sees states only (through `let` definitions too), at t = T: no stage index."""
    controls = sorted(r.name for r in ir.variables() if r.kind is ast.VarKind.CONTROL)
    if decl.when is ast.When.FINAL and controls:
        raise Located(decl.expr.span, f"cost final sees states only, but this uses control '{controls[0]}' "
                                      "(through a `let`)", "move this term to a `cost stage` line")
    stage = ir.first_stage_value()
    if decl.when is ast.When.FINAL and stage is not None:
        raise Located(stage.span, "cost final holds at x_T, after the last stage: it has no stage index t",
                      "use the last row explicitly: ref[T] for data declared [T+1, ...] (ref[T-1] for [T, ...])")


def _no_stage_values(typed: Expr, what: str) -> Expr:
    """Defaults, bounds and guesses are not stage expressions: they cannot read t."""
    stage = typed.first_stage_value()
    if stage is not None:
        raise Located(stage.span, f"{what} cannot read the stage index t (only dynamics, `cost stage` and "
                                  "constraint lines are evaluated per stage)",
                      "write a constraint line for a time-varying bound, e.g. `constraint u <= umax[t]`")
    return typed


def _check_state_constraint_data(ir: Expr, info: PlanInfo) -> None:
    """A constraint on states only holds at x_1..x_T, so its t runs 1..T: its data needs T+1 rows."""
    if any(r.kind is ast.VarKind.CONTROL for r in ir.variables()):
        return
    for e in ir.walk():
        if e.op is Op.VAR and e.attr.kind is STAGE and e.attr.name != STAGE_INDEX:
            rows = info.variables[e.attr.name].shape[0]
            if rows != info.horizon + 1:
                raise Located(e.span, f"a constraint on states only holds at x_1..x_T (t = 1..T), but "
                                      f"'{e.attr.name}' has {rows} rows", "declare it [T+1, ...] (row t is x_t's)")


def _time_step(graph: nx.DiGraph, typer: "Typer") -> float | None:
    """The step of `time` = t * dt: the integrator's step of continuous dynamics, else `const dt`."""
    for _, data in sorted(graph.nodes(data=True), key=lambda item: item[0]):
        if data["kind"] is NodeKind.DYNAMICS and data["decl"].method is not None:
            try:
                method = typer.integrator(data["decl"])
            except Located:
                return None            # reported where the dynamics are typed
            return None if method is None else method[1]
    dt = typer.info.consts.get("dt")
    return float(dt) if dt is not None and dt.numel() == 1 else None


def _fp(expr) -> str:
    return expr.as_text() if isinstance(expr, Expr) else repr(expr)


def _check_one_integrator(graph: nx.DiGraph, errors: Collector) -> None:
    """All states advance together: all discrete (`x' = ...`) or all `dot(x) = ... by` one integrator."""
    dynamics = sorted((d["span"].line, d["integrator"], d["decl"]) for _, d in graph.nodes(data=True)
                      if d["kind"] is NodeKind.DYNAMICS)
    if not dynamics:
        return
    first = dynamics[0][1]
    for _, method, decl in dynamics[1:]:
        if method != first:
            describe = lambda m: "discrete (x' = ...)" if m is None else f"dot(...) by {m[0]}({m[1]:g})"
            errors.add(decl.span, f"all dynamics must advance the same way: this one is {describe(method)}, "
                                  f"the first is {describe(first)}", "use one integrator and step for every state")


def _grid(graph: nx.DiGraph, typer: "Typer") -> "GridInfo":
    """`grid H x W` and `actions 4 | 8` (default 8), and the map inputs a grid plan reads."""
    decl = graph.nodes["grid"]["decl"]
    shape = (typer.size(decl.height), typer.size(decl.width))
    actions = 8
    if "actions" in graph:
        count = graph.nodes["actions"]["decl"].count
        actions = typer.size(count)
        if actions not in (4, 8):
            raise Located(count.span, f"a grid plan moves in 4 or 8 directions, got actions {actions}",
                          "actions 4 (N, S, E, W) or actions 8 (with the diagonals)")
    if min(shape) < 2:
        raise Located(decl.span, f"a grid needs at least 2 x 2 cells, got {shape[0]} x {shape[1]}")
    return GridInfo(shape, actions)


def _check_grid_inputs(graph: nx.DiGraph, info: PlanInfo, errors: Collector) -> None:
    """Grid plans read `input occupancy[H, W]`, `input goal[2]` and `input start[2]`."""
    want = {"occupancy": info.grid.shape, "goal": (2,), "start": (2,)}
    for name, shape in want.items():
        var = info.variables.get(name)
        if var is None or var.ref.kind is not ast.VarKind.INPUT:
            errors.add(graph.nodes["grid"]["span"], f"a grid plan declares `input {name}[{', '.join(map(str, shape))}]`",
                       "occupancy is 1 on obstacles; goal and start are (row, col) cells")
        elif var.shape != shape:
            errors.add(graph.nodes[var.node]["span"],
                       f"'{name}' of this grid plan has shape {format_shape(shape)}, got {format_shape(var.shape)}")


def _check_stage_data(graph: nx.DiGraph, info: PlanInfo, errors: Collector) -> None:
    """horizon * (n + m)^2 <= MAX_STAGE_DATA (see the module docstring)."""
    width = sum(v.size for v in info.variables.values() if v.ref.is_decision)
    if info.horizon * width ** 2 > MAX_STAGE_DATA:
        errors.add(graph.nodes["horizon"]["decl"].value.span,
                   f"horizon {info.horizon} with {width} states and controls is too large: horizon * (n + m)^2 = "
                   f"{info.horizon * width ** 2:.3g} exceeds the limit {MAX_STAGE_DATA:.0e}",
                   "the solvers keep (n + m) x (n + m) matrices for every stage; shorten the horizon")


def _agents(graph: nx.DiGraph, typer: "Typer") -> AgentsInfo:
    """`agents N` (N >= 2) and the plan's typed energies; joint plans are not grid plans and
    have constraints only as control boxes (the proposals keep to them)."""
    count = graph.nodes["agents"]["decl"].count
    agents = typer.size(count)
    if agents < 2:
        raise Located(count.span, f"a multi-agent plan needs at least 2 agents, got {agents}")
    if "grid" in graph:
        raise Located(graph.nodes["agents"]["span"], "`agents` plans move states by dynamics; a grid plan has none")
    for _, data in graph.nodes(data=True):
        if data["kind"] is NodeKind.CONSTRAINT:
            raise Located(data["span"], "a multi-agent plan takes no `constraint` lines",
                          "write the condition as an energy (e.g. a hinge penalty) or a control box")
    terms = {(role, when): [] for role in ("agent", "pair") for when in ("stage", "final")}
    for _, data in sorted(graph.nodes(data=True), key=lambda item: item[0]):
        if data["kind"] is NodeKind.ENERGY:
            terms[data["role"], data["when"].value].append(data["ir"])
    return AgentsInfo(agents, *(tuple(terms[key]) for key in (("agent", "stage"), ("agent", "final"),
                                                              ("pair", "stage"), ("pair", "final"))))


def _whole(value: torch.Tensor) -> int | None:
    """The value of a one-element tensor if it is a finite integer, else None."""
    if value.numel() != 1:
        return None
    v = value.item()
    return int(v) if math.isfinite(v) and v == int(v) else None


def _const_order(graph: nx.DiGraph) -> list[str]:
    """The consts in an order that evaluates each after the ones it uses; ties in source order,
    so that the order (and what is printed from it) is the same on every run."""
    consts = [n for n, d in graph.nodes(data=True) if d["kind"] is NodeKind.CONST]
    span = lambda n: (graph.nodes[n]["span"].line, graph.nodes[n]["span"].col)
    return list(nx.lexicographical_topological_sort(graph.subgraph(consts), key=span))


def _horizon(graph: nx.DiGraph, typer: "Typer") -> int:
    decl = graph.nodes["horizon"]["decl"]
    value = _whole(typer.const_value(decl.value))
    if value is None or value < 1:
        raise Located(decl.value.span, "the horizon must be a positive integer", "e.g. `horizon 30`")
    if value > MAX_HORIZON:
        raise Located(decl.value.span, f"the horizon {value} exceeds the limit {MAX_HORIZON:.0e}",
                       "the solvers loop over stages; shorten the horizon or coarsen the time step")
    return value


class Typer:
    """AST expressions -> typed IR, with constant folding and shape checks."""

    def __init__(self, info: PlanInfo):
        self.info = info
        self.lets: dict[str, ast.LetDecl] = {}      # `let` declarations, typed on first use
        self.other = False                           # `other.x` allowed (inside `energy pair`)
        self.step: float | None = None              # dt of `time` = t * dt (see `_time_step`)

    def let(self, name: str) -> Expr:
        """The typed expression of `let name = ...` (memoized; cycles were rejected by resolve)."""
        if name not in self.info.lets:
            self.info.lets[name] = self.expr(self.lets[name].expr)
        return self.info.lets[name]

    def guess(self, decl: ast.GuessDecl) -> Expr:
        """`guess u = e` / `guess x = e`: e has the variable's shape (one value for every stage) or
        a per-stage shape: [T, *shape] for a control, [T+1, *shape] for a state (the nodes of
        multiple shooting; node 0 is the initial state)."""
        var = self.info.variables.get(decl.target)
        if var is None or var.ref.kind not in (ast.VarKind.CONTROL, ast.VarKind.STATE):
            raise Located(decl.target_span, f"`guess` sets the initial value of a control or a state; "
                                            f"'{decl.target}' is neither")
        typed = _no_stage_values(self.expr(decl.expr), "a guess")
        if any(r.is_decision for r in typed.variables()):
            raise Located(decl.expr.span, "a guess cannot depend on states or controls",
                          "use numbers, consts, params and inputs")
        stages = self.info.horizon + (var.ref.kind is ast.VarKind.STATE)
        per_stage = (stages,) + var.shape
        for target in (var.shape, per_stage):
            try:
                if broadcast(typed.shape, target) == target:
                    return typed
            except ShapeError:
                pass
        raise Located(decl.expr.span, f"guess has shape {format_shape(typed.shape)}; '{decl.target}' is "
                                      f"{format_shape(var.shape)} (or {format_shape(per_stage)} per stage)")

    # ----------------------------------------------------------- declarations
    def const_value(self, expr: ast.Expr) -> torch.Tensor:
        typed = self.expr(expr)
        if typed.op is not Op.CONST:
            raise Located(expr.span, "expected a compile-time constant", "use numbers and `const` names")
        return typed.attr

    def size(self, size: ast.Size) -> int:
        if isinstance(size.value, int):
            value = size.value
        else:
            const = self.info.consts.get(size.value)
            value = None if const is None else _whole(const)
            if const is None and size.value == "T" and self.info.grid is None:
                value = self.info.horizon                       # the horizon: time-indexed data
            if value is None:
                raise Located(size.span, f"size '{size.value}' must be an integer const",
                              "or T, the horizon (`input ref[T, 2]`, `[T+1, n]` for data per state)")
            value += size.offset
        if value < 1:
            raise Located(size.span, "sizes must be positive")
        if value > MAX_ELEMENTS:
            raise Located(size.span, f"size {value} exceeds the limit of {MAX_ELEMENTS:.0e} elements")
        return value

    def variable(self, node: str, decl: ast.VarDecl) -> VarInfo:
        shape = tuple(self.size(s) for s in decl.shape)
        if math.prod(shape) > MAX_ELEMENTS:
            raise Located(decl.span, f"{decl.kind.value} '{decl.name}' has {math.prod(shape):.3g} elements, "
                                      f"more than the limit {MAX_ELEMENTS:.0e}")
        ref = VarRef(decl.kind, decl.name)
        if decl.kind in (ast.VarKind.STATE, ast.VarKind.CONTROL) and len(shape) > 1:
            raise Located(decl.span, f"{decl.kind.value} '{decl.name}' must be a scalar or a vector, got {format_shape(shape)}",
                           "declare it as a vector, e.g. `state x[4]`")
        if decl.psd and (len(shape) != 2 or shape[0] != shape[1]):
            raise Located(decl.span, f"`psd` needs a square matrix, got {format_shape(shape)}", f"declare e.g. `{decl.name}[n, n]`")
        if (decl.psd or decl.positive) and decl.kind is not ast.VarKind.LEARN:
            raise Located(decl.span, "`positive` and `psd` apply to `learn` declarations",
                           "params and inputs are given by the caller")
        if decl.kind is ast.VarKind.PARAM and decl.init is None:
            raise Located(decl.span, f"param '{decl.name}' needs a value", f"write `param {decl.name} = ...`")
        per_stage = bool(decl.shape) and decl.shape[0].value == "T" and "T" not in self.info.consts
        var = VarInfo(ref, node, shape, positive=decl.positive, psd=decl.psd, per_stage=per_stage)
        if decl.init is not None:
            var.default = self._fitting(_no_stage_values(self.expr(decl.init), "a default"), shape,
                                        decl.init.span, "default")
            value = var.default.attr.broadcast_to(shape)
            if decl.positive and not bool((value > 0).all()):
                raise Located(decl.init.span, "a `positive` learnable needs a positive initial value")
            if decl.psd and not bool((torch.linalg.eigvalsh(0.5 * (value + value.T)) > 0).all()):
                raise Located(decl.init.span, "a `psd` learnable needs a symmetric positive definite initial value")
        if decl.bounds is not None:
            if decl.kind not in (ast.VarKind.STATE, ast.VarKind.CONTROL):
                raise Located(decl.span, "`in [lo, hi]` bounds apply to states and controls")
            var.lower = self._fitting(_no_stage_values(self.expr(decl.bounds[0]), "a bound"), shape,
                                      decl.bounds[0].span, "lower bound")
            var.upper = self._fitting(_no_stage_values(self.expr(decl.bounds[1]), "a bound"), shape,
                                      decl.bounds[1].span, "upper bound")
        return var

    def _fitting(self, typed: Expr, shape: Shape, span, what: str) -> Expr:
        try:
            if broadcast(typed.shape, shape) != shape:
                raise ShapeError
        except ShapeError:
            raise Located(span, f"{what} has shape {format_shape(typed.shape)}, but the declaration is {format_shape(shape)}") from None
        return typed

    def dynamics(self, decl: ast.DynamicsDecl) -> Expr:
        typed = self.expr(decl.expr)
        target = self.info.variables[decl.state].shape
        if typed.shape != target:
            try:
                ok = broadcast(typed.shape, target) == target
            except ShapeError:
                ok = False
            if not ok:
                raise Located(decl.expr.span, f"dynamics of '{decl.state}' has shape {format_shape(typed.shape)}, "
                                               f"but '{decl.state}' is {format_shape(target)}")
        return typed

    def integrator(self, decl: ast.DynamicsDecl) -> tuple[str, float] | None:
        """(`rk4` | `euler`, dt) of continuous dynamics; None for discrete ones."""
        method = decl.method
        if method is None:
            return None
        if method.func not in INTEGRATORS:
            raise Located(method.span, f"unknown integrator '{method.func}'",
                           did_you_mean(method.func, INTEGRATORS) or "integrators: " + ", ".join(INTEGRATORS))
        if len(method.args) != 1 or method.keywords:
            raise Located(method.span, f"{method.func}() takes the step: `by {method.func}(dt)`")
        dt = self.const_value(method.args[0])
        if dt.numel() != 1 or not float(dt) > 0:
            raise Located(method.args[0].span, "the integration step must be a positive constant")
        return method.func, float(dt)

    def cell_cost(self, decl: ast.CostDecl) -> Expr:
        """A grid plan's cost: the cost of entering each cell, a map [H, W] (or one number)."""
        typed = self.expr(decl.expr)
        if typed.shape not in ((), self.info.grid.shape):
            raise Located(decl.expr.span, f"a grid plan's cost is a map {format_shape(self.info.grid.shape)} "
                                          f"(the cost of entering each cell), got {format_shape(typed.shape)}")
        return typed

    def cost(self, decl: ast.CostDecl) -> Expr:
        typed = self.expr(decl.expr)
        if typed.shape != ():
            raise Located(decl.expr.span, f"a cost must be a scalar, got shape {format_shape(typed.shape)}",
                           "reduce it, e.g. sum(...) or norm(...)")
        return typed

    def energy(self, decl: ast.EnergyDecl, has_agents: bool) -> Expr:
        """`energy agent|pair [stage|final] = e`: a scalar; `other.NAME` only in pair energies,
        controls (own or other's) not in final ones."""
        if not has_agents:
            raise Located(decl.span, "`energy` lines belong to multi-agent plans", "declare the agents: `agents 4`")
        if decl.role not in ("agent", "pair"):
            raise Located(decl.role_span, f"an energy is `energy agent = ...` (unary) or `energy pair = ...` "
                                          f"(pairwise), got '{decl.role}'", did_you_mean(decl.role, ("agent", "pair")))
        self.other = decl.role == "pair"
        try:
            typed = self.expr(decl.expr)
        finally:
            self.other = False
        if typed.shape != ():
            raise Located(decl.expr.span, f"an energy must be a scalar, got shape {format_shape(typed.shape)}",
                          "reduce it, e.g. sum(...) or norm(...)")
        controls = sorted(r.name for r in typed.variables() if r.kind is ast.VarKind.CONTROL)
        if decl.when is ast.When.FINAL and controls:
            raise Located(decl.expr.span, f"energy {decl.role} final sees states only, but this uses control "
                                          f"'{controls[0]}'", "move this term to a stage energy")
        return typed

    def _attribute(self, e: ast.Attribute) -> Expr:
        """`other.NAME`: the other agent's state, control or input in a pairwise energy."""
        if not (isinstance(e.base, ast.Name) and e.base.id == "other"):
            raise Located(e.span, "the only attribute is `other.NAME` (the other agent in `energy pair`)")
        if not self.other:
            raise Located(e.span, f"`other.{e.name}` reads the other agent of a pairwise energy; it is only "
                                  "available in `energy pair = ...`", "declare `agents N` and an `energy pair` line")
        var = self.info.variables.get(e.name)
        if var is None or var.ref.kind not in (ast.VarKind.STATE, ast.VarKind.CONTROL, ast.VarKind.INPUT):
            per_agent = [v.ref.name for v in self.info.variables.values()
                         if v.ref.kind in (ast.VarKind.STATE, ast.VarKind.CONTROL, ast.VarKind.INPUT)]
            raise Located(e.span, f"`other.{e.name}`: each agent has its own states, controls and inputs, and "
                                  f"'{e.name}' is none of them", did_you_mean(e.name, per_agent) or "")
        return Expr(Op.VAR, (), var.shape, e.span, VarRef(var.ref.kind, f"other.{e.name}"))

    def constraint(self, decl: ast.ConstraintDecl):
        lhs, rhs = self.expr(decl.lhs), self.expr(decl.rhs)
        if decl.cmp is ast.Cmp.GE:
            lhs, rhs = rhs, lhs
        shape = self._broadcast(decl.span, lhs.shape, rhs.shape)
        return Expr(Op.SUB, (lhs, rhs), shape, decl.span), (ast.Cmp.EQ if decl.cmp is ast.Cmp.EQ else ast.Cmp.LE)

    # ------------------------------------------------------------ expressions
    def expr(self, e: ast.Expr) -> Expr:
        typed = self._expr(e)
        if math.prod(typed.shape) > MAX_ELEMENTS:
            raise Located(e.span, f"this expression has shape {format_shape(typed.shape)}, more elements than the "
                                   f"limit {MAX_ELEMENTS:.0e}")
        if typed.op is not Op.CONST and all(a.op is Op.CONST for a in typed.args) and typed.op is not Op.VAR:
            try:
                value = evaluate(typed, {}, _F64)
            except (ValueError, RuntimeError) as err:
                raise Located(e.span, f"cannot evaluate constant expression: {err}") from None
            return Expr(Op.CONST, (), typed.shape, e.span, _finite(value[0], e.span))
        return typed

    def _expr(self, e) -> Expr:
        if isinstance(e, ast.Number):
            if not math.isfinite(e.value):
                raise Located(e.span, "number out of range: it overflows float64 (largest about 1.8e308)")
            return Expr(Op.CONST, (), (), e.span, torch.tensor(e.value, dtype=torch.float64))
        if isinstance(e, ast.Name):
            return self._name(e)
        if isinstance(e, ast.Unary):
            operand = self.expr(e.operand)
            return operand if e.op is ast.UnOp.POS else Expr(Op.NEG, (operand,), operand.shape, e.span)
        if isinstance(e, ast.Binary):
            left, right = self.expr(e.left), self.expr(e.right)
            op = _BINARY[e.op]
            shape = _matmul_shape(e, left.shape, right.shape) if op is Op.MATMUL else \
                self._broadcast(e.span, left.shape, right.shape)
            return Expr(op, (left, right), shape, e.span)
        if isinstance(e, ast.Call):
            return self._call(e)
        if isinstance(e, ast.Array):
            items = [self.expr(i) for i in e.items]
            first = items[0].shape
            for item, src in zip(items, e.items):
                if item.shape != first:
                    raise Located(src.span, f"array items must have equal shapes: {format_shape(item.shape)} vs {format_shape(first)}")
            return Expr(Op.STACK, tuple(items), (len(items),) + first, e.span)
        if isinstance(e, ast.Index):
            return self._index(e)
        if isinstance(e, ast.Attribute):
            return self._attribute(e)
        raise Located(e.span, f"unsupported expression {type(e).__name__}")

    def _name(self, e: ast.Name) -> Expr:
        if e.id == "pi":
            return Expr(Op.CONST, (), (), e.span, torch.tensor(math.pi, dtype=torch.float64))
        if e.id in self.lets:
            return self.let(e.id)
        if e.id in self.info.consts:
            value = self.info.consts[e.id]
            return Expr(Op.CONST, (), tuple(value.shape), e.span, value)
        var = self.info.variables.get(e.id)
        if var is None and e.id == "other":
            raise Located(e.span, "`other` is the other agent of `energy pair`: read its values as `other.x`")
        if var is None:
            return self._builtin_name(e)
        return Expr(Op.VAR, (), var.shape, e.span, var.ref)

    def _declared(self, name: str) -> bool:
        return name in self.lets or name in self.info.consts or name in self.info.variables

    def _builtin_name(self, e: ast.Name) -> Expr:
        """`T` (the horizon), `t` (the stage index) and `time` (t * dt), unless declared."""
        if e.id == "T" and self.info.grid is None:
            return Expr(Op.CONST, (), (), e.span, torch.tensor(float(self.info.horizon), dtype=torch.float64))
        t = Expr(Op.VAR, (), (), e.span, VarRef(STAGE, STAGE_INDEX))
        if e.id == STAGE_INDEX:
            return t
        if e.id == "time":
            if self.step is None:
                raise Located(e.span, "`time` is t * dt, but the plan has no step dt",
                              "declare `const dt = ...` (or integrate the dynamics `by rk4(dt)`), or use t")
            dt = Expr(Op.CONST, (), (), e.span, torch.tensor(self.step, dtype=torch.float64))
            return Expr(Op.MUL, (t, dt), (), e.span)
        raise Located(e.span, f"'{e.id}' is not available here")

    def _broadcast(self, span, *shapes: Shape) -> Shape:
        try:
            return broadcast(*shapes)
        except ShapeError as err:
            raise Located(span, f"shape mismatch: {err}", "elementwise operations follow NumPy broadcasting") from None

    def _call(self, e: ast.Call) -> Expr:
        fn = self._method(e) if e.method is not None else self.info.blocks.get(e.func) or FUNCTIONS[e.func]
        if e.keywords:
            raise Located(e.keywords[0].span, f"{e.func}() takes no keyword arguments")
        if not fn.min_args <= len(e.args) <= fn.max_args:
            want = str(fn.min_args) if fn.min_args == fn.max_args else f"{fn.min_args} to {fn.max_args}"
            raise Located(e.span, f"{e.func}() takes {want} argument(s), got {len(e.args)}")
        args = [self.expr(a) for a in e.args]
        if fn.fold is not None:
            reals = []
            for arg, src in zip(args[:fn.fold_reals], e.args):
                if arg.op is not Op.CONST or arg.shape != ():
                    raise Located(src.span, f"{e.func}() takes a constant number here")
                reals.append(float(arg.attr))
            sizes = []
            for arg, src in zip(args[fn.fold_reals:], e.args[fn.fold_reals:]):
                size = _whole(arg.attr) if arg.op is Op.CONST else None
                if size is None or size < 1:
                    raise Located(src.span, f"{e.func}() takes positive integer constants" +
                                  (" for its count" if fn.fold_reals else ""))
                sizes.append(size)
            count = math.prod(sizes) * (sizes[0] if e.func == "eye" else 1)
            if count > MAX_ELEMENTS:
                raise Located(e.span, f"{e.func}() would make more elements than the limit {MAX_ELEMENTS:.0e}")
            value = fn.fold(*reals, *sizes)
            return Expr(Op.CONST, (), tuple(value.shape), e.span, value)
        try:
            shape = fn.shape([a.shape for a in args], [])
        except ShapeError as err:
            raise Located(e.span, f"shape mismatch in {fn.name if e.method else e.func}(): {err}") from None
        return Expr(Op.CALL, tuple(args), shape, e.span, fn)

    def _method(self, e: ast.Call):
        """The callee of `block.method(...)` (e.g. a world model's `dyn.reward(x, u)`)."""
        block = self.info.blocks.get(e.func)
        if block is None:
            raise Located(e.span, f"'{e.func}.{e.method}(...)': '{e.func}' is not a block (or its declaration has "
                                  "errors, above); methods are called on blocks",
                          "e.g. `dyn.reward(x, u)` for `block dyn = world_model(..., reward=true)`")
        try:
            return block.method(e.method)
        except ShapeError as err:
            raise Located(e.span, f"block '{e.func}': {err}") from None

    def _index(self, e: ast.Index) -> Expr:
        first = e.indices[0]
        if isinstance(first, ast.Name) and first.id == STAGE_INDEX and not self._declared(STAGE_INDEX):
            row = self._stage_row(e)
            return row if len(e.indices) == 1 else self._indexed(row, e.indices[1:], e.span)
        return self._indexed(self.expr(e.base), e.indices, e.span)

    def _stage_row(self, e: ast.Index) -> Expr:
        """`name[t]`: row t of time-indexed data (an input, param or learnable with T or T+1 rows)."""
        name = e.base.id if isinstance(e.base, ast.Name) and not (e.base.id in self.lets or
                                                                   e.base.id in self.info.consts) else None
        var = self.info.variables.get(name) if name else None
        if var is None or var.ref.is_decision:
            raise Located(e.base.span, "`[t]` reads the row of time-indexed data: an input, param or learnable "
                                       "declared with a leading T (or T+1)", "e.g. `input ref[T, 2]` and `ref[t]`")
        T = self.info.horizon
        if not var.shape or var.shape[0] not in (T, T + 1):
            raise Located(e.span, f"'{name}' has shape {format_shape(var.shape)}; indexing it by t needs a leading "
                                  f"dimension T = {T} (or T+1 = {T + 1})", f"declare it e.g. `{var.ref.kind.value} "
                                                                          f"{name}[T, ...]`")
        return Expr(Op.VAR, (), var.shape[1:], e.span, VarRef(STAGE, name))

    def _indexed(self, base: Expr, indices, span) -> Expr:
        if len(indices) > len(base.shape):
            raise Located(span, f"too many indices: {len(indices)} for shape {format_shape(base.shape)}")
        index, shape = [], []
        for axis, item in enumerate(indices):
            size = base.shape[axis]
            if isinstance(item, ast.Slice):
                start = self._int(item.start, 0, size)
                stop = self._int(item.stop, size, size)
                if not 0 <= start < stop <= size:
                    raise Located(item.span, f"slice {start}:{stop} is empty or out of range for size {size}")
                index.append(slice(start, stop))
                shape.append(stop - start)
            else:
                i = self._int(item, None, size)
                if not 0 <= i < size:
                    raise Located(item.span, f"index {i} is out of range for size {size}",
                                   self._rows_hint(base, axis, size) or f"valid indices are 0..{size - 1}")
                index.append(i)
        shape += base.shape[len(indices):]
        return Expr(Op.INDEX, (base,), tuple(shape), span, tuple(index))

    def _rows_hint(self, base: Expr, axis: int, size: int) -> str:
        """For the time axis of time-indexed data: which rows exist."""
        var = self.info.variables.get(base.attr.name) if base.op is Op.VAR and axis == 0 else None
        if var is None or not var.per_stage:
            return ""
        last = "T-1" if size == self.info.horizon else "T"
        return f"'{var.ref.name}' has rows 0..{size - 1} (0..{last}, horizon T = {self.info.horizon})"

    def _int(self, e, default, size: int) -> int:
        if e is None:
            return default
        value = self.expr(e)
        i = _whole(value.attr) if value.op is Op.CONST else None
        if i is None and value.first_stage_value() is not None:
            raise Located(e.span, "the stage index t indexes the first axis of time-indexed data, by itself",
                          "write ref[t] (or ref[t, 0]); for the next row declare another input")
        if i is None:
            raise Located(e.span, "indices must be integer constants")
        return i + size if i < 0 else i


def _finite(value: torch.Tensor, span) -> torch.Tensor:
    """A folded constant, which must be finite (1/0, log(0), exp(1000) are errors, not values)."""
    if not bool(torch.isfinite(value).all()):
        bad = value[~torch.isfinite(value)].flatten()[0].item()
        raise Located(span, f"this constant expression evaluates to {bad} (not a finite number)",
                       "a plan's constants, defaults and bounds must be finite")
    return value


def _matmul_shape(e: ast.Binary, a: Shape, b: Shape) -> Shape:
    if not a or not b or len(a) > 2 or len(b) > 2:
        raise Located(e.span, f"@ needs vectors or matrices, got {format_shape(a)} @ {format_shape(b)}",
                       "use * for scalar or elementwise products")
    inner_a, inner_b = a[-1], b[0]
    if inner_a != inner_b:
        raise Located(e.span, f"shape mismatch in @: {format_shape(a)} @ {format_shape(b)} (inner sizes {inner_a} and {inner_b} differ)")
    return a[:-1] + b[1:]
