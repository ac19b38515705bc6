"""World-model blocks of a compiled plan: finding their call, turning transitions into training
windows, and fitting them (`loss model` in `train { }`).

A plan trains a world model through one dynamics line of the form

    dynamics s' = NAME(s, a1, a2, ...)

where NAME is a `world_model` block, s a state and every a_i a state, control, input or param
named directly. From a transitions file (`runtime.transitions`) the k-step windows give the
model's state s along the window (B, k+1, |s|) and its other arguments (B, k, r): states and
controls from the `x` / `u` columns (the plan's layout), inputs and params from `input_NAME`
columns, or the plan's default value when the file has none.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor

from compiler.blocks import WorldModelBlock
from compiler.latent_block import LatentWorldModelBlock
from compiler.ir import Expr, Op, VarRef
from planlang.ast import VarKind
from planlang.graph import NodeKind
from planlang.latent_models import fit_latent_world_model, is_latent
from runtime.losses import ModelLoss
from runtime.training import Callback, TrainConfig, Trainer, default_callbacks, split
from runtime.transitions import INPUT_PREFIX, TransitionsError, check_transitions, load_transitions, windows


@dataclass(frozen=True)
class WorldModelCall:
    """The dynamics line `state' = block(state, *others)` of a plan."""

    block: str
    state: VarRef
    others: tuple[VarRef, ...]


def world_model_calls(module) -> list[WorldModelCall]:
    """Every `s' = NAME(s, ...)` with NAME a world_model block, in the plan's order."""
    calls = []
    for _, data in module.graph.nodes(data=True):
        if data["kind"] is not NodeKind.DYNAMICS:
            continue
        ir: Expr = data["ir"]
        if not (ir.op is Op.CALL and getattr(ir.attr, "is_block", False) and isinstance(ir.attr.kind, (WorldModelBlock, LatentWorldModelBlock))):
            continue
        name = ir.attr.name
        refs = []
        for arg in ir.args:
            if arg.op is not Op.VAR or arg.attr.kind is VarKind.LEARN:
                raise ValueError(f"{module.plan_name}: world model '{name}' is trained from data only when its "
                                 f"arguments are states, controls, inputs or params named directly, as in "
                                 f"`{data['decl'].state}' = {name}({data['decl'].state}, u)`")
            refs.append(arg.attr)
        if refs[0].kind is not VarKind.STATE or refs[0].name != data["decl"].state:
            raise ValueError(f"{module.plan_name}: world model '{name}' predicts the next value of its first "
                             f"argument; write `{data['decl'].state}' = {name}({data['decl'].state}, ...)`")
        calls.append(WorldModelCall(name, refs[0], tuple(refs[1:])))
    return calls


def the_world_model(module) -> WorldModelCall:
    """The plan's one trainable world-model call (an error naming the problem otherwise)."""
    calls = world_model_calls(module)
    if len(calls) != 1:
        found = ", ".join(c.block for c in calls) or "none"
        raise ValueError(f"{module.plan_name}: `loss model` fits one world_model block used as "
                         f"`dynamics s' = NAME(s, u, ...)`; found {len(calls)} ({found})")
    return calls[0]


def check_against_plan(module, data: Mapping[str, Tensor], where: str) -> None:
    """The transitions' sizes agree with the plan's states, controls and inputs."""
    n, m = module.layout.n, module.layout.m
    if data["x"].shape[1] != n:
        raise TransitionsError(f"{where}: {data['x'].shape[1]} state columns; plan '{module.plan_name}' has n = {n} "
                               f"({', '.join(f'{v.ref.name}{list(v.shape)}' for v in module.layout.states)})")
    if data["u"].shape[1] != m:
        raise TransitionsError(f"{where}: {data['u'].shape[1]} control columns; plan '{module.plan_name}' has m = {m}")
    accepted = {name: var for name, var in module.inputs().items() if var.ref.kind is not VarKind.STATE}
    for key, value in data.items():
        if not key.startswith(INPUT_PREFIX):
            continue
        name = key[len(INPUT_PREFIX):]
        if name not in accepted:
            raise TransitionsError(f"{where}: '{key}' names no input or param of plan '{module.plan_name}' "
                                   f"(inputs and params: {', '.join(accepted) or 'none'})")
        if value[0].numel() != accepted[name].size:
            raise TransitionsError(f"{where}: '{key}' has {value[0].numel()} values per row; "
                                   f"'{name}' has shape {list(accepted[name].shape)}")


