"""Float64 numpy references of every kernel op, written the plain way (no tiling, no fusion).

Convolutions loop over the kernel taps (r, s): the forward gathers a strided slice of the padded input
per tap, the transpose scatters back per tap (the adjoint written as a scatter, where the kernels
gather). γ and αβ are evaluated term by term with modified weights, as zennit states them, not through
the two shares the kernels use. Arrays in (any float dtype, numpy or anything ``np.asarray`` takes),
float64 out.
"""

from __future__ import annotations

import numpy as np


def _f64(*arrays):
    return [None if a is None else np.asarray(a, dtype=np.float64) for a in arrays]


def stabilize(den, mode: str, epsilon: float):
    """d = den ("den"), den + ε·sign(den) with sign(0) = +1 ("stab"), den + ε ("shift")."""
    (den,) = _f64(den)
    if mode == "stab":
        return den + epsilon * np.where(den >= 0, 1.0, -1.0)
    if mode == "shift":
        return den + epsilon
    assert mode == "den", mode
    return den


# ------------------------------------------------------------------------------------------- dense


def linear(x, w, bias=None, *, relu=False):
    """(y, z): z = x·Wᵀ + b, y = relu(z) or z."""
    x, w, bias = _f64(x, w, bias)
    z = x @ w.T + (0.0 if bias is None else bias)
    return (np.maximum(z, 0.0) if relu else z), z


def epsilon_linear(x, w, r, den, *, mode="den", epsilon=0.0):
    """(rx, s): s = r ⊘ d, rx = x ⊙ (s·W)."""
    x, w, r = _f64(x, w, r)
    s = r / stabilize(den, mode, epsilon)
    return x * (s @ w), s


# ------------------------------------------------------------------------------------------- conv2d


def _padded(x, pads):
    pt, pl, pb, pr = pads
    return np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))


def _out_size(H, W, R, S, stride, pads, dilation):
    P = (H + pads[0] + pads[2] - dilation[0] * (R - 1) - 1) // stride[0] + 1
    Q = (W + pads[1] + pads[3] - dilation[1] * (S - 1) - 1) // stride[1] + 1
    return P, Q


