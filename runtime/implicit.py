"""Implicit differentiation shared by every iterative solver: how gradients reach the inputs.

A solver's forward pass is an iteration z_{i+1} = step(z_i; theta) that ends at a point z*
characterised by an equation in z and the parameters theta (tensors that the solver's
callables close over, which may require grad). Three ways back (`Backward.mode`):

  UNROLL     autograd records every iteration: the exact derivative of the returned iterate,
             time and memory linear in the iterations.
  TRUNCATED  (k) the iterations before the last k run without autograd, the last k are recorded
             (`iterate`): memory O(k), a biased gradient that improves as the iteration
             contracts (the derivative of k steps from a fixed starting point).
  IMPLICIT   the implicit function theorem at z*, memory independent of the iterations:
               argmin      z* = argmin_z f(z; theta),  grad_z f(z*) = 0:
                           dz*/dtheta = -H^{-1} d2f/dz dtheta,  H = d2f/dz2     (`implicit_argmin`)
               fixed point z* = T(z*; theta):
                           dz*/dtheta = (I - dT/dz)^{-1} dT/dtheta          (`implicit_fixed_point`)
             The linear system is solved matrix-free (Hessian- or Jacobian-vector products by
             double backward) with conjugate gradients or a truncated Neumann series, per batch
             element. The derivative is exact at an exact solution; at an unconverged iterate it
             is the derivative of the solution that the iterate approximates.

Both implicit helpers return a tensor equal to z* whose backward is the implicit one, built as
a surrogate (Theseus / torchopt style): with g = grad_z f(z*, theta) evaluated at a detached
copy of z* (its graph reaches every tensor the callable depends on),

    z_out = z* - stopgrad(H^{-1}) g            (value: z*; g is only differentiated)

so that, for an incoming gradient v = dL/dz_out, dL/dtheta = -(H^{-1} v)' dg/dtheta: the
`torch.autograd.Function`s below receive v, solve with H, and hand the solution to g's graph.

Shapes: batch-first; z (B, ...) with rows independent (the callables act row by row, so H and
dT/dz are block diagonal over the batch); the linear solvers work on flat (B, k) vectors.
Gradients of the implicit helpers are first order (their backward is once differentiable).
"""
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Optional, TypeVar, Union

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

MatVec = Callable[[Tensor], Tensor]


class BackwardMode(Enum):
    """How gradients reach the inputs (module docstring)."""

    IMPLICIT = "implicit"
    UNROLL = "unroll"
    TRUNCATED = "truncated"


class LinearSolver(Enum):
    """Matrix-free solver of the implicit linear system."""

    CG = "cg"              # conjugate gradients (argmin: on H; fixed point: normal equations)
    NEUMANN = "neumann"    # truncated Neumann series / Richardson iteration


