"""The interpreter correctness sweep: every public kernel op on small ragged shapes, outputs poisoned with NaN,
against ``relgraph.kernels.reference``'s float64 references, under ``TRITON_INTERPRET=1``; the error of a case
is ‖got − ref‖ / ‖ref‖, its largest over the case's outputs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from ..progress import Progress

ROOT = Path(__file__).resolve().parents[2]  # the folder holding relgraph/: the child process imports it from there
# Relative error ‖got − ref‖ / ‖ref‖ allowed per operand dtype: fp32 runs tl.dot in IEEE precision;
# fp16/bf16 round the operands (the reference sees the same rounded operands) and, in the push-back of
# the ε and γ/αβ steps, the shares s before the second product.
TOLERANCE = {"fp32": 1e-5, "fp16": 3e-3, "bf16": 2e-2}


def sweep_cases(size: str = "small"):
    """(name, dtype, run) for every public kernel op; run() → [(got, want), …] as float64 arrays.

    Shapes are ragged (no multiple of any block size); "full" adds fp16/bf16 operands and a second,
    depthwise, dilated convolution geometry.
    """
    import torch

    from .. import kernels
    from ..kernels import reference as ref

    dtypes = ("fp32",) if size == "small" else ("fp32", "fp16", "bf16")
    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    geometries = [dict(stride=(2, 2), pads=(0, 1, 2, 0), dilation=(1, 1), groups=2, C=6, K=8, R=3, S=2, H=11, W=9)]
    if size != "small":
        geometries.append(dict(stride=(1, 2), pads=(2, 2, 2, 2), dilation=(2, 2), groups=8, C=8, K=8, R=3, S=3,
                               H=10, W=9))
    gen = torch.Generator().manual_seed(0)

    def randn(*shape, positive=False):
        t = torch.randn(*shape, generator=gen, dtype=torch.float64)
        return t.abs() + 0.1 if positive else t

    def nan(*shape):  # poisoned outputs: an element the kernel fails to write stays NaN
        return torch.full(shape, float("nan"), dtype=torch.float32)

    def operands(dtype, *arrays):
        """Kernel operands in ``dtype`` and the float64 arrays of exactly those rounded values."""
        cast = [a.to(torch_dtype[dtype]).contiguous() for a in arrays]
        return cast, [c.double().numpy() for c in cast]

    def f32(a):
        return a.float().contiguous()

    def np64(*ts):
        return [t.double().numpy() for t in ts]

    cases = []
    M, K, N = 37, 45, 29
    for dtype in dtypes:
        def linear_case(dtype=dtype):
            (x, w), (xr, wr) = operands(dtype, randn(M, K), randn(N, K))
            b = randn(N)
            y, z = kernels.linear(x, w, f32(b), relu=True, keep_z=True, out=(nan(M, N), nan(M, N)))
            y_ref, z_ref = ref.linear(xr, wr, b.numpy(), relu=True)
            return [(*np64(y), y_ref), (*np64(z), z_ref)]

        def epsilon_linear_case(dtype=dtype):
            (x, w), (xr, wr) = operands(dtype, randn(M, K), randn(N, K))
            r, z = randn(M, N), randn(M, N)
            rx, s = kernels.epsilon_linear(x, w, f32(r), f32(z), mode="stab", epsilon=1e-2, want_s=True,
                                           out=(nan(M, K), nan(M, N)))
            rx_ref, s_ref = ref.epsilon_linear(xr, wr, r.numpy(), f32(z).double().numpy(), mode="stab",
                                               epsilon=1e-2)
            return [(*np64(rx), rx_ref), (*np64(s), s_ref)]

        def parts_linear_case(dtype=dtype):
            (x, w), (xr, wr) = operands(dtype, randn(M, K), randn(N, K))
            zp, zn = kernels.lrp_parts_linear(x, w, out=(nan(M, N), nan(M, N)))
            zp_ref, zn_ref = ref.lrp_parts_linear(xr, wr)
            return [(*np64(zp), zp_ref), (*np64(zn), zn_ref)]

        def parts_linear_back_case(dtype=dtype):
            (x, w), (xr, wr) = operands(dtype, randn(M, K), randn(N, K))
            zp, zn = ref.lrp_parts_linear(xr, wr)
            r, b = randn(M, N), randn(N)
            bp, bn = b.clamp(min=0), b.clamp(max=0)
            out = []
            for rule in ("gamma", "alpha-beta"):
                rx = kernels.lrp_parts_linear_back(x, w, f32(r), f32(torch.from_numpy(zp)), f32(torch.from_numpy(zn)),
                                                   f32(bp), f32(bn), rule=rule, out=nan(M, K))
                want = ref.lrp_parts_linear_back(xr, wr, r.numpy(), f32(torch.from_numpy(zp)).double().numpy(),
                                                 f32(torch.from_numpy(zn)).double().numpy(), bp.numpy(), bn.numpy(),
                                                 rule=rule)
                out.append((*np64(rx), want))
            return out

        cases += [("linear", dtype, linear_case), ("epsilon_linear", dtype, epsilon_linear_case),
                  ("lrp_parts_linear", dtype, parts_linear_case),
                  ("lrp_parts_linear_back", dtype, parts_linear_back_case)]
        for g in geometries:
            geo = {k: g[k] for k in ("stride", "pads", "dilation", "groups")}
            Nb = 2

            def conv_case(dtype=dtype, g=g, geo=geo):
                (x, w), (xr, wr) = operands(dtype, randn(Nb, g["C"], g["H"], g["W"]),
                                            randn(g["K"], g["C"] // g["groups"], g["R"], g["S"]))
                b = randn(g["K"])
                y_ref, z_ref = ref.conv2d(xr, wr, b.numpy(), relu=True, **geo)
                y, z = kernels.conv2d(x, w, f32(b), relu=True, keep_z=True, out=(nan(*y_ref.shape), nan(*y_ref.shape)),
                                      **geo)
                return [(*np64(y), y_ref), (*np64(z), z_ref)]

            def epsilon_conv_case(dtype=dtype, g=g, geo=geo):
                (x, w), (xr, wr) = operands(dtype, randn(Nb, g["C"], g["H"], g["W"], positive=True),
                                            randn(g["K"], g["C"] // g["groups"], g["R"], g["S"]))
                y, _ = ref.conv2d(xr, wr, relu=True, **geo)
                r = randn(*y.shape)
                den = f32(torch.from_numpy(y))
                rx, s = kernels.epsilon_conv2d(x, w, f32(r), den, mode="shift", epsilon=1e-2, want_s=True,
                                               out=(nan(*x.shape), nan(*y.shape)), **geo)
                rx_ref, s_ref = ref.epsilon_conv2d(xr, wr, r.numpy(), den.double().numpy(), mode="shift",
                                                   epsilon=1e-2, **geo)
                return [(*np64(rx), rx_ref), (*np64(s), s_ref)]

            def parts_conv_case(dtype=dtype, g=g, geo=geo):
                (x, w), (xr, wr) = operands(dtype, randn(Nb, g["C"], g["H"], g["W"]),
                                            randn(g["K"], g["C"] // g["groups"], g["R"], g["S"]))
                zp_ref, zn_ref = ref.lrp_parts_conv2d(xr, wr, **geo)
                zp, zn = kernels.lrp_parts_conv2d(x, w, out=(nan(*zp_ref.shape), nan(*zp_ref.shape)), **geo)
                out = [(*np64(zp), zp_ref), (*np64(zn), zn_ref)]
                r, b = randn(*zp_ref.shape), randn(g["K"])
                bp, bn = b.clamp(min=0), b.clamp(max=0)
                zp32, zn32 = f32(torch.from_numpy(zp_ref)), f32(torch.from_numpy(zn_ref))
                for rule in ("gamma", "alpha-beta"):
                    rx = kernels.lrp_parts_conv2d_back(x, w, f32(r), zp32, zn32, f32(bp), f32(bn), rule=rule,
                                                       out=nan(*x.shape), **geo)
                    want = ref.lrp_parts_conv2d_back(xr, wr, r.numpy(), zp32.double().numpy(), zn32.double().numpy(),
                                                     bp.numpy(), bn.numpy(), rule=rule, **geo)
                    out.append((*np64(rx), want))
                return out

            label = "g{groups} s{stride[0]}x{stride[1]} d{dilation[0]}".format(**geo)
            cases += [(f"conv2d {label}", dtype, conv_case), (f"epsilon_conv2d {label}", dtype, epsilon_conv_case),
                      (f"lrp_parts_conv2d(+_back) {label}", dtype, parts_conv_case)]

    def maxpool_case():  # ResNet's overlapping 3×3 s2 p1 windows, over a ReLU output full of ties
        x, r = f32(randn(2, 3, 11, 9)).relu(), f32(randn(2, 3, 6, 5))
        geo = dict(kernel=(3, 3), stride=(2, 2), pads=(1, 1, 1, 1))
        rx = kernels.maxpool2d_back(x, r, out=nan(*x.shape), **geo)
        return [(*np64(rx), ref.maxpool2d_back(x.double().numpy(), r.double().numpy(), **geo))]

    def epsilon_sum_case():
        a, b, r = (f32(randn(3, 5, 7, 9)) for _ in range(3))
        den = (a + b).relu()
        ra, rb = kernels.epsilon_sum(a, b, r, den, mode="shift", epsilon=1e-2, out=(nan(*a.shape), nan(*a.shape)))
        want = ref.epsilon_sum(*np64(a, b, r, den), mode="shift", epsilon=1e-2)
        return [(*np64(ra), want[0]), (*np64(rb), want[1])]

    # no matmul operands: fp32 alone
    cases += [("maxpool2d_back 3x3 s2 p1", "fp32", maxpool_case), ("epsilon_sum", "fp32", epsilon_sum_case)]
    return cases


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """‖got − want‖ / ‖want‖ (NaN anywhere in got, a poisoned element left unwritten, counts as ∞)."""
    if got.shape != want.shape or not np.all(np.isfinite(got)):
        return float("inf")
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300))


def interpreter_bf16_dot_ok() -> bool:
    """Whether this Triton's interpreter computes ``tl.dot`` on bf16 operands right (numpy has no bf16; in
    triton 3.8 a 16×16 product comes out wrong by orders of magnitude), on a 16×16 product of integers."""
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def dot16(a, b, c, B: tl.constexpr):
        i = tl.arange(0, B)
        tile = i[:, None] * B + i[None, :]
        tl.store(c + tile, tl.dot(tl.load(a + tile), tl.load(b + tile)))

    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randint(-3, 4, (16, 16), generator=gen).to(torch.bfloat16) for _ in range(2))
    c = torch.empty(16, 16)
    dot16[(1,)](a, b, c, B=16)
    return bool(torch.equal(c, a.float() @ b.float()))  # small integers: exact in bf16 and fp32


def run_sweep(size: str = "small", stream=None) -> bool:
    """Run every case under the interpreter; print one line per case; True when all pass."""
    stream = stream or sys.stdout

    cases = sweep_cases(size)
    if any(dtype == "bf16" for _, dtype, _ in cases) and not interpreter_bf16_dot_ok():
        cases = [c for c in cases if c[1] != "bf16"]
        print("  bf16 cases skipped: this Triton interpreter gets tl.dot on bf16 operands wrong (a 16×16 integer "
              "product does not match); they are checked on a GPU", file=stream, flush=True)
    ok = True
    with Progress(len(cases), "interpreter sweep") as bar:
        for name, dtype, run in cases:
            start = time.perf_counter()
            with warnings.catch_warnings():  # an overflow shows as a failing error figure, said once below
                warnings.simplefilter("ignore", RuntimeWarning)
                error = max(relative_error(got, want) for got, want in run())
            passed = error <= TOLERANCE[dtype]
            ok &= passed
            bar.update()
            print(f"  {name:44} {dtype:5} max rel. error {error:9.2e} (≤ {TOLERANCE[dtype]:.0e})  "
                  f"{'pass' if passed else 'FAIL'}  {time.perf_counter() - start:5.1f} s", file=stream, flush=True)
    print(f"interpreter sweep: {len(cases)} cases, {'all pass' if ok else 'FAILURES'}", file=stream, flush=True)
    return ok


def sweep_in_interpreter(size: str) -> bool:
    """The sweep under TRITON_INTERPRET=1: here if it is set, else in a child process that sets it (triton
    reads it when a kernel is decorated, so it cannot be switched on in a process that imported kernels)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return run_sweep(size)
    env = dict(os.environ, TRITON_INTERPRET="1")
    code = f"import sys, relgraph.bench.sweep as b; sys.exit(0 if b.run_sweep({size!r}) else 1)"
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(ROOT))
    if done.returncode not in (0, 1):
        raise RuntimeError(f"the interpreter sweep crashed (exit status {done.returncode})")
    return done.returncode == 0
