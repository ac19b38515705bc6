"""Reproduce the VIN grid-world benchmark: generate data, train, evaluate on held-out maps, save weights.

    PYTHONPATH=$PWD nice -n 10 python benchmarks/vin_train.py --size 8 --out examples/weights/vin_8x8.pt

Defaults follow the paper / the PyTorch port: 5000 training maps with 7 expert trajectories each,
k = 10 / 20 / 36 and lr = 0.005 / 0.002 / 0.002 for 8 / 16 / 28, RMSprop, 30 epochs, 12 maps per
batch. The held-out set is 1000 fresh maps (another seed). One thread (the machine is shared).
The checkpoint is torch.save({"state_dict": VIN state_dict, "config": VIN.config(), "training":
settings, timings and held-out results}), rewritten after every epoch (then without the results); `runtime.vin.load_vin(ckpt["state_dict"], ckpt["config"])`
rebuilds the model.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

import planlang
from planlang.training import read_checkpoint
from runtime.gridworld import GridworldData, generate
from runtime.vin import VIN, load_vin
from runtime.vin_training import ExpertTensors, TrainSettings, evaluate_vin, train_vin

PAPER_K = {8: 10, 16: 20, 28: 36}
PORT_LR = {8: 0.005, 16: 0.002, 28: 0.002}


def dataset(size: int, maps: int, seed: int, cache: Path) -> tuple[GridworldData, float]:
    path = cache / f"gridworld_{size}x{size}_{maps}maps_seed{seed}.npz"
    began = time.perf_counter()
    if path.exists():
        return GridworldData.load(path), 0.0
    data = generate(size, maps, seed=seed)
    seconds = time.perf_counter() - began
    cache.mkdir(parents=True, exist_ok=True)
    data.save(path)
    return data, seconds


def evaluated_model(checkpoint: Path, plan: Path | None) -> tuple[VIN, dict]:
    """The VIN of a raw checkpoint of this script, or of a planlang checkpoint of `plan`, and its
    training record (the last epoch's, for `planlang train` checkpoints)."""
    if plan is None:
        raw = torch.load(checkpoint, map_location="cpu")
        return load_vin(raw["state_dict"], raw["config"]), raw["training"]
    module = planlang.compile(planlang.load(plan), weights=checkpoint)
    state = read_checkpoint(checkpoint, planlang.load(plan))
    history = state.get("history") or [{}]
    return module.planner, state.get("training", history[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8)
    parser.add_argument("--train-maps", type=int, default=5000)
    parser.add_argument("--test-maps", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--k", type=int)
    parser.add_argument("--maps-per-batch", type=int, default=12)
    parser.add_argument("--backward", choices=("unroll", "implicit"), default="unroll")
    parser.add_argument("--discount", type=float, default=1.0)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="e.g. cuda (not tested here: no GPU was available)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/planlang_gridworld"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--init", type=Path, metavar="CKPT",
                        help="start from this checkpoint's weights (fresh optimizer state), e.g. to continue "
                             "at a lower learning rate as the paper's schedule does")
    parser.add_argument("--evaluate", type=Path, metavar="CKPT",
                        help="only evaluate this checkpoint on the held-out maps (e.g. one saved mid-training)")
    parser.add_argument("--plan", type=Path, metavar="PLAN",
                        help="with --evaluate: CKPT is a planlang checkpoint of this plan (`planlang train -o`)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.evaluate is not None:
        model, training = evaluated_model(args.evaluate, args.plan)
        test_data, _ = dataset(args.size, args.test_maps, 2 * args.seed + 1, args.cache)
        began = time.perf_counter()
        result = evaluate_vin(model.to(args.device), test_data, device=args.device)
        print(json.dumps(dict(checkpoint=str(args.evaluate), training=training, held_out=result,
                              eval_seconds=time.perf_counter() - began), default=str), flush=True)
        return

    train_data, train_gen_s = dataset(args.size, args.train_maps, 2 * args.seed, args.cache)
    test_data, test_gen_s = dataset(args.size, args.test_maps, 2 * args.seed + 1, args.cache)
    print(f"data: train {args.train_maps} maps ({train_gen_s:.1f} s), test {args.test_maps} maps "
          f"({test_gen_s:.1f} s); 0 s = loaded from {args.cache}", flush=True)

    k = args.k or PAPER_K.get(args.size, 2 * args.size)
    model = VIN(k=k, backward=args.backward, discount=args.discount, temperature=args.temperature)
    if args.init is not None:
        model.load_state_dict(torch.load(args.init, map_location="cpu")["state_dict"])
    model.to(args.device)
    settings = TrainSettings(epochs=args.epochs, lr=args.lr or PORT_LR.get(args.size, 0.002),
                             maps_per_batch=args.maps_per_batch, seed=args.seed)
    def save(training: dict) -> None:
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"state_dict": model.state_dict(), "config": model.config(), "training": training},
                       args.out)

    def after_epoch(stats: dict) -> None:
        print(json.dumps(stats), flush=True)
        save(dict(size=args.size, settings=asdict(settings), last_epoch=stats))

    began = time.perf_counter()
    history = train_vin(model, ExpertTensors.from_data(train_data, device=args.device), settings,
                        on_epoch=after_epoch)
    train_s = time.perf_counter() - began
    began = time.perf_counter()
    result = evaluate_vin(model, test_data, device=args.device)
    eval_s = time.perf_counter() - began
    summary = dict(size=args.size, config=model.config(), settings=asdict(settings),
                   train_maps=args.train_maps, test_maps=args.test_maps, train_seconds=train_s,
                   eval_seconds=eval_s, data_seconds=train_gen_s + test_gen_s, threads=args.threads,
                   init=None if args.init is None else str(args.init), final_train=history[-1], held_out=result)
    print(json.dumps(summary), flush=True)
    save(summary)


if __name__ == "__main__":
    main()
