"""The `planlang` command line: run, graph, check.

Library code raises; only this module prints and sets exit codes. A `PlanError` is printed as
`file.plan:L:C: error: ...` with the line and a caret, never as a traceback; any other exception
is one `planlang: internal error: ...` line (exit 1). A closed output pipe (`planlang ... | head`)
ends the command quietly.
"""
from __future__ import annotations

import argparse
import ast as pyast
import json
import os
import sys
import time
from pathlib import Path

import torch

from planlang.errors import PlanError, SolveError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        return args.handler(args)
    except BrokenPipeError:            # the reader (e.g. `head`) closed stdout: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # no error at exit's flush
        return EXIT_FAIL
    except PlanError as err:
        print(err.render(), file=sys.stderr)
        return EXIT_FAIL
    except (SolveError, OSError, ValueError, TypeError, KeyError) as err:
        print(f"planlang: error: {err}", file=sys.stderr)
        return EXIT_USAGE if not isinstance(err, SolveError) else EXIT_FAIL
    except Exception as err:           # a bug: one line, not a traceback (library code raised it)
        print(f"planlang: internal error: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAIL


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="planlang", description="Compile and solve .plan files.")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: plans are small and latency-bound; "
                             "see docs/language.md)")
    verbs = parser.add_subparsers(dest="verb", required=True)

    run = verbs.add_parser("run", help="solve a plan and print a summary")
    run.add_argument("file", type=Path)
    run.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                     help="override an initial state, input or param, e.g. --set goal=[1,0]")
    run.add_argument("--json", action="store_true", help="print the solution as JSON")
    run.add_argument("--plot", type=Path, metavar="OUT.png", help="plot states and controls over time")
    run.add_argument("--float32", action="store_true", help="solve in float32 (default float64)")
    run.add_argument("--warm", action="store_true",
                     help="time a second solve (after torch's one-time set-up) instead of the first")
    run.add_argument("--weights", type=Path, metavar="CKPT", help="load trained weights (from `planlang train -o`)")
    run.add_argument("--allow-imports", action="store_true",
                     help="let `block f = python(\"pkg.mod:Class\", ...)` import and run the code the plan names")
    run.add_argument("--closed-loop", type=int, metavar="N",
                     help="run N steps of receding-horizon MPC (warm-started) instead of one open-loop solve")
    run.add_argument("--system", type=Path, metavar="TRUE.plan",
                     help="with --closed-loop: advance this plan's dynamics as the true system")
    run.add_argument("--env", nargs="?", const="", metavar="ID",
                     help="with --closed-loop N: drive a gymnasium environment (default: the plan's `env` block) "
                          "and report the episode return")
    run.add_argument("--seed", type=int, default=0, help="with --env: the environment's reset seed")
    run.set_defaults(handler=_run)

    graph = verbs.add_parser("graph", help="show the declaration graph (optionally after a compiler pass)")
    graph.add_argument("file", type=Path)
    graph.add_argument("--format", choices=("text", "dot", "json"), default="text")
    graph.add_argument("--after", metavar="PASS", help="show the graph after this pass (resolve, shapes, classify, eligibility, lower)")
    graph.set_defaults(handler=_graph)

    from planlang.cli_train import add_parsers
    add_parsers(verbs)
    from planlang.cli_world import add_parsers as add_world_parsers
    add_world_parsers(verbs)

    data = verbs.add_parser("data", help="generate data sets (gridworld maps with expert paths)")
    kinds = data.add_subparsers(dest="kind", required=True)
    grid = kinds.add_parser("gridworld", help="the VIN paper's grid worlds: random obstacles, shortest-path experts")
    grid.add_argument("--size", type=int, required=True, help="map side (8, 16, 28 use the paper's obstacle limits)")
    grid.add_argument("--maps", type=int, required=True)
    grid.add_argument("--trajs", type=int, default=7, help="expert trajectories per map (default 7)")
    grid.add_argument("--seed", type=int, default=0)
    grid.add_argument("-o", "--output", type=Path, required=True, metavar="FILE.npz")
    grid.set_defaults(handler=_gridworld)
    scenes = kinds.add_parser("interactions", help="multi-agent scenes with a centralized joint-optimum ground truth "
                              "(runtime.interactions documents the .npz)")
    scenes.add_argument("--scene", required=True, choices=("intersection", "corridor_swap", "merge"))
    scenes.add_argument("--agents", type=int, required=True)
    scenes.add_argument("--n", type=int, required=True, help="number of scenes")
    scenes.add_argument("--seed", type=int, default=0)
    scenes.add_argument("--horizon", type=int, default=25, help="steps T (default 25)")
    scenes.add_argument("--dt", type=float, default=0.4, help="time step in seconds (default 0.4)")
    scenes.add_argument("-o", "--output", type=Path, required=True, metavar="FILE.npz")
    scenes.set_defaults(handler=_interactions)

    check = verbs.add_parser("check", help="compare the compiled solver with a cvxpy reference and finite differences")
    check.add_argument("file", type=Path)
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--cross", action="store_true",
                       help="compare every solver that takes the plan (lqr, qp, ilqr) instead of cvxpy")
    check.set_defaults(handler=_check)
    return parser


