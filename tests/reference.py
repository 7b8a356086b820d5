"""Dense-matrix float64 reference implementation of LRP rules for one affine layer.

This module is the ground truth used by the test-suite.  It deliberately shares
no code with :mod:`relgraph`: every layer is turned into an explicit dense
matrix and every rule is written as a handful of numpy matrix products, so that
the formulas can be read off directly and checked by hand.

Conventions
-----------
A layer acts on one flattened sample ``x`` (a row vector of length ``D_in``)
as an affine map

    z = x @ M + b,        M in R^{D_in x D_out},  b in R^{D_out}.

A batch is a matrix ``x`` of shape ``[N, D_in]``.  ``M`` is either shared by
the batch (shape ``[D_in, D_out]``) or given per sample (shape
``[N, D_in, D_out]``, as produced by :func:`maxpool_winner_matrix` for a
batch).  Image tensors are flattened in row-major ``(C, H, W)`` order.

Notation used throughout the docstrings (all element-wise):

    A+ = max(A, 0),   A- = min(A, 0)        for A in {M, x, b}
    stab(z) = z + eps * sign0(z),   sign0(z) = +1 if z >= 0 else -1

``stab`` matches zennit's default stabilizer (zero is shifted to ``+eps``).

Every rule receives the relevance ``R`` of the outputs, shape ``[N, D_out]``,
and returns ``(R_x, R_bias)``: the relevance of the inputs, shape
``[N, D_in]``, and the relevance absorbed by the bias, shape ``[N]``.  The bias
is treated as the weight of an extra input that is constantly one, so for a
conservative rule

    sum_i R_x[n, i] + R_bias[n] = sum_j R[n, j]      (up to the stabilizer).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np

ArrayLike = Union[np.ndarray, float, Sequence[float]]

__all__ = [
    "stab",
    "gemm_matrix",
    "conv_matrix",
    "conv_pattern",
    "bias_vector",
    "avgpool_matrix",
    "maxpool_winner_matrix",
    "gradient",
    "epsilon",
    "zplus",
    "alpha_beta",
    "gamma",
    "zbox",
    "wsquare",
    "wsquare_zennit",
    "flat",
    "norm",
]


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------


def _f64(a: ArrayLike) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _pair(v: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if np.isscalar(v):
        return int(v), int(v)
    v = tuple(int(e) for e in v)
    if len(v) != 2:
        raise ValueError(f"expected 2 values, got {v}")
    return v


def _pads4(pads: Union[int, Sequence[int]]) -> Tuple[int, int, int, int]:
    """ONNX 2-D pads ``[top, left, bottom, right]`` (a scalar pads all sides)."""
    if np.isscalar(pads):
        p = int(pads)
        return p, p, p, p
    pads = tuple(int(p) for p in pads)
    if len(pads) != 4:
        raise ValueError(f"2-D pads must have 4 entries [top, left, bottom, right], got {pads}")
    return pads


def _pos(a: np.ndarray) -> np.ndarray:
    return np.maximum(a, 0.0)


def _neg(a: np.ndarray) -> np.ndarray:
    return np.minimum(a, 0.0)


def stab(z: np.ndarray, eps: float) -> np.ndarray:
    """Sign-preserving stabilizer ``stab(z) = z + eps * s`` with ``s = +1`` for
    ``z >= 0`` and ``s = -1`` for ``z < 0``."""
    z = _f64(z)
    return z + eps * np.where(z >= 0.0, 1.0, -1.0)


def _fwd(x: np.ndarray, M: np.ndarray) -> np.ndarray:
    """``x @ M`` for a shared ``M`` [D_in, D_out] or per-sample ``M`` [N, D_in, D_out]."""
    if M.ndim == 2:
        return x @ M
    return np.einsum("ni,nij->nj", x, M)


def _bwd(s: np.ndarray, M: np.ndarray) -> np.ndarray:
    """``s @ M.T`` for a shared ``M`` or per-sample ``M``."""
    if M.ndim == 2:
        return s @ M.T
    return np.einsum("nj,nij->ni", s, M)


def _colsum(M: np.ndarray, n: int) -> np.ndarray:
    """``ones @ M``: the column sums of ``M`` for each of the ``n`` samples, shape [n, D_out]."""
    if M.ndim == 2:
        return np.broadcast_to(M.sum(axis=0), (n, M.shape[1]))
    return M.sum(axis=1)


def _prepare(x, M, b, R):
    x = _f64(x)
    M = _f64(M)
    R = _f64(R)
    if x.ndim != 2 or R.ndim != 2 or M.ndim not in (2, 3):
        raise ValueError("expected x [N, D_in], M [D_in, D_out] or [N, D_in, D_out], R [N, D_out]")
    d_out = M.shape[-1]
    b = np.zeros(d_out) if b is None else _f64(b)
    if b.shape != (d_out,):
        raise ValueError(f"bias must have shape ({d_out},), got {b.shape}")
    if x.shape[1] != M.shape[-2] or R.shape != (x.shape[0], d_out):
        raise ValueError(f"shape mismatch: x {x.shape}, M {M.shape}, R {R.shape}")
    return x, M, b, R


# ---------------------------------------------------------------------------
# dense matrices of layers
# ---------------------------------------------------------------------------


def gemm_matrix(W: ArrayLike, trans_b: bool = True) -> np.ndarray:
    """Dense matrix of a fully connected layer.

    With ``trans_b=True`` (torch ``nn.Linear`` / ONNX ``Gemm`` with
    ``transB=1``) the weight ``W`` has shape ``[out, in]`` and the layer is
    ``z = x @ W.T + b``, so ``M = W.T`` of shape ``[in, out]``.  With
    ``trans_b=False`` the weight already has shape ``[in, out]`` and
    ``M = W``.
    """
    W = _f64(W)
    if W.ndim != 2:
        raise ValueError(f"gemm weight must be 2-D, got shape {W.shape}")
    return np.array(W.T if trans_b else W, copy=True)


def _window_indices(hw, kernel, strides, pads, dilations):
    """Input coordinates touched by every (kernel tap, output position).

    Returns ``(ih, iw, valid, (ho, wo))`` where ``ih``/``iw`` have shape
    ``[kh, kw, ho, wo]``:

        ih[i, j, p, q] = p * sh - pad_top  + i * dh
        iw[i, j, p, q] = q * sw - pad_left + j * dw

    and ``valid`` marks the taps that fall inside the (unpadded) input.  The
    output size is ``ho = floor((H + pt + pb - dh * (kh - 1) - 1) / sh) + 1``
    (likewise ``wo``), i.e. ONNX/torch semantics without ``ceil_mode``.
    """
    h, w = hw
    kh, kw = kernel
    sh, sw = strides
    pt, pl, pb, pr = pads
    dh, dw = dilations
    ho = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    wo = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    if ho <= 0 or wo <= 0:
        raise ValueError("kernel does not fit into the padded input")
    i = np.arange(kh)[:, None, None, None]
    j = np.arange(kw)[None, :, None, None]
    p = np.arange(ho)[None, None, :, None]
    q = np.arange(wo)[None, None, None, :]
    ih = np.broadcast_to(p * sh - pt + i * dh, (kh, kw, ho, wo))
    iw = np.broadcast_to(q * sw - pl + j * dw, (kh, kw, ho, wo))
    valid = (ih >= 0) & (ih < h) & (iw >= 0) & (iw < w)
    return ih, iw, valid, (ho, wo)


def conv_matrix(
    W: ArrayLike,
    in_shape: Sequence[int],
    strides: Union[int, Sequence[int]] = (1, 1),
    pads: Union[int, Sequence[int]] = (0, 0, 0, 0),
    dilations: Union[int, Sequence[int]] = (1, 1),
    group: int = 1,
) -> Tuple[np.ndarray, Tuple[int, int, int]]:
    """Dense matrix of a 2-D convolution (cross-correlation, no bias).

    ``W`` has shape ``[Cout, Cin / group, kh, kw]``, ``in_shape`` is
    ``(Cin, H, W)`` and ``pads`` follows ONNX: ``[top, left, bottom, right]``.
    With ``g(o) = o // (Cout / group)`` the group of output channel ``o``,

        y[o, p, q] = sum_{c, i, j} W[o, c, i, j]
                     * x[g(o) * Cin/group + c, p*sh - pt + i*dh, q*sw - pl + j*dw]

    where out-of-range input coordinates (the zero padding) contribute nothing.
    The returned ``M`` has shape ``[Cin*H*W, Cout*Ho*Wo]`` with

        M[(ci, ih, iw), (o, p, q)] = W[o, ci - g(o) * Cin/group, i, j]

    for the tap ``(i, j)`` linking the two positions, so that
    ``flatten(conv(x)) = flatten(x) @ M``.

    Returns ``(M, (Cout, Ho, Wo))``.
    """
    W = _f64(W)
    if W.ndim != 4:
        raise ValueError(f"2-D conv weight must have shape [Cout, Cin/group, kh, kw], got {W.shape}")
    cout, cin_g, kh, kw = W.shape
    cin, h, w = (int(v) for v in in_shape)
    if group < 1 or cin != cin_g * group or cout % group != 0:
        raise ValueError(f"inconsistent group={group}: weight {W.shape}, input channels {cin}")
    ih, iw, valid, (ho, wo) = _window_indices(
        (h, w), (kh, kw), _pair(strides), _pads4(pads), _pair(dilations)
    )
    cout_g = cout // group

    # index arrays of shape [Cout, Cin/group, kh, kw, Ho, Wo]
    o = np.arange(cout)[:, None, None, None, None, None]
    c = np.arange(cin_g)[None, :, None, None, None, None]
    ci = (o // cout_g) * cin_g + c
    rows = ci * (h * w) + ih[None, None] * w + iw[None, None]
    p = np.arange(ho)[None, None, None, None, :, None]
    q = np.arange(wo)[None, None, None, None, None, :]
    cols = o * (ho * wo) + p * wo + q
    vals = W[:, :, :, :, None, None]

    shape = (cout, cin_g, kh, kw, ho, wo)
    mask = np.broadcast_to(valid[None, None], shape)
    rows = np.broadcast_to(rows, shape)[mask]
    cols = np.broadcast_to(cols, shape)[mask]
    vals = np.broadcast_to(vals, shape)[mask]

    M = np.zeros((cin * h * w, cout * ho * wo))
    # each (input, output) pair is linked by at most one tap, add.at is merely defensive
    np.add.at(M, (rows, cols), vals)
    return M, (cout, ho, wo)


def conv_pattern(
    weight_shape: Union[Sequence[int], np.ndarray],
    in_shape: Sequence[int],
    strides: Union[int, Sequence[int]] = (1, 1),
    pads: Union[int, Sequence[int]] = (0, 0, 0, 0),
    dilations: Union[int, Sequence[int]] = (1, 1),
    group: int = 1,
) -> Tuple[np.ndarray, Tuple[int, int, int]]:
    """Connectivity pattern of a 2-D convolution: :func:`conv_matrix` with all
    weights set to one.

    ``P[i, j] = 1`` iff input ``i`` lies in the receptive field of output ``j``
    (padding excluded), independently of the weight values; unlike
    ``conv_matrix(W, ...) != 0`` it also marks taps whose weight is exactly
    zero.  ``weight_shape`` is the weight's shape ``[Cout, Cin/group, kh, kw]``
    (an array is accepted too, only its shape is used).

    Returns ``(P, (Cout, Ho, Wo))``.
    """
    shape = np.shape(weight_shape) if isinstance(weight_shape, np.ndarray) else tuple(weight_shape)
    return conv_matrix(np.ones(shape), in_shape, strides, pads, dilations, group)


def bias_vector(b: Optional[ArrayLike], out_shape: Sequence[int]) -> np.ndarray:
    """Bias broadcast to the flattened output.

    ``out_shape`` is ``(Cout,)`` for a dense layer or ``(Cout, Ho, Wo)`` for a
    convolution; the result has length ``prod(out_shape)`` with
    ``b_flat[(o, p, q)] = b[o]``.  ``b=None`` gives zeros.
    """
    out_shape = tuple(int(v) for v in out_shape)
    size = int(np.prod(out_shape))
    if b is None:
        return np.zeros(size)
    b = _f64(b).reshape(-1)
    if b.shape[0] != out_shape[0]:
        raise ValueError(f"bias of length {b.shape[0]} does not match {out_shape[0]} output channels")
    return np.repeat(b, size // out_shape[0])


def avgpool_matrix(
    in_shape: Sequence[int],
    kernel: Union[int, Sequence[int]],
    strides: Union[int, Sequence[int]] = (1, 1),
    pads: Union[int, Sequence[int]] = (0, 0, 0, 0),
    count_include_pad: bool = False,
) -> Tuple[np.ndarray, Tuple[int, int, int]]:
    """Dense matrix of 2-D average pooling (ONNX ``AveragePool``, no ceil mode).

    ``in_shape`` is ``(C, H, W)``; ``pads`` is ``[top, left, bottom, right]``;
    strides default to one as in ONNX.  Each channel is pooled separately:

        y[c, p, q] = (1 / d[p, q]) * sum_{(i, j) in window, inside input} x[c, p*sh - pt + i, q*sw - pl + j]

    with ``d[p, q] = kh * kw`` if ``count_include_pad`` and otherwise the
    number of window taps that fall inside the unpadded input.

    Returns ``(M, (C, Ho, Wo))`` with ``M`` of shape ``[C*H*W, C*Ho*Wo]``.
    """
    c, h, w = (int(v) for v in in_shape)
    kh, kw = _pair(kernel)
    ih, iw, valid, (ho, wo) = _window_indices((h, w), (kh, kw), _pair(strides), _pads4(pads), (1, 1))
    if count_include_pad:
        denom = np.full((ho, wo), float(kh * kw))
    else:
        denom = valid.sum(axis=(0, 1)).astype(np.float64)
    if np.any(denom == 0):
        raise ValueError("a pooling window lies entirely in the padding")
    M = np.zeros((c * h * w, c * ho * wo))
    p = np.broadcast_to(np.arange(ho)[None, None, :, None], valid.shape)
    q = np.broadcast_to(np.arange(wo)[None, None, None, :], valid.shape)
    for ch in range(c):
        rows = ch * h * w + ih[valid] * w + iw[valid]
        cols = ch * ho * wo + p[valid] * wo + q[valid]
        np.add.at(M, (rows, cols), 1.0 / denom[p[valid], q[valid]])
    return M, (c, ho, wo)


def maxpool_winner_matrix(
    x: ArrayLike,
    kernel: Union[int, Sequence[int]],
    strides: Union[int, Sequence[int]] = (1, 1),
    pads: Union[int, Sequence[int]] = (0, 0, 0, 0),
) -> Tuple[np.ndarray, Tuple[int, int, int]]:
    """0/1 routing matrix of 2-D max pooling at the point ``x``.

    ``x`` is one sample ``(C, H, W)`` or a batch ``(N, C, H, W)``; ``pads`` is
    ``[top, left, bottom, right]`` (padding acts as ``-inf``); strides default
    to one as in ONNX.  For every output ``(c, p, q)`` the winner is the
    arg-max of ``x`` over the window taps inside the input, scanned in
    row-major ``(i, j)`` order, ties going to the first tap.  Then

        M[(c, ih*, iw*), (c, p, q)] = 1    for the winner (ih*, iw*),

    and zero elsewhere, so that ``flatten(maxpool(x)) = flatten(x) @ M`` and
    the gradient of max pooling is ``G @ M.T``.

    Returns ``(M, (C, Ho, Wo))``: ``M`` has shape ``[C*H*W, C*Ho*Wo]``, or
    ``[N, C*H*W, C*Ho*Wo]`` for a batch.
    """
    x = _f64(x)
    if x.ndim == 4:
        mats = [maxpool_winner_matrix(xi, kernel, strides, pads) for xi in x]
        return np.stack([m for m, _ in mats]), mats[0][1]
    if x.ndim != 3:
        raise ValueError(f"expected x of shape (C, H, W) or (N, C, H, W), got {x.shape}")
    c, h, w = x.shape
    kh, kw = _pair(kernel)
    ih, iw, valid, (ho, wo) = _window_indices((h, w), (kh, kw), _pair(strides), _pads4(pads), (1, 1))
    if np.any(~valid.any(axis=(0, 1))):
        raise ValueError("a pooling window lies entirely in the padding")
    # taps flattened in row-major (i, j) order: shape [kh*kw, Ho, Wo]
    ih_f = np.clip(ih, 0, h - 1).reshape(kh * kw, ho, wo)
    iw_f = np.clip(iw, 0, w - 1).reshape(kh * kw, ho, wo)
    valid_f = valid.reshape(kh * kw, ho, wo)
    M = np.zeros((c * h * w, c * ho * wo))
    p, q = np.meshgrid(np.arange(ho), np.arange(wo), indexing="ij")
    for ch in range(c):
        vals = np.where(valid_f, x[ch][ih_f, iw_f], -np.inf)
        k = np.argmax(vals, axis=0)  # first maximum wins
        win_h = np.take_along_axis(ih_f, k[None], axis=0)[0]
        win_w = np.take_along_axis(iw_f, k[None], axis=0)[0]
        M[ch * h * w + win_h * w + win_w, ch * ho * wo + p * wo + q] = 1.0
    return M, (c, ho, wo)


# ---------------------------------------------------------------------------
# rules
# ---------------------------------------------------------------------------


def gradient(x: ArrayLike, M: ArrayLike, b: Optional[ArrayLike], G: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
    """Plain backpropagation of an output gradient ``G`` through ``z = x @ M + b``.

        R_x = G @ M.T,        R_bias = 0.

    ``x`` and ``b`` only fix the shapes; the bias term is reported as zero.
    """
    x, M, b, G = _prepare(x, M, b, G)
    return _bwd(G, M), np.zeros(x.shape[0])


def epsilon(
    x: ArrayLike, M: ArrayLike, b: Optional[ArrayLike], R: ArrayLike, eps: float = 1e-6
) -> Tuple[np.ndarray, np.ndarray]:
    """LRP-epsilon (``eps = 0`` up to the stabilizer gives LRP-0).

        z = x @ M + b
        s = R / stab(z)
        R_x    = x * (s @ M.T)
        R_bias = sum_j b_j * s_j

    Conservation: ``sum(R_x) + R_bias = sum_j R_j * z_j / stab(z_j)``.
    """
    x, M, b, R = _prepare(x, M, b, R)
    z = _fwd(x, M) + b
    s = R / stab(z, eps)
    return x * _bwd(s, M), s @ b


def zplus(
    x: ArrayLike, M: ArrayLike, b: Optional[ArrayLike], R: ArrayLike, eps: float = 1e-6
) -> Tuple[np.ndarray, np.ndarray]:
    """LRP-z+ in zennit's form (alpha=1, beta=0, negative inputs allowed).

    Only the positive contributions ``x_i M_ij > 0`` (and a positive bias) are
    kept:

        z+ = x+ @ M+ + x- @ M- + b+
        s  = R / stab(z+)
        R_x    = x+ * (s @ M+.T) + x- * (s @ M-.T)
        R_bias = sum_j b+_j * s_j

    Conservation: ``sum(R_x) + R_bias = sum_j R_j * z+_j / stab(z+_j)``.
    """
    x, M, b, R = _prepare(x, M, b, R)
    xp, xn, Mp, Mn = _pos(x), _neg(x), _pos(M), _neg(M)
    zp = _fwd(xp, Mp) + _fwd(xn, Mn) + _pos(b)
    s = R / stab(zp, eps)
    return xp * _bwd(s, Mp) + xn * _bwd(s, Mn), s @ _pos(b)


def alpha_beta(
    x: ArrayLike,
    M: ArrayLike,
    b: Optional[ArrayLike],
    R: ArrayLike,
    alpha: float,
    beta: float,
    eps: float = 1e-6,
) -> Tuple[np.ndarray, np.ndarray]:
    """LRP-alpha-beta in zennit's form (negative inputs allowed).

    Positive and negative contributions are normalised separately:

        zp = x+ @ M+ + x- @ M- + b+        (sum of positive contributions)
        zn = x+ @ M- + x- @ M+ + b-        (sum of negative contributions)
        sp = R / stab(zp),   sn = R / stab(zn)
        R_x    = alpha * (x+ * (sp @ M+.T) + x- * (sp @ M-.T))
               - beta  * (x+ * (sn @ M-.T) + x- * (sn @ M+.T))
        R_bias = alpha * sum_j b+_j sp_j - beta * sum_j b-_j sn_j

    Conservation: ``sum(R_x) + R_bias ~= (alpha - beta) * sum(R)`` (zennit
    insists on ``alpha - beta = 1``; this reference does not).
    """
    x, M, b, R = _prepare(x, M, b, R)
    xp, xn, Mp, Mn = _pos(x), _neg(x), _pos(M), _neg(M)
    bp, bn = _pos(b), _neg(b)
    zp = _fwd(xp, Mp) + _fwd(xn, Mn) + bp
    zn = _fwd(xp, Mn) + _fwd(xn, Mp) + bn
    sp = R / stab(zp, eps)
    sn = R / stab(zn, eps)
    r_x = alpha * (xp * _bwd(sp, Mp) + xn * _bwd(sp, Mn)) - beta * (xp * _bwd(sn, Mn) + xn * _bwd(sn, Mp))
    r_b = alpha * (sp @ bp) - beta * (sn @ bn)
    return r_x, r_b


def gamma(
    x: ArrayLike,
    M: ArrayLike,
    b: Optional[ArrayLike],
    R: ArrayLike,
    gamma: float,
    eps: float = 1e-6,
) -> Tuple[np.ndarray, np.ndarray]:
    """Generalised LRP-gamma in zennit's form.

    Contributions that agree in sign with the output are amplified by
    ``1 + gamma``:

        z  = x @ M + b
        Mp = M + gamma * M+,   Mn = M + gamma * M-
        bp = b + gamma * b+,   bn = b + gamma * b-
        zp = x+ @ Mp + x- @ Mn + bp        (= z + gamma * positive contributions)
        zn = x+ @ Mn + x- @ Mp + bn        (= z + gamma * negative contributions)
        sp = [z > 0] * R / stab(zp)
        sn = [z < 0] * R / stab(zn)
        R_x    = x+ * (sp @ Mp.T + sn @ Mn.T) + x- * (sp @ Mn.T + sn @ Mp.T)
        R_bias = sum_j (bp_j sp_j + bn_j sn_j)

    Outputs with ``z = 0`` pass no relevance.  Since ``zp >= z > 0`` where
    ``z > 0`` and ``zn <= z < 0`` where ``z < 0``, the rule conserves:
    ``sum(R_x) + R_bias ~= sum_{j: z_j != 0} R_j``.  For ``gamma = 0`` it
    reduces to :func:`epsilon` (except at ``z = 0``).
    """
    x, M, b, R = _prepare(x, M, b, R)
    g = float(gamma)
    xp, xn = _pos(x), _neg(x)
    Mp = M + g * _pos(M)
    Mn = M + g * _neg(M)
    bp = b + g * _pos(b)
    bn = b + g * _neg(b)
    z = _fwd(x, M) + b
    zp = _fwd(xp, Mp) + _fwd(xn, Mn) + bp
    zn = _fwd(xp, Mn) + _fwd(xn, Mp) + bn
    sp = (z > 0) * R / stab(zp, eps)
    sn = (z < 0) * R / stab(zn, eps)
    r_x = xp * (_bwd(sp, Mp) + _bwd(sn, Mn)) + xn * (_bwd(sp, Mn) + _bwd(sn, Mp))
    r_b = sp @ bp + sn @ bn
    return r_x, r_b


def zbox(
    x: ArrayLike,
    M: ArrayLike,
    b: Optional[ArrayLike],
    R: ArrayLike,
    low: ArrayLike,
    high: ArrayLike,
    eps: float = 1e-6,
) -> Tuple[np.ndarray, np.ndarray]:
    """LRP-z^B (bounded input domain ``l <= x <= h``) in zennit's form.

    ``low`` and ``high`` are scalars or arrays broadcastable (numpy rules) to
    the flattened ``x`` of shape ``[N, D_in]``.

        z = x @ M - l @ M+ - h @ M-
        s = R / stab(z)
        R_x    = x * (s @ M.T) - l * (s @ M+.T) - h * (s @ M-.T)
        R_bias = 0

    zennit evaluates the three terms with biases ``b``, ``b+`` and ``b-``,
    which cancel (``b - b+ - b- = 0``), so the bias takes no part.  For
    ``l <= x <= h`` every summand of ``z`` is non-negative and
    ``sum(R_x) = sum_j R_j z_j / stab(z_j)``.
    """
    x, M, b, R = _prepare(x, M, b, R)
    lo = np.broadcast_to(_f64(low), x.shape)
    hi = np.broadcast_to(_f64(high), x.shape)
    Mp, Mn = _pos(M), _neg(M)
    z = _fwd(x, M) - _fwd(lo, Mp) - _fwd(hi, Mn)
    s = R / stab(z, eps)
    r_x = x * _bwd(s, M) - lo * _bwd(s, Mp) - hi * _bwd(s, Mn)
    return r_x, np.zeros(x.shape[0])


def wsquare(
    x: ArrayLike, M: ArrayLike, b: Optional[ArrayLike], R: ArrayLike, eps: float = 1e-6
) -> Tuple[np.ndarray, np.ndarray]:
    """LRP-w^2 as in the deep-Taylor paper (bias ignored, input ignored).

        s = R / stab(ones @ M**2)          (column sums of M**2)
        R_x    = s @ (M**2).T
        R_bias = 0

    i.e. ``R_x[i] = sum_j M_ij^2 / (sum_i' M_i'j^2) * R_j``; conserves exactly
    up to the stabilizer.
    """
    x, M, b, R = _prepare(x, M, b, R)
    M2 = M**2
    s = R / stab(_colsum(M2, x.shape[0]), eps)
    return _bwd(s, M2), np.zeros(x.shape[0])


def wsquare_zennit(
    x: ArrayLike, M: ArrayLike, b: Optional[ArrayLike], R: ArrayLike, eps: float = 1e-6
) -> Tuple[np.ndarray, np.ndarray]:
    """LRP-w^2 in zennit's form, where the bias is squared as well.

        s = R / stab(ones @ M**2 + b**2)
        R_x    = s @ (M**2).T
        R_bias = sum_j b_j^2 * s_j

    With ``b = 0`` this equals :func:`wsquare`.
    """
    x, M, b, R = _prepare(x, M, b, R)
    M2 = M**2
    s = R / stab(_colsum(M2, x.shape[0]) + b**2, eps)
    return _bwd(s, M2), s @ (b**2)


def flat(
    x: ArrayLike,
    M: ArrayLike,
    b: Optional[ArrayLike],
    R: ArrayLike,
    eps: float = 1e-6,
    pattern: Optional[ArrayLike] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """LRP-flat: relevance spread uniformly over each output's receptive field.

    With ``P`` the 0/1 connectivity pattern of the layer,

        s = R / stab(ones @ P)            (receptive-field sizes)
        R_x    = s @ P.T
        R_bias = 0                        (bias ignored)

    ``pattern`` defaults to ``(M != 0)``, which is only right when no weight is
    exactly zero.  For a dense layer the pattern is all ones; for a convolution
    pass ``conv_pattern(...)[0]`` (zennit evaluates the layer with all weights
    set to one, so a zero weight still counts as a connection).
    """
    x, M, b, R = _prepare(x, M, b, R)
    P = (M != 0).astype(np.float64) if pattern is None else _f64(pattern)
    if P.shape != M.shape:
        raise ValueError(f"pattern shape {P.shape} differs from matrix shape {M.shape}")
    s = R / stab(_colsum(P, x.shape[0]), eps)
    return _bwd(s, P), np.zeros(x.shape[0])


def norm(x: ArrayLike, M: ArrayLike, R: ArrayLike, eps: float = 1e-6) -> Tuple[np.ndarray, np.ndarray]:
    """Parameter-free epsilon rule for linear maps without bias (sums, average pooling).

        z = x @ M
        R_x = x * ((R / stab(z)) @ M.T)
        R_bias = 0

    This is :func:`epsilon` with ``b = 0``; ``eps`` only acts as a stabilizer.
    """
    x, M, _, R = _prepare(x, M, None, R)
    z = _fwd(x, M)
    s = R / stab(z, eps)
    return x * _bwd(s, M), np.zeros(x.shape[0])
