"""Max pooling's relevance (winner takes all) as a gather that needs no pooling indices.

Under the gradient rule a max-pooling window hands its relevance r[n, c, p, q] to its winner, and
windows that overlap (ResNet's 3×3, stride 2, pad 1) add up at a shared winner:

    rx[n, c, h, w] = Σ_{windows (p, q) ∋ (h, w)} [(h, w) wins (p, q)] · r[n, c, p, q]

The winner is the *first* maximum in row-major window order with the padding at −∞, which is the index
onnxruntime's MaxPool returns (and torch's), so ties (a ReLU output full of zeros, a plateau) are routed
exactly as the ONNX explainer's ``ScatterElements`` over those indices routes them.

Each program owns a block of input pixels. For every tap (i, j) of the kernel it finds the window that
reads the pixel there, if any (h + p_t − i·d_h a non-negative multiple of s_h below P, w likewise),
re-finds that window's winner from x and adds the window's r if the winner is this tap. Every output is
written by one program (no atomics, deterministic), and nothing but x, r and rx touches memory: the
forward pass stores no indices (8 bytes per pooled value in ONNX's int64) and the route reads none.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..errors import RelgraphError

from .launch import KernelSpec, check, launch, outputs


@triton.jit
def window_winner(x, plane, p, q, ok, H, W, KH, KW, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w,
                  BLOCK: tl.constexpr):
    """The tap (i·KW + j) of the first maximum of window (p, q) in row-major order, padding = −∞."""
    best = tl.full((BLOCK,), float("-inf"), tl.float32)
    best_tap = tl.full((BLOCK,), -1, tl.int32)
    for i in range(KH):
        hh = p * stride_h - pad_t + i * dil_h
        row_ok = ok & (hh >= 0) & (hh < H)
        for j in range(KW):
            ww = q * stride_w - pad_l + j * dil_w
            inside = row_ok & (ww >= 0) & (ww < W)
            v = tl.load(x + (plane * H + hh) * W + ww, mask=inside, other=float("-inf"))
            # strictly greater: an equal value later in the window does not take the win
            better = v > best
            best = tl.where(better, v, best)
            best_tap = tl.where(better, i * KW + j, best_tap)
    return best_tap


@triton.jit
def _maxpool2d_back_kernel(x, r, rx, N, C, H, W, P, Q, KH, KW, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w,
                           BLOCK: tl.constexpr):
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = e < N * C * H * W
    plane = e // (H * W)  # n·C + c
    h = (e // W) % H
    w = e % W
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(KH):
        ph = h + pad_t - i * dil_h  # window row p reads this pixel at tap row i iff ph = p·s_h
        p = ph // stride_h
        row_ok = inside & (ph >= 0) & (ph % stride_h == 0) & (p < P)
        for j in range(KW):
            qw = w + pad_l - j * dil_w
            q = qw // stride_w
            ok = row_ok & (qw >= 0) & (qw % stride_w == 0) & (q < Q)
            winner = window_winner(x, plane, p, q, ok, H, W, KH, KW, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w,
                                   BLOCK)
            won = ok & (winner == i * KW + j)
            acc += tl.load(r + (plane * P + p) * Q + q, mask=won, other=0.0)
    tl.store(rx + e, acc, mask=inside)


POOL_PARAMS = {"N": "i32", "C": "i32", "H": "i32", "W": "i32", "P": "i32", "Q": "i32", "KH": "i32", "KW": "i32",
               "stride_h": "i32", "stride_w": "i32", "pad_t": "i32", "pad_l": "i32", "dil_h": "i32",
               "dil_w": "i32"}

MAXPOOL2D_BACK = KernelSpec(
    op="maxpool2d_back", fn=_maxpool2d_back_kernel,
    params={"x": "*fp32", "r": "*fp32", "rx": "*fp32", **POOL_PARAMS},
    flags={}, key=("N", "C", "H", "W", "KH", "KW", "stride_h", "stride_w"), standard=({},),
)


def pooled_size(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int,
                ceil_mode: bool) -> int:
    """ONNX's MaxPool output size along one axis: ⌊(in + pads − span)/s⌋ + 1, or ⌈·⌉ + 1 under ceil_mode,
    then one less if the last window would start past the input and its begin padding."""
    span = dilation * (kernel - 1) + 1
    room = size + pad_begin + pad_end - span
    out = (-(-room // stride) if ceil_mode else room // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad_begin:
        out -= 1
    return out


def _geometry(x, kernel, stride, pads, dilation):
    op = "maxpool2d_back"
    values = {"kernel": (kernel, 2), "stride": (stride, 2), "pads (top, left, bottom, right)": (pads, 4),
              "dilation": (dilation, 2)}
    out = []
    for name, (v, n) in values.items():
        v = tuple(int(a) for a in v)
        if len(v) != n:
            raise RelgraphError(f"{op}: {name} needs {n} values, got {list(v)}")
        out.append(v)
    kernel, stride, pads, dilation = out
    if min(kernel) < 1 or min(stride) < 1 or min(dilation) < 1 or min(pads) < 0:
        raise RelgraphError(f"{op}: kernel, stride and dilation must be ≥ 1 and pads ≥ 0")
    if x.dim() != 4:
        raise RelgraphError(f"{op}: x must be 4-d (NCHW), got {list(x.shape)}")
    return kernel, stride, pads, dilation


def maxpool2d_back(x: torch.Tensor, r: torch.Tensor, *, kernel, stride=None, pads=(0, 0, 0, 0), dilation=(1, 1),
                   ceil_mode: bool = False, out=None):
    """Max pooling's relevance rx (x's shape, fp32) for x [N, C, H, W] and r [N, C, P, Q] (fp32): each
    window's r goes to its first maximum (row-major, padding −∞), overlapping windows add up.

    Geometry as ONNX's MaxPool: ``kernel`` (kh, kw), ``stride`` (default: the kernel), ``pads`` (top, left,
    bottom, right), ``dilation``, ``ceil_mode``. ``out``: preallocated rx.
    """
    op = "maxpool2d_back"
    kernel, stride, pads, dilation = _geometry(x, kernel, stride or kernel, pads, dilation)
    if any(p >= k for p, k in zip(pads, kernel * 2)):  # as ONNX requires: no window lies wholly in the padding
        raise RelgraphError(f"{op}: pads {list(pads)} must be smaller than the kernel {list(kernel)}")
    N, C, H, W = x.shape
    P = pooled_size(H, kernel[0], stride[0], pads[0], pads[2], dilation[0], ceil_mode)
    Q = pooled_size(W, kernel[1], stride[1], pads[1], pads[3], dilation[1], ceil_mode)
    if P < 1 or Q < 1:
        raise RelgraphError(f"{op}: the window {list(kernel)} does not fit x {list(x.shape)}")
    check(op, "x", x, x.shape)
    check(op, "r", r, (N, C, P, Q), device=x.device)
    (rx,) = outputs(op, out, ("rx",), (x.shape,), x.device)
    grid = lambda meta: (triton.cdiv(x.numel(), meta["BLOCK"]),)  # noqa: E731
    launch(MAXPOOL2D_BACK, grid, (x, r, rx, N, C, H, W, P, Q, *kernel, *stride, pads[0], pads[1], *dilation))
    return rx