def parse_assignment(text: str) -> tuple[str, torch.Tensor]:
    """`name=value` with a number or a (nested) list literal."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"--set expects NAME=VALUE, got '{text}'")
    try:
        literal = pyast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        raise ValueError(f"--set {name}: '{value}' is not a number or a list of numbers") from None
    return name.strip(), torch.tensor(literal, dtype=torch.float64)


def _run(args) -> int:
    import planlang

    plan = planlang.load(args.file)
    dtype = torch.float32 if args.float32 else torch.float64
    module = planlang.compile(plan, dtype=dtype, allow_imports=args.allow_imports, weights=args.weights)
    values = dict(parse_assignment(s) for s in args.set)
    values = {k: v.to(dtype) for k, v in values.items()}
    if (args.system or args.env is not None) and not args.closed_loop:
        raise ValueError("--system and --env need --closed-loop N")
    if args.env is not None:
        return _drive(module, args, values)
    if module.info.family == "grid":
        return _run_grid(module, args, values)
    if module.info.family == "joint":
        return _run_joint(module, args, values)
    _warn_threads(module)
    module.backend.build_kernels()               # a plan's C kernels are compiled before the clock starts
    with torch.no_grad():
        if args.closed_loop is not None:
            system = planlang.compile(planlang.load(args.system), dtype=dtype) if args.system else None
            start = time.perf_counter()
            sol = module.simulate(args.closed_loop, system=system, **values)
        else:
            if args.warm:
                module(**values)               # pays torch's one-time set-up; the next solve is timed
            start = time.perf_counter()
            sol = module(**values)
        elapsed = time.perf_counter() - start
    if args.json:
        print(json.dumps(_solution_json(module, sol, elapsed), indent=2))
    else:
        print(_summary(module, sol, elapsed, args.warm))
    if args.plot:
        from planlang.plot import plot_solution
        plot_solution(module, sol, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr if args.json else sys.stdout)
    return EXIT_OK if bool(sol.ok.all()) else EXIT_FAIL


def _run_grid(module, args, values) -> int:
    start = time.perf_counter()
    with torch.no_grad():
        sol = module(**values)
    elapsed = time.perf_counter() - start
    record = {"plan": module.plan_name, "solver": module.solver, "reached": sol.reached.tolist(),
              "path": sol.path[0].tolist(), "logits": sol.logits[0].tolist(), "time_s": elapsed}
    if args.json:
        print(json.dumps({**record, "values": sol.values.tolist()}, indent=2))
    else:
        print(f"plan      {module.plan_name}\nsolver    {module.solver}\nreached   {record['reached']}\n"
              f"path      {' '.join(f'({r},{c})' for r, c in record['path'])}\ntime      {elapsed * 1e3:.2f} ms")
    return EXIT_OK if bool(sol.reached.all()) else EXIT_FAIL


def _run_joint(module, args, values) -> int:
    """A joint plan (`agents N`): states and inputs per agent, e.g. --set x=[[...], ...] --set goal=[[...], ...]."""
    from runtime.joint_energies import min_distance

    start = time.perf_counter()
    with torch.no_grad():
        sol = module(**values)
    elapsed = time.perf_counter() - start
    record = {"plan": module.plan_name, "solver": module.solver, "plan_index": sol.plan.tolist(),
              "energy": sol.energy.tolist(), "min_distance": min_distance(sol.x).tolist(), "time_s": elapsed}
    if args.json:
        print(json.dumps({**record, "x": sol.x.tolist(), "u": sol.u.tolist(), "marginals": sol.marginals.tolist()},
                         indent=2))
    else:
        final = sol.x[0, :, -1].tolist()
        print(f"plan      {module.plan_name}\nsolver    {module.solver}\n"
              f"agents    {sol.x.shape[1]}  (K={sol.marginals.shape[2]} candidates each, batch {sol.x.shape[0]})\n"
              f"energy    {', '.join(f'{e:.6g}' for e in record['energy'])}\n"
              f"chosen    {record['plan_index'][0]}\n"
              f"min gap   {', '.join(f'{d:.4g}' for d in record['min_distance'])}  (closest centres, any stage)\n"
              + "\n".join(f"x_T[{i}]    {_fmt(x)}" for i, x in enumerate(final))
              + f"\ntime      {elapsed * 1e3:.2f} ms")
    return EXIT_OK


def _drive(module, args, values) -> int:
    start = time.perf_counter()
    episode = module.drive(steps=args.closed_loop, seed=args.seed, env=args.env or None, **values)
    elapsed = time.perf_counter() - start
    steps = len(episode.rewards)
    record = {"plan": module.plan_name, "solver": module.solver, "env": args.env or module.info.env.id,
              "steps": steps, "return": episode.return_, "time_s": elapsed,
              "ms_per_step": 1e3 * elapsed / max(steps, 1)}
    if args.json:
        print(json.dumps({**record, "rewards": episode.rewards.tolist(), "actions": episode.actions.tolist()}, indent=2))
    else:
        print("\n".join(f"{k:<12}{v:.6g}" if isinstance(v, float) else f"{k:<12}{v}" for k, v in record.items()))
    if args.plot:
        from planlang.plot import plot_episode
        plot_episode(episode, args.plot)
    return EXIT_OK


SMALL_PLAN = 10**5       # horizon * (n + m)^2 below which one intra-op thread is faster (docs/language.md)


def _warn_threads(module) -> None:
    """A loud note on stderr when torch runs a small plan on several intra-op threads."""
    threads, width = torch.get_num_threads(), module.layout.n + module.layout.m
    if threads > 1 and module.horizon * width ** 2 <= SMALL_PLAN:
        print(f"planlang: warning: torch uses {threads} intra-op threads for a small plan (T={module.horizon}, "
              f"n={module.layout.n}, m={module.layout.m}); small plans solve faster on one thread "
              "(--threads 1, the default)", file=sys.stderr)


def _summary(module, sol, elapsed: float, warm: bool = False) -> str:
    names = sol.status_names()
    lines = [f"plan      {module.plan_name}",
             f"solver    {module.solver}",
             f"horizon   {module.horizon}  (n={module.layout.n} states, m={module.layout.m} controls, batch {sol.x.shape[0]})",
             f"cost      {', '.join(f'{c:.6g}' for c in sol.cost.tolist())}",
             f"status    {', '.join(names)}",
             f"time      {elapsed * 1e3:.2f} ms" + ("" if "closed loop" in sol.solver else
                                                  " (warm solve)" if warm else " (one solve; --warm times a second)")]
    if sol.iterations is not None:
        lines.append(f"iters     {', '.join(str(i) for i in sol.iterations.tolist())}")
    for name, (which, _, _) in sol.layout.items():
        traj = sol[name][0]
        first, last = traj[0].flatten().tolist(), traj[-1].flatten().tolist()
        label = "x_T" if which == "x" else "u_T-1"
        lines.append(f"{which}:{name:<8} start {_fmt(first)}  {label} {_fmt(last)}")
    return "\n".join(lines)


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def _solution_json(module, sol, elapsed: float) -> dict:
    return {"plan": module.plan_name, "solver": module.solver, "horizon": module.horizon,
            "status": sol.status_names(), "cost": sol.cost.tolist(), "time_s": elapsed,
            "x": sol.x.tolist(), "u": sol.u.tolist(),
            "trajectories": {name: sol[name].tolist() for name in sol.layout}}


def _graph(args) -> int:
    import planlang
    from planlang import dump

    plan = planlang.load(args.file)
    graph = plan.graph
    if args.after:
        from compiler.pipeline import PASS_NAMES, run_passes
        if args.after not in PASS_NAMES:
            raise ValueError(f"unknown pass '{args.after}'; passes: {', '.join(PASS_NAMES)}")
        try:
            graph = run_passes(plan.graph, until=args.after)
        except PlanError as err:
            raise err.with_source(plan.source) from None
    render = {"text": dump.to_text, "dot": dump.to_dot, "json": dump.to_json}[args.format]
    print(render(graph))
    if args.after == "lower" and args.format == "text":
        print(graph.graph["lowered"].as_text())
    return EXIT_OK


def _gridworld(args) -> int:
    from runtime.gridworld import generate

    start = time.perf_counter()
    data = generate(args.size, args.maps, trajs=args.trajs, seed=args.seed)
    data.save(args.output)
    print(f"{args.maps} maps of {args.size}x{args.size} with {args.trajs} expert paths each written to "
          f"{args.output} in {time.perf_counter() - start:.1f} s")
    return EXIT_OK


def _interactions(args) -> int:
    from runtime.interactions import generate, save

    start = time.perf_counter()
    data = generate(args.scene, args.agents, args.n, args.seed, T=args.horizon, dt=args.dt)
    save(data, args.output)
    print(f"{args.n} {args.scene} scenes of {args.agents} agents (T={args.horizon}, dt={args.dt:g}) written to "
          f"{args.output} in {time.perf_counter() - start:.1f} s")
    return EXIT_OK


def _check(args) -> int:
    import planlang

    plan = planlang.load(args.file)
    if "agents" in plan.graph:
        raise ValueError(f"{args.file}: check compares a trajectory solve with cvxpy; a joint plan (`agents N`) has "
                         "no such reference (tests/compiler/test_joint_plans.py checks BP against exact enumeration)")
    if args.cross:
        from planlang.checks import cross_check
        report = cross_check(plan, seed=args.seed)
    else:
        report = planlang.check(plan, seed=args.seed)
    print(report.render())
    return EXIT_OK if report.ok else EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
