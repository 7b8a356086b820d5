"""LerpAsResizePass: linear interpolation written as gathers and a lerp folds to the linear Resize.

Each model is written inline in ONNX text: x [N, 3, L] gathered at the left and right neighbours of torch's
linear upsampling along the last axis and mixed by constant weights. For each, the interpolation matrix A that
the pass reads from the indices and weights reproduces onnxruntime's output of the written-out model (x·Aᵀ in
float64), the fold fires and leaves one Resize of the mode torch's coordinates are, and onnxruntime computes
the same before and after (relative 1e-6). Near misses (weights outside [0, 1], gathers of different tensors,
weights computed at run time or varying along another axis) are left alone, each with its reason.
The relevance of the folded form against the Resize form is held in tests/test_spelling.py and tests/test_dims.py.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort
import pytest

from relgraph.passes import FoldConstantsPass, InferShapesPass, LerpAsResizePass
from relgraph.passes.lerp_as_resize import interpolation_matrix, linear_terms

try:
    from test_spelling import lerp_neighbours
except ModuleNotFoundError:  # tests/ imported as a package
    from tests.test_spelling import lerp_neighbours


def _listed(values) -> str:
    return ", ".join(map(str, values))


def lerp_model(n_in: int, n_out: int, align_corners: bool, weights=None, body: str | None = None,
               opset: int = 18, y_shape: str | None = None) -> onnx.ModelProto:
    """y = a + (b − a)·w, a and b: x [N, 3, n_in] gathered at the left and right neighbours along the last axis
    (or ``body`` after the constants li, ri, lw; y of shape ``y_shape``)."""
    left, right, w = lerp_neighbours(n_in, n_out, align_corners)
    w = w if weights is None else np.asarray(weights, np.float32)
    body = body or ("   ga = Gather <axis = 2> (x, li)\n   gb = Gather <axis = 2> (x, ri)\n   d = Sub (gb, ga)"
                    "\n   m = Mul (d, lw)\n   y = Add (ga, m)")
    text = f"""
