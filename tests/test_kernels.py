"""The Triton kernels against float64 references (under the interpreter when there is no GPU).

Every run writes into outputs poisoned with NaN, so an element a kernel fails to write shows up. Shapes
are small and ragged (not multiples of the blocks). References: ``relgraph.kernels.reference`` (float64 numpy),
torch autograd for the transposed convolution, zennit's modified-weight form of γ and αβ,
onnxruntime's pooling indices for max pooling's route, and onnxruntime running a compiled ε explainer.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from relgraph import kernels
import relgraph
from relgraph.kernels import reference as ref
from relgraph.errors import RelgraphError

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.float16: 3e-3}
SEEDS = (0, 1)
# (C, K, R, S, stride, pads (t, l, b, r), dilation, groups, H, W): stride 2, dilation 2, groups 2,
# depthwise, asymmetric pads, 1×1, and strides that leave the last rows/cols unread (ragged edges).
GEOMETRIES = [
    (6, 8, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, 11, 9),
    (6, 8, 3, 2, (2, 2), (0, 1, 2, 0), (1, 1), 2, 11, 9),
    (8, 8, 3, 3, (1, 2), (2, 2, 2, 2), (2, 2), 8, 10, 9),
    (5, 7, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1, 7, 6),
    (4, 6, 3, 3, (3, 3), (0, 0, 0, 0), (1, 1), 1, 12, 11),
    (4, 6, 2, 3, (2, 1), (1, 0, 0, 2), (2, 1), 2, 9, 8),
]
GEOMETRY_IDS = ["3x3-pad1", "stride2-groups2-asym", "depthwise-dil2", "1x1", "stride3-ragged", "mixed"]


def rel_err(got: torch.Tensor, want: np.ndarray) -> float:
    """‖got − want‖ / ‖want‖ in float64, failing on any non-finite element (an unwritten NaN)."""
    got = got.detach().cpu().double().numpy()
    assert np.isfinite(got).all(), "output has unwritten (NaN) or non-finite elements"
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def assert_epsilon_step(got, rx: np.ndarray, s: np.ndarray, want_s: bool) -> None:
    """An ε kernel's result (rx, or (rx, s) with ``want_s``) against the float64 reference, fp32 tolerance."""
    if want_s:
        assert rel_err(got[1], s) < TOL[torch.float32]
        got = got[0]
    assert rel_err(got, rx) < TOL[torch.float32]


def poisoned(*shapes):
    out = tuple(torch.full(s, float("nan"), dtype=torch.float32, device=DEVICE) for s in shapes)
    return out if len(out) > 1 else out[0]


def rand(gen, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=gen).to(dtype=dtype, device=DEVICE)


def f64(t: torch.Tensor | None):
    return None if t is None else t.detach().cpu().double().numpy()


def geometry(g):
    C, K, R, S, stride, pads, dilation, groups, H, W = g
    return dict(stride=stride, pads=pads, dilation=dilation, groups=groups)