@dataclass(frozen=True)
class Backward:
    """Backward options. The language's spellings map onto the constructors:
    `backward=unroll` -> `Backward.unroll()`, `truncated(5)` -> `Backward.truncated(5)`,
    `implicit(cg, iters=20)` -> `Backward.implicit("cg", iters=20)`; `Backward.parse(name,
    *args, **kwargs)` does that mapping from a name and the option's arguments.

    iters, tol: the linear solver's iteration limit and relative residual tolerance (None:
    sqrt(eps) of the dtype); alpha: the Neumann step (docstring of `neumann`; None: for an
    argmin 1 / (1.2 lambda), lambda a power-iteration estimate of each row's largest Hessian
    eigenvalue (`POWER_ITERS` extra products), for a fixed point 1);
    k: the recorded iterations of TRUNCATED."""

    mode: BackwardMode = BackwardMode.IMPLICIT
    solver: LinearSolver = LinearSolver.CG
    iters: int = 20
    tol: Optional[float] = None
    alpha: Optional[float] = None
    k: int = 1

    def __post_init__(self):
        if not isinstance(self.mode, BackwardMode) or not isinstance(self.solver, LinearSolver):
            raise TypeError("Backward takes a BackwardMode and a LinearSolver; use the "
                            "constructors unroll(), truncated(k), implicit(solver, iters)")
        if self.iters < 1 or self.k < 1:
            raise ValueError(f"backward needs iters >= 1 and k >= 1, got iters={self.iters}, "
                             f"k={self.k}")
        if (self.alpha is not None and not self.alpha > 0) or (self.tol is not None
                                                               and not self.tol >= 0):
            raise ValueError(f"backward needs alpha > 0 and tol >= 0, got alpha={self.alpha}, "
                             f"tol={self.tol}")

    @classmethod
    def unroll(cls) -> "Backward":
        return cls(BackwardMode.UNROLL)

    @classmethod
    def truncated(cls, k: int = 1) -> "Backward":
        return cls(BackwardMode.TRUNCATED, k=_integer("truncated k", k))

    @classmethod
    def implicit(cls, solver: str = "cg", iters: int = 20, tol: Optional[float] = None,
                 alpha: Optional[float] = None) -> "Backward":
        return cls(BackwardMode.IMPLICIT, _enum(LinearSolver, solver, "implicit solver"),
                   _integer("implicit iters", iters), tol,
                   None if alpha is None else float(alpha))

    @classmethod
    def parse(cls, name: str, *args, **kwargs) -> "Backward":
        """`parse("unroll")`, `parse("truncated", 5)`, `parse("implicit", "cg", iters=20)`.
        Raises ValueError naming the option on an unknown name or bad arguments."""
        mode = _enum(BackwardMode, name, "backward")
        constructor = {BackwardMode.UNROLL: cls.unroll, BackwardMode.TRUNCATED: cls.truncated,
                       BackwardMode.IMPLICIT: cls.implicit}[mode]
        try:
            return constructor(*args, **kwargs)
        except TypeError as err:
            raise ValueError(f"backward={name}(...): {err}") from err


# ---- matrix-free linear solvers --------------------------------------------------------------

def conjugate_gradient(matvec: MatVec, b: Tensor, iters: int, tol: Optional[float] = None
                       ) -> Tensor:
    """x (B, k) with A_b x_b = b_b for every row, A symmetric positive definite per row, given
    by matvec: (B, k) -> (B, k) applying A_b to row b. Conjugate gradients from x = 0, with
    per-row step sizes; a row stops when ||r_b|| <= tol ||b_b|| (tol None: sqrt(eps)), or when
    it meets non-positive curvature p'A_b p <= 0 (A_b not positive definite there: the row
    keeps its current iterate), or after `iters` products."""
    tol = _tolerance(b, tol)
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = _dot(r, r)
    bb = rr.clone()
    active = bb > 0
    for _ in range(iters):
        if not bool(active.any()):
            break
        Ap = matvec(p)
        pAp = _dot(p, Ap)
        active = active & (pAp > 0)
        step = torch.where(active, rr / torch.where(active, pAp, 1.0), 0.0)[:, None]
        x = x + step * p
        r = r - step * Ap
        rr_new = _dot(r, r)
        beta = torch.where(active, rr_new / torch.where(active, rr, 1.0), 0.0)[:, None]
        p = torch.where(active[:, None], r + beta * p, p)
        rr = torch.where(active, rr_new, rr)
        active = active & (rr_new > (tol ** 2) * bb)
    return x


def neumann(matvec: MatVec, b: Tensor, iters: int, alpha: Union[float, Tensor] = 1.0,
            tol: Optional[float] = None) -> Tensor:
    """x (B, k) ~ A^{-1} b by the truncated Neumann series of A^{-1} with step alpha (a number,
    or (B, 1) for one step per row),

        x = alpha sum_{i<iters} (I - alpha A)^i b,

    i.e. Richardson's iteration x <- x + alpha (b - A x) from x = 0 (one product per term).
    It converges when the spectral radius of I - alpha A is below 1: for A = H symmetric
    positive definite, 0 < alpha < 2 / lambda_max(H); for A = I - J (a fixed point's adjoint
    system (I - J') w = v), alpha = 1 gives x = sum_i J'^i v, convergent for a contraction.
    With `tol`, it stops early once a term's largest entry is <= tol times x's."""
    x = torch.zeros_like(b)
    for _ in range(iters):
        step = alpha * (b - matvec(x))
        x = x + step
        if tol is not None and bool(step.abs().max() <= tol * x.abs().max()):
            break
    return x


# ---- implicit gradients ----------------------------------------------------------------------

