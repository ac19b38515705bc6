"""Learnable neural blocks that plans call in expressions (`block f = mlp(...)`).

Every block maps batch-first tensors: `MLP` and `Linear` take (B, in) -> (B, out); `Conv` takes
maps (B, in, H, W) -> (B, out, H, W) with 'same' padding. They are plain `nn.Module`s, so their
weights are parameters of the compiled plan (`parameters()`, `state_dict()`).
"""
from __future__ import annotations

import importlib
from typing import Sequence

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU, "silu": nn.SiLU,
               "softplus": nn.Softplus, "sigmoid": nn.Sigmoid}


class MLP(nn.Module):
    """y = W_L act(... act(W_1 x + b_1) ...) + b_L, hidden widths `hidden`; (B, in) -> (B, out).

    `zero_last=True` starts the output layer at zero (a residual model then starts as identity)."""

    def __init__(self, inputs: int, outputs: int, hidden: Sequence[int] = (64, 64), act: str = "tanh",
                 zero_last: bool = False):
        super().__init__()
        widths = [inputs, *hidden, outputs]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(ACTIVATIONS[act]())
        if zero_last:
            nn.init.zeros_(layers[-1].weight)
            nn.init.zeros_(layers[-1].bias)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Conv(nn.Module):
    """A 2-D conv stack on maps: `hidden` channels of `kernel`x`kernel` convs (then act), and a 1x1
    (or `kernel`) output conv; (B, in, H, W) -> (B, out, H, W), 'same' padding."""

    def __init__(self, inputs: int, outputs: int, hidden: Sequence[int] = (), kernel: int = 3, act: str = "relu",
                 bias: bool = True):
        super().__init__()
        widths = [inputs, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(a, b, kernel, padding=kernel // 2, bias=bias), ACTIVATIONS[act]()]
        last_kernel = 1 if hidden else kernel
        layers.append(nn.Conv2d(widths[-1], outputs, last_kernel, padding=last_kernel // 2, bias=bias))
        self.net = nn.Sequential(*layers)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.net(maps)


def import_module_class(path: str) -> type:
    """The `nn.Module` subclass named by 'package.module:Class' (or 'package.module.Class')."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"'{path}' is not an import path of the form 'package.module:Class'")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import '{path}': {err}") from None
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise ValueError(f"'{path}' is not a torch.nn.Module subclass")
    return obj
