"""`block m = world_model(kind=latent, deter=64, stoch=16, hidden=64)`: a recurrent latent world model
(runtime.latent_world_model, Dreamer's RSSM) whose latent state a plan plans in.

The plan's state is the model's latent s = [h; z] (a vector of deter + stoch entries); the block
is called as

    m(s, u, ...)          the next latent (the prior step; the mean, or sampled per trajectory in
                          mppi / cem): `dynamics s' = m(s, u)`
    m.encode(obs)         the latent of an observation (posterior mean, the GRU state at its start):
                          in the env block, `state = m.encode(obs)`
    m.filter(s, u, obs)   the latent of the next observation from the latent s and the action u
                          that led to it (posterior update): in the env block, `update = ...`
    m.reward(s, u, ...)   the reward head's prediction of the environment's reward (a scalar)

The arguments after s are flattened and concatenated into the model's action (the same in every
call). The block's sizes come from its calls: the action's size from `m(s, u)` and the
observation's from `encode` / `filter` (or the `obs=` option); the shape pass records them in
`options` and `build` makes the `LatentWorldModel`.
"""
from __future__ import annotations

import math

import torch

from compiler.blocks import BLOCK_KINDS, BlockKind
from compiler.functions import ShapeError, format_shape
from compiler.ir import Shape
from compiler.options import Number, Option, Schema, Symbol
from planlang import ast
from runtime.latent_world_model import LatentWorldModel

_INT = Number(integer=True, minimum=1)


class LatentWorldModelBlock(BlockKind):
    """The `world_model(kind=latent, ...)` block kind (module docstring); `apply` is the prior step."""

    name = "world_model"
    doc = "recurrent latent world model (RSSM): plan in its latent state [h; z]"
    methods = ("encode", "filter", "reward")
    schema = Schema(kind=Option(Symbol(("latent",)), "latent", "the recurrent latent model"),
                    deter=Option(_INT, 64, "size of the GRU state h"),
                    stoch=Option(_INT, 16, "size of the Gaussian latent z"),
                    hidden=Option(_INT, 64, "width of the encoder, decoder, prior, posterior and head MLPs"),
                    obs=Option(Number(integer=True, minimum=0), 0,
                               "observation size (0: from the `encode` / `filter` call)"),
                    reward=Option(Symbol(("true", "false")), "true", "a reward head (`NAME.reward(s, u)`)"),
                    free_bits=Option(Number(minimum=0), 1.0, "free nats of each KL term per step"))

    @staticmethod
    def latent(options: dict) -> int:
        return options["deter"] + options["stoch"]

    def _latent_arg(self, options: dict, shape: Shape, what: str) -> None:
        if len(shape) != 1 or shape[0] != self.latent(options):
            raise ShapeError(f"{what} is the model's latent state [h; z] of deter + stoch = "
                             f"{options['deter']} + {options['stoch']} = {self.latent(options)} entries, "
                             f"got shape {format_shape(shape)}")

    @staticmethod
    def _record(options: dict, key: str, size: int, what: str) -> None:
        recorded = options.setdefault(key, size)
        if recorded != size:
            raise ShapeError(f"its {what} has {size} entries here and {recorded} elsewhere")

    def _action(self, options: dict, shapes: list[Shape]) -> None:
        if not shapes:
            raise ShapeError("the action is missing: call it with the latent state and the control, e.g. m(s, u)")
        self._record(options, "actions", sum(math.prod(s) for s in shapes), "action (the arguments after s)")

    def shape(self, options, shapes):
        """`m(s, u, ...)`: the next latent."""
        self._latent_arg(options, shapes[0], "its first argument")
        self._action(options, shapes[1:])
        return shapes[0]

    def method_shape(self, method: str, options: dict, shapes: list[Shape]) -> Shape:
        """The shape of `m.method(...)` (module docstring), recording the sizes it fixes."""
        if method == "encode":
            if len(shapes) != 1:
                raise ShapeError(f"encode takes the observation only, got {len(shapes)} arguments")
            self._observation(options, shapes[0])
            return (self.latent(options),)
        if method == "filter":
            if len(shapes) < 3:
                raise ShapeError("filter takes the latent state, the action and the observation: m.filter(s, u, obs)")
            self._latent_arg(options, shapes[0], "its first argument")
            self._action(options, shapes[1:-1])
            self._observation(options, shapes[-1])
            return (self.latent(options),)
        if options["reward"] != "true":
            raise ShapeError("it was declared with reward=false, so it has no reward head")
        self._latent_arg(options, shapes[0], "its first argument")
        self._action(options, shapes[1:])
        return ()

    def _observation(self, options: dict, shape: Shape) -> None:
        size = math.prod(shape)
        if options["obs"] and options["obs"] != size:
            raise ShapeError(f"its observation has {size} entries here, but it was declared with obs={options['obs']}")
        self._record(options, "observation", size, "observation")

    def build(self, options):
        if "actions" not in options:
            raise ValueError("a latent world model takes its action size from its call m(s, u), and it is never called")
        obs = options.get("observation") or options["obs"]
        if not obs:
            raise ValueError("a latent world model needs its observation size: call `NAME.encode(obs)` (in the env "
                             "block's `state = ...`) or declare `obs=k`")
        return LatentWorldModel(obs, options["actions"], options["deter"], options["stoch"], options["hidden"],
                                free_bits=options["free_bits"])

    @staticmethod
    def _flat(args: list[torch.Tensor], batch: int) -> torch.Tensor:
        return torch.cat([a.reshape(a.shape[0], -1).expand(batch, -1) for a in args], dim=-1)

    def apply(self, options, module, args):
        batch = max(a.shape[0] for a in args)
        return module(args[0].expand(batch, -1), self._flat(args[1:], batch))

    def method_apply(self, method: str, options: dict, module: LatentWorldModel, args: list[torch.Tensor]
                     ) -> torch.Tensor:
        batch = max(a.shape[0] for a in args)
        if method == "encode":
            return module.encode(self._flat(args, batch))
        if method == "filter":
            return module.filter(args[0].expand(batch, -1), self._flat(args[1:-1], batch), self._flat(args[-1:], batch))
        return module.reward(args[0].expand(batch, -1), self._flat(args[1:], batch))


LATENT = LatentWorldModelBlock()


def block_kind(spec: ast.Call) -> BlockKind | None:
    """The kind of `block NAME = spec`: `world_model(kind=latent, ...)` is the latent kind, every
    other spec the kind its name says (None when unknown)."""
    if spec.func == LATENT.name and any(k.name == "kind" and isinstance(k.value, ast.Name) and k.value.id == "latent"
                                        for k in spec.keywords):
        return LATENT
    return BLOCK_KINDS.get(spec.func)
