"""`planlang demos` and `planlang train`: subcommands for `planlang.cli` (hooked in there with
`add_parsers(verbs)`; each parser sets `handler`, which returns the exit code).

    planlang demos TEACHER.plan --n 64 --noise 0.05 --seed 0 -o demos.npz [--range x=-2:2]
    planlang train FILE [--data demos.npz] [-o CKPT] [--resume CKPT | --init CKPT] [--plot PNG] [--json LOG] [--nproc N]

A grid plan (`solve vin`) trains on a `planlang data gridworld` file instead of demonstrations.

Library code raises; these handlers print a short summary. Errors (PlanError, bad data, a
checkpoint for another plan) propagate to `planlang.cli.main`, which renders them.
"""
from __future__ import annotations

import ast as pyast
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

EXIT_OK = 0


def add_parsers(verbs) -> None:
    """Add `demos` and `train` to an argparse subparsers object."""
    demos = verbs.add_parser("demos", help="generate demonstrations by solving a teacher plan from random starts")
    demos.add_argument("teacher", type=Path, metavar="TEACHER.plan")
    demos.add_argument("--n", type=int, default=100, help="number of demonstrations (default 100)")
    demos.add_argument("--noise", type=float, default=0.0,
                       help="std of Gaussian noise added to the executed controls (default 0)")
    demos.add_argument("--seed", type=int, default=0)
    demos.add_argument("--range", action="append", default=[], metavar="NAME=LO:HI",
                       help="draw state (or input/param) NAME uniformly in [LO, HI] per element; "
                            "states default to [default - 1, default + 1]")
    demos.add_argument("-o", "--output", type=Path, required=True, metavar="DEMOS.npz")
    demos.set_defaults(handler=run_demos)

    train = verbs.add_parser("train", help="learn a plan's learnables from demonstrations")
    train.add_argument("file", type=Path)
    train.add_argument("--data", type=Path, help="demonstrations .npz (default: the train block's data)")
    train.add_argument("-o", "--output", type=Path, metavar="CKPT", help="write the checkpoint here")
    train.add_argument("--resume", type=Path, metavar="CKPT", help="continue from this checkpoint")
    train.add_argument("--init", type=Path, metavar="CKPT",
                       help="start from this checkpoint's weights (fresh optimizer and epoch count: "
                            "a new stage of a learning-rate schedule)")
    train.add_argument("--plot", type=Path, metavar="PNG", help="plot the learning curves")
    train.add_argument("--json", type=Path, metavar="LOG", help="write the per-epoch log as JSON")
    train.add_argument("--nproc", type=int, default=1, help="data-parallel processes (torch.distributed)")
    train.add_argument("--teacher", type=Path, metavar="TEACHER.plan", help="the teacher plan for DAgger")
    train.add_argument("--loss", help="override the train block's loss (imitation, max_margin, nll)")
    train.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                       help="a loss option, e.g. --option margin=0.5 (repeatable)")
    for name, kind in (("epochs", int), ("batch", int), ("lr", float), ("seed", int), ("validation", float),
                       ("patience", int), ("dagger-rounds", int), ("dagger-steps", int)):
        train.add_argument(f"--{name}", type=kind, help=f"override the train block's {name.replace('-', '_')}")
    train.add_argument("--float32", action="store_true",
                       help="train in float32 (default float64; grid plans always train in float32)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(handler=run_train)


# ---------------------------------------------------------------------------- demos

def run_demos(args) -> int:
    import planlang
    from planlang.training import generate_demos, parse_range
    from runtime.demos import save_demos

    teacher = planlang.compile(planlang.load(args.teacher), dtype=torch.float64)
    ranges = dict(parse_range(r) for r in args.range)
    start = time.perf_counter()
    demos = generate_demos(teacher, args.n, noise=args.noise, seed=args.seed, ranges=ranges)
    save_demos(args.output, demos)
    N, T1, n = demos["x"].shape
    print(f"{N} demonstrations of '{teacher.plan_name}' (T={T1 - 1}, n={n}, m={demos['u'].shape[2]}, "
          f"noise {args.noise}) written to {args.output} in {time.perf_counter() - start:.2f} s")
    return EXIT_OK


# ---------------------------------------------------------------------------- train

def train_config(plan, args):
    """The plan's train block (`planlang.training.plan_train_config`, where a relative data path is
    relative to the plan file) with the command line's overrides."""
    from planlang.training import plan_train_config

    config = plan_train_config(plan)
    changes = {"checkpoint": args.output, "log": args.json, "plot": args.plot, "teacher": args.teacher,
               "loss": args.loss, "epochs": args.epochs, "batch": args.batch, "lr": args.lr, "seed": args.seed,
               "validation": args.validation, "patience": args.patience, "dagger_rounds": args.dagger_rounds,
               "dagger_steps": args.dagger_steps}
    changes = {k: (str(v) if isinstance(v, Path) else v) for k, v in changes.items() if v is not None}
    if args.loss and args.loss != config.loss:
        changes["loss_options"] = {}
    if args.option:
        changes["loss_options"] = {**changes.get("loss_options", config.loss_options),
                                   **dict(_option(o) for o in args.option)}
    if args.data is not None:
        changes["data"] = str(args.data)       # (the block's own path is already relative to the plan file)
    if args.quiet:
        changes["progress"] = False
    config = replace(config, **changes)
    if config.data is None and not config.stream:
        raise ValueError(f"{args.file}: no demonstrations: give --data FILE.npz or a `data` line in the train block")
    return config


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--option expects KEY=VALUE, got '{text}'")
    try:
        return key.strip(), pyast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        return key.strip(), value.strip()         # a bare word, e.g. negatives=perturbation


def run_train(args) -> int:
    import planlang

    plan = planlang.load(args.file)
    config = train_config(plan, args)
    if config.stream and args.data is None:
        return run_stream(plan, config, args)
    if args.nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {args.nproc}")
    job = {"plan": str(args.file), "config": config.to_dict(), "resume": str(args.resume) if args.resume else None,
           "init": str(args.init) if args.init else None,
           "dtype": "float32" if args.float32 or _is_grid(plan) else "float64"}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        job["summary"] = str(Path(tmp) / "summary.json")
        if args.nproc == 1:
            train_job(job)
        else:
            from runtime.distributed import launch
            launch(args.nproc, train_job, job)
        summary = json.loads(Path(job["summary"]).read_text())
    elapsed = time.perf_counter() - start
    last = summary["history"][-1] if summary["history"] else {}
    lines = [f"plan      {summary['plan']}",
             f"loss      {config.loss}  ({config.optimizer}, lr {config.lr}, batch {config.batch}, "
             f"{args.nproc} process{'es' if args.nproc > 1 else ''})",
             f"epochs    {last.get('epoch', 0)} (best {last.get('best_epoch', '-')})",
             f"train     {last.get('train_loss', float('nan')):.6g}"
             + (f"   val {last['val_loss']:.6g}" if "val_loss" in last else ""),
             f"learned   {_learned_text(summary['learned'])}",
             f"time      {elapsed:.2f} s"]
    lines += [f"{what:<9} {path}" for what, path in (("weights", config.checkpoint), ("log", config.log),
                                                       ("plot", config.plot)) if path]
    print("\n".join(lines))
    return EXIT_OK


def run_stream(plan, config, args) -> int:
    """`planlang train` on a plan whose train block has a `stream`: train its block through the
    tasks in order, print R with ACC/BWT/FWT; --json writes R and the metrics, --plot the heat map."""
    import planlang
    from planlang.continual import learner_block, train_stream

    if args.nproc != 1:
        raise ValueError("a continual stream trains in one process (--nproc 1)")
    torch.manual_seed(config.seed)               # the block's initial weights: a stream run is reproducible
    module = planlang.compile(plan, dtype=torch.float32 if args.float32 else torch.float64)
    start = time.perf_counter()
    result = train_stream(module, replace(config, log=None, plot=None), plan=plan, resume=args.resume)
    elapsed = time.perf_counter() - start
    if config.log:
        Path(config.log).write_text(result.to_json())
    if config.plot:
        result.heatmap(config.plot, title=f"{module.plan_name}: {result.metric}")
    block = learner_block(module)
    methods = " + ".join(str(m) for m in module.info.continual.get(block, ())) or "naive fine-tuning"
    lines = [f"plan      {module.plan_name}",
             f"stream    {len(config.stream)} tasks{' (task-free)' if config.task_free else ''}, block {block} "
             f"by {methods}",
             f"training  {config.optimizer}, lr {config.lr}, batch {config.batch}, {config.epochs} epochs per task",
             "", result.table(4), "",
             f"time      {elapsed:.2f} s"]
    lines += [f"{what:<9} {path}" for what, path in (("weights", config.checkpoint), ("json", config.log),
                                                       ("heat map", config.plot)) if path]
    print("\n".join(lines))
    return EXIT_OK


def _is_grid(plan) -> bool:
    return "grid" in plan.graph


def _learned_text(learned: dict) -> str:
    def short(value) -> str:
        if isinstance(value, str):
            return value
        flat = torch.tensor(value, dtype=torch.float64).flatten().tolist()
        body = ", ".join(f"{v:.4g}" for v in flat[:6]) + (", ..." if len(flat) > 6 else "")
        return body if isinstance(value, float) else f"[{body}]"
    return "  ".join(f"{name} = {short(value)}" for name, value in learned.items())


def train_job(job: dict) -> None:
    """One training run (in this process, or in each process of a data-parallel group): compile the
    plan, train, and (rank 0) write a summary JSON to job["summary"]. job: "plan" (path), "config"
    (TrainConfig fields), "dtype", "summary", and optionally "resume" and "init" (checkpoints)."""
    import torch.distributed as dist

    import planlang
    from planlang.training import train
    from runtime.training import TrainConfig

    plan = planlang.load(job["plan"])
    config = TrainConfig(**job["config"])
    torch.manual_seed(config.seed)              # a network's initial weights are drawn when compiled
    module = planlang.compile(plan, dtype=getattr(torch, job["dtype"]))
    teacher = planlang.compile(planlang.load(config.teacher), dtype=module_dtype(module)) if config.teacher else None
    history = train(module, config.data, config, plan=plan, teacher=teacher, resume=job.get("resume"),
                    init=job.get("init"))
    if dist.is_initialized() and dist.get_rank() != 0:
        return
    learned = {name: value.detach().cpu().tolist() for name, value in module.learned_values().items()}
    if module.planner is not None:
        learned[type(module.planner).__name__] = f"{sum(p.numel() for p in module.planner.parameters())} weights"
    Path(job["summary"]).write_text(json.dumps({"plan": module.plan_name, "history": history, "learned": learned}))


def module_dtype(module) -> torch.dtype:
    return next(iter(module.parameters())).dtype
