"""The compiler's front end: a model file → the canonical IR every later stage reads.

    load → refuse an explainer → fix input shapes (``--input-shape``) → check sample sizes → upgrade to
    opset ``MIN_OPSET`` → canonicalize (one pass per concern, :func:`relgraph.passes.canonicalize`)

``relgraph.compile``, ``relgraph inspect`` and the pattern statistics (:mod:`relgraph.statistics`) all start
from :func:`prepare`.
"""

from __future__ import annotations

import math
import re

import onnx
import onnx_ir as ir
from onnx import version_converter

from .errors import RelgraphError
from .explainer import EXPLAINER_KEY
from .graph import MIN_OPSET, load_model
from .passes import canonicalize


def prepare(model_path, input_shapes=None) -> tuple[ir.Model, list[str]]:
    """Load and canonicalize a model (shared by compile, inspect and the pattern statistics); ``input_shapes``
    as in :func:`relgraph.compile`. Returns the model and what canonicalization skipped, with the reason."""
    model = load_model(model_path)
    if EXPLAINER_KEY in model.metadata_props:
        raise RelgraphError(f"{model_path} is already a relgraph explainer: compile the original model, or "
                            "run this one with relgraph explain")
    if input_shapes:
        fix_input_shapes(model, input_shapes)
    check_sample_sizes(model)
    opset = model.opset_imports.get("", 1)
    if opset < MIN_OPSET:
        model = _upgrade(model, opset)
    skipped = canonicalize(model)
    return model, skipped


def parse_input_shape(text: str) -> tuple[str, list]:
    """``NAME=Nx3x224x224`` → (NAME, ["N", 3, 224, 224]): numbers fix a dimension, letters keep it symbolic."""
    name, sep, spec = text.rpartition("=")
    dims = re.split(r"[xX×]", spec)
    if not sep or not name or not all(d.isdigit() and int(d) > 0 or d.isalpha() for d in dims):
        raise RelgraphError(f"--input-shape expects NAME=DIMS such as input=Nx3x224x224, got '{text}'")
    return name, [int(d) if d.isdigit() else d for d in dims]


def fix_input_shapes(model: ir.Model, input_shapes) -> None:
    """Give graph inputs the shapes ``input_shapes`` names (a dict NAME → dims, or ``NAME=DIMS`` strings).

    A model exported with dynamic height and width ([N, 3, H, W]) compiles once they are fixed: the rules
    of convolutions, pooling and reshapes need static non-batch dimensions. A static dimension of the
    model must be given as it is; the batch axis stays dynamic whatever is given for it.
    """
    if not isinstance(input_shapes, dict):
        input_shapes = dict(parse_input_shape(t) for t in input_shapes)
    inputs = {v.name: v for v in model.graph.inputs if not v.is_initializer()}
    for name, given in input_shapes.items():
        value = inputs.get(name)
        if value is None:
            raise RelgraphError(f"--input-shape: the model has no input '{name}' (inputs: {', '.join(inputs)})")
        given = [d if isinstance(d, str) else int(d) for d in given]
        if value.shape is not None:
            declared = list(value.shape)
            if len(declared) != len(given):
                raise RelgraphError(f"--input-shape: input '{name}' has rank {len(declared)}, "
                                    f"{'x'.join(map(str, given))} has rank {len(given)}")
            for axis, (d, g) in enumerate(zip(declared, given)):
                if axis > 0 and isinstance(d, int) and isinstance(g, int) and d != g:
                    raise RelgraphError(f"--input-shape: input '{name}' has {d} at axis {axis}, not {g}")
        value.shape = ir.Shape(given)


MAX_SAMPLE_BYTES = 1 << 32  # 4 GiB: one sample of an input past this is a mistake, not an image or a sequence


def check_sample_sizes(model: ir.Model) -> None:
    """Refuse inputs whose one sample (the static dimensions beyond the batch) would not fit in memory: the
    compiler builds input-shaped constants (z^B's bounds, baselines), and the explainer's relevance has the
    input's shape. Sizes are Python integers, which do not overflow."""
    for value in model.graph.inputs:
        if value.is_initializer() or value.shape is None or value.type is None:
            continue
        dims = [d for d in list(value.shape)[1:] if isinstance(d, int)]
        size = math.prod(dims) * max(1, value.type.dtype.itemsize)
        if size > MAX_SAMPLE_BYTES:
            raise RelgraphError(f"input '{value.name}': one sample of shape {'x'.join(map(str, dims))} takes "
                                f"{size / 2**30:.3g} GiB, past the {MAX_SAMPLE_BYTES >> 30} GiB relgraph compiles for")


def _upgrade(model: ir.Model, opset: int) -> ir.Model:
    original = ir.serde.serialize_model(model)
    legacy = _legacy_resizes(original)
    try:
        proto = version_converter.convert_version(original, MIN_OPSET)
    except Exception as exc:
        raise RelgraphError(f"cannot upgrade the model from opset {opset} to {MIN_OPSET}: {exc}") from None
    # the converter renames values; it keeps the nodes' order, and every Resize it writes was a legacy one
    for node, attributes in zip([n for n in proto.graph.node if n.op_type == "Resize"], legacy):
        del node.attribute[:]
        node.attribute.extend(onnx.helper.make_attribute(k, v) for k, v in attributes.items())
    return ir.from_proto(proto)


def _legacy_resizes(proto: onnx.ModelProto) -> list[dict]:
    """Per Upsample or Resize node, in order, the opset-11 attributes that keep what an Upsample (opsets 7–9) or
    a Resize of opset 10 computes. onnx's version converter leaves Resize-11's defaults (half_pixel), which
    moves every linear sample; these ops map coordinates as x = y / scale (asymmetric), and onnxruntime rounds
    a nearest source down when upsampling, up when downsampling."""
    if next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1) > 10:
        return []
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
    out = []
    for node in proto.graph.node:
        if node.op_type not in ("Upsample", "Resize"):
            continue
        given = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        mode = given.get("mode", b"nearest")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        scales = given.get("scales", constants.get(node.input[1]) if len(node.input) > 1 else None)
        changed = [float(s) for s in (scales if scales is not None else []) if float(s) != 1.0]
        if mode == "nearest" and changed and min(changed) < 1 < max(changed):
            raise RelgraphError(f"{node.op_type} '{node.name}' of opset ≤ 10 both enlarges and shrinks axes; "
                                f"its nearest rounding is not defined for that")
        out.append({"mode": mode, "coordinate_transformation_mode": "asymmetric",
                    "nearest_mode": "ceil" if changed and max(changed) < 1 else "floor"})
    return out
