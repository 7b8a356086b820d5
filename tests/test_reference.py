"""Validation of the dense-matrix reference in ``tests/reference.py``.

The reference is checked against facts that do not depend on it:

* the dense matrices reproduce torch's convolution and pooling operators and
  their autograd gradients;
* the rules reproduce zennit's hook-based rules on ``nn.Linear`` and
  ``nn.Conv2d`` in float64;
* the rules satisfy their conservation identities.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from zennit import rules as zrules

try:
    import reference as ref
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import reference as ref

SEEDS = [0, 1, 2]


def _rng(seed):
    return np.random.default_rng(seed)


def _nonzero_normal(rng, shape):
    """Standard normal samples pushed away from zero (|v| >= 0.05)."""
    v = rng.standard_normal(shape)
    return np.where(np.abs(v) < 0.05, np.copysign(0.05, v) + v, v)


def _t(a):
    return torch.tensor(np.asarray(a), dtype=torch.float64)


def _flat(t):
    return t.detach().reshape(t.shape[0], -1).numpy()


def _close(actual, desired, rtol=1e-8):
    """Relative comparison with an absolute floor scaled to the data."""
    desired = np.asarray(desired)
    scale = max(float(np.max(np.abs(desired))), 1e-300)
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * scale)


def _torch_pad(x, pads, value=0.0):
    """Apply ONNX pads [top, left, bottom, right] to an NCHW tensor."""
    top, left, bottom, right = pads
    return F.pad(x, (left, right, top, bottom), value=value)


# ---------------------------------------------------------------------------
# dense matrices
# ---------------------------------------------------------------------------

CONV_CASES = [
    # (cin, cout, kernel, hw, strides, pads, dilations, group)
    (3, 4, (3, 3), (7, 8), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    (3, 4, (3, 3), (7, 8), (2, 2), (1, 1, 1, 1), (1, 1), 1),
    (3, 5, (3, 2), (8, 7), (2, 1), (1, 0, 2, 1), (1, 1), 1),
    (2, 3, (3, 3), (9, 9), (1, 2), (2, 1, 0, 2), (2, 2), 1),
    (4, 6, (3, 3), (6, 7), (1, 1), (1, 1, 1, 1), (1, 1), 2),
    (3, 3, (3, 3), (6, 6), (2, 2), (0, 1, 1, 0), (1, 1), 3),
    (3, 6, (2, 2), (5, 6), (1, 1), (1, 1, 0, 0), (2, 1), 3),
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_matrix_matches_torch(seed, case):
    cin, cout, kernel, hw, strides, pads, dilations, group = case
    rng = _rng(seed)
    W = _nonzero_normal(rng, (cout, cin // group) + kernel)
    b = _nonzero_normal(rng, (cout,))
    x = _nonzero_normal(rng, (2, cin) + hw)

    M, out_shape = ref.conv_matrix(W, (cin,) + hw, strides, pads, dilations, group)
    y = F.conv2d(_torch_pad(_t(x), pads), _t(W), _t(b), stride=strides, dilation=dilations, groups=group)
    assert tuple(y.shape[1:]) == out_shape
    assert M.shape == (cin * hw[0] * hw[1], int(np.prod(out_shape)))

    ours = x.reshape(2, -1) @ M + ref.bias_vector(b, out_shape)
    np.testing.assert_allclose(ours, _flat(y), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_pattern_is_conv_matrix_of_ones(case):
    cin, cout, kernel, hw, strides, pads, dilations, group = case
    shape = (cout, cin // group) + kernel
    P, out_shape = ref.conv_pattern(shape, (cin,) + hw, strides, pads, dilations, group)
    M, out_shape2 = ref.conv_matrix(np.ones(shape), (cin,) + hw, strides, pads, dilations, group)
    assert out_shape == out_shape2
    np.testing.assert_array_equal(P, M)
    assert set(np.unique(P)) <= {0.0, 1.0}
    # receptive-field sizes equal the conv of a ones image with ones weights
    ones = F.conv2d(
        _torch_pad(torch.ones((1, cin) + hw, dtype=torch.float64), pads),
        torch.ones(shape, dtype=torch.float64),
        stride=strides,
        dilation=dilations,
        groups=group,
    )
    np.testing.assert_array_equal(P.sum(axis=0), _flat(ones)[0])


def test_conv_pattern_counts_zero_weights():
    W = np.ones((2, 1, 3, 3))
    W[0, 0, 1, 1] = 0.0
    M, _ = ref.conv_matrix(W, (1, 5, 5), pads=(1, 1, 1, 1))
    P, _ = ref.conv_pattern(W, (1, 5, 5), pads=(1, 1, 1, 1))
    assert np.count_nonzero(M) < np.count_nonzero(P)
    np.testing.assert_array_equal(P != 0, ref.conv_pattern(W.shape, (1, 5, 5), pads=1)[0] != 0)


@pytest.mark.parametrize("seed", SEEDS)
def test_gemm_matrix_and_gradient_match_torch_linear(seed):
    rng = _rng(seed)
    W = _nonzero_normal(rng, (5, 7))
    b = _nonzero_normal(rng, (5,))
    x = _nonzero_normal(rng, (4, 7))
    G = _nonzero_normal(rng, (4, 5))

    M = ref.gemm_matrix(W)
    np.testing.assert_array_equal(ref.gemm_matrix(W.T, trans_b=False), M)
    xt = _t(x).requires_grad_()
    y = F.linear(xt, _t(W), _t(b))
    np.testing.assert_allclose(x @ M + ref.bias_vector(b, (5,)), y.detach().numpy(), rtol=1e-12, atol=1e-12)

    (gx,) = torch.autograd.grad(y, xt, grad_outputs=_t(G))
    r_x, r_b = ref.gradient(x, M, b, G)
    np.testing.assert_allclose(r_x, gx.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(r_b, np.zeros(4))


@pytest.mark.parametrize("seed", SEEDS)
def test_gradient_matches_torch_conv(seed):
    rng = _rng(seed)
    W = _nonzero_normal(rng, (4, 3, 3, 3))
    x = _nonzero_normal(rng, (2, 3, 7, 6))
    M, out_shape = ref.conv_matrix(W, (3, 7, 6), strides=2, pads=(1, 1, 1, 1))
    G = _nonzero_normal(rng, (2, int(np.prod(out_shape))))
    xt = _t(x).requires_grad_()
    y = F.conv2d(xt, _t(W), stride=2, padding=1)
    (gx,) = torch.autograd.grad(y, xt, grad_outputs=_t(G).reshape(y.shape))
    r_x, _ = ref.gradient(x.reshape(2, -1), M, None, G)
    np.testing.assert_allclose(r_x, _flat(gx), rtol=1e-12, atol=1e-12)


POOL_CASES = [
    # (kernel, strides, symmetric padding)
    ((2, 2), (2, 2), (0, 0)),
    ((3, 3), (2, 2), (1, 1)),
    ((3, 2), (1, 2), (1, 0)),
    ((3, 3), (1, 1), (1, 1)),
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("count_include_pad", [False, True])
def test_avgpool_matrix_matches_torch(seed, case, count_include_pad):
    kernel, strides, (ph, pw) = case
    rng = _rng(seed)
    x = _nonzero_normal(rng, (2, 3, 7, 8))
    M, out_shape = ref.avgpool_matrix((3, 7, 8), kernel, strides, (ph, pw, ph, pw), count_include_pad)
    y = F.avg_pool2d(_t(x), kernel, strides, (ph, pw), count_include_pad=count_include_pad)
    assert tuple(y.shape[1:]) == out_shape
    np.testing.assert_allclose(x.reshape(2, -1) @ M, _flat(y), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("count_include_pad", [False, True])
def test_avgpool_matrix_asymmetric_pads(seed, count_include_pad):
    """Asymmetric pads: window sums over the zero-padded input, divided by the
    kernel size or by the number of real (non-pad) taps."""
    rng = _rng(seed)
    pads, kernel, strides = (1, 0, 2, 1), (3, 2), (2, 1)
    x = _nonzero_normal(rng, (2, 2, 6, 5))
    M, out_shape = ref.avgpool_matrix((2, 6, 5), kernel, strides, pads, count_include_pad)
    k = kernel[0] * kernel[1]
    sums = F.avg_pool2d(_torch_pad(_t(x), pads), kernel, strides) * k
    if count_include_pad:
        expected = sums / k
    else:
        counts = F.avg_pool2d(_torch_pad(torch.ones_like(_t(x)), pads), kernel, strides) * k
        expected = sums / counts
    assert tuple(expected.shape[1:]) == out_shape
    np.testing.assert_allclose(x.reshape(2, -1) @ M, _flat(expected), rtol=1e-12, atol=1e-12)


def _torch_maxpool(xt, kernel, strides, pads):
    return F.max_pool2d(_torch_pad(xt, pads, value=-np.inf), kernel, strides)


MAXPOOL_CASES = [
    ((2, 2), (2, 2), (0, 0, 0, 0)),
    ((3, 3), (2, 2), (1, 1, 1, 1)),
    ((3, 3), (1, 1), (1, 0, 1, 2)),
    ((2, 3), (2, 1), (0, 1, 1, 0)),
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", MAXPOOL_CASES)
def test_maxpool_winner_matrix_matches_torch(seed, case):
    kernel, strides, pads = case
    rng = _rng(seed)
    x = _nonzero_normal(rng, (2, 3, 7, 6))
    M, out_shape = ref.maxpool_winner_matrix(x, kernel, strides, pads)
    assert M.shape == (2, 3 * 7 * 6, int(np.prod(out_shape)))
    np.testing.assert_array_equal(M.sum(axis=1), 1.0)

    xt = _t(x).requires_grad_()
    y = _torch_maxpool(xt, kernel, strides, pads)
    assert tuple(y.shape[1:]) == out_shape
    np.testing.assert_array_equal(np.einsum("ni,nij->nj", x.reshape(2, -1), M), _flat(y))

    G = _nonzero_normal(rng, (2, int(np.prod(out_shape))))
    (gx,) = torch.autograd.grad(y, xt, grad_outputs=_t(G).reshape(y.shape))
    r_x, _ = ref.gradient(x.reshape(2, -1), M, None, G)
    np.testing.assert_allclose(r_x, _flat(gx), rtol=1e-12, atol=1e-12)

    # single-sample form agrees with the batched one
    M0, _ = ref.maxpool_winner_matrix(x[0], kernel, strides, pads)
    np.testing.assert_array_equal(M0, M[0])


@pytest.mark.parametrize("seed", SEEDS)
def test_maxpool_ties_go_to_first_tap(seed):
    """With many ties the routing still agrees with torch's gradient."""
    rng = _rng(seed)
    x = rng.integers(0, 2, size=(2, 2, 6, 6)).astype(np.float64)
    kernel, strides, pads = (3, 3), (1, 1), (0, 0, 0, 0)
    M, out_shape = ref.maxpool_winner_matrix(x, kernel, strides, pads)
    xt = _t(x).requires_grad_()
    y = _torch_maxpool(xt, kernel, strides, pads)
    G = _nonzero_normal(rng, (2, int(np.prod(out_shape))))
    (gx,) = torch.autograd.grad(y, xt, grad_outputs=_t(G).reshape(y.shape))
    np.testing.assert_allclose(ref.gradient(x.reshape(2, -1), M, None, G)[0], _flat(gx), rtol=1e-12, atol=1e-12)
    # explicit check on one window: all ones, the first tap wins
    xs = np.ones((1, 3, 3))
    Ms, _ = ref.maxpool_winner_matrix(xs, 3)
    np.testing.assert_array_equal(Ms[:, 0], np.eye(9)[0])


