"""`continual BLOCK by METHOD(...) + METHOD(...)`: continual-learning methods on a learned block.

    block f = mlp(in=5, out=2, hidden=[64, 64])
    continual f by replay(capacity=500) + distill(weight=1)

Each method is a typed call (`Schema`), checked with located errors: the block must be a declared
block, each method known, each option of the right type and a method at most once per block (a
second `continual` line for the same block is a duplicate declaration, refused by the graph).
The result (`PlanInfo.continual`) maps the block's name to its methods as `Structured` values; `build_plugins` turns them into the runtime's plugins
(`runtime.continual`), which `PlanModule` keeps in `module.continual[BLOCK]` so that everything a
method remembers (Fisher, anchors, importances, replay buffer, old model) is in the module's
state_dict.

| method | options (defaults) | runtime |
|---|---|---|
| `ewc` | lambda (required), online=false, gamma=1, every (task-free: consolidate every k steps), window=256 | `EWC` |
| `si` | c (required), xi=1e-3 | `SI` |
| `distill` | temperature (none: regression, squared error), weight=1 | `Distill` |
| `replay` | capacity (required), policy=reservoir \\| ring \\| class_balanced \\| experience_balanced, ratio=1, seed=0 | `Replay` |
| `vcl` | beta=1, prior_sigma=1, init_sigma=0.1 | `VCL`; the block (a world model: its network) is a `bayes_mlp` |
| `progressive` | (none) | `Progressive`; the block (a world model: its network) is a `ProgressiveMLP` |

`vcl` and `progressive` are architecture methods: they decide how the block's layers are built
(`build_block`), so they apply to `mlp` blocks and `world_model(kind=mlp)` blocks (whose network
they build: `runtime.continual_world_model`), one per block, and they need task boundaries (a train
block with `task_free true` is refused). A `world_model(kind=ensemble)` block is refused: its M
members are independent networks with learned variances, and one Bayesian network or one set of
columns would replace the ensemble rather than continue it.
"""
from __future__ import annotations

from torch import nn

from compiler.blocks import BlockCallee, BlockError
from compiler.options import Number, Option, Schema, Structured, Symbol
from planlang import ast
from planlang.errors import Collector, did_you_mean
from runtime.continual import (ExampleBuffer, Plugins, ProgressiveMLP, bayes_mlp, distill, ewc, progressive, replay,
                               si, vcl)
from runtime.continual_world_model import NetworkWorldModel, feature_size

_FLAG = Symbol(("false", "true"))
_COUNT = Number(integer=True, minimum=1)
_NONNEG = Number(minimum=0)
METHODS = {
    "ewc": Schema(**{"lambda": Option(_NONNEG, None, "penalty strength (lambda/2 sum F (theta - anchor)^2)"),
                     "online": Option(_FLAG, "false", "online EWC (Schwarz 2018): one running Fisher"),
                     "gamma": Option(Number(minimum=0, maximum=1), 1.0, "decay of the running Fisher"),
                     "every": Option(_COUNT, None, "task-free: consolidate every k optimizer steps"),
                     "window": Option(_COUNT, 256, "task-free: examples the Fisher is computed on")}),
    "si": Schema(c=Option(_NONNEG, None, "penalty strength"),
                 xi=Option(Number(minimum=1e-300), 1e-3, "damping of the importance")),
    "distill": Schema(temperature=Option(Number(minimum=1e-300), None,
                                         "softmax temperature (classification); none: squared error"),
                      weight=Option(_NONNEG, 1.0, "weight of the distillation term")),
    "replay": Schema(capacity=Option(_COUNT, None, "examples kept"),
                     policy=Option(Symbol(ExampleBuffer.POLICIES), "reservoir", "which examples are kept"),
                     ratio=Option(_NONNEG, 1.0, "replayed examples per new example"),
                     seed=Option(Number(integer=True, minimum=0), 0, "seed of the buffer's sampling")),
    "vcl": Schema(beta=Option(_NONNEG, 1.0, "weight of KL(q || previous posterior) / N"),
                  prior_sigma=Option(Number(minimum=1e-300), 1.0, "standard deviation of the first task's prior"),
                  init_sigma=Option(Number(minimum=1e-300), 0.1, "initial standard deviation of the weights")),
    "progressive": Schema(),
}
REQUIRED = {"ewc": "lambda", "si": "c", "replay": "capacity"}
ARCHITECTURES = {"vcl": "Bayesian linear layers", "progressive": "a new column per task"}


def continual_methods(decls: list[ast.ContinualDecl], blocks: dict, const, errors: Collector
                      ) -> dict[str, tuple[Structured, ...]]:
    """Block name -> its methods, from every `continual` declaration; errors are located."""
    out: dict[str, tuple[Structured, ...]] = {}
    for decl in decls:
        if decl.block not in blocks:
            errors.add(decl.block_span, f"'{decl.block}' is not a block: `continual` applies to a learned block",
                       did_you_mean(decl.block, blocks) or "declare it with `block NAME = mlp(...)`")
            continue
        methods, seen = [], set()
        for call in decl.methods:
            if call.func in seen:
                errors.add(call.span, f"method '{call.func}' is given twice for block '{decl.block}'")
                continue
            seen.add(call.func)
            if call.func in ARCHITECTURES and not _architecture_fits(decl, call, blocks, seen, errors):
                continue
            method = _method(call, const, errors)
            if method is not None:
                methods.append(method)
        out[decl.block] = tuple(methods)
    return out


