"""Native (C) kernels for the iterations of single-shooting iLQR on the CPU.

On CPU, an iLQR iteration in torch is thousands of tiny tensor ops (an rk4 step of a two-link
arm alone is ~200), each costing microseconds of dispatch: ~125 ms per iteration for n = 4,
T = 60 (benchmarks/README.md). The compiler instead generates the plan's dynamics and costs as
straight-line C (`compiler.lower.native`), with their exact derivatives by forward-mode dual
numbers, and this module compiles that code with the kernels of `runtime/native_ilqr.c`
(rollout, line search, stage models, backward pass with box QPs) into a shared library, cached
by the hash of its source, and runs them on float64 arrays, the batch looped in C.

The iteration logic (statuses, regularization schedule, stopping rule) stays in `runtime.ilqr`;
`NativeKernels` only replaces its four steps, so both paths follow one algorithm. Gradients are
unchanged: the implicit backward step runs in torch at the returned solution.

A C compiler (`$CC`, else `cc`) is needed; without one, `native_library` raises `NativeUnavailable`
and the solver runs on the torch kernels. Libraries are cached in `$PLANLANG_CACHE/native`
(default ~/.cache/planlang/native).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor

from runtime.box_lqr import costates
from runtime.ilqr_backward import Policy
from runtime.ilqr_derivatives import FinalDerivatives, StageDerivatives

if TYPE_CHECKING:
    from runtime.ilqr import ILQROptions

_HERE = Path(__file__).parent
_FLAGS = ("-O2", "-shared", "-fPIC", "-std=c99", "-D_DEFAULT_SOURCE")


class NativeUnavailable(Exception):
    """No C compiler, or the generated code did not compile (the message has its output)."""


def cache_dir() -> Path:
    root = os.environ.get("PLANLANG_CACHE") or Path.home() / ".cache" / "planlang"
    return Path(root) / "native"


def compiler() -> Optional[str]:
    """The C compiler: $CC, else cc, else gcc; None if none is on the PATH."""
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name and shutil.which(name):
            return name
    return None


def full_source(model_source: str) -> str:
    """The generated model code (which defines NX, NU, NZ, NP first) with the number types and
    the kernels."""
    head, _, body = model_source.partition("/* model */")
    return "\n".join([head, (_HERE / "native_numbers.h").read_text(), body,
                      (_HERE / "native_ilqr.c").read_text()])


@lru_cache(maxsize=64)
def native_library(model_source: str) -> ctypes.CDLL:
    """The compiled kernels of one plan's generated code (compiled once, then cached on disk)."""
    source = full_source(model_source)
    cc = compiler()
    if cc is None:
        raise NativeUnavailable("no C compiler found (set $CC or install cc)")
    key = hashlib.sha256("\0".join((cc, *_FLAGS, source)).encode()).hexdigest()[:20]
    target = cache_dir() / f"ilqr_{key}.so"
    if not target.exists():
        try:
            _compile(cc, source, target)
        except OSError as err:
            raise NativeUnavailable(f"cannot build in {target.parent} ({err}); set $PLANLANG_CACHE") from err
    return _declare(ctypes.CDLL(str(target)))