# ---------------------------------------------------------------------------
# rules versus zennit
# ---------------------------------------------------------------------------


def _zennit_relevance(rule, module, x, R):
    """R_x from a zennit rule hooked into ``module`` (float64)."""
    handle = rule.register(module)
    try:
        xt = _t(x).requires_grad_()
        out = module(xt)
        (r_x,) = torch.autograd.grad(out, xt, grad_outputs=_t(R).reshape(out.shape))
    finally:
        handle.remove()
    return _flat(r_x)


def _linear_layer(rng):
    layer = torch.nn.Linear(7, 5).double()
    with torch.no_grad():
        layer.weight.copy_(_t(_nonzero_normal(rng, (5, 7))))
        layer.bias.copy_(_t(_nonzero_normal(rng, (5,))))
    x = _nonzero_normal(rng, (4, 7))
    M = ref.gemm_matrix(layer.weight.detach().numpy())
    b = layer.bias.detach().numpy().copy()
    return layer, x, M, b, np.ones_like(M), (7,)


def _conv_layer(rng):
    layer = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1).double()
    with torch.no_grad():
        layer.weight.copy_(_t(_nonzero_normal(rng, (4, 3, 3, 3))))
        layer.bias.copy_(_t(_nonzero_normal(rng, (4,))))
    in_shape = (3, 7, 6)
    x = _nonzero_normal(rng, (2,) + in_shape)
    W = layer.weight.detach().numpy()
    M, out_shape = ref.conv_matrix(W, in_shape, strides=2, pads=1)
    P, _ = ref.conv_pattern(W.shape, in_shape, strides=2, pads=1)
    b = ref.bias_vector(layer.bias.detach().numpy(), out_shape)
    return layer, x, M, b, P, in_shape


