"""The joint family's backend: a plan with `agents N` solved by `solve joint(...)`.

Every agent has the plan's states x (n), controls u (m), dynamics, costs and inputs; bound values
carry an agent axis: states and inputs (B, N, *shape), params and learnables are shared. A solve:

1. proposals: K candidate trajectories per agent, x (B, N, K, T+1, n), u (B, N, K, T, m),
   treated as constants (no gradient flows through them):
     lattice / cem / mppi: a nominal plan per agent (solve ilqr, cem or mppi on the agent's own
       costs, the B*N agents as one batch), plus perturbations u_k = u_nom + sum_d c_kd D_d of
       its controls along `modes` smooth directions per control component, projected onto the
       null space of the terminal-state Jacobian dx_T/du (`runtime.joint_proposals.
       endpoint_projector`: every candidate ends where the nominal does, exactly for linear
       dynamics) and scaled so that c = 1 moves the states by at most 1 (max over t and
       components). The coefficients c are a lattice of `levels` values in [-spread, spread]
       (lattice; K = levels^(modes m)) or Gaussian with std spread / 2 (cem, mppi; candidate 0
       is the nominal);
     input: the caller's controls `candidates=U` (B, N, K, T, m), rolled out from x0.
   Controls are clipped to the plan's control boxes.
2. energies, evaluated from the plan's typed expressions on all rows at once:
     unary U (B, N, K) = the costs (stage summed over t < T, final at x_T) + the `energy agent`
       lines (same timing);
     pairwise P (B, N, N, K, K): `energy pair` lines for every ordered pair i != j and candidate
       pair (a, c), `x` meaning agent i's candidate a and `other.x` agent j's candidate c (stage
       lines summed over t < T by a loop over t, final lines at x_T); `runtime.joint` reads its
       symmetric part, so each unordered pair counts once.
3. inference (`runtime.joint`: Exact, BeliefPropagation, MeanField): marginals (B, N, K) and a
   joint plan, which `refine` steps of greedy coordinate descent (`runtime.joint.refine_plan`)
   then improve; E(plan) is differentiable in the learnables.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from compiler.context import PlanInfo
from compiler.evaluate import evaluate
from compiler.ir import Expr, VarRef
from compiler.layout import Layout
from compiler.lower.backends import ILQRBackend
from planlang.ast import VarKind
from runtime.joint import BeliefPropagation, Exact, JointResult, MeanField, joint_energy, refine_plan
from runtime.joint_proposals import Candidates, coefficient_lattice, endpoint_projector, sine_modes


@dataclass
class JointSolution:
    """The joint plan and what led to it (B scenes, N agents, K candidates each)."""

    x: Tensor                 # (B, N, T+1, n) states of the joint plan
    u: Tensor                 # (B, N, T, m) its controls
    plan: Tensor              # (B, N) int64 chosen candidate of each agent
    energy: Tensor            # (B,) E(plan), differentiable in the learnables
    marginals: Tensor         # (B, N, K) p(s_i = k) from the inference method
    log_marginals: Tensor     # (B, N, K)
    candidates: Candidates    # x (B, N, K, T+1, n), u (B, N, K, T, m)
    unary: Tensor             # (B, N, K)
    pairwise: Tensor          # (B, N, N, K, K)
    solver: str = "joint"
    gt_index: Tensor | None = None    # (B, N) where a reference trajectory was inserted (training)


@dataclass
class AgentValues:
    """Bound values of a joint plan: per-agent ones (B or 1, N, *shape), shared ones (B or 1, *shape)."""

    per_agent: dict[VarRef, Tensor]
    shared: dict[VarRef, object]
    x0: Tensor                # (B, N, n)
    like: Tensor

    def rows(self, lead: tuple[int, ...]) -> dict:
        """Every value as one row per element of `lead` = (B, N, ...), flattened."""
        return {**self.agent_rows(lead), **self.shared_rows(lead)}

    def agent_rows(self, lead: tuple[int, ...], agent: Tensor | None = None, prefix: str = "") -> dict:
        """Per-agent values of agents `agent` (P,) along lead[1] (all N agents if None) as rows of
        lead = (B, N or P, ...), renamed `prefix + name`."""
        rest = lead[1:]
        out = {}
        for ref, value in self.per_agent.items():
            v = value if agent is None else value[:, agent]
            tail = v.shape[2:]
            v = v.reshape(v.shape[:2] + (1,) * (len(rest) - 1) + tail)
            out[VarRef(ref.kind, prefix + ref.name)] = v.expand(lead + tail).reshape((-1,) + tail)
        return out

    def shared_rows(self, lead: tuple[int, ...]) -> dict:
        """Params, learnables and blocks; batch-specific ones (B rows) repeated over lead[1:]."""
        B, out = lead[0], {}
        for ref, value in self.shared.items():
            if torch.is_tensor(value) and value.shape[0] == B > 1:
                tail = value.shape[1:]
                value = value.reshape((B,) + (1,) * (len(lead) - 1) + tail).expand(lead + tail).reshape((-1,) + tail)
            out[ref] = value
        return out


def bind_agents(module, values: dict) -> AgentValues:
    """Bind `module(**values)` of a joint plan: states and inputs (N, *shape) or (B, N, *shape)."""
    info: PlanInfo = module.info
    N = info.agents.count
    module.reject_unknown(values)
    like = module._witness(values)
    per_agent, shared, states, batches = {}, {}, [], {}
    for name, var in info.variables.items():
        kind = var.ref.kind
        if kind is VarKind.CONTROL:
            continue
        if kind is VarKind.LEARN:
            shared[var.ref] = module.learned(name).to(dtype=like.dtype, device=like.device).unsqueeze(0)
            continue
        if kind is VarKind.PARAM:
            shared[var.ref] = module._batched(var, values.get(name), like)
            batches[name] = shared[var.ref].shape[0]
            continue
        value = values.get(name)
        if value is None and module.default(name) is not None:
            value = module.default(name).expand((N,) + var.shape)
        value = module._batched(replace(var, shape=(N,) + var.shape), value, like)
        batches[name] = value.shape[0]
        if kind is VarKind.STATE:
            states.append(value.reshape(value.shape[0], N, -1))
        else:
            per_agent[var.ref] = value
    size = module._batch_size(batches)
    for name, callee in info.blocks.items():
        shared[callee.ref] = module.blocks[name]
    x0 = torch.cat([s.expand(size, -1, -1) for s in states], dim=2)
    per_agent = {ref: v.expand((size,) + v.shape[1:]) for ref, v in per_agent.items()}
    return AgentValues(per_agent, shared, x0, like)


class JointBackend:
    """Proposals, energies and inference of a joint plan (module docstring)."""

    def __init__(self, graph, info: PlanInfo, layout: Layout, nominal):
        self.info, self.layout, self.horizon = info, layout, info.horizon
        self.agents = info.agents
        o = info.options
        self.proposals, self.inference_option = o["proposals"], o["inference"]
        self.refine_steps, self.samples = o["refine"], o["samples"] or 32
        # the agents' own problem (dynamics, costs, boxes) as a trajectory plan, solved for the nominal
        from compiler.solvers.ilqr import ILQR            # (compiler.solvers imports this module)
        own_options = {**ILQR.options.defaults(), "constraint_tol": 1e-6}
        self.own = ILQRBackend(graph, replace(info, agents=None, solver="ilqr", options=own_options), layout)
        self.nominal = nominal(graph, info) if nominal is not None else None

    def as_text(self) -> str:
        options = ", ".join(f"{k}={v}" for k, v in self.info.options.items())
        a = self.agents
        return (f"JointBackend: solve joint({options}), {a.count} agents, horizon {self.horizon}, "
                f"n={self.layout.n}, m={self.layout.m}; unary: {len(self.own.stage_costs)} stage + "
                f"{len(self.own.final_costs)} final costs, {len(a.agent_stage)} stage + {len(a.agent_final)} final "
                f"agent energies; pairwise: {len(a.pair_stage)} stage + {len(a.pair_final)} final pair energies")

    # ------------------------------------------------------------------ solve
    def solve(self, module, values: dict, reference_u: Tensor | None = None,
              generator: torch.Generator | None = None) -> JointSolution:
        """Bind `values`, propose, score and infer. `candidates=` (B, N, K, T, m) controls are the
        proposals of `proposals=input`. `reference_u` (B, N, T, m), rolled out through the plan's
        dynamics, replaces a random candidate of every agent (index drawn by `generator`, returned
        as `gt_index`): the ground truth of the classification loss."""
        values = dict(values)
        given = values.pop("candidates", None)
        bound = bind_agents(module, values)
        candidates = self.propose(bound, given)
        gt_index = None
        if reference_u is not None:
            candidates, gt_index = self._insert(bound, candidates, reference_u, generator)
        unary, pairwise = self.energies(bound, candidates)
        result = self.infer(unary, pairwise)
        B, N = result.plan.shape
        pick = result.plan[:, :, None, None, None]
        x = candidates.x.gather(2, pick.expand(B, N, 1, *candidates.x.shape[3:])).squeeze(2)
        u = candidates.u.gather(2, pick.expand(B, N, 1, *candidates.u.shape[3:])).squeeze(2)
        return JointSolution(x, u, result.plan, result.energy, result.marginals, result.log_marginals,
                             candidates, unary, pairwise, gt_index=gt_index)

    def infer(self, unary: Tensor, pairwise: Tensor) -> JointResult:
        option = self.inference_option
        method = {"exact": lambda a: Exact(), "bp": lambda a: BeliefPropagation(a["iters"], a["damping"]),
                  "mean_field": lambda a: MeanField(a["iters"], a["damping"])}[option.name](option.args)
        result = method(unary, pairwise)
        if self.refine_steps == 0:
            return result
        plan = refine_plan(unary, pairwise, result.plan, self.refine_steps)
        return result._replace(plan=plan, energy=joint_energy(unary, pairwise, plan))

    # -------------------------------------------------------------- proposals
    def propose(self, bound: AgentValues, given: Tensor | None) -> Candidates:
        B, N, n = bound.x0.shape
        T, m = self.horizon, self.layout.m
        if self.proposals.name == "input":
            if given is None:
                raise TypeError("solve joint(proposals=input) needs the candidates: module(..., candidates=U) "
                                f"with U of shape (B, N, K, {T}, {m})")
            u = torch.as_tensor(given).to(bound.like)
            if u.dim() != 5 or tuple(u.shape[3:]) != (T, m) or u.shape[1] != N or u.shape[0] not in (1, B):
                raise ValueError(f"candidates must have shape (B, N, K, T, m) = ({B}, {N}, K, {T}, {m}), "
                                 f"got {tuple(u.shape)}")
            return self.rollout(bound, u.expand(B, -1, -1, -1, -1))
        if given is not None:
            raise TypeError(f"candidates= is given only with solve joint(proposals=input); this plan uses "
                            f"proposals={self.proposals.name}")
        with torch.no_grad():
            env = bound.rows((B, N))
            x0 = bound.x0.reshape(B * N, n)
            nominal = (self.own if self.nominal is None else self.nominal)(env, x0, bound.like, None).u
            directions = self._directions(env, x0, nominal.detach(), bound.like)      # (B N, d, T m)
            args = self.proposals.args
            if self.proposals.name == "lattice":
                coefficients = coefficient_lattice(args["levels"], args["spread"], directions.shape[1], bound.like)
            else:
                generator = torch.Generator(device=x0.device).manual_seed(int(args["seed"]))
                coefficients = torch.randn(self.samples, directions.shape[1], generator=generator,
                                           dtype=x0.dtype, device=x0.device) * (args["spread"] / 2)
                coefficients[0] = 0.0
            u = nominal.reshape(B * N, 1, T * m) + coefficients @ directions
            return self.rollout(bound, u.reshape(B, N, -1, T, m))

    def _directions(self, env: dict, x0: Tensor, nominal: Tensor, like: Tensor) -> Tensor:
        """(R, modes m, T m): smooth control perturbations that keep x_T (module docstring)."""
        R, T, m = nominal.shape
        modes = self.proposals.args["modes"]
        step = self.own.dynamics(env, like)
        with torch.enable_grad():
            u = nominal.clone().requires_grad_(True)
            final = self._roll(step, x0, u)[:, -1]
            jacobian = torch.stack([torch.autograd.grad(final[:, k].sum(), u, retain_graph=True)[0].reshape(R, T * m)
                                    for k in range(final.shape[1])], dim=1)               # (R, n, T m)
        shapes = sine_modes(T, modes, like)                                               # (modes+2, T)
        eye = torch.eye(m, dtype=like.dtype, device=like.device)
        raw = (shapes[:, None, :, None] * eye[None, :, None, :]).reshape(-1, T * m)      # ((modes+2) m, T m)
        projected = endpoint_projector(jacobian) @ raw.T                                  # (R, T m, (modes+2) m)
        directions = torch.linalg.qr(projected).Q[:, :, :modes * m].mT                    # (R, modes m, T m)
        d = directions.shape[1]
        start = x0[:, None].expand(R, d, -1).reshape(R * d, -1)
        base = self._roll(step, x0, nominal)
        moved = self._roll(step, start, (nominal[:, None] + directions.reshape(R, d, T, m)).reshape(R * d, T, m))
        deviation = (moved.reshape(R, d, T + 1, -1) - base[:, None]).abs().amax((2, 3))
        return directions / deviation.clamp_min(1e-12)[..., None]

    @staticmethod
    def _roll(step, x0: Tensor, u: Tensor) -> Tensor:
        xs = [x0]
        for t in range(u.shape[1]):
            xs.append(step(xs[-1], u[:, t]))
        return torch.stack(xs, dim=1)

    def rollout(self, bound: AgentValues, u: Tensor) -> Candidates:
        """Candidates from controls u (B, N, K, T, m), clipped to the control boxes, rolled out from x0."""
        B, N, K, T, m = u.shape
        env = bound.rows((B, N, K))
        lower, upper = self.own.control_bounds(env, bound.like)
        if lower is not None:
            rows = u.reshape(B * N * K, T, m)
            u = torch.minimum(torch.maximum(rows, lower), upper).reshape(B, N, K, T, m)
        x0 = bound.x0[:, :, None].expand(B, N, K, -1).reshape(B * N * K, -1)
        x = self._roll(self.own.dynamics(env, bound.like), x0, u.reshape(B * N * K, T, m))
        return Candidates(x.reshape(B, N, K, T + 1, -1), u)

    def _insert(self, bound: AgentValues, candidates: Candidates, u_ref: Tensor, generator):
        """Candidates with the reference controls (rolled out from x0) at a random index per agent."""
        B, N, K = candidates.x.shape[:3]
        u_ref = u_ref.to(candidates.u)
        ref = self.rollout(bound, u_ref[:, :, None])
        index = torch.randint(K, (B, N), generator=generator, device=u_ref.device)
        scene = torch.arange(B, device=index.device)[:, None]
        agent = torch.arange(N, device=index.device)[None, :]
        x, u = candidates.x.clone(), candidates.u.clone()
        x[scene, agent, index] = ref.x[:, :, 0]
        u[scene, agent, index] = ref.u[:, :, 0]
        return Candidates(x, u), index

    # --------------------------------------------------------------- energies
    def energies(self, bound: AgentValues, candidates: Candidates) -> tuple[Tensor, Tensor]:
        """Unary (B, N, K) and pairwise (B, N, N, K, K) energies of the candidates."""
        return self.unary(bound, candidates), self.pairwise(bound, candidates)

    def unary(self, bound: AgentValues, c: Candidates) -> Tensor:
        B, N, K, T1, n = c.x.shape
        T, like = T1 - 1, bound.like
        a = self.agents
        x_stage, u_stage = c.x[:, :, :, :-1].reshape(-1, n), c.u.reshape(-1, c.u.shape[-1])
        env = bound.rows((B, N, K, T))
        total = self.own.stage_costs_of(env, like)(x_stage, u_stage).reshape(B, N, K, T).sum(3)
        total = total + _summed(a.agent_stage, {**env, **self.layout.numeric(x_stage, u_stage)}, like,
                                (B, N, K, T)).sum(3)
        env = bound.rows((B, N, K))
        x_final = c.x[:, :, :, -1].reshape(-1, n)
        total = total + self.own.final_costs_of(env, like)(x_final).reshape(B, N, K)
        return total + _summed(a.agent_final, {**env, **self.layout.numeric(x_final, None)}, like, (B, N, K))

    def pairwise(self, bound: AgentValues, c: Candidates) -> Tensor:
        B, N, K, T1, n = c.x.shape
        a, like = self.agents, bound.like
        out = like.new_zeros(B, N, N, K, K)
        if not (a.pair_stage or a.pair_final):
            return out
        i, j = (~torch.eye(N, dtype=torch.bool, device=c.x.device)).nonzero(as_tuple=True)
        P = i.numel()
        lead = (B, P, K, K)
        env = {**bound.agent_rows(lead, i), **bound.agent_rows(lead, j, "other."), **bound.shared_rows(lead)}

        def at(t: int, with_controls: bool) -> dict:
            mine = self.layout.numeric(c.x[:, i, :, t, None].expand(lead + (n,)).reshape(-1, n),
                                       c.u[:, i, :, t, None].expand(lead + (c.u.shape[-1],)).reshape(-1, c.u.shape[-1])
                                       if with_controls else None)
            theirs = self.layout.numeric(c.x[:, j, None, :, t].expand(lead + (n,)).reshape(-1, n),
                                         c.u[:, j, None, :, t].expand(lead + (c.u.shape[-1],)).reshape(-1, c.u.shape[-1])
                                         if with_controls else None)
            return {**env, **mine, **{VarRef(r.kind, "other." + r.name): v for r, v in theirs.items()}}

        total = like.new_zeros(lead)
        if a.pair_stage:
            for t in range(T1 - 1):
                total = total + _summed(a.pair_stage, at(t, True), like, lead)
        if a.pair_final:
            total = total + _summed(a.pair_final, at(T1 - 1, False), like, lead)
        return out.index_put((torch.arange(B, device=i.device)[:, None], i[None], j[None]), total)


def _summed(exprs: tuple[Expr, ...], env: dict, like: Tensor, lead: tuple[int, ...]) -> Tensor:
    """The sum of scalar expressions evaluated on rows, as a tensor of shape `lead`."""
    total = like.new_zeros(lead)
    for expr in exprs:
        value = evaluate(expr, env, like)
        total = total + (value.reshape((1,) * len(lead)) if value.shape[0] == 1 else value.reshape(lead))
    return total

