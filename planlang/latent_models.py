"""Latent world-model blocks of a compiled plan (`world_model(kind=latent)`): training windows from
transitions and fitting (`loss model(steps=k)` in `train { }`).

A latent model is trained on observations, not on the plan's states (its latent is learned): in
its transitions (`runtime.transitions`) the `x` / `x_next` columns (or `obs`) hold the observation
the block encodes (`NAME.encode(obs)`), `u` the plan's controls and `reward` the environment's
reward of each step. Every run of k consecutive transitions of one episode is a training sequence:

    obs      (W, k+1, obs)   o_t .. o_t+k
    actions  (W, k, m)       the block's action at each step (its call's arguments after s: controls)
    reward   (W, k)          r_t .. r_t+k-1 (when the file has them)

and the loss is the sequence loss of `runtime.latent_world_model` (reconstruction, reward, KL
balancing with free bits, plus `multistep_weight` times the open-loop error of the prior's
rollout), with early stopping on held-out sequences.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor

from compiler.blocks import BlockMethodCallee
from compiler.latent_block import LatentWorldModelBlock
from compiler.ir import Op
from planlang.ast import VarKind
from runtime.training import Callback, TrainConfig, Trainer, default_callbacks, split
from runtime.transitions import TransitionsError, windows


def is_latent(module, block: str) -> bool:
    """Block `block` of the compiled plan is a latent world model."""
    return isinstance(module.info.blocks[block].kind, LatentWorldModelBlock)


def uses_reward(module, block: str) -> bool:
    """The plan calls `block.reward(...)` somewhere."""
    return any(e.op is Op.CALL and isinstance(e.attr, BlockMethodCallee) and e.attr.block.name == block
               and e.attr.method == "reward"
               for _, data in module.graph.nodes(data=True) if data.get("ir") is not None
               for e in data["ir"].walk())


def latent_windows(module, call, data: Mapping[str, Tensor], steps: int, where: str = "transitions") -> dict[str, Tensor]:
    """`obs` (W, k+1, obs), `actions` (W, k, m) and `reward` (W, k) of every k-step window (module docstring)."""
    model = module.blocks[call.block]
    if data["x"].shape[1] != model.obs:
        raise TransitionsError(f"{where}: {data['x'].shape[1]} observation columns; latent world model "
                               f"'{call.block}' encodes observations of {model.obs} entries (x holds the observation)")
    not_controls = [ref.name for ref in call.others if ref.kind is not VarKind.CONTROL]
    if not_controls:
        raise ValueError(f"{module.plan_name}: latent world model '{call.block}' is trained from data when its action "
                         f"is the plan's controls; '{not_controls[0]}' is not a control")
    if data["u"].shape[1] != module.layout.m:
        raise TransitionsError(f"{where}: {data['u'].shape[1]} control columns; plan '{module.plan_name}' has "
                               f"m = {module.layout.m}")
    index = windows(dict(data), steps)
    if index.shape[0] == 0:
        raise TransitionsError(f"{where}: no run of {steps} consecutive transitions of one episode "
                               f"(loss model(steps={steps}) needs them); lower `steps`")
    offsets, n = module.layout.offsets(), module.layout.n
    u = data["u"][index]
    actions = torch.cat([u[..., offsets[ref].start - n:offsets[ref].stop - n] for ref in call.others], dim=-1)
    out = {"obs": torch.cat([data["x"][index], data["x_next"][index[:, -1:]]], dim=1), "actions": actions}
    if "reward" in data:
        out["reward"] = data["reward"][index]
    elif uses_reward(module, call.block):
        raise TransitionsError(f"{where}: no 'reward' column, and the plan plans with {call.block}.reward(...): "
                               "its reward head is trained on the environment's rewards")
    return out


class LatentModelLoss:
    """The sequence loss of latent block `block` of a compiled plan, its open-loop term weighted by
    `multistep_weight`: the Trainer's `(module, batch)` loss."""

    def __init__(self, block: str, multistep_weight: float = 1.0):
        self.block, self.multistep_weight = block, multistep_weight

    def __call__(self, module, batch):
        return module.blocks[self.block].loss(batch["obs"], batch["actions"], batch.get("reward"),
                                              open_loop_weight=self.multistep_weight)


def fit_latent_world_model(module, call, transitions: Mapping[str, Tensor], where: str, config: TrainConfig, *,
                           checkpoint_extra: Optional[Mapping] = None, callbacks: Optional[Sequence[Callback]] = None,
                           refit_normalization: bool = False, state: Optional[dict] = None) -> list[dict]:
    """Fit latent block `call.block` to checked transitions (as `planlang.world_models.fit_world_model`):
    k-step sequences split into training and validation (seeded), normalization of observations
    and rewards fitted on the training sequences when the block has none (or
    `refit_normalization`), early stopping on the validation loss. Returns the history."""
    options = dict(config.loss_options)
    steps = int(options.pop("steps", 3))
    batch = latent_windows(module, call, transitions, steps, where)
    train_set, validation = split(batch, config.validation, config.seed)
    block = module.blocks[call.block]
    if refit_normalization or not bool(block.fitted):
        block.fit_normalization(train_set["obs"], train_set.get("reward"))
    trainer = Trainer(module, LatentModelLoss(call.block, **options), config,
                      default_callbacks(config, checkpoint_extra) if callbacks is None else callbacks)
    if state is not None:
        trainer.load_state_dict(state)
    return trainer.fit(train_set, validation)