LAYERS = {"linear": _linear_layer, "conv": _conv_layer}


def _setup(kind, seed):
    rng = _rng(seed)
    layer, x, M, b, P, in_shape = LAYERS[kind](rng)
    R = _nonzero_normal(rng, (x.shape[0], M.shape[1]))
    return layer, x, x.reshape(x.shape[0], -1), M, b, P, R, in_shape


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("eps", [1e-6, 0.25])
def test_epsilon_matches_zennit(seed, kind, eps):
    layer, x, xf, M, b, _, R, _ = _setup(kind, seed)
    expected = _zennit_relevance(zrules.Epsilon(epsilon=eps), layer, x, R)
    _close(ref.epsilon(xf, M, b, R, eps)[0], expected)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_zplus_matches_zennit(seed, kind):
    layer, x, xf, M, b, _, R, _ = _setup(kind, seed)
    expected = _zennit_relevance(zrules.ZPlus(), layer, x, R)
    _close(ref.zplus(xf, M, b, R)[0], expected)
    # zplus is alpha-beta with alpha=1, beta=0
    _close(ref.alpha_beta(xf, M, b, R, 1.0, 0.0)[0], expected)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("alpha,beta", [(2.0, 1.0), (1.0, 0.0)])
def test_alpha_beta_matches_zennit(seed, kind, alpha, beta):
    layer, x, xf, M, b, _, R, _ = _setup(kind, seed)
    expected = _zennit_relevance(zrules.AlphaBeta(alpha, beta), layer, x, R)
    _close(ref.alpha_beta(xf, M, b, R, alpha, beta)[0], expected)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("g", [0.25, 1.0])