def model_windows(module, call: WorldModelCall, data: Mapping[str, Tensor], steps: int,
                  where: str = "transitions", with_reward: bool = False) -> dict[str, Tensor]:
    """`state` (W, k+1, |s|) and `others` (W, k, r) of every k-step window (module docstring), and
    with `with_reward` `reward` (W, k), the reward of each of its transitions."""
    index = windows(dict(data), steps)
    if index.shape[0] == 0:
        raise TransitionsError(f"{where}: no run of {steps} consecutive transitions of one episode "
                               f"(loss model(steps={steps}) needs them); lower `steps`")
    offsets = module.layout.offsets()
    n = module.layout.n
    sl = offsets[call.state]
    x = data["x"][index]                                                   # (W, k, n)
    state = torch.cat([x[..., sl], data["x_next"][index[:, -1:]][..., sl]], dim=1)
    W = index.shape[0]
    parts = []
    for ref in call.others:
        if ref.kind is VarKind.STATE:
            parts.append(x[..., offsets[ref]])
        elif ref.kind is VarKind.CONTROL:
            s = offsets[ref]
            parts.append(data["u"][index][..., s.start - n:s.stop - n])
        else:
            column = data.get(INPUT_PREFIX + ref.name)
            if column is not None:
                parts.append(column[index].reshape(W, steps, -1))
                continue
            default = module.default(ref.name)
            if default is None:
                raise TransitionsError(f"{where}: no column 'input_{ref.name}' and {ref.kind.value} '{ref.name}' "
                                       f"has no default in plan '{module.plan_name}'")
            parts.append(default.to(x.dtype).reshape(1, 1, -1).expand(W, steps, -1))
    out = {"state": state, "others": torch.cat(parts, dim=-1)}
    if with_reward:
        out["reward"] = data["reward"][index]                              # (W, k)
    return out


def bootstrap_weights(count: int, members: int, seed: int) -> Tensor:
    """(count, members) bootstrap counts: member k's training set is `count` draws with replacement."""
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(count, (members, count), generator=generator)
    return torch.zeros(members, count).scatter_add_(1, draws, torch.ones(members, count)).T.contiguous()


class BlockModelLoss:
    """`ModelLoss` on block `block` of a compiled plan: the Trainer's `(module, batch)` loss."""

    def __init__(self, block: str, multistep_weight: float = 1.0):
        self.block, self.loss = block, ModelLoss(multistep_weight)

    def __call__(self, module, batch):
        return self.loss(module.blocks[self.block], batch)


def fit_world_model(module, data: str | Path | Mapping[str, Tensor], config: TrainConfig, *,
                    checkpoint_extra: Optional[Mapping] = None, callbacks: Optional[Sequence[Callback]] = None,
                    refit_normalization: bool = False, state: Optional[dict] = None) -> list[dict]:
    """Fit the plan's world-model block to transitions (`config.loss == "model"`); returns the history.

    The windows are split into training and validation (`config.validation`, seeded); the
    normalization is fitted on the training windows when the block has none yet (or
    `refit_normalization`); an ensemble's members see bootstrap resamples of the training
    windows. Early stopping (`config.patience`) watches the validation loss and restores the best
    weights. `state`: a trainer state to resume from.
    """
    witness = next(iter(module.parameters()))
    if isinstance(data, (str, Path)):
        transitions, where = load_transitions(data, dtype=witness.dtype), str(data)
    else:
        transitions, where = check_transitions(dict(data), "transitions", witness.dtype), "transitions"
    transitions = {k: v.to(witness.device) for k, v in transitions.items()}
    call = the_world_model(module)
    if is_latent(module, call.block):           # trained on observations: planlang.latent_models
        return fit_latent_world_model(module, call, transitions, where, config, checkpoint_extra=checkpoint_extra,
                                      callbacks=callbacks, refit_normalization=refit_normalization, state=state)
    check_against_plan(module, transitions, where)
    options = dict(config.loss_options)
    steps = int(options.pop("steps", 3))
    loss = BlockModelLoss(call.block, **options)
    block = module.blocks[call.block]
    has_reward = getattr(block, "has_reward", False)
    if has_reward and "reward" not in transitions:
        raise TransitionsError(f"{where}: no 'reward' column, and world model '{call.block}' has a reward head "
                               f"(reward=true) to fit; record rewards (planlang collect --env does) or "
                               f"declare the block without reward=true")
    batch = model_windows(module, call, transitions, steps, where, with_reward=has_reward)
    train_set, validation = split(batch, config.validation, config.seed)
    if refit_normalization or not bool(block.fitted):
        block.fit_normalization(train_set["state"][:, :-1].reshape(-1, block.state),
                                train_set["others"].reshape(-1, block.others),
                                train_set["state"][:, 1:].reshape(-1, block.state))
        if has_reward:
            block.fit_reward_normalization(train_set["reward"].reshape(-1))
    if block.members > 1:
        counts = bootstrap_weights(train_set["state"].shape[0], block.members, config.seed)
        train_set = {**train_set, "bootstrap": counts.to(dtype=witness.dtype, device=witness.device)}
    trainer = Trainer(module, loss, config, default_callbacks(config, checkpoint_extra) if callbacks is None else callbacks)
    if state is not None:
        trainer.load_state_dict(state)
    return trainer.fit(train_set, validation)
