"""Every rule on small random layers against the float64 dense-matrix reference (tests/reference.py).

Each test model is ``x → [Relu →] layer → Flatten → head (Gemm V) → logits``. The head gets the
``gradient`` rule through a rule map, so the relevance arriving at the layer is the dense vector
R = f_c(x) · V[c, :]; the layer gets the rule under test. relgraph's relevance (float32, onnxruntime) and
its bias relevance are compared with the reference's float64 result for that R.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import relgraph
import reference as ref

SEEDS = (0, 1, 2)


def _model(path, layer_nodes, inits, x_shape, layer_out_dim, classes=5, relu_first=False, seed=0):
    rng = np.random.default_rng(seed + 100)
    head = rng.normal(size=(classes, layer_out_dim)).astype(np.float32)
    nodes = []
    src = "x"
    if relu_first:
        nodes.append(helper.make_node("Relu", ["x"], ["xr"], name="relu_in"))
        src = "xr"
    for node in layer_nodes:
        node.input[0] = src if node.input[0] == "IN" else node.input[0]
        nodes.append(node)
    nodes += [helper.make_node("Flatten", ["y"], ["flat"], name="flatten", axis=1),
              helper.make_node("Gemm", ["flat", "V"], ["logits"], name="head", transB=1)]
    inits = dict(inits, V=head)
    graph = helper.make_graph(
        nodes, "layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save(model, path)
    return head


def _rule_map(tmp_path, base, extra=""):
    p = tmp_path / f"{base}.toml"
    p.write_text(f'base = "{base}"\n{extra}\n[names]\n"head" = "gradient"\n')
    return str(p)


def _run(tmp_path, model_path, base, x, target, extra="", **kw):
    out = relgraph.compile(model_path, rule_map=_rule_map(tmp_path, base, extra),
                           output=str(tmp_path / f"{base}.onnx"), overwrite=True, **kw)
    return relgraph.Explainer(out.path).explain(x, target)


def _incoming(res, head, target):
    """R at the layer's (flattened) output: f_c · V[c, :] for LRP rules."""
    logit = res["logits"][np.arange(len(target)), target].astype(np.float64)
    return logit[:, None] * head[target].astype(np.float64)


def _close(actual, expected, tol=2e-4):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    err = np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-12)
    assert err < tol, f"relative error {err:.3g}"


# ------------------------------------------------------------------------------------------- layers

CONVS = {
    "plain": dict(cin=3, cout=4, k=3, hw=(7, 7), strides=(1, 1), pads=(0, 0, 0, 0), dil=(1, 1), group=1),
    "stride2-pad1": dict(cin=3, cout=4, k=3, hw=(8, 8), strides=(2, 2), pads=(1, 1, 1, 1), dil=(1, 1), group=1),
    "leftover": dict(cin=2, cout=3, k=3, hw=(9, 8), strides=(2, 2), pads=(0, 0, 0, 0), dil=(1, 1), group=1),
    "dilated": dict(cin=2, cout=3, k=3, hw=(9, 9), strides=(1, 1), pads=(2, 2, 2, 2), dil=(2, 2), group=1),
    "asym-pad": dict(cin=2, cout=3, k=3, hw=(7, 6), strides=(2, 1), pads=(1, 0, 2, 1), dil=(1, 1), group=1),
    "groups": dict(cin=4, cout=6, k=3, hw=(6, 6), strides=(1, 1), pads=(1, 1, 1, 1), dil=(1, 1), group=2),
    "depthwise": dict(cin=4, cout=4, k=3, hw=(6, 6), strides=(2, 2), pads=(1, 1, 1, 1), dil=(1, 1), group=4),
}


def conv_case(tmp_path, cfg, seed, relu_first=False):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(cfg["cout"], cfg["cin"] // cfg["group"], cfg["k"], cfg["k"])).astype(np.float32)
    b = rng.normal(size=cfg["cout"]).astype(np.float32) * 0.5
    in_shape = (cfg["cin"], *cfg["hw"])
    M, out_shape = ref.conv_matrix(w.astype(np.float64), in_shape, cfg["strides"], cfg["pads"], cfg["dil"],
                                   cfg["group"])
    node = helper.make_node("Conv", ["IN", "W", "B"], ["y"], name="layer", strides=list(cfg["strides"]),
                            pads=list(cfg["pads"]), dilations=list(cfg["dil"]), group=cfg["group"])
    path = str(tmp_path / "conv.onnx")
    head = _model(path, [node], {"W": w, "B": b}, in_shape, int(np.prod(out_shape)), relu_first=relu_first,
                  seed=seed)
    x = rng.normal(size=(3, *in_shape)).astype(np.float32)
    return path, x, M, ref.bias_vector(b.astype(np.float64), out_shape), head, w


def gemm_case(tmp_path, seed, relu_first=False):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(6, 10)).astype(np.float32)
    b = rng.normal(size=6).astype(np.float32) * 0.5
    node = helper.make_node("Gemm", ["IN", "W", "B"], ["y"], name="layer", transB=1)
    path = str(tmp_path / "gemm.onnx")
    head = _model(path, [node], {"W": w, "B": b}, (10,), 6, relu_first=relu_first, seed=seed)
    x = rng.normal(size=(3, 10)).astype(np.float32)
    return path, x, ref.gemm_matrix(w.astype(np.float64)), b.astype(np.float64), head, w