def test_gamma_matches_zennit(seed, kind, g):
    layer, x, xf, M, b, _, R, _ = _setup(kind, seed)
    expected = _zennit_relevance(zrules.Gamma(gamma=g), layer, x, R)
    _close(ref.gamma(xf, M, b, R, g)[0], expected)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_gamma_zero_is_epsilon(seed, kind):
    _, _, xf, M, b, _, R, _ = _setup(kind, seed)
    for got, want in zip(ref.gamma(xf, M, b, R, 0.0, eps=1e-3), ref.epsilon(xf, M, b, R, eps=1e-3)):
        _close(got, want, rtol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_zbox_scalar_bounds_match_zennit(seed, kind):
    layer, x, xf, M, b, _, R, _ = _setup(kind, seed)
    # bounds exactly representable in float32: zennit turns python floats into
    # default-dtype (float32) tensors before casting to the input dtype
    low, high = -2.5, 3.0
    expected = _zennit_relevance(zrules.ZBox(low=low, high=high), layer, x, R)
    _close(ref.zbox(xf, M, b, R, low, high)[0], expected)


@pytest.mark.parametrize("seed", SEEDS)
def test_zbox_per_channel_bounds_match_zennit(seed):
    layer, x, xf, M, b, _, R, in_shape = _setup("conv", seed)
    rng = _rng(100 + seed)
    low_c = -1.0 - rng.random(in_shape[0])
    high_c = 1.0 + rng.random(in_shape[0])
    rule = zrules.ZBox(low=_t(low_c).reshape(1, -1, 1, 1), high=_t(high_c).reshape(1, -1, 1, 1))
    expected = _zennit_relevance(rule, layer, x, R)
    hw = in_shape[1] * in_shape[2]
    low = np.repeat(low_c, hw)[None, :]
    high = np.repeat(high_c, hw)
    _close(ref.zbox(xf, M, b, R, low, high)[0], expected)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_flat_matches_zennit(seed, kind):
    layer, x, xf, M, b, P, R, _ = _setup(kind, seed)
    expected = _zennit_relevance(zrules.Flat(), layer, x, R)
    r_x, r_b = ref.flat(xf, M, b, R, pattern=P)
    _close(r_x, expected)
    np.testing.assert_array_equal(r_b, 0.0)


def test_flat_needs_explicit_pattern_with_zero_weight():
    rng = _rng(7)
    layer = torch.nn.Conv2d(2, 3, 3, stride=2, padding=1).double()
    with torch.no_grad():
        layer.weight[1, 0, 1, 1] = 0.0
    in_shape = (2, 5, 5)
    x = _nonzero_normal(rng, (1,) + in_shape)
    W = layer.weight.detach().numpy()
    M, _ = ref.conv_matrix(W, in_shape, 2, 1)
    P, _ = ref.conv_pattern(W.shape, in_shape, 2, 1)
    R = _nonzero_normal(rng, (1, M.shape[1]))
    expected = _zennit_relevance(zrules.Flat(), layer, x, R)
    _close(ref.flat(x.reshape(1, -1), M, None, R, pattern=P)[0], expected)
    assert not np.allclose(ref.flat(x.reshape(1, -1), M, None, R)[0], expected)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_wsquare_matches_zennit(seed, kind):
    layer, x, xf, M, b, _, R, _ = _setup(kind, seed)
    expected = _zennit_relevance(zrules.WSquare(), layer, x, R)
    _close(ref.wsquare_zennit(xf, M, b, R)[0], expected)
    # the paper form is zennit's with the bias zeroed
    expected_nobias = _zennit_relevance(zrules.WSquare(zero_params="bias"), layer, x, R)
    _close(ref.wsquare(xf, M, b, R)[0], expected_nobias)
    _close(ref.wsquare_zennit(xf, M, None, R)[0], expected_nobias)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("count_include_pad", [False, True])
def test_norm_matches_zennit_on_avgpool(seed, count_include_pad):
    rng = _rng(seed)
    x = _nonzero_normal(rng, (2, 3, 7, 6))
    pool = torch.nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=count_include_pad)
    M, out_shape = ref.avgpool_matrix((3, 7, 6), 3, 2, 1, count_include_pad)
    R = _nonzero_normal(rng, (2, int(np.prod(out_shape))))
    expected = _zennit_relevance(zrules.Norm(), pool, x, R)
    r_x, r_b = ref.norm(x.reshape(2, -1), M, R)
    _close(r_x, expected)
    np.testing.assert_array_equal(r_b, 0.0)