def _compile(cc: str, source: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        c_file, so_file = Path(tmp) / "plan.c", Path(tmp) / "plan.so"
        c_file.write_text(source)
        done = subprocess.run([cc, *_FLAGS, "-o", str(so_file), str(c_file), "-lm"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise NativeUnavailable(f"{cc} failed on the generated code:\n{done.stderr[-2000:]}")
        os.replace(so_file, target)           # atomic: concurrent processes see a whole file


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    L, P, D = ctypes.c_long, ctypes.c_void_p, ctypes.c_double
    lib.pl_sizes.argtypes = [P]
    lib.pl_rollout.argtypes = [L, L] + [P] * 9
    lib.pl_line_search.argtypes = [L, L] + [P] * 11 + [P, L, D, D, D] + [P] * 4
    lib.pl_model.argtypes = [L, L] + [P] * 9
    lib.pl_curvature.argtypes = [L, L] + [P] * 5
    lib.pl_backward.argtypes = [L, L] + [P] * 10 + [L, D, D, D, L] + [P] * 5
    for fn in (lib.pl_sizes, lib.pl_rollout, lib.pl_line_search, lib.pl_model, lib.pl_curvature,
               lib.pl_backward):
        fn.restype = None
    return lib


def _sizes(lib: ctypes.CDLL) -> tuple[int, ...]:
    """(NX, NU, NP, NC, NE) of a library."""
    out = (ctypes.c_long * 5)()
    lib.pl_sizes(out)
    return tuple(out)


def _ptr(t: Optional[Tensor]):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _f64(t: Optional[Tensor], shape: Optional[tuple] = None) -> Optional[Tensor]:
    """A contiguous float64 CPU copy (or view) of t, expanded to shape."""
    if t is None:
        return None
    t = t.detach().to(device="cpu", dtype=torch.float64)
    if shape is not None:
        t = t.expand(shape)
    return t.contiguous()


class NativeKernels:
    """The four steps of an iLQR iteration (see `runtime.ilqr._TorchKernels`) on the compiled
    library, for one batch: x0 (B, n), per-element parameters p (B, P), limits (B, T, m) or None,
    and for an inner solve of the augmented Lagrangian the stage multipliers and penalty
    stage_data = [lam, nu, rho] (B, T, NC + NE + 1) (`runtime.ilqr_constraints.augmented_costs`).
    Every tensor in and out is float64 on the CPU."""

    def __init__(self, lib: ctypes.CDLL, x0: Tensor, params: Tensor, lo: Optional[Tensor],
                 hi: Optional[Tensor], horizon: int, m: int, options: "ILQROptions",
                 stage_data: Optional[Tensor] = None):
        B, self.n = x0.shape
        self.lib, self.B, self.T, self.m, self.options = lib, B, horizon, m, options
        nx, nu, n_params, nc, ne = _sizes(lib)
        width = None if stage_data is None else stage_data.shape[-1]
        if (self.n, m, params.shape[-1]) != (nx, nu, n_params) or width not in (None, nc + ne + 1):
            raise ValueError(f"native kernels for n={nx}, m={nu}, {n_params} parameters and "
                             f"{nc + ne + 1} stage data columns got n={self.n}, m={m}, "
                             f"{params.shape[-1]} and {width}")
        self.x0 = _f64(x0)
        # p is read (B, NP) row by row; a plan without parameters still passes one row of storage
        self.p = _f64(params, (B, params.shape[-1])) if params.shape[-1] else torch.zeros(B, 1, dtype=torch.float64)
        self.lo = _f64(lo, (B, horizon, m))
        self.hi = _f64(hi, (B, horizon, m))
        self.w = _f64(stage_data, (B, horizon, stage_data.shape[-1])) if stage_data is not None else None

    def _new(self, *shape: int) -> Tensor:
        return torch.empty(*shape, dtype=torch.float64)

    def rollout(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x_{t+1} = f(x_t, clamp(u_t)) from x0, and its cost."""
        B, T = self.B, self.T
        u_in = _f64(u)
        x, u_out, J = self._new(B, T + 1, self.n), self._new(B, T, self.m), self._new(B)
        self.lib.pl_rollout(B, T, _ptr(self.x0), _ptr(u_in), _ptr(self.lo), _ptr(self.hi),
                            _ptr(self.p), _ptr(self.w), _ptr(x), _ptr(u_out), _ptr(J))
        return x, u_out, J

    def model(self, x: Tensor, u: Tensor) -> tuple[StageDerivatives, FinalDerivatives, Tensor]:
        """The model of every stage and of the final cost (step 1 of `runtime.ilqr`: Gauss-Newton, or
        with the dynamics curvature weighted by the costates for `options.newton`), and where it
        is finite."""
        B, T, n, N = self.B, self.T, self.n, self.n + self.m
        F, g, C = self._new(B, T, n, N), self._new(B, T, N), self._new(B, T, N, N)
        gT, CT = self._new(B, n), self._new(B, n, n)
        self.lib.pl_model(B, T, _ptr(x), _ptr(u), _ptr(self.p), _ptr(self.w), _ptr(F), _ptr(g), _ptr(C),
                          _ptr(gT), _ptr(CT))
        if self.options.newton:
            lam = costates(F, g, gT)[:, 1:].contiguous()
            curvature = self._new(B, T, N, N)
            self.lib.pl_curvature(B, T, _ptr(x), _ptr(u), _ptr(self.p), _ptr(lam), _ptr(curvature))
            C = C + curvature
        parts = (F, g, C, gT, CT)
        finite = torch.stack([torch.isfinite(t).flatten(1).all(1) for t in parts]).all(0)
        return StageDerivatives(F, g, C), FinalDerivatives(gT, CT), finite

    def backward(self, model: StageDerivatives, final: FinalDerivatives, u: Tensor, mu: Tensor,
                 todo: Tensor) -> Policy:
        """The backward pass of the elements in `todo` (B,) with regularization mu (B,); the
        rows of the others are left undefined."""
        B, T, n, m, qp = self.B, self.T, self.n, self.m, self.options.qp
        K, k = self._new(B, T, m, n), self._new(B, T, m)
        dV1, dV2 = self._new(B), self._new(B)
        ok = torch.zeros(B, dtype=torch.uint8)
        todo = todo.to(torch.uint8).contiguous()
        self.lib.pl_backward(B, T, _ptr(model.F), _ptr(model.g), _ptr(model.C), _ptr(final.g),
                             _ptr(final.C), _ptr(u), _ptr(self.lo), _ptr(self.hi),
                             _ptr(_f64(mu)), _ptr(todo), qp.max_iters, qp.tol, qp.armijo, qp.step_decay,
                             qp.line_search_steps, _ptr(K), _ptr(k), _ptr(dV1), _ptr(dV2), _ptr(ok))
        return Policy(K, k, dV1, dV2, ok.bool())

    def line_search(self, x: Tensor, u: Tensor, J: Tensor, policy: Policy, active: Tensor
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Backtracking on the closed-loop rollout; rejected elements keep (x, u, J)."""
        B, T, o = self.B, self.T, self.options
        x_new, u_new, J_new = torch.empty_like(x), torch.empty_like(u), torch.empty_like(J)
        accepted = torch.zeros(B, dtype=torch.uint8)
        act = active.to(torch.uint8).contiguous()
        self.lib.pl_line_search(B, T, _ptr(x), _ptr(u), _ptr(J), _ptr(policy.K.contiguous()),
                                _ptr(policy.k.contiguous()), _ptr(policy.dV1.contiguous()),
                                _ptr(policy.dV2.contiguous()), _ptr(self.lo), _ptr(self.hi),
                                _ptr(self.p), _ptr(self.w), _ptr(act), o.line_search_steps, o.step_decay, o.armijo,
                                torch.finfo(torch.float64).eps, _ptr(x_new), _ptr(u_new),
                                _ptr(J_new), _ptr(accepted))
        return x_new, u_new, J_new, accepted.bool()