def _architecture_fits(decl: ast.ContinualDecl, call: ast.Call, blocks: dict, seen: set, errors: Collector) -> bool:
    """An architecture method builds the block's layers: an `mlp` or `world_model(kind=mlp)` block,
    one such method."""
    callee = blocks[decl.block]
    kind = callee.kind.name
    if kind == "world_model" and callee.options["kind"] != "mlp":
        errors.add(call.span, f"{call.func} builds block '{decl.block}' with {ARCHITECTURES[call.func]}: "
                   f"it needs a `world_model(kind=mlp)` block, not kind={callee.options['kind']} (an ensemble's "
                   "members are independent networks with learned variances; one network would replace them)",
                   "declare it with `world_model(kind=mlp, ...)`")
        return False
    if kind not in ("mlp", "world_model"):
        errors.add(call.span, f"{call.func} builds block '{decl.block}' with {ARCHITECTURES[call.func]}: "
                   f"it needs an `mlp` or `world_model(kind=mlp)` block, not a `{kind}` block",
                   "declare it with `block NAME = mlp(...)`")
        return False
    others = sorted(seen.intersection(ARCHITECTURES) - {call.func})
    if others:
        errors.add(call.span, f"{call.func} and {others[0]} both build block '{decl.block}': use one of them")
        return False
    return True


def check_task_boundaries(decls: list[ast.ContinualDecl], train: dict, errors: Collector) -> None:
    """Architecture methods act at task boundaries: a stream with `task_free true` is refused."""
    if not train.get("task_free"):
        return
    for decl in decls:
        for call in decl.methods:
            if call.func in ARCHITECTURES:
                errors.add(call.span, f"{call.func} needs task boundaries, and the train block says `task_free true`",
                           "set `task_free false`, or use replay / online ewc for a task-free stream")


def _method(call: ast.Call, const, errors: Collector) -> Structured | None:
    schema = METHODS.get(call.func)
    if schema is None:
        errors.add(call.span, f"unknown continual method '{call.func}'",
                   did_you_mean(call.func, METHODS) or "methods: " + ", ".join(METHODS))
        return None
    before = len(errors.diagnostics)
    values = schema.parse(call.keywords, const, errors, positional=call.args, owner=call.func)
    required = REQUIRED.get(call.func)
    if required is not None and values[required] is None:
        errors.add(call.span, f"{call.func} needs {required}=...", f"e.g. {call.func}({required}=...)")
    if call.func == "ewc" and values["every"] is not None and values["online"] != "true":
        errors.add(call.span, "ewc(every=...) consolidates without task boundaries: it needs online=true")
    return Structured(call.func, values) if len(errors.diagnostics) == before else None


def build_plugins(methods: tuple[Structured, ...]) -> Plugins:
    """The runtime plugins of a block's methods, composed in the declared order."""
    plugins = []
    for method in methods:
        a = method.args
        if method.name == "ewc":
            plugins.append(ewc(a["lambda"], online=a["online"] == "true", gamma=a["gamma"], every=a["every"],
                               window=a["window"]))
        elif method.name == "si":
            plugins.append(si(a["c"], a["xi"]))
        elif method.name == "distill":
            plugins.append(distill(a["temperature"], a["weight"]))
        elif method.name == "replay":
            plugins.append(replay(a["capacity"], a["policy"], a["ratio"], a["seed"]))
        elif method.name == "vcl":
            plugins.append(vcl(a["beta"]))
        elif method.name == "progressive":
            plugins.append(progressive())
        else:
            raise ValueError(f"unknown continual method '{method.name}' (methods: {', '.join(METHODS)})")
    return Plugins(plugins)


def build_block(callee: BlockCallee, methods: tuple[Structured, ...]) -> nn.Module:
    """The block's module: its kind's, unless an architecture method builds it (an `mlp` or
    `world_model(kind=mlp)` block, checked by `continual_methods`): `vcl` -> `bayes_mlp`
    (mean-field Gaussian weights), `progressive` -> `ProgressiveMLP` (one column to start, a column
    added per task); for a world model, as the network of a `NetworkWorldModel` (features F -> n)."""
    architecture = next((m for m in methods if m.name in ARCHITECTURES), None)
    if architecture is None:
        return callee.build()
    o = callee.options
    if callee.kind.name == "world_model":
        if "sizes" not in o:
            raise BlockError(callee.name, "a world_model block takes its sizes from its call, and it is never called")
        state, others = o["sizes"]
        network = _network(architecture, feature_size(state, others, o["angles"]), o["hidden"], state, o["act"], False)
        return NetworkWorldModel(state, others, network, residual=o["residual"] == "true", act=o["act"],
                                 angles=o["angles"])
    return _network(architecture, o["in"], o["hidden"], o["out"], o["act"], o["init"] == "zero")


def _network(architecture: Structured, inputs: int, hidden, outputs: int, act: str, zero_last: bool) -> nn.Module:
    if architecture.name == "vcl":
        a = architecture.args
        return bayes_mlp((inputs, *hidden, outputs), a["prior_sigma"], a["init_sigma"], act, zero_last)
    return ProgressiveMLP(inputs, hidden, outputs, act, zero_last)