<ir_version: 10, opset_import: ["" : {opset}]>
lerp (float[N, 3, {n_in}] x) => (float[{y_shape or f"N, 3, {n_out}"}] y) {{
   li = Constant <value = int64[{n_out}] {{{_listed(left)}}}> ()
   ri = Constant <value = int64[{n_out}] {{{_listed(right)}}}> ()
   lw = Constant <value = float[{_listed(w.shape)}] {{{_listed(repr(float(v)) for v in w.reshape(-1))}}}> ()
{body}
}}"""
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model, full_check=True)
    return model


def prepared(proto: onnx.ModelProto) -> ir.Model:
    """The IR with its constants folded and shapes inferred, as canonicalization hands it to the pass."""
    model = ir.from_proto(proto)
    InferShapesPass()(model)
    FoldConstantsPass()(model)
    InferShapesPass()(model)
    return model


def run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _x(n_in: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (2, 3, n_in)).astype(np.float32)


def relative(actual, desired) -> float:
    return float(np.linalg.norm(actual - desired) / np.linalg.norm(desired))


# (n_in, n_out, align_corners, the Resize's coordinate mode): ×2 as nn.Upsample writes it, a scale that is not
# a power of two (weights 0.3, 0.9, …) and aligned corners (weights i·4/9 − ⌊·⌋, not dyadic)
CASES = [(8, 16, False, "half_pixel"), (5, 8, False, "half_pixel"), (5, 10, True, "align_corners"),
         (6, 12, True, "align_corners")]


@pytest.mark.parametrize("n_in, n_out, align_corners, mode", CASES)
def test_interpolation_matrix_reproduces_onnxruntime(n_in, n_out, align_corners, mode):
    proto = lerp_model(n_in, n_out, align_corners)
    model = prepared(proto)
    seen: list = []
    x_value, axis, A = interpolation_matrix(linear_terms(model.graph.outputs[0], seen))
    assert (x_value.name, axis, A.shape) == ("x", 2, (n_out, n_in)) and len(seen) == 3  # a twice, b once
    x = _x(n_in)
    assert relative(x.astype(np.float64) @ A.T, run(proto, x)) < 1e-6


@pytest.mark.parametrize("n_in, n_out, align_corners, mode", CASES)
def test_lerp_folds_to_resize(n_in, n_out, align_corners, mode):
    proto = lerp_model(n_in, n_out, align_corners)
    model = prepared(proto)
    fold = LerpAsResizePass()
    assert fold(model).modified and not fold.skipped
    (node,) = list(model.graph)
    assert node.op_type == "Resize" and node.attributes["mode"].value == "linear"
    assert node.attributes["coordinate_transformation_mode"].value == mode
    folded = ir.serde.serialize_model(model)
    onnx.checker.check_model(folded, full_check=True)
    for seed in range(3):
        x = _x(n_in, seed)
        assert relative(run(folded, x), run(proto, x)) < 1e-6


# the same gathers, mixed otherwise: the weight on a and on b read from every Add, Sub, Neg and Mul by a constant
SPELLINGS = [
    "   ga = Gather <axis = 2> (x, li)\n   gb = Gather <axis = -1> (x, ri)\n   d = Sub (gb, ga)\n   m = Mul (lw, d)"
    "\n   y = Add (m, ga)",
    # (1 − w)·a + w·b
    "   one = Constant <value = float {1.0}> ()\n   om = Sub (one, lw)\n   ga = Gather <axis = 2> (x, li)"
    "\n   gb = Gather <axis = 2> (x, ri)\n   ma = Mul (ga, om)\n   mb = Mul (gb, lw)\n   y = Add (ma, mb)",
    # w·b − (w − 1)·a, through Neg
    "   one = Constant <value = float {1.0}> ()\n   wm = Sub (lw, one)\n   ga = Gather <axis = 2> (x, li)"
    "\n   gb = Gather <axis = 2> (x, ri)\n   ma = Mul (ga, wm)\n   na = Neg (ma)\n   mb = Mul (gb, lw)\n   y = Add (mb, na)",
    # the axis moved first and back, as torch's dynamo export writes it
    "   xt = Transpose <perm = [2, 0, 1]> (x)\n   ta = Gather (xt, li)\n   tb = Gather (xt, ri)"
    "\n   ga = Transpose <perm = [1, 2, 0]> (ta)\n   gb = Transpose <perm = [1, 2, 0]> (tb)\n   d = Sub (gb, ga)"
    "\n   m = Mul (d, lw)\n   y = Add (ga, m)",
]


@pytest.mark.parametrize("index", range(len(SPELLINGS)))
def test_lerp_spellings_fold(index):
    proto = lerp_model(8, 16, False, body=SPELLINGS[index])
    model = prepared(proto)
    fold = LerpAsResizePass()
    assert fold(model).modified and not fold.skipped
    assert [n.op_type for n in model.graph] == ["Resize"]
    x = _x(8, index)
    assert relative(run(ir.serde.serialize_model(model), x), run(proto, x)) < 1e-6


def test_lerp_under_a_skip_connection_folds():
    """An upsampling added to another branch (a top-down path plus its lateral, as in an FPN): the outer sum is
    no lerp, and not reported as one; the lerp inside it folds."""
    body = ("   ga = Gather <axis = 2> (x, li)\n   gb = Gather <axis = 2> (x, ri)\n   d = Sub (gb, ga)"
            "\n   m = Mul (d, lw)\n   l = Add (ga, m)\n   r = Relu (gb)\n   y = Add (l, r)")
    proto = lerp_model(8, 16, False, body=body)
    model = prepared(proto)
    fold = LerpAsResizePass()
    assert fold(model).modified and not fold.skipped
    ops = [n.op_type for n in model.graph]
    assert ops.count("Resize") == 1 and ops.count("Add") == 1 and not {"Sub", "Mul"} & set(ops)
    x = _x(8, 4)
    assert relative(run(ir.serde.serialize_model(model), x), run(proto, x)) < 1e-6


_, _, W16 = lerp_neighbours(8, 16, False)
NEAR_MISSES = {
    # extrapolation: a weight of 1.5 takes b past itself
    "convex": dict(weights=np.where(np.arange(16) == 5, 1.5, W16)),
    # a from x, b from relu(x)
    "different tensors": dict(body="   r = Relu (x)\n   ga = Gather <axis = 2> (x, li)\n   gb = Gather <axis = 2> (r, ri)"
                                   "\n   d = Sub (gb, ga)\n   m = Mul (d, lw)\n   y = Add (ga, m)"),
    # the weights computed at run time from x
    "no sum of gathers": dict(body="   ga = Gather <axis = 2> (x, li)\n   gb = Gather <axis = 2> (x, ri)"
                                   "\n   s = Sigmoid (ga)\n   d = Sub (gb, ga)\n   m = Mul (d, s)\n   y = Add (ga, m)"),
    # one weight per channel and position: no map along the gathered axis alone
    "other than the gathered": dict(weights=np.stack([W16, W16, np.flip(W16)]), body=(
        "   ga = Gather <axis = 2> (x, li)\n   gb = Gather <axis = 2> (x, ri)\n   d = Sub (gb, ga)"
        "\n   m = Mul (d, lw)\n   y = Add (ga, m)")),
    # convex, but no linear Resize interpolates so (the weights of half_pixel, reversed)
    "no linear Resize": dict(weights=1 - W16),
}


@pytest.mark.parametrize("why", sorted(NEAR_MISSES))
def test_near_misses_are_left_alone(why):
    model = prepared(lerp_model(8, 16, False, **NEAR_MISSES[why]))
    before = [n.op_type for n in model.graph]
    fold = LerpAsResizePass()
    assert not fold(model).modified
    assert [n.op_type for n in model.graph] == before and "Resize" not in before
    assert len(fold.skipped) == 1 and why in fold.skipped[0], fold.skipped


def test_transposes_that_do_not_undo_each_other_are_no_gather_of_x():
    """x moved to [L, N, 3], gathered, then to [3, N, 2L]: a lerp, but of a tensor laid out otherwise than x."""
    body = ("   xt = Transpose <perm = [2, 0, 1]> (x)\n   ta = Gather (xt, li)\n   tb = Gather (xt, ri)"
            "\n   ga = Transpose <perm = [2, 1, 0]> (ta)\n   gb = Transpose <perm = [2, 1, 0]> (tb)\n   d = Sub (gb, ga)"
            "\n   m = Mul (d, lw)\n   y = Add (ga, m)")
    proto = lerp_model(8, 16, False, body=body, y_shape="3, N, 16")
    model = prepared(proto)
    assert not LerpAsResizePass()(model).modified
    assert "Resize" not in [n.op_type for n in model.graph]


def test_resize_needs_opset_11():
    """Opset 10's Resize has no coordinate transformation mode: the lerp stays."""
    model = prepared(lerp_model(8, 16, False, opset=10))
    fold = LerpAsResizePass()
    assert not fold(model).modified and "opset 10" in fold.skipped[0]
