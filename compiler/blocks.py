"""Neural blocks: `block f = mlp(in=6, out=4, hidden=[64, 64])`, callable in expressions.

A block kind (mlp, linear, conv, python) states its option schema, the shape rule of a call and
how it builds its `nn.Module`. A declared block becomes a `BlockCallee`, which speaks the same
callee protocol as the builtins (`compiler.functions.Function`: `shape`, `degree`, `smooth`), so
the shape pass, classification and lowering treat `f(x, u)` like `sin(x)`; it differs in that
its value needs the bound module (`apply(module, *args)`) and it has no second-order jets
(solvers that need exact polynomial forms reject it; iLQR differentiates it by autodiff).

Vector blocks (mlp, linear, python) flatten and concatenate their arguments, so `f(x, u)` feeds
[x; u] (B, in) and returns (B, out), shape [out] (a scalar when out = 1). `conv` takes maps: each
argument [H, W] (one channel) or [C, H, W], stacked on channels; it returns [out, H, W] ([H, W]
when out = 1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from compiler.functions import ShapeError, format_shape
from compiler.ir import Shape
from compiler.options import ListOf, Number, Option, Schema, Symbol, Text
from runtime.neural import ACTIVATIONS, MLP, Conv, import_module_class
from runtime.world_model import WorldModel

_INT = Number(integer=True, minimum=1)
_ACT = Symbol(tuple(ACTIVATIONS))


@dataclass(frozen=True)
class BlockRef:
    """The key under which a block's bound module is found in a lowering environment."""

    name: str

    def __str__(self) -> str:
        return f"block:{self.name}"