def implicit_argmin(z_star: Tensor, objective: Callable[[Tensor], Tensor],
                    backward: Backward = Backward(), free: Optional[Tensor] = None) -> Tensor:
    """z* (B, ...) with the implicit-function-theorem gradient of z* = argmin_z objective(z).

    objective: z (B, ...) -> (B,), row-wise, closing over the parameters theta (any tensors
    that require grad). z_star: a local minimizer per row (its own graph is ignored).
    Backward: dL/dtheta = -w' d(grad_z f)/dtheta with H w = dL/dz*, H the Hessian of f at z*
    (Hessian-vector products by double backward), solved per row by `backward.solver`: CG
    (H must be positive definite) or Neumann with step `backward.alpha` (< 2 / lambda_max(H);
    None: estimated per row, see `Backward`).

    free (B, ...) bool, optional: the coordinates that are free at z* (e.g. not at a bound);
    the others get no implicit correction (dz_i/dtheta = 0 here; a caller that fixes them
    at a bound b(theta) substitutes b inside `objective` and in the result, so that the
    coupling H_FA db/dtheta reaches the free ones). The system is then H_FF w_F = v_F.
    Without autograd, or if the objective depends on no tensor that requires grad, returns
    z_star detached. The objective is evaluated once (at a leaf copy of z*; its autograd graph
    tells whether a parameter is involved)."""
    z = z_star.detach()
    if not torch.is_grad_enabled():
        return z
    with torch.enable_grad():
        leaf = z.clone().requires_grad_()
        value = objective(leaf)
        if value.shape != z.shape[:1]:
            raise ValueError(f"implicit_argmin: objective must return one value per row, shape "
                             f"({z.shape[0]},), got {tuple(value.shape)}")
        if not _reaches_another_leaf(value, leaf):
            return z
        (g,) = torch.autograd.grad(value.sum(), leaf, create_graph=True, allow_unused=True)
    if g is None or not g.requires_grad:
        raise ValueError("implicit_argmin: the objective's gradient does not depend on z or "
                         "on any parameter (no curvature to invert)")
    mask = None if free is None else free.expand_as(z)
    return _ArgminSurrogate.apply(z, g, leaf, mask, backward)


def implicit_fixed_point(z_star: Tensor, mapping: Callable[[Tensor], Tensor],
                         backward: Backward = Backward(solver=LinearSolver.NEUMANN)) -> Tensor:
    """z* (B, ...) with the implicit gradient of the fixed point z* = T(z*; theta).

    mapping: T, z (B, ...) -> (B, ...), row-wise, closing over theta. Backward: with
    v = dL/dz* and J = dT/dz at z*, solve the adjoint system (I - J') w = v and return
    dL/dtheta = w' dT/dtheta, by vector-Jacobian products only:
      NEUMANN  w = sum_{i<iters} J'^i v (alpha None or 1; alpha < 1 damps), for a contraction;
      CG       conjugate gradients on the normal equations (I - J)(I - J') w = (I - J) v
               (each product one VJP and one JVP by double backward; needs I - J nonsingular,
               converges with the square of its condition number).
    Memory: one evaluation of T, independent of the forward iterations; T is called once.
    Without autograd, or if T depends on no tensor that requires grad, returns z_star detached."""
    z = z_star.detach()
    if not torch.is_grad_enabled():
        return z
    with torch.enable_grad():
        leaf = z.clone().requires_grad_()
        Tz = mapping(leaf)
    if Tz.shape != z.shape:
        raise ValueError(f"implicit_fixed_point: mapping must keep the shape {tuple(z.shape)}, "
                         f"returned {tuple(Tz.shape)}")
    if not _reaches_another_leaf(Tz, leaf):
        return z
    return _FixedPointSurrogate.apply(z, Tz, leaf, backward)


def _reaches_another_leaf(out: Tensor, leaf: Tensor) -> bool:
    """Whether the autograd graph of `out` reaches a tensor that requires grad other than `leaf`
    (a parameter the callable closes over, or one it was computed from): a walk over the graph
    that stops at the first such leaf (AccumulateGrad node)."""
    stack, seen = [out.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):           # AccumulateGrad of a leaf that requires grad
            if node.variable is not leaf:
                return True
            continue
        stack.extend(parent for parent, _ in node.next_functions)
    return False