# ---------------------------------------------------------------------------
# conservation
# ---------------------------------------------------------------------------


def _total(rule_out):
    r_x, r_b = rule_out
    return r_x.sum(axis=1) + r_b


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_conservation(seed, kind):
    _, _, xf, M, b, P, R, _ = _setup(kind, seed)
    total = R.sum(axis=1)
    tight = dict(rtol=1e-8, atol=1e-8 * np.abs(R).sum())

    np.testing.assert_allclose(_total(ref.epsilon(xf, M, b, R, 1e-12)), total, **tight)

    # Positive/negative parts: an output whose positive (negative) part is
    # exactly zero, e.g. all contributions negative and b <= 0, passes nothing
    # on through that part, so only outputs with a non-empty part count.
    contrib = xf[:, :, None] * M[None]  # [N, D_in, D_out]
    pos_part = np.where(contrib > 0, contrib, 0).sum(axis=1) + np.maximum(b, 0)
    neg_part = np.where(contrib < 0, contrib, 0).sum(axis=1) + np.minimum(b, 0)
    total_pos = (R * (pos_part > 0)).sum(axis=1)
    total_neg = (R * (neg_part < 0)).sum(axis=1)
    np.testing.assert_allclose(_total(ref.zplus(xf, M, b, R, 1e-12)), total_pos, **tight)
    for alpha, beta in [(1.0, 0.0), (2.0, 1.0), (3.0, 1.5)]:
        np.testing.assert_allclose(
            _total(ref.alpha_beta(xf, M, b, R, alpha, beta, 1e-12)), alpha * total_pos - beta * total_neg, **tight
        )
    # positive inputs and a positive bias: every output has a positive part
    np.testing.assert_allclose(_total(ref.zplus(np.abs(xf), M, np.abs(b), R, 1e-12)), total, **tight)
    np.testing.assert_allclose(_total(ref.gamma(xf, M, b, R, 0.25, 1e-12)), total, **tight)
    np.testing.assert_allclose(_total(ref.wsquare(xf, M, b, R, 1e-12)), total, **tight)
    np.testing.assert_allclose(_total(ref.wsquare_zennit(xf, M, b, R, 1e-12)), total, **tight)
    np.testing.assert_allclose(_total(ref.flat(xf, M, b, R, 1e-12, pattern=P)), total, **tight)
    np.testing.assert_allclose(_total(ref.norm(xf, M, R, 1e-12)), total, **tight)

    # z-box inside its box: x clipped into [low, high]
    low, high = -1.0, 1.5
    xb = np.clip(xf, low + 0.01, high - 0.01)
    np.testing.assert_allclose(_total(ref.zbox(xb, M, b, R, low, high, 1e-12)), total, **tight)


def test_bias_relevance_values():
    """R_bias is the bias seen as the weight of a constant-one input."""
    x = np.array([[1.0, -2.0]])
    M = np.array([[2.0], [1.0]])
    b = np.array([3.0])
    R = np.array([[6.0]])
    # z = 2 - 2 + 3 = 3
    r_x, r_b = ref.epsilon(x, M, b, R, eps=0.0)
    np.testing.assert_allclose(r_x, [[4.0, -4.0]])
    np.testing.assert_allclose(r_b, [6.0])
    # z+ = 2 + 3 = 5 (the negative contribution -2 is dropped)
    r_x, r_b = ref.zplus(x, M, b, R, eps=0.0)
    np.testing.assert_allclose(r_x, [[12.0 / 5.0, 0.0]])
    np.testing.assert_allclose(r_b, [18.0 / 5.0])
    # with M = [[2], [-1]]: z+ = x+ M+ + x- M- + b+ = 2 + 2 + 3 = 7
    r_x, r_b = ref.zplus(x, np.array([[2.0], [-1.0]]), b, R, eps=0.0)
    np.testing.assert_allclose(r_x, [[12.0 / 7.0, 12.0 / 7.0]])
    np.testing.assert_allclose(r_b, [18.0 / 7.0])
