"""VIN backward options by K: unrolled autograd vs the implicit fixed-point backward (runtime/vin.py).

    PYTHONPATH=$PWD nice -n 10 python benchmarks/vin_backward.py

Both use the same contractive operator (discount 0.9, hard max, l1-scaled transition kernel), on
16x16 maps of the paper's generator with random VIN weights (hidden 150, 10 q channels). For each
K it reports
* the relative difference of the parameter gradients, implicit vs unroll (float64; implicit runs
  at most K forward steps, stopping at |T(v) - v| <= tol = 1e-6);
* the bytes of tensors saved for backward (autograd's saved_tensors_hooks; the implicit backward
  additionally builds a graph of one step of T while it runs);
* the median wall time of forward + backward (float32, one thread, 16 maps).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from runtime.gridworld import generate
from runtime.vin import VIN


def model(backward: str, k: int, dtype: torch.dtype) -> VIN:
    torch.manual_seed(0)
    vin = VIN(k=k, backward=backward, discount=0.9).to(dtype)
    with torch.no_grad():
        vin.w.copy_(0.3 * torch.randn_like(vin.w))
    return vin


def loss_of(vin: VIN, maps) -> torch.Tensor:
    occupancy, goal, start = maps
    out = vin(occupancy.to(next(vin.parameters()).dtype), goal, start)
    return torch.nn.functional.cross_entropy(out.logits, torch.zeros_like(start[:, 0])) + out.values.mean()


def saved_bytes(vin: VIN, maps) -> int:
    seen = {}

    def pack(t):
        seen[(t.data_ptr(), t.numel())] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_of(vin, maps)
    loss.backward()
    return sum(seen.values())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20, 40, 80])
    parser.add_argument("--maps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = generate(16, args.maps, seed=123)
    maps = (torch.as_tensor(data.maps, dtype=torch.float64), torch.as_tensor(data.goals.astype(np.int64)),
            torch.as_tensor(data.starts[:, 0].astype(np.int64)))
    print("| K | grad rel. diff (float64) | saved MiB unroll | saved MiB implicit | ms unroll | ms implicit |")
    print("|--:|--:|--:|--:|--:|--:|")
    for k in args.ks:
        grads = {}
        for backward in ("unroll", "implicit"):
            vin = model(backward, k, torch.float64)
            grads[backward] = torch.cat([g.flatten() for g in torch.autograd.grad(loss_of(vin, maps),
                                                                                  list(vin.parameters()))])
        diff = float((grads["implicit"] - grads["unroll"]).norm() / grads["unroll"].norm())
        row = [f"{k}", f"{diff:.1e}"]
        mib, ms = [], []
        for backward in ("unroll", "implicit"):
            vin = model(backward, k, torch.float32)
            mib.append(saved_bytes(vin, maps) / 2 ** 20)
            times = []
            for _ in range(args.repeats):
                began = time.perf_counter()
                loss_of(vin, maps).backward()
                times.append(time.perf_counter() - began)
            ms.append(1e3 * statistics.median(times))
        row += [f"{m:.2f}" for m in mib] + [f"{t:.0f}" for t in ms]
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
