"""`solve joint(...)`: joint planning of a plan's `agents N` as an energy-based model over K
candidate trajectories per agent (the joint family; `compiler.lower.joint` documents the math).

    solve joint(samples=64, proposals=lattice(levels=5, spread=2), inference=bp(iters=30, damping=0.5))

Options: `proposals` lattice(levels, spread, modes) | cem(spread, modes, seed) | mppi(spread,
modes, seed) | input; `samples` K (cem, mppi; a lattice has levels^(modes m) candidates, and
`samples` must then be left out or equal it); `inference` exact | bp(iters, damping) |
mean_field(iters, damping); `refine` greedy coordinate-descent steps on the joint energy after
inference (0: off).
"""
from __future__ import annotations

from dataclasses import replace

from compiler.lower.joint import JointBackend
from compiler.options import Number, Option, Schema, Variant
from compiler.solvers.base import ConstraintSupport, Solver
from compiler.solvers.sampling import CEM, MPPI
from planlang.graph import NodeKind
from runtime.joint import MAX_EXACT_CONFIGURATIONS

_ITERS = Option(Number(integer=True, minimum=1), 20, "message-passing iterations")
_DAMPING = Option(Number(minimum=0, maximum=0.99), 0.0, "m <- damping m_old + (1 - damping) m_new")
_SPREAD = Option(Number(minimum=0), 2.0, "largest state deviation of a candidate from the nominal (per direction)")
_MODES = Option(Number(integer=True, minimum=1, maximum=4), 1, "smooth perturbation directions per control")
_SEED = Option(Number(integer=True, minimum=0), 0, "seed of the perturbations and of the sampler")
PROPOSALS = Variant({
    "lattice": Schema(levels=Option(Number(integer=True, minimum=2, maximum=15), 5, "coefficient values per direction"),
                      spread=_SPREAD, modes=_MODES),
    "cem": Schema(spread=_SPREAD, modes=_MODES, seed=_SEED),
    "mppi": Schema(spread=_SPREAD, modes=_MODES, seed=_SEED),
    "input": Schema(),
})
INFERENCE = Variant({
    "exact": Schema(),
    "bp": Schema(iters=_ITERS, damping=_DAMPING),
    "mean_field": Schema(iters=Option(Number(integer=True, minimum=1), 50, "iterations"),
                         damping=Option(Number(minimum=0, maximum=0.99), 0.5, "q <- damping q_old + ...")),
})


class Joint(Solver):
    name = "joint"
    doc = "joint multi-agent planning: candidates per agent, unary + pairwise energies, BP / exact / mean field"
    family = "joint"
    options = Schema(samples=Option(Number(integer=True, minimum=2, maximum=4096), None,
                                    "candidates per agent K (default 32; a lattice has its own count)"),
                     proposals=Option(PROPOSALS, PROPOSALS.parse_default("lattice"), "where the candidates come from"),
                     inference=Option(INFERENCE, INFERENCE.parse_default("bp"), "how marginals and the plan are found"),
                     refine=Option(Number(integer=True, minimum=0), 50,
                                   "greedy coordinate-descent steps on the joint energy after inference"))
    smooth = False
    exact = False
    constraints = ConstraintSupport.CONTROL_BOX

    def accepts(self, graph, info):
        return [(d["span"], "solve joint takes no constraint lines", "write the condition as an energy")
                for _, d in graph.nodes(data=True) if d["kind"] is NodeKind.CONSTRAINT]

    def validate(self, options, info):
        problems = []
        proposals = options["proposals"]
        K = options["samples"]
        if proposals.name == "lattice":
            count = proposals.args["levels"] ** (proposals.args["modes"] * sum(v.size for v in info.variables.values()
                                                                              if v.ref.kind.value == "control"))
            if count > 4096:
                problems.append(f"proposals=lattice(...) gives levels^(modes m) = {count} candidates per agent, more "
                                "than 4096; use fewer levels or modes")
            if K is not None and K != count:
                problems.append(f"samples={K} but proposals=lattice(...) gives levels^(modes m) = {count} candidates; "
                                "leave samples out")
            K = count
        elif proposals.name == "input":
            if K is not None:
                problems.append("samples= is not used with proposals=input (the caller gives the candidates)")
            return problems
        K = 32 if K is None else K
        if options["inference"].name == "exact" and K ** info.agents.count > MAX_EXACT_CONFIGURATIONS:
            problems.append(f"inference=exact enumerates K^N = {K}^{info.agents.count} joint configurations, above the "
                            f"limit {MAX_EXACT_CONFIGURATIONS}; use bp(...) or mean_field(...)")
        return problems

    def backend(self, graph, info, layout):
        proposals = info.options["proposals"]
        nominal = None
        if proposals.name in ("cem", "mppi"):
            sampler = {"cem": CEM(), "mppi": MPPI()}[proposals.name]

            def nominal(graph, info):
                options = {**sampler.options.defaults(), "seed": proposals.args["seed"]}
                return sampler.backend(graph, replace(info, agents=None, solver=sampler.name, options=options), layout)
        return JointBackend(graph, info, layout, nominal)