def conv_operands(gen, g, dtype=torch.float32, n=2):
    C, K, R, S, *_, groups, H, W = g
    return rand(gen, n, C, H, W, dtype=dtype), rand(gen, K, C // groups, R, S, dtype=dtype)


# ------------------------------------------------------------------------------------------- dense


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("relu,keep_z,has_bias", [(True, True, True), (False, False, True), (True, False, False)])
def test_linear(seed, relu, keep_z, has_bias):
    gen = torch.Generator().manual_seed(seed)
    x, w, b = rand(gen, 37, 70), rand(gen, 50, 70), rand(gen, 50)
    bias = b if has_bias else None
    out = poisoned((37, 50), (37, 50)) if keep_z else poisoned((37, 50))
    got = kernels.linear(x, w, bias, relu=relu, keep_z=keep_z, out=out)
    y, z = ref.linear(f64(x), f64(w), f64(bias), relu=relu)
    if keep_z:
        assert got[0] is out[0] and got[1] is out[1]
        assert rel_err(got[1], z) < TOL[torch.float32]
        got = got[0]
    assert rel_err(got, y) < TOL[torch.float32]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mode", ["den", "stab", "shift"])
@pytest.mark.parametrize("want_s", [True, False])
def test_epsilon_linear(seed, mode, want_s):
    gen = torch.Generator().manual_seed(seed)
    x, w, r = rand(gen, 37, 70), rand(gen, 50, 70), rand(gen, 37, 50)
    z = rand(gen, 37, 50)
    # "shift" divides a ReLU output; "den" takes d as given: keep both away from 0.
    den = {"den": z.sign() * (z.abs() + 0.5), "stab": z, "shift": z.relu()}[mode]
    eps = 0.0 if mode == "den" else 0.25
    out = poisoned((37, 70), (37, 50)) if want_s else poisoned((37, 70))
    got = kernels.epsilon_linear(x, w, r, den, mode=mode, epsilon=eps, want_s=want_s, out=out)
    rx, s = ref.epsilon_linear(f64(x), f64(w), f64(r), f64(den), mode=mode, epsilon=eps)
    assert_epsilon_step(got, rx, s, want_s)


def test_epsilon_linear_stab_uses_sign_zero_plus_one():
    """stab(0) = +ε (zennit's convention), so r ⊘ stab(0) = r/ε, not −r/ε or a division by zero."""
    gen = torch.Generator().manual_seed(3)
    x, w, r = rand(gen, 5, 7), rand(gen, 3, 7), rand(gen, 5, 3)
    den = torch.zeros(5, 3, device=DEVICE)
    _, s = kernels.epsilon_linear(x, w, r, den, mode="stab", epsilon=0.5, want_s=True, out=poisoned((5, 7), (5, 3)))
    assert rel_err(s, f64(r) / 0.5) < 1e-6


# ------------------------------------------------------------------------------------------- conv2d


@pytest.mark.parametrize("g", GEOMETRIES, ids=GEOMETRY_IDS)
def test_conv2d(g):
    for seed, (relu, keep_z, has_bias) in zip(SEEDS, [(True, True, True), (False, False, False)]):
        gen = torch.Generator().manual_seed(seed)
        x, w = conv_operands(gen, g)
        bias = rand(gen, w.shape[0]) if has_bias else None
        y_ref, z_ref = ref.conv2d(f64(x), f64(w), f64(bias), relu=relu, **geometry(g))
        out = poisoned(y_ref.shape, y_ref.shape) if keep_z else poisoned(y_ref.shape)
        got = kernels.conv2d(x, w, bias, relu=relu, keep_z=keep_z, out=out, **geometry(g))
        if keep_z:
            assert rel_err(got[1], z_ref) < TOL[torch.float32]
            got = got[0]
        assert rel_err(got, y_ref) < TOL[torch.float32]


def test_conv_references_agree_with_torch():
    """The numpy references themselves: the forward against torch's conv2d, the transpose against autograd."""
    for g in GEOMETRIES:
        gen = torch.Generator().manual_seed(5)
        x, w = conv_operands(gen, g)
        pt, pl, pb, pr = g[5]
        xd = torch.nn.functional.pad(x.cpu().double(), (pl, pr, pt, pb)).requires_grad_()
        z = torch.nn.functional.conv2d(xd, w.cpu().double(), stride=g[4], dilation=g[6], groups=g[7])
        assert np.abs(ref.conv2d_linear(f64(x), f64(w), **geometry(g)) - z.detach().numpy()).max() < 1e-10
        s = torch.randn(z.shape, generator=gen, dtype=torch.float64)
        (back,) = torch.autograd.grad(z, xd, s)
        back = back[:, :, pt:pt + x.shape[2], pl:pl + x.shape[3]]
        got = ref.conv2d_transpose(s.numpy(), f64(w), x.shape, **geometry(g))
        assert np.abs(got - back.numpy()).max() < 1e-10


@pytest.mark.parametrize("g", GEOMETRIES, ids=GEOMETRY_IDS)
def test_epsilon_conv2d(g):
    for seed, mode, want_s in zip(SEEDS, ["stab", "shift" if g[7] == 1 else "den"], [True, False]):
        gen = torch.Generator().manual_seed(seed)
        x, w = conv_operands(gen, g)
        _, z = ref.conv2d(f64(x), f64(w), None, **geometry(g))
        z = torch.as_tensor(z, dtype=torch.float32, device=DEVICE)
        den = {"den": z.sign() * (z.abs() + 0.5), "stab": z, "shift": z.relu()}[mode]
        eps = 0.0 if mode == "den" else 0.25
        r = rand(gen, *z.shape)
        out = poisoned(x.shape, z.shape) if want_s else poisoned(x.shape)
        got = kernels.epsilon_conv2d(x, w, r, den, mode=mode, epsilon=eps, want_s=want_s, out=out, **geometry(g))
        rx, s = ref.epsilon_conv2d(f64(x), f64(w), f64(r), f64(den), mode=mode, epsilon=eps, **geometry(g))
        assert_epsilon_step(got, rx, s, want_s)


def test_epsilon_conv2d_pixels_no_window_reaches_get_zero():
    """Stride 3 with a 2×2 kernel skips every third row and column: their relevance is exactly 0."""
    gen = torch.Generator().manual_seed(7)
    x, w = rand(gen, 1, 3, 9, 9), rand(gen, 4, 3, 2, 2)
    r = rand(gen, 1, 4, 3, 3)
    den = r.abs() + 1.0
    rx = kernels.epsilon_conv2d(x, w, r, den, stride=(3, 3), out=poisoned(x.shape))
    assert torch.all(rx[:, :, 2::3, :] == 0) and torch.all(rx[:, :, :, 2::3] == 0)
    assert torch.all(rx[:, :, 0::3, 0::3] != 0)


# ------------------------------------------------------------------------------------------- γ and αβ


def _bias_parts(b):
    return (None, None) if b is None else (b.clamp(min=0), b.clamp(max=0))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("x_nonneg", [False, True])
def test_lrp_parts_linear(seed, x_nonneg):
    gen = torch.Generator().manual_seed(seed)
    x, w, r, b = rand(gen, 37, 70), rand(gen, 50, 70), rand(gen, 37, 50), rand(gen, 50)
    if x_nonneg:
        x = x.relu()
    z_pos, z_neg = kernels.lrp_parts_linear(x, w, x_nonneg=x_nonneg, out=poisoned((37, 50), (37, 50)))
    want_pos, want_neg = ref.lrp_parts_linear(f64(x), f64(w))
    assert rel_err(z_pos, want_pos) < TOL[torch.float32] and rel_err(z_neg, want_neg) < TOL[torch.float32]
    for rule, bias in (("gamma", b), ("alpha-beta", b), ("gamma", None)):
        b_pos, b_neg = _bias_parts(bias)
        got = kernels.lrp_parts_linear_back(x, w, r, z_pos, z_neg, b_pos, b_neg, rule=rule, gamma=0.3, alpha=2.0,
                                            beta=1.0, epsilon=1e-6, x_nonneg=x_nonneg, out=poisoned((37, 70)))
        want = ref.lrp_parts_linear_back(f64(x), f64(w), f64(r), f64(z_pos), f64(z_neg), f64(b_pos), f64(b_neg),
                                         rule=rule, gamma=0.3, alpha=2.0, beta=1.0, epsilon=1e-6)
        assert rel_err(got, want) < 1e-4, rule


@pytest.mark.parametrize("g", GEOMETRIES[1:4], ids=GEOMETRY_IDS[1:4])
def test_lrp_parts_conv2d(g):
    gen = torch.Generator().manual_seed(11)
    x, w = conv_operands(gen, g)
    b = rand(gen, w.shape[0])
    for x_nonneg, rule in ((False, "gamma"), (True, "alpha-beta")):
        xi = x.relu() if x_nonneg else x
        want_pos, want_neg = ref.lrp_parts_conv2d(f64(xi), f64(w), **geometry(g))
        z_pos, z_neg = kernels.lrp_parts_conv2d(xi, w, x_nonneg=x_nonneg, out=poisoned(*[want_pos.shape] * 2),
                                                **geometry(g))
        assert rel_err(z_pos, want_pos) < TOL[torch.float32] and rel_err(z_neg, want_neg) < TOL[torch.float32]
        r = rand(gen, *z_pos.shape)
        got = kernels.lrp_parts_conv2d_back(xi, w, r, z_pos, z_neg, *_bias_parts(b), rule=rule, x_nonneg=x_nonneg,
                                            out=poisoned(x.shape), **geometry(g))
        want = ref.lrp_parts_conv2d_back(f64(xi), f64(w), f64(r), f64(z_pos), f64(z_neg), *map(f64, _bias_parts(b)),
                                         rule=rule, **geometry(g))
        assert rel_err(got, want) < 1e-4, rule


def _zennit_groups(rule, w, b, p):
    """zennit's γ, αβ and z⁺ as groups of (input, weight, bias) with a coefficient and an output mask, in the
    modified-weight form (γ: W + γW⁺ where z > 0, W + γW⁻ where z < 0), not relgraph's split form."""
    pos, neg = np.maximum, np.minimum
    if rule == "gamma":
        g = p.gamma
        wp, wn, bp, bn = w + g * pos(w, 0), w + g * neg(w, 0), b + g * pos(b, 0), b + g * neg(b, 0)
        return [(1.0, "z>0", [("x+", wp, bp), ("x-", wn, None)]), (1.0, "z<0", [("x+", wn, bn), ("x-", wp, None)])]
    groups = [(p.alpha, None, [("x+", pos(w, 0), pos(b, 0)), ("x-", neg(w, 0), None)])]
    if p.beta:
        groups.append((-p.beta, None, [("x+", neg(w, 0), neg(b, 0)), ("x-", pos(w, 0), None)]))
    return groups


def _groups_relevance(groups, x, z, r, forward, transpose, epsilon=1e-6):
    """The groups evaluated directly in float64: for each group g with coefficient c_g, mask m_g and terms t,
    z_g = Σ_t (in_t ⋆ W_t) + b_t, s_g = c_g·m_g·r ⊘ stab(z_g), R_x = Σ_g Σ_t in_t ⊙ (s_g ⋆ᵀ W_t)."""
    inputs = {"x+": np.maximum(x, 0), "x-": np.minimum(x, 0)}
    shape = [1, -1] + [1] * (x.ndim - 2)
    total = np.zeros_like(x)
    for coeff, mask, terms in groups:
        zg = sum(forward(inputs[i], w.astype(np.float64)) + (0 if b is None else b.astype(np.float64).reshape(shape))
                 for i, w, b in terms)
        s = coeff * r / (zg + epsilon * np.where(zg >= 0, 1.0, -1.0))
        if mask:
            s = np.where(z > 0 if mask == "z>0" else z < 0, s, 0.0)
        total += sum(inputs[i] * transpose(s, w.astype(np.float64)) for i, w, _ in terms)
    return total


@pytest.mark.parametrize("rule", ["gamma", "alpha-beta"])
@pytest.mark.parametrize("has_bias,x_nonneg", [(True, False), (False, True)])
def test_lrp_parts_back_writes_the_shares(rule, has_bias, x_nonneg):
    """``want_s``: the push-back kernels also write s_a, s_b (every one, in the dense and the conv form;
    the conv's pads are as wide as its kernel, so whole windows lie in the padding, where the gather never
    reads the shares), equal to the float64 reference's, and rx is unchanged."""
    gen = torch.Generator().manual_seed(29)
    x, w, b = rand(gen, 19, 37), rand(gen, 21, 37), rand(gen, 21)
    g = (4, 6, 2, 2, (2, 1), (2, 1, 2, 2), (1, 1), 2, 7, 6)
    xc, wc = conv_operands(gen, g)
    bc = rand(gen, wc.shape[0])
    if x_nonneg:
        x, xc = x.relu(), xc.relu()
    cases = [(x, w, b, {}, kernels.lrp_parts_linear, kernels.lrp_parts_linear_back, ref.lrp_parts_linear_back),
             (xc, wc, bc, geometry(g), kernels.lrp_parts_conv2d, kernels.lrp_parts_conv2d_back,
              ref.lrp_parts_conv2d_back)]
    for xi, wi, bi, geo, forward, back, reference in cases:
        parts = _bias_parts(bi if has_bias else None)
        z_pos, z_neg = forward(xi, wi, x_nonneg=x_nonneg, **geo)
        r = rand(gen, *z_pos.shape)
        out = poisoned(xi.shape, z_pos.shape, z_pos.shape)
        got = back(xi, wi, r, z_pos, z_neg, *parts, rule=rule, gamma=0.3, x_nonneg=x_nonneg, want_s=True, out=out,
                   **geo)
        assert all(g_ is o for g_, o in zip(got, out))
        want = reference(f64(xi), f64(wi), f64(r), f64(z_pos), f64(z_neg), *map(f64, parts), rule=rule, gamma=0.3,
                         want_s=True, **geo)
        for name, g_, w_ in zip(("rx", "s_a", "s_b"), got, want):
            assert rel_err(g_, w_) < 1e-4, (name, geo)
        alone = back(xi, wi, r, z_pos, z_neg, *parts, rule=rule, gamma=0.3, x_nonneg=x_nonneg, out=poisoned(xi.shape),
                     **geo)
        assert rel_err(alone, want[0]) < 1e-4


@pytest.mark.parametrize("rule", ["gamma", "alpha-beta", "zplus"])
@pytest.mark.parametrize("layer", ["dense", "conv"])
def test_parts_match_zennit_groups(rule, layer):
    """The kernels' two-share form equals zennit's γ, αβ and z⁺ in their modified-weight form."""
    from types import SimpleNamespace

    gen = torch.Generator().manual_seed(13)
    params = SimpleNamespace(stabilizer=1e-6, gamma=0.25, alpha=1.0 if rule == "zplus" else 2.0,
                             beta=0.0 if rule == "zplus" else 1.0)
    if layer == "dense":
        x, w, b = rand(gen, 9, 21), rand(gen, 13, 21), rand(gen, 13)
        geo, fwd, back = {}, kernels.lrp_parts_linear, kernels.lrp_parts_linear_back
        forward, transpose = (lambda a, m: a @ m.T), (lambda s, m: s @ m)
    else:
        g = GEOMETRIES[1]
        x, w = conv_operands(gen, g)
        b = rand(gen, w.shape[0])
        geo, fwd, back = geometry(g), kernels.lrp_parts_conv2d, kernels.lrp_parts_conv2d_back
        forward = lambda a, m: ref.conv2d_linear(a, m, **geo)  # noqa: E731
        transpose = lambda s, m: ref.conv2d_transpose(s, m, x.shape, **geo)  # noqa: E731
    z_pos, z_neg = fwd(x, w, **geo)
    r = rand(gen, *z_pos.shape)
    got = back(x, w, r, z_pos, z_neg, *_bias_parts(b), rule="gamma" if rule == "gamma" else "alpha-beta",
               gamma=params.gamma, alpha=params.alpha, beta=params.beta, epsilon=1e-6, out=poisoned(x.shape), **geo)
    shape = [1, -1] + [1] * (x.dim() - 2)
    z = f64(z_pos) + f64(z_neg) + f64(b).reshape(shape)
    groups = _zennit_groups(rule, w.cpu().numpy(), b.cpu().numpy(), params)
    want = _groups_relevance(groups, f64(x), z, f64(r), forward, transpose)
    assert rel_err(got, want) < 1e-4


# ------------------------------------------------------------------------------------------- max pooling

# (kernel, stride, pads (t, l, b, r), dilation, ceil_mode): ResNet's overlapping 3×3 s2 p1, 2×2 s2,
# ceil_mode with a ragged last window, dilated with asymmetric pads, stride 1 (every pixel in many windows)
POOLS = [((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), False),
         ((2, 2), (2, 2), (0, 0, 0, 0), (1, 1), False),
         ((3, 3), (2, 2), (0, 0, 0, 0), (1, 1), True),
         ((3, 2), (2, 1), (1, 0, 2, 1), (2, 1), True),
         ((2, 3), (1, 1), (1, 1, 0, 2), (1, 1), False)]
POOL_IDS = ["3x3-s2-p1", "2x2-s2", "3x3-s2-ceil", "dilated-asym-ceil", "stride1"]


def pool_input(gen, n=2, c=3, h=11, w=9):
    """A ReLU output with a plateau: many zeros and equal values, so most windows tie."""
    x = rand(gen, n, c, h, w).relu()
    x[:, :, 2:6, 1:5] = 0.5
    return x


def onnxruntime_pool(x: np.ndarray, kernel, stride, pads, dilation, ceil_mode):
    """onnxruntime's MaxPool of x: (pooled values, flat indices of the winners), the ONNX explainer's route."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    node = helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=list(kernel), strides=list(stride),
                            pads=list(pads), dilations=list(dilation), ceil_mode=int(ceil_mode))
    graph = helper.make_graph([node], "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("i", TensorProto.INT64, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})


@pytest.mark.parametrize("pool", POOLS, ids=POOL_IDS)
def test_maxpool2d_back(pool):
    """Winner takes all, ties to the first maximum: the kernel equals the float64 scatter reference, which
    equals the route over onnxruntime's own pooling indices (on inputs full of ties)."""
    kernel, stride, pads, dilation, ceil_mode = pool
    gen = torch.Generator().manual_seed(31)
    x = pool_input(gen)
    geo = dict(kernel=kernel, stride=stride, pads=pads, dilation=dilation, ceil_mode=ceil_mode)
    y, winners = onnxruntime_pool(x.cpu().numpy(), **geo)  # the pooled size and the winners, independently
    r = rand(gen, *y.shape)
    got = kernels.maxpool2d_back(x, r, out=poisoned(x.shape), **geo)
    want = ref.maxpool2d_back(f64(x), f64(r), **geo)
    routed = np.zeros(x.numel())
    np.add.at(routed, winners.reshape(-1), f64(r).reshape(-1))
    assert np.abs(want - routed.reshape(x.shape)).max() < 1e-6
    assert rel_err(got, want) < 1e-6
    # winner takes all: the relevance is conserved, and it lands on maxima only
    assert abs(float(got.sum()) - float(r.sum())) < 1e-4 * float(r.abs().sum())


def test_maxpool2d_back_rejects_a_mismatched_r():
    x = torch.ones(1, 2, 6, 6, device=DEVICE)
    with pytest.raises(RelgraphError, match="r has shape"):
        kernels.maxpool2d_back(x, torch.ones(1, 2, 2, 2, device=DEVICE), kernel=(2, 2), stride=(2, 2))
    with pytest.raises(RelgraphError, match="smaller than the kernel"):
        kernels.maxpool2d_back(x, torch.ones(1, 2, 4, 4, device=DEVICE), kernel=(2, 2), pads=(2, 2, 2, 2))


# ------------------------------------------------------------------------------------------- residual sum


@pytest.mark.parametrize("mode", ["den", "stab", "shift"])
def test_epsilon_sum(mode):
    gen = torch.Generator().manual_seed(37)
    a, b, r = rand(gen, 3, 5, 7, 9), rand(gen, 3, 5, 7, 9), rand(gen, 3, 5, 7, 9)  # 945: not a multiple of BLOCK
    z = a + b
    den = {"den": z.sign() * (z.abs() + 0.5), "stab": z, "shift": z.relu()}[mode]
    eps = 0.0 if mode == "den" else 0.25
    got = kernels.epsilon_sum(a, b, r, den, mode=mode, epsilon=eps, out=poisoned(a.shape, a.shape))
    want = ref.epsilon_sum(f64(a), f64(b), f64(r), f64(den), mode=mode, epsilon=eps)
    for g_, w_ in zip(got, want):
        assert rel_err(g_, w_) < TOL[torch.float32]
    if mode == "stab":  # the ε split conserves what the stabilizer does not absorb: Σ ra + rb = Σ r·z/stab(z)
        total = f64(got[0]) + f64(got[1])
        assert np.allclose(total, f64(r) * f64(z) / (f64(z) + eps * np.where(f64(z) >= 0, 1.0, -1.0)), atol=1e-5)


# ------------------------------------------------------------------------------------------- fp16 operands


def test_fp16_operands():
    """fp16 x and W (fp32 accumulation, fp32 outputs) against float64 on the fp16-rounded operands."""
    gen = torch.Generator().manual_seed(17)
    h = torch.float16
    x, w, b = rand(gen, 37, 70, dtype=h), rand(gen, 50, 70, dtype=h), rand(gen, 50)
    y, z = kernels.linear(x, w, b, relu=True, keep_z=True, out=poisoned((37, 50), (37, 50)))
    assert rel_err(z, ref.linear(f64(x), f64(w), f64(b))[1]) < TOL[h]
    r = rand(gen, 37, 50)
    rx = kernels.epsilon_linear(x, w, r, z, mode="stab", epsilon=0.25, out=poisoned((37, 70)))
    assert rel_err(rx, ref.epsilon_linear(f64(x), f64(w), f64(r), f64(z), mode="stab", epsilon=0.25)[0]) < TOL[h]
    z_pos, z_neg = kernels.lrp_parts_linear(x, w, out=poisoned((37, 50), (37, 50)))
    assert rel_err(z_pos, ref.lrp_parts_linear(f64(x), f64(w))[0]) < TOL[h]
    got = kernels.lrp_parts_linear_back(x, w, r, z_pos, z_neg, *_bias_parts(b), rule="alpha-beta",
                                        out=poisoned((37, 70)))
    want = ref.lrp_parts_linear_back(f64(x), f64(w), f64(r), f64(z_pos), f64(z_neg), *map(f64, _bias_parts(b)),
                                     rule="alpha-beta")
    assert rel_err(got, want) < TOL[h]
    g = GEOMETRIES[1]
    xc, wc = conv_operands(gen, g, dtype=h)
    zc = kernels.conv2d(xc, wc, None, **geometry(g))
    assert rel_err(zc, ref.conv2d_linear(f64(xc), f64(wc), **geometry(g))) < TOL[h]
    rc = rand(gen, *zc.shape)
    got = kernels.epsilon_conv2d(xc, wc, rc, zc, mode="stab", epsilon=0.25, out=poisoned(xc.shape), **geometry(g))
    want = ref.epsilon_conv2d(f64(xc), f64(wc), f64(rc), f64(zc), mode="stab", epsilon=0.25, **geometry(g))[0]
    assert rel_err(got, want) < TOL[h]
    zp, zn = kernels.lrp_parts_conv2d(xc, wc, **geometry(g))
    got = kernels.lrp_parts_conv2d_back(xc, wc, rc, zp, zn, None, None, rule="gamma", out=poisoned(xc.shape),
                                        **geometry(g))
    want = ref.lrp_parts_conv2d_back(f64(xc), f64(wc), f64(rc), f64(zp), f64(zn), rule="gamma", **geometry(g))
    assert rel_err(got, want) < TOL[h]


def test_fp16_shares_at_zero_denominators_stay_finite():
    """αβ with a non-positive bias on a padded conv: windows wholly in the padding have z⁺ + b⁺ = 0, so
    s = α·r ⊘ ε ≈ 2e6·r, beyond fp16's range. Those shares reach no input; the fp16 push-back must still
    give the float64 result, not the NaN of inf × 0."""
    gen = torch.Generator().manual_seed(5)
    g = (4, 6, 3, 3, (1, 1), (3, 3, 3, 3), (1, 1), 1, 6, 6)  # pads as wide as the kernel: border windows see zeros
    x, w = conv_operands(gen, g, dtype=torch.float16)
    x = x.relu()
    b = -rand(gen, w.shape[0]).abs()
    zp, zn = kernels.lrp_parts_conv2d(x, w, x_nonneg=True, **geometry(g))
    r = rand(gen, *zp.shape)
    got = kernels.lrp_parts_conv2d_back(x, w, r, zp, zn, *_bias_parts(b), rule="alpha-beta", x_nonneg=True,
                                        out=poisoned(x.shape), **geometry(g))
    want = ref.lrp_parts_conv2d_back(f64(x), f64(w), f64(r), f64(zp), f64(zn), *map(f64, _bias_parts(b)),
                                     rule="alpha-beta", **geometry(g))
    assert rel_err(got, want) < TOL[torch.float16]


# ------------------------------------------------------------------------------------------- onnxruntime


def test_epsilon_step_matches_onnxruntime_gemm(tmp_path):
    """One ε step of a compiled explainer (onnxruntime) equals epsilon_linear fed the same z and R."""
    from onnx import helper

    from tests.onnx_models import save_model

    rng = np.random.default_rng(19)
    w, b = rng.standard_normal((10, 20)).astype(np.float32), rng.standard_normal(10).astype(np.float32)
    model = save_model(tmp_path / "gemm.onnx", [helper.make_node("Gemm", ["x", "W", "b"], ["logits"], transB=1)],
                       {"W": w, "b": b}, [20], 10)
    explainer = relgraph.compile(model, rule="epsilon", output=str(tmp_path / "e.onnx"))
    x = rng.standard_normal((6, 20)).astype(np.float32)
    target = np.arange(6) % 10
    out = relgraph.Explainer(explainer.path).explain(x, target)
    z = torch.as_tensor(out["logits"], device=DEVICE)
    r = torch.zeros_like(z)
    r[torch.arange(6), torch.as_tensor(target)] = z[torch.arange(6), torch.as_tensor(target)]  # R_out = f_c(x)
    rx, s = kernels.epsilon_linear(torch.as_tensor(x, device=DEVICE), torch.as_tensor(w, device=DEVICE), r, z,
                                   mode="stab", epsilon=1e-6, want_s=True, out=poisoned((6, 20), (6, 10)))
    assert rel_err(rx, out["relevance"].astype(np.float64)) < 1e-5
    assert rel_err(s @ torch.as_tensor(b, device=DEVICE), out["bias_relevance"].astype(np.float64)) < 1e-5


def test_epsilon_step_matches_onnxruntime_conv(tmp_path):
    """The same for a strided, padded convolution: one sample per output unit, so every window is checked."""
    from onnx import helper

    from tests.onnx_models import save_model

    rng = np.random.default_rng(23)
    w, b = rng.standard_normal((4, 3, 3, 3)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    geo = dict(stride=(2, 2), pads=(1, 0, 1, 2), dilation=(1, 1), groups=1)
    nodes = [helper.make_node("Conv", ["x", "W", "b"], ["c"], strides=[2, 2], pads=[1, 0, 1, 2]),
             helper.make_node("Flatten", ["c"], ["logits"])]
    P, Q = 4, 4  # (7 + 2 − 3)//2 + 1, (7 + 2 − 3)//2 + 1
    model = save_model(tmp_path / "conv.onnx", nodes, {"W": w, "b": b}, [3, 7, 7], 4 * P * Q)
    explainer = relgraph.compile(model, rule="epsilon", output=str(tmp_path / "e.onnx"))
    n = 4 * P * Q
    x = rng.standard_normal((n, 3, 7, 7)).astype(np.float32)
    out = relgraph.Explainer(explainer.path).explain(x, np.arange(n))
    z = torch.as_tensor(out["logits"], device=DEVICE).reshape(n, 4, P, Q)
    r = torch.diag(torch.as_tensor(out["logits"], device=DEVICE).diagonal()).reshape(n, 4, P, Q)
    rx, s = kernels.epsilon_conv2d(torch.as_tensor(x, device=DEVICE), torch.as_tensor(w, device=DEVICE), r, z,
                                   mode="stab", epsilon=1e-6, want_s=True, out=poisoned(x.shape, z.shape), **geo)
    assert rel_err(rx, out["relevance"].astype(np.float64)) < 1e-5
    bias_share = (s.sum((2, 3)) @ torch.as_tensor(b, device=DEVICE))
    assert rel_err(bias_share, out["bias_relevance"].astype(np.float64)) < 1e-5


# ------------------------------------------------------------------------------------------- contract


def test_registry_and_sweep():
    sweep = kernels.sweep()
    assert 40 <= len(sweep) <= 72
    assert len({s.name for s in sweep}) == len(sweep)
    assert {s.family for s in sweep} == {"linear", "epsilon_linear", "conv2d", "epsilon_conv2d", "lrp_parts_linear",
                                         "lrp_parts_linear_back", "lrp_parts_conv2d", "lrp_parts_conv2d_back",
                                         "maxpool2d_back", "epsilon_sum"}
    # ops without matmul operands are compiled for fp32 alone
    assert {s.signature["x"] for s in sweep if s.family == "maxpool2d_back"} == {"*fp32"}
    assert len([s for s in sweep if s.family == "epsilon_sum"]) == 2 * len(kernels.configs("epsilon_sum"))
    back = kernels.specializations("lrp_parts_conv2d_back", "fp16", rule="gamma", want_s=True)
    assert back[0].constexprs["WANT_S"] is True and back[0].signature["sa_out"] == "*fp32"
    for s in sweep:
        assert list(s.signature) == s.fn.arg_names
        assert {n for n, t in s.signature.items() if t == "constexpr"} == set(s.constexprs)
    specs = kernels.specializations("epsilon_linear", "bf16", mode="stab", want_s=True)
    assert len(specs) == len(kernels.configs("epsilon_linear")) >= 2
    assert specs[0].signature["x"] == "*bf16" and specs[0].signature["r"] == "*fp32"
    assert specs[0].constexprs["MODE"] == "stab" and specs[0].constexprs["WANT_S"] is True
    with pytest.raises(RelgraphError, match="mode"):
        kernels.specializations("epsilon_linear", mode="nope")


def test_user_errors_are_one_line():
    x, w = torch.ones(4, 6, device=DEVICE), torch.ones(3, 6, device=DEVICE)
    with pytest.raises(RelgraphError, match="w has shape"):
        kernels.linear(x, torch.ones(3, 5, device=DEVICE))
    with pytest.raises(RelgraphError, match="operands must share one dtype"):
        kernels.linear(x, w.half())
    with pytest.raises(RelgraphError, match="out"):
        kernels.linear(x, w, out=torch.empty(4, 4, device=DEVICE))
    with pytest.raises(RelgraphError, match="r has shape"):
        kernels.epsilon_conv2d(torch.ones(1, 2, 5, 5, device=DEVICE), torch.ones(3, 2, 3, 3, device=DEVICE),
                               torch.ones(1, 3, 4, 4, device=DEVICE), torch.ones(1, 3, 4, 4, device=DEVICE))
    with pytest.raises(RelgraphError, match="groups"):
        kernels.conv2d(torch.ones(1, 3, 5, 5, device=DEVICE), torch.ones(4, 1, 3, 3, device=DEVICE), groups=2)