class BlockKind:
    name = ""
    doc = ""
    schema = Schema()
    imports_code = False
    methods: tuple[str, ...] = ()          # `NAME.method(...)` calls this kind answers (method_shape/apply)

    def shape(self, options: dict, shapes: list[Shape]) -> Shape:
        raise NotImplementedError

    def build(self, options: dict) -> nn.Module:
        raise NotImplementedError

    def apply(self, options: dict, module: nn.Module, args: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def check_method(self, method: str, options: dict) -> None:
        """ShapeError when a block of this kind with these options has no method `method`."""
        if not self.methods:
            raise ShapeError(f"a {self.name} block has no methods (`NAME.method(...)` is for world_model blocks)")
        if method not in self.methods:
            have = ", ".join(f".{m}(...)" for m in self.methods)
            raise ShapeError(f"a {self.name} block has no method '{method}' (it has {have})")

    def method_shape(self, method: str, options: dict, shapes: list[Shape]) -> Shape:
        """The shape of `NAME.method(args)` (after `check_method`)."""
        raise NotImplementedError

    def method_apply(self, method: str, options: dict, module: nn.Module, args: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


class VectorBlock(BlockKind):
    """Arguments flattened and concatenated to (B, in); output (B, out)."""

    def shape(self, options, shapes):
        size = sum(math.prod(s) for s in shapes)
        if size != options["in"]:
            got = " + ".join(format_shape(s) for s in shapes)
            raise ShapeError(f"its arguments have {size} entries ({got}), but it was declared with in={options['in']}")
        return () if options["out"] == 1 else (options["out"],)

    def apply(self, options, module, args):
        batch = max(a.shape[0] for a in args)
        flat = torch.cat([a.reshape(a.shape[0], -1).expand(batch, -1) for a in args], dim=-1)
        out = module(flat)
        return out[..., 0] if options["out"] == 1 else out


class MLPBlock(VectorBlock):
    name = "mlp"
    doc = "multilayer perceptron (B, in) -> (B, out)"
    schema = Schema(**{"in": Option(_INT, None, "input size"), "out": Option(_INT, None, "output size"),
                       "hidden": Option(ListOf(_INT), (64, 64), "hidden widths"),
                       "act": Option(_ACT, "tanh", "activation"),
                       "init": Option(Symbol(("default", "zero")), "default",
                                      "`zero` starts the output layer at 0 (residual models start at identity)")})

    def build(self, options):
        return MLP(options["in"], options["out"], options["hidden"], options["act"], zero_last=options["init"] == "zero")


class LinearBlock(VectorBlock):
    name = "linear"
    doc = "affine map W x + b"
    schema = Schema(**{"in": Option(_INT, None, "input size"), "out": Option(_INT, None, "output size")})

    def build(self, options):
        return nn.Linear(options["in"], options["out"])


class ConvBlock(BlockKind):
    name = "conv"
    doc = "2-D convolutions on maps (B, in, H, W) -> (B, out, H, W)"
    schema = Schema(**{"in": Option(_INT, None, "input channels"), "out": Option(_INT, None, "output channels"),
                       "hidden": Option(ListOf(_INT), (), "hidden channels (a number or a list)"),
                       "kernel": Option(Number(integer=True, minimum=1), 3, "kernel size (odd)"),
                       "act": Option(_ACT, "relu", "activation")})

    def shape(self, options, shapes):
        maps = [s[-2:] for s in shapes]
        if any(len(s) not in (2, 3) for s in shapes) or len(set(maps)) != 1:
            raise ShapeError("conv blocks take maps [H, W] or [C, H, W] of one size, got "
                             + ", ".join(format_shape(s) for s in shapes))
        channels = sum(s[0] if len(s) == 3 else 1 for s in shapes)
        if channels != options["in"]:
            raise ShapeError(f"its arguments have {channels} channels, but it was declared with in={options['in']}")
        return maps[0] if options["out"] == 1 else (options["out"],) + maps[0]

    def build(self, options):
        if options["kernel"] % 2 == 0:
            raise ValueError("conv kernel sizes must be odd ('same' padding)")
        return Conv(options["in"], options["out"], options["hidden"], options["kernel"], options["act"])

    def apply(self, options, module, args):
        batch = max(a.shape[0] for a in args)
        maps = torch.cat([(a if a.dim() == 4 else a.unsqueeze(1)).expand(batch, -1, -1, -1) for a in args], dim=1)
        out = module(maps)
        return out[:, 0] if options["out"] == 1 else out


class PythonBlock(VectorBlock):
    """`python("package.module:Class", in=, out=, ...)`: a user's nn.Module, built with the
    remaining options as keyword arguments. Runs code named by the plan: only with opt-in."""

    name = "python"
    doc = "a user's torch.nn.Module by import path (needs allow_imports / --allow-imports)"
    schema = Schema(path=Option(Text(), None, "'package.module:Class'"),
                    **{"in": Option(_INT, None, "input size"), "out": Option(_INT, None, "output size")})
    imports_code = True

    def build(self, options):
        cls = import_module_class(options["path"])
        return cls(**options.get("kwargs", {}))


class WorldModelBlock(BlockKind):
    """`world_model(kind=mlp | ensemble, hidden=[..], members=M, residual=true, angles=[..],
    reward=false)`, called as `f(s, u, c1, ...)`: the next value of its first argument s (any shape)
    from s and the other arguments (flattened and concatenated). Its sizes come from its call: the
    shape pass records them (`options["sizes"]` = (size of s, total size of the others)), so a block
    is called with one signature. `runtime.world_model.WorldModel` is the module; `apply` is its
    mean model. With `reward=true` it has a learned reward head: `f.reward(s, u, c1, ...)` (same
    arguments as the dynamics call) is the predicted reward of that transition, a scalar."""

    name = "world_model"
    doc = "learned dynamics f(s, u, ...) -> next s: mlp or Gaussian ensemble, residual, normalized"
    schema = Schema(kind=Option(Symbol(("mlp", "ensemble")), "mlp", "deterministic mlp or Gaussian ensemble"),
                    hidden=Option(ListOf(_INT), (200, 200), "hidden widths"),
                    members=Option(_INT, 5, "ensemble members (kind=ensemble)"),
                    residual=Option(Symbol(("true", "false")), "true", "predict s' - s (true) or s'"),
                    act=Option(_ACT, "silu", "activation"),
                    angles=Option(ListOf(Number(integer=True, minimum=0)), (),
                                  "entries of s that are angles (0-based): fed as sin/cos, deltas wrapped"),
                    reward=Option(Symbol(("true", "false")), "false",
                                  "learn the reward too (`loss model` fits it; `f.reward(s, u)` in costs)"))
    methods = ("reward",)

    def shape(self, options, shapes):
        if len(shapes) < 2:
            raise ShapeError("a world model is called with the state and at least the control, e.g. f(x, u)")
        self._record_sizes(options, shapes)
        return shapes[0]

    def check_method(self, method, options):
        super().check_method(method, options)
        if options["reward"] != "true":
            raise ShapeError("it has no reward head; declare it with reward=true (e.g. "
                             "`world_model(kind=ensemble, reward=true)`) and train it with `loss model` on "
                             "transitions that have rewards")

    def method_shape(self, method, options, shapes):
        if len(shapes) < 2:
            raise ShapeError("its reward is called like the dynamics, with the state and the control: f.reward(x, u)")
        self._record_sizes(options, shapes)
        return ()

    def method_apply(self, method, options, module, args):
        s, c = self._flat(args)
        return module.reward(s, c)

    @staticmethod
    def _flat(args: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The first argument (B, n) and the others flattened and concatenated (B, r), on one batch."""
        batch = max(a.shape[0] for a in args)
        s = args[0].reshape(args[0].shape[0], -1).expand(batch, -1)
        return s, torch.cat([a.reshape(a.shape[0], -1).expand(batch, -1) for a in args[1:]], dim=-1)

    @staticmethod
    def _record_sizes(options, shapes) -> None:
        sizes = (math.prod(shapes[0]), sum(math.prod(s) for s in shapes[1:]))
        recorded = options.setdefault("sizes", sizes)
        if recorded != sizes:
            raise ShapeError(f"it is called with sizes {sizes} here and {recorded} elsewhere (state, others)")
        bad = [i for i in options["angles"] if i >= sizes[0]]
        if bad:
            raise ShapeError(f"angles {list(bad)} are not entries of its first argument (size {sizes[0]}, 0-based)")

    def build(self, options):
        if "sizes" not in options:
            raise ValueError("a world_model block takes its sizes from its call, and it is never called")
        state, others = options["sizes"]
        ensemble = options["kind"] == "ensemble"
        return WorldModel(state, others, options["hidden"], options["members"] if ensemble else 1,
                          probabilistic=ensemble, residual=options["residual"] == "true", act=options["act"],
                          angles=options["angles"], reward=options["reward"] == "true")

    def apply(self, options, module, args):
        batch = max(a.shape[0] for a in args)
        first = args[0]
        s = first.reshape(first.shape[0], -1).expand(batch, -1)
        c = torch.cat([a.reshape(a.shape[0], -1).expand(batch, -1) for a in args[1:]], dim=-1)
        return module(s, c).reshape((batch,) + tuple(first.shape[1:]))


BLOCK_KINDS: dict[str, BlockKind] = {k.name: k for k in (MLPBlock(), LinearBlock(), ConvBlock(), PythonBlock(),
                                                         WorldModelBlock())}


@dataclass(frozen=True, eq=False)
class BlockCallee:
    """A declared block as a callee (same protocol as `compiler.functions.Function`)."""

    name: str
    kind: BlockKind
    options: dict = field(repr=False)
    min_args: int = 1
    max_args: int = 16
    smooth: bool = True
    evaluate = None               # needs the bound module: `apply`
    fold = None
    is_block = True

    @property
    def ref(self) -> BlockRef:
        return BlockRef(self.name)

    def shape(self, shapes, _consts) -> Shape:
        return self.kind.shape(self.options, list(shapes))

    def degree(self, degrees) -> int | None:
        """Constant when its arguments are; otherwise not polynomial in the decisions."""
        return 0 if all(d == 0 for d in degrees) else None

    def apply(self, module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        return self.kind.apply(self.options, module, list(args))

    def build(self) -> nn.Module:
        try:
            return self.kind.build(self.options)
        except ValueError as err:
            raise BlockError(self.name, str(err)) from None

    def method(self, method: str) -> "BlockMethodCallee":
        """The callee of `NAME.method(...)`; ShapeError when this block has no such method."""
        self.kind.check_method(method, self.options)
        return BlockMethodCallee(self, method)


@dataclass(frozen=True, eq=False)
class BlockMethodCallee:
    """`NAME.method(args)` of a declared block, e.g. a world model's `dyn.reward(x, u)`: the callee
    protocol of `BlockCallee`, applied to the same bound module (same `ref`)."""

    block: BlockCallee
    method: str
    min_args: int = 1
    max_args: int = 16
    smooth: bool = True
    evaluate = None
    fold = None
    is_block = True

    @property
    def name(self) -> str:
        return f"{self.block.name}.{self.method}"

    @property
    def ref(self) -> BlockRef:
        return self.block.ref

    def shape(self, shapes, _consts) -> Shape:
        return self.block.kind.method_shape(self.method, self.block.options, list(shapes))

    def degree(self, degrees) -> int | None:
        return self.block.degree(degrees)

    def apply(self, module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        return self.block.kind.method_apply(self.method, self.block.options, module, list(args))


class BlockError(ValueError):
    """A declared block could not be built (e.g. a bad import path); `block` names it."""

    def __init__(self, block: str, message: str):
        super().__init__(f"block '{block}': {message}")
        self.block = block