def _reference(rule, x, M, b, R):
    if rule == "epsilon":
        return ref.epsilon(x, M, b, R, 1e-6)
    if rule == "zero":
        return ref.epsilon(x, M, b, R, 0.0)
    if rule == "zplus":
        return ref.zplus(x, M, b, R)
    if rule == "alpha-beta":
        return ref.alpha_beta(x, M, b, R, 2.0, 1.0)
    if rule == "gamma":
        return ref.gamma(x, M, b, R, 0.25)
    if rule == "zbox":
        return ref.zbox(x, M, b, R, -1.5, 2.0)
    if rule == "w-square":
        return ref.wsquare(x, M, b, R)
    if rule == "flat":
        return ref.flat(x, M, b, R)  # random weights: no exact zeros, (M != 0) is the connectivity
    raise AssertionError(rule)


LRP_RULES = ("epsilon", "zero", "zplus", "alpha-beta", "gamma", "zbox", "w-square", "flat")


def _check(tmp_path, rule, case, relu_first):
    path, x, M, b, head, w = case
    target = np.array([0, 3, 4])
    kw = {"bounds": (-1.5, 2.0)} if rule == "zbox" else {}
    res = _run(tmp_path, path, rule, x, target, **kw)
    R = _incoming(res, head, target)
    xin = np.maximum(x, 0) if relu_first else x
    flat_x = xin.reshape(len(x), -1).astype(np.float64)
    rx, rb = _reference(rule, flat_x, M, b, R)
    _close(res["relevance"].reshape(len(x), -1), rx)
    scale = np.abs(rx).sum(1) + np.abs(rb)  # bias shares may cancel to zero (z^B): compare on R's scale
    assert np.all(np.abs(res["bias_relevance"] - rb) <= 2e-4 * scale), (res["bias_relevance"], rb)


@pytest.mark.parametrize("rule", LRP_RULES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("relu_first", (False, True))
def test_gemm_rules(tmp_path, rule, seed, relu_first):
    _check(tmp_path, rule, gemm_case(tmp_path, seed, relu_first), relu_first)


@pytest.mark.parametrize("rule", LRP_RULES)
@pytest.mark.parametrize("conv", sorted(CONVS))
@pytest.mark.parametrize("seed", SEEDS[:2])
def test_conv_rules(tmp_path, rule, conv, seed):
    relu_first = seed == 1  # both the general path and the proven-non-negative one
    _check(tmp_path, rule, conv_case(tmp_path, CONVS[conv], seed, relu_first), relu_first)


@pytest.mark.parametrize("conv", sorted(CONVS))
def test_conv_gradient(tmp_path, conv):
    path, x, M, b, head, _ = conv_case(tmp_path, CONVS[conv], 0)
    target = np.array([1, 2, 0])
    res = _run(tmp_path, path, "gradient", x, target)
    G = head[target].astype(np.float64)  # gradient starts at 1
    rx, _ = ref.gradient(x.reshape(3, -1), M, b, G)
    _close(res["relevance"].reshape(3, -1), rx)


# ------------------------------------------------------------------------------------------- pooling


def _pool_model(tmp_path, node, in_shape, out_shape, seed):
    path = str(tmp_path / "pool.onnx")
    head = _model(path, [node], {}, in_shape, int(np.prod(out_shape)), seed=seed)
    return path, head


AVG = {
    "k2s2": dict(kernel=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0), include=0, hw=(6, 6)),
    "k3s2p1-excl": dict(kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), include=0, hw=(7, 7)),
    "k3s2p1-incl": dict(kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), include=1, hw=(7, 7)),
    "k3s1-asym": dict(kernel=(3, 2), strides=(1, 2), pads=(1, 0, 0, 1), include=0, hw=(5, 6)),
}