class _ArgminSurrogate(torch.autograd.Function):
    """Value z; backward hands -H^{-1} v (free rows only) to g = grad_z f, whose graph carries
    it to theta (and, harmlessly, to the private leaf it was evaluated at)."""

    @staticmethod
    def forward(ctx, z, g, leaf, free, backward):
        ctx.save_for_backward(g, leaf)
        ctx.free, ctx.options = free, backward
        ctx.set_materialize_grads(False)
        return z.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, v):
        if v is None:
            return None, None, None, None, None
        g, leaf = ctx.saved_tensors
        free, options = ctx.free, ctx.options
        B = v.shape[0]

        def restrict(x: Tensor) -> Tensor:
            return x if free is None else torch.where(free, x, 0.0)

        def hessian(p: Tensor) -> Tensor:                   # [H_FF 0; 0 I] p
            p = p.view_as(leaf)
            with torch.enable_grad():
                (Hp,) = torch.autograd.grad(g, leaf, restrict(p), retain_graph=True,
                                            allow_unused=True)
            Hp = torch.zeros_like(p) if Hp is None else restrict(Hp)
            if free is not None:
                Hp = Hp + torch.where(free, 0.0, p)
            return Hp.reshape(B, -1)

        w = _solve(hessian, restrict(v).reshape(B, -1), options)
        return None, -restrict(w.view_as(leaf)), None, None, None


class _FixedPointSurrogate(torch.autograd.Function):
    """Value z; backward hands w = (I - J')^{-1} v to Tz = T(z), whose graph carries it to theta."""

    @staticmethod
    def forward(ctx, z, Tz, leaf, backward):
        ctx.save_for_backward(Tz, leaf)
        ctx.options = backward
        ctx.set_materialize_grads(False)
        return z.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, v):
        if v is None:
            return None, None, None, None
        Tz, leaf = ctx.saved_tensors
        options = ctx.options
        B = v.shape[0]

        def adjoint(p: Tensor) -> Tensor:                    # (I - J') p
            with torch.enable_grad():
                (Jtp,) = torch.autograd.grad(Tz, leaf, p.view_as(Tz), retain_graph=True,
                                             allow_unused=True)
            return p if Jtp is None else p - Jtp.reshape(B, -1)

        rhs = v.reshape(B, -1)
        if options.solver is LinearSolver.NEUMANN:
            alpha = 1.0 if options.alpha is None else options.alpha
            w = neumann(adjoint, rhs, options.iters, alpha, options.tol)
        else:
            forward_map = _jacobian_product(Tz, leaf)
            w = conjugate_gradient(lambda p: forward_map(adjoint(p)), forward_map(rhs),
                                   options.iters, options.tol)
        return None, w.view_as(Tz), None, None


def _jacobian_product(Tz: Tensor, leaf: Tensor) -> MatVec:
    """p (B, k) -> (I - J) p with J = dTz/dleaf, by double backward: p -> J'u is linear in u,
    and its vector-Jacobian product with cotangent p is J p."""
    B = Tz.shape[0]
    with torch.enable_grad():
        dummy = torch.zeros_like(Tz, requires_grad=True)
        (Jt_dummy,) = torch.autograd.grad(Tz, leaf, dummy, create_graph=True, allow_unused=True)
    if Jt_dummy is None or not Jt_dummy.requires_grad:
        return lambda p: p

    def product(p: Tensor) -> Tensor:
        with torch.enable_grad():
            (Jp,) = torch.autograd.grad(Jt_dummy, dummy, p.view_as(leaf), retain_graph=True)
        return p - Jp.reshape(B, -1)

    return product


POWER_ITERS = 10     # Hessian-vector products to estimate the Neumann step (alpha=None)


def _solve(matvec: MatVec, b: Tensor, options: Backward) -> Tensor:
    if options.solver is LinearSolver.CG:
        return conjugate_gradient(matvec, b, options.iters, options.tol)
    alpha = options.alpha
    if alpha is None:
        alpha = 1.0 / (1.2 * largest_eigenvalue(matvec, b, POWER_ITERS))[:, None]
    return neumann(matvec, b, options.iters, alpha)



