"""What the passes know about a plan, kept on the graph as `graph.graph['plan_info']`."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from compiler.ir import Expr, Shape, VarRef


@dataclass
class VarInfo:
    """A declared tensor after the shape pass."""

    ref: VarRef
    node: str
    shape: Shape
    default: Expr | None = None            # typed default (init) expression, constant in decision vars
    lower: Expr | None = None              # typed box bounds (`in [lo, hi]`)
    upper: Expr | None = None
    positive: bool = False
    psd: bool = False
    per_stage: bool = False                # declared with a leading `T` or `T+1`: time-indexed data

    @property
    def size(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class GridInfo:
    """A grid plan's map size (H, W) and its number of moves (4 or 8)."""

    shape: tuple[int, int]
    actions: int


@dataclass(frozen=True)
class AgentsInfo:
    """A joint plan's agent count N and its energy terms (typed IR): unary `energy agent` and
    pairwise `energy pair` lines, each split into stage (summed over t < T) and final (at x_T)."""

    count: int
    agent_stage: tuple[Expr, ...] = ()
    agent_final: tuple[Expr, ...] = ()
    pair_stage: tuple[Expr, ...] = ()
    pair_final: tuple[Expr, ...] = ()


@dataclass
class PlanInfo:
    """Results of the checking passes, consumed by lowering."""

    horizon: int = 0
    consts: dict[str, torch.Tensor] = field(default_factory=dict)
    variables: dict[str, VarInfo] = field(default_factory=dict)     # by name, in declaration order
    solver: str = ""
    options: dict[str, object] = field(default_factory=dict)
    blocks: dict = field(default_factory=dict)                     # name -> compiler.blocks.BlockCallee
    lets: dict[str, Expr] = field(default_factory=dict)            # `let` name -> typed expression
    guesses: dict[str, Expr] = field(default_factory=dict)         # control name -> typed initial guess
    env: object = None                                             # compiler.envs.EnvSpec of an `env` block
    train: dict = field(default_factory=dict)                      # `train { }`: TrainConfig fields
    grid: GridInfo | None = None                                   # set for grid plans (`grid H x W`)
    agents: AgentsInfo | None = None                               # set for joint plans (`agents N`)
    continual: dict = field(default_factory=dict)                  # block -> `continual` methods (Structured)

    @property
    def family(self) -> str:
        """The problem family: 'grid' for grid plans, 'joint' for plans with `agents N`, else 'trajectory'."""
        if self.grid is not None:
            return "grid"
        return "joint" if self.agents is not None else "trajectory"

    def of_kind(self, kind) -> list[VarInfo]:
        return [v for v in self.variables.values() if v.ref.kind is kind]