@pytest.mark.parametrize("rule", ("gradient", "epsilon"))
@pytest.mark.parametrize("cfg", sorted(AVG))
@pytest.mark.parametrize("seed", SEEDS)
def test_average_pool(tmp_path, rule, cfg, seed):
    c = AVG[cfg]
    rng = np.random.default_rng(seed)
    in_shape = (2, *c["hw"])
    M, out_shape = ref.avgpool_matrix(in_shape, c["kernel"], c["strides"], c["pads"], bool(c["include"]))
    node = helper.make_node("AveragePool", ["IN"], ["y"], name="layer", kernel_shape=list(c["kernel"]),
                            strides=list(c["strides"]), pads=list(c["pads"]), count_include_pad=c["include"])
    path, head = _pool_model(tmp_path, node, in_shape, out_shape, seed)
    x = rng.normal(size=(2, *in_shape)).astype(np.float32)
    target = np.array([1, 4])
    res = _run(tmp_path, path, rule, x, target)
    flat_x = x.reshape(2, -1).astype(np.float64)
    if rule == "gradient":
        rx, _ = ref.gradient(flat_x, M, None, head[target].astype(np.float64))
    else:
        rx, _ = ref.norm(flat_x, M, _incoming(res, head, target))
    _close(res["relevance"].reshape(2, -1), rx)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("geometry", [((3, 3), (2, 2), (1, 1, 1, 1), (9, 9)), ((2, 2), (2, 2), (0, 0, 0, 0), (6, 6)),
                                      ((3, 2), (1, 2), (0, 1, 1, 0), (5, 6))])
def test_max_pool_routes_to_winners(tmp_path, seed, geometry):
    """Overlapping windows (k3 s2 p1) must sum, not overwrite."""
    kernel, strides, pads, hw = geometry
    rng = np.random.default_rng(seed)
    in_shape = (2, *hw)
    x = rng.normal(size=(2, *in_shape)).astype(np.float32)
    M, out_shape = ref.maxpool_winner_matrix(x.astype(np.float64), kernel, strides, pads)
    node = helper.make_node("MaxPool", ["IN"], ["y"], name="layer", kernel_shape=list(kernel),
                            strides=list(strides), pads=list(pads))
    path, head = _pool_model(tmp_path, node, in_shape, out_shape, seed)
    target = np.array([2, 0])
    for rule in ("gradient", "epsilon"):
        res = _run(tmp_path, path, rule, x, target)
        R = head[target].astype(np.float64) if rule == "gradient" else _incoming(res, head, target)
        rx, _ = ref.gradient(x.reshape(2, -1), M, None, R)
        _close(res["relevance"].reshape(2, -1), rx)


@pytest.mark.parametrize("op", ("GlobalAveragePool", "ReduceMean"))
@pytest.mark.parametrize("seed", SEEDS)
def test_global_mean(tmp_path, op, seed):
    rng = np.random.default_rng(seed)
    in_shape = (3, 4, 5)
    if op == "GlobalAveragePool":
        nodes = [helper.make_node(op, ["IN"], ["y"], name="layer")]
    else:
        nodes = [helper.make_node(op, ["IN"], ["y"], name="layer", axes=[2, 3], keepdims=1)]
    path = str(tmp_path / "gap.onnx")
    head = _model(path, nodes, {}, in_shape, 3, seed=seed)
    M = np.zeros((60, 3))
    for c in range(3):
        M[c * 20:(c + 1) * 20, c] = 1 / 20
    x = rng.normal(size=(2, *in_shape)).astype(np.float32)
    target = np.array([0, 4])
    res = _run(tmp_path, path, "epsilon", x, target)
    rx, _ = ref.norm(x.reshape(2, -1).astype(np.float64), M, _incoming(res, head, target))
    _close(res["relevance"].reshape(2, -1), rx)


@pytest.mark.parametrize("include", (0, 1))
def test_average_pool_ceil_mode_against_onnxruntime_gradient(tmp_path, include):
    """ceil_mode windows hang past the input; the transposed map must still land on the input's size.
    Reference: the adjoint identity <A x, g> = <x, Aᵀ g> with A run by onnxruntime itself."""
    import onnxruntime as ort

    in_shape = (2, 8, 8)  # (8 + 2 − 3) / 2 = 3.5: ceil_mode gives 5 outputs per axis, floor 4
    node = helper.make_node("AveragePool", ["IN"], ["y"], name="layer", kernel_shape=[3, 3], strides=[2, 2],
                            pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=include)
    path = str(tmp_path / "ceil.onnx")
    _model(path, [node], {}, in_shape, 2 * 5 * 5, seed=0)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, *in_shape)).astype(np.float32)
    assert sess.run(None, {"x": x})[0].shape == (2, 5)
    res = _run(tmp_path, path, "gradient", x, np.array([1, 3]))
    # probe the linear map column by column through onnxruntime: logits = V · flatten(A x)
    basis = np.eye(int(np.prod(in_shape)), dtype=np.float32).reshape(-1, *in_shape)
    logits = sess.run(None, {"x": basis})[0]  # [D_in, classes] = (V A)ᵀ
    expected = logits[:, [1, 3]].T.reshape(2, *in_shape)
    _close(res["relevance"], expected)