def largest_eigenvalue(matvec: MatVec, b: Tensor, iters: int) -> Tensor:
    """(B,) power-iteration estimate of each row's largest |eigenvalue| of a symmetric A, from
    the start ones + b / ||b|| (a lower bound; rows with a zero estimate get 1)."""
    v = torch.ones_like(b) + b / _dot(b, b).sqrt().clamp_min(torch.finfo(b.dtype).tiny)[:, None]
    estimate = torch.ones_like(b[:, 0])
    for _ in range(iters):
        v = v / _dot(v, v).sqrt().clamp_min(torch.finfo(b.dtype).tiny)[:, None]
        Av = matvec(v)
        estimate = _dot(Av, Av).sqrt()
        v = Av
    return torch.where(estimate > 0, estimate, 1.0)


# ---- unrolled and truncated iterations -------------------------------------------------------

State = TypeVar("State", bound=tuple)


def iterate(step: Callable[[State, Tensor], State], state: State, iters: int,
            backward: Backward, stop: Callable[[State], Tensor]) -> tuple[State, Tensor]:
    """Run state <- step(state, active) at most `iters` times, recording autograd as
    backward.mode says, and return (state, iterations (B,) int64 taken per row).

    state: a NamedTuple or tuple of batch-first tensors (B, ...); step must act row by row
    (active (B,) bool marks the rows whose result is kept: a step may skip work for the
    others). stop(state) -> (B,) bool marks rows that are done (converged or failed): they
    stop changing (their entries are kept by `torch.where`) and the loop ends once every row
    is done.
      UNROLL     every iteration recorded (if autograd is enabled).
      TRUNCATED  iters - k iterations without autograd, then k recorded steps of every row
                 (a done row steps too, so that its gradient is that of k steps, not zero).
      IMPLICIT   every iteration without autograd; the caller attaches `implicit_argmin` or
                 `implicit_fixed_point` at the result.
    """
    record = backward.mode is BackwardMode.UNROLL and torch.is_grad_enabled()
    free_iters = iters
    if backward.mode is BackwardMode.TRUNCATED and torch.is_grad_enabled():
        free_iters = max(iters - backward.k, 0)
    with torch.set_grad_enabled(record):
        state, iterations = _iterate_until_done(step, state, free_iters, stop)
    if backward.mode is BackwardMode.TRUNCATED and torch.is_grad_enabled():
        every_row = torch.ones_like(iterations, dtype=torch.bool)
        for _ in range(min(backward.k, iters)):
            state = step(state, every_row)
        iterations = iterations + min(backward.k, iters)
    return state, iterations


def _iterate_until_done(step: Callable[[State, Tensor], State], state: State, iters: int,
                        stop: Callable[[State], Tensor]) -> tuple[State, Tensor]:
    done = stop(state)
    iterations = torch.zeros(done.shape, dtype=torch.int64, device=done.device)
    for _ in range(iters):
        if bool(done.all()):
            break
        new = step(state, ~done)
        state = _same_kind(state, [torch.where(_rows(done, old), old, s)
                                   for s, old in zip(new, state)])
        iterations = iterations + (~done).to(iterations.dtype)
        done = done | stop(state)
    return state, iterations


# ---- small helpers ---------------------------------------------------------------------------

def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise inner products of (B, k) tensors: (B,)."""
    return (a * b).sum(-1)


def _rows(mask: Tensor, like: Tensor) -> Tensor:
    """(B,) mask viewed to broadcast against like (B, ...)."""
    return mask.view(-1, *[1] * (like.dim() - 1))


def _same_kind(state: State, items: list) -> State:
    """items as the same kind of tuple as state (a NamedTuple or a plain tuple)."""
    return type(state)(*items) if hasattr(state, "_fields") else tuple(items)


def _tolerance(b: Tensor, tol: Optional[float]) -> float:
    return torch.finfo(b.dtype).eps ** 0.5 if tol is None else tol


def _enum(kind: type, name, what: str):
    if isinstance(name, kind):
        return name
    try:
        return kind(name)
    except ValueError as err:
        allowed = ", ".join(e.value for e in kind)
        raise ValueError(f"unknown {what} {name!r}; expected one of: {allowed}") from err


def _integer(what: str, value) -> int:
    if isinstance(value, bool) or int(value) != value:
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return int(value)