def conv2d_linear(x, w, *, stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    """x ⋆ W without bias: per tap (r, s), a strided slice of the padded input times W[:, :, r, s]."""
    x, w = _f64(x, w)
    N, C, H, W = x.shape
    K, C_g, R, S = w.shape
    P, Q = _out_size(H, W, R, S, stride, pads, dilation)
    xpad = _padded(x, pads)
    xp = xpad.reshape(N, groups, C_g, *xpad.shape[2:])
    wg = w.reshape(groups, K // groups, C_g, R, S)
    out = np.zeros((N, groups, K // groups, P, Q))
    for r in range(R):
        for s in range(S):
            h0, v0 = r * dilation[0], s * dilation[1]
            patch = xp[..., h0:h0 + (P - 1) * stride[0] + 1:stride[0], v0:v0 + (Q - 1) * stride[1] + 1:stride[1]]
            out += np.einsum("ngchw,gkc->ngkhw", patch, wg[..., r, s])
    return out.reshape(N, K, P, Q)


def conv2d_transpose(y, w, x_shape, *, stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    """The adjoint of :func:`conv2d_linear` onto x's shape: every output scatters y·W[:, :, r, s] back to
    the pixel tap (r, s) read; what lands in the padding is dropped."""
    y, w = _f64(y, w)
    N, C, H, W = x_shape
    K, C_g, R, S = w.shape
    P, Q = y.shape[2:]
    pt, pl, pb, pr = pads
    back = np.zeros((N, groups, C_g, H + pt + pb, W + pl + pr))
    yg = y.reshape(N, groups, K // groups, P, Q)
    wg = w.reshape(groups, K // groups, C_g, R, S)
    for r in range(R):
        for s in range(S):
            h0, v0 = r * dilation[0], s * dilation[1]
            back[..., h0:h0 + (P - 1) * stride[0] + 1:stride[0], v0:v0 + (Q - 1) * stride[1] + 1:stride[1]] += \
                np.einsum("ngkhw,gkc->ngchw", yg, wg[..., r, s])
    return back.reshape(N, C, H + pt + pb, W + pl + pr)[:, :, pt:pt + H, pl:pl + W]


def conv2d(x, w, bias=None, *, stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1, relu=False):
    """(y, z): z = x ⋆ W + b, y = relu(z) or z."""
    z = conv2d_linear(x, w, stride=stride, pads=pads, dilation=dilation, groups=groups)
    if bias is not None:
        z = z + _f64(bias)[0][None, :, None, None]
    return (np.maximum(z, 0.0) if relu else z), z


def epsilon_conv2d(x, w, r, den, *, stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1, mode="den",
                   epsilon=0.0):
    """(rx, s): s = r ⊘ d, rx = x ⊙ convT(s, W)."""
    (x,) = _f64(x)
    s = _f64(r)[0] / stabilize(den, mode, epsilon)
    back = conv2d_transpose(s, w, x.shape, stride=stride, pads=pads, dilation=dilation, groups=groups)
    return x * back, s


# ------------------------------------------------------------------------------------------- γ and αβ


def _pos(a):
    return np.maximum(a, 0.0)


def _neg(a):
    return np.minimum(a, 0.0)


def _parts(forward, x, w):
    return forward(_pos(x), _pos(w)) + forward(_neg(x), _neg(w)), forward(_pos(x), _neg(w)) + forward(_neg(x), _pos(w))


def _parts_back(forward, transpose, x, w, r, z_pos, z_neg, b_pos, b_neg, rule, gamma, alpha, beta, epsilon):
    """(R_x, s_a, s_b): the γ / αβ relevance of x term by term (zennit's form), for any linear map, and the
    shares the bias parts take (R_bias = ⟨b⁺, s_a⟩ + ⟨b⁻, s_b⟩), read off the same terms: s_a multiplies
    every product with x⁺W⁺ (and x⁻W⁻), s_b every product with x⁺W⁻ (and x⁻W⁺)."""
    x, w, r, z_pos, z_neg = _f64(x, w, r, z_pos, z_neg)
    shape = [1] * x.ndim
    shape[1] = -1
    bp = 0.0 if b_pos is None else _f64(b_pos)[0].reshape(shape)
    bn = 0.0 if b_neg is None else _f64(b_neg)[0].reshape(shape)
    xp, xn, wp, wn = _pos(x), _neg(x), _pos(w), _neg(w)
    if rule == "gamma":
        # Where z > 0 the positive contributions are boosted by γ, where z < 0 the negative ones.
        up, down = w + gamma * wp, w + gamma * wn
        z = z_pos + z_neg + bp + bn
        z1 = forward(xp, up) + forward(xn, down) + bp + bn + gamma * bp
        z2 = forward(xp, down) + forward(xn, up) + bp + bn + gamma * bn
        s1 = np.where(z > 0, r / stabilize(z1, "stab", epsilon), 0.0)
        s2 = np.where(z < 0, r / stabilize(z2, "stab", epsilon), 0.0)
        rx = xp * transpose(s1, up) + xn * transpose(s1, down) + xp * transpose(s2, down) + xn * transpose(s2, up)
        # up = (1+γ)W⁺ + W⁻ and down = W⁺ + (1+γ)W⁻: collect the W⁺ and W⁻ parts of x⁺'s terms
        return rx, (1 + gamma) * s1 + s2, s1 + (1 + gamma) * s2
    assert rule == "alpha-beta", rule
    s_alpha = alpha * r / stabilize(forward(xp, wp) + forward(xn, wn) + bp, "stab", epsilon)
    s_beta = beta * r / stabilize(forward(xp, wn) + forward(xn, wp) + bn, "stab", epsilon)
    rx = (xp * transpose(s_alpha, wp) + xn * transpose(s_alpha, wn)
          - xp * transpose(s_beta, wn) - xn * transpose(s_beta, wp))
    return rx, s_alpha, -s_beta


def lrp_parts_linear(x, w):
    """(z_pos, z_neg) = (x⁺W⁺ᵀ + x⁻W⁻ᵀ, x⁺W⁻ᵀ + x⁻W⁺ᵀ)."""
    x, w = _f64(x, w)
    return _parts(lambda a, b: a @ b.T, x, w)


def lrp_parts_linear_back(x, w, r, z_pos, z_neg, b_pos=None, b_neg=None, *, rule, gamma=0.25, alpha=2.0, beta=1.0,
                          epsilon=1e-6, want_s=False):
    """γ / αβ relevance of x for z = x·Wᵀ + b; the mask of γ uses z = z_pos + z_neg + b. With ``want_s``:
    (R_x, s_a, s_b)."""
    out = _parts_back(lambda a, b: a @ b.T, lambda s, b: s @ b, x, w, r, z_pos, z_neg, b_pos, b_neg,
                      rule, gamma, alpha, beta, epsilon)
    return out if want_s else out[0]


def lrp_parts_conv2d(x, w, *, stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    geo = dict(stride=stride, pads=pads, dilation=dilation, groups=groups)
    x, w = _f64(x, w)
    return _parts(lambda a, b: conv2d_linear(a, b, **geo), x, w)


def lrp_parts_conv2d_back(x, w, r, z_pos, z_neg, b_pos=None, b_neg=None, *, rule, gamma=0.25, alpha=2.0, beta=1.0,
                          epsilon=1e-6, stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1, want_s=False):
    geo = dict(stride=stride, pads=pads, dilation=dilation, groups=groups)
    x_shape = np.shape(x)
    out = _parts_back(lambda a, b: conv2d_linear(a, b, **geo),
                      lambda s, b: conv2d_transpose(s, b, x_shape, **geo),
                      x, w, r, z_pos, z_neg, b_pos, b_neg, rule, gamma, alpha, beta, epsilon)
    return out if want_s else out[0]


# ------------------------------------------------------------------------------------------- pointwise


def epsilon_sum(a, b, r, den, *, mode="den", epsilon=0.0):
    """(ra, rb): the ε rule of a sum z = a + b, ra = a ⊙ r ⊘ d, rb = b ⊙ r ⊘ d."""
    a, b, r = _f64(a, b, r)
    s = r / stabilize(den, mode, epsilon)
    return a * s, b * s


# ------------------------------------------------------------------------------------------- pooling


def maxpool2d_back(x, r, *, kernel, stride=None, pads=(0, 0, 0, 0), dilation=(1, 1), ceil_mode=False):
    """Max pooling's winner-takes-all route, written as a scatter: each window (padding = −∞) hands its r
    to its first maximum in row-major window order (``np.argmax``), overlapping windows sum."""
    x, r = _f64(x, r)
    stride = stride or kernel
    N, C, H, W = x.shape
    P, Q = r.shape[2:]
    rx = np.zeros_like(x)
    for p in range(P):
        rows = p * stride[0] - pads[0] + np.arange(kernel[0]) * dilation[0]
        for q in range(Q):
            cols = q * stride[1] - pads[1] + np.arange(kernel[1]) * dilation[1]
            inside = ((rows >= 0) & (rows < H))[:, None] & ((cols >= 0) & (cols < W))[None, :]
            hh, ww = np.clip(rows, 0, H - 1), np.clip(cols, 0, W - 1)
            window = np.where(inside, x[:, :, hh[:, None], ww[None, :]], -np.inf).reshape(N, C, -1)
            first = window.argmax(axis=2)
            i, j = first // kernel[1], first % kernel[1]
            n, c = np.meshgrid(np.arange(N), np.arange(C), indexing="ij")
            np.add.at(rx, (n, c, hh[i], ww[j]), r[:, :, p, q])
    return rx
