"""Serialize a forward + relevance IR as the explainer ModelProto.

The explainer is a plain ONNX model: opset ≥ the model's (at least 17), ``ir_version`` 10 and a metadata
record of how it was compiled. It passes ``onnx.checker.check_model(full_check=True)``.

Two forms (metadata ``relgraph.form``):

* ``portable`` (the default): standard ONNX operators only. The relevance pass emits its ε steps, max-pool
  routes and γ/αβ splits as model-local functions of the ``relgraph`` domain; here they are inlined, and
  every value gets its element type and shape from ONNX shape inference, so that runtimes which neither
  expand local functions nor infer ranks themselves (OpenVINO's ONNX front end) load the explainer.
* ``functions``: the calls stay, the compact graph that the triton lowering reads (one call, one fused
  kernel) and ``relgraph compile --keep-functions`` writes. onnxruntime inlines them when it loads the model.
"""

from __future__ import annotations

import json
import os
import tempfile

import onnx
import onnx.inliner
import onnx.shape_inference
import onnx_ir.passes.common as common

from .errors import RelgraphError
from .files import make_folder, replacing
from .graph import EXPORT_IR_VERSION, to_proto
from .rules.functions import DOMAIN, DOMAIN_VERSION, function_proto


FORMS = ("portable", "functions")


def explainer_proto(model, plan, metadata: dict, *, form: str = "portable") -> onnx.ModelProto:
    """The explainer of ``model`` (forward + relevance IR) in ``form`` (see the module docstring)."""
    if form not in FORMS:
        raise RelgraphError(f"explainer form must be one of {', '.join(FORMS)}, got '{form}'")
    common.RemoveUnusedNodesPass()(model)  # rules may leave a shared scalar unused
    proto = to_proto(model)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if plan.functions:
        if not any(o.domain == DOMAIN for o in proto.opset_import):
            proto.opset_import.append(onnx.helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
        proto.functions.extend(function_proto(name, opset) for name in plan.functions)
    # inlining, shape inference and the checker re-serialize the whole model several times: they run on the
    # graph with its weights set aside (a 440 MB BERT-base compiles in seconds instead of a minute, and a model
    # past protobuf's 2 GiB limit can be typed at all)
    aside = set_weights_aside(proto)
    if form == "portable":
        proto = portable(proto)
    metadata = {**metadata, "relgraph.form": form}
    for key, value in metadata.items():  # the source model's own keys ride along; the compiler's replace them
        entry = next((p for p in proto.metadata_props if p.key == key), None) or proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    proto.ir_version = EXPORT_IR_VERSION
    proto.producer_name = "relgraph"
    try:
        check_skeleton(proto)
    except Exception as exc:  # a compiler bug, not a user error: keep the reason visible
        raise RuntimeError(f"relgraph produced an invalid explainer: {exc}") from exc
    restore_weights(proto, aside)
    return proto


def check_skeleton(proto: onnx.ModelProto) -> None:
    """``onnx.checker.check_model(full_check=True)`` of a model whose weights are set aside: the checker insists
    on a regular file at each external location, so it reads the model from a folder with an empty one."""
    with tempfile.TemporaryDirectory(prefix="relgraph-check-") as folder:
        open(os.path.join(folder, _ASIDE), "wb").close()
        path = os.path.join(folder, "explainer.onnx")
        onnx.save_model(proto, path)
        onnx.checker.check_model(path, full_check=True)


_ASIDE = "relgraph-weights-aside"  # the external-data location of a weight while it is set aside


def set_weights_aside(proto: onnx.ModelProto, threshold: int = 4096) -> dict[str, bytes]:
    """Take the raw bytes of every initializer above ``threshold`` bytes out of ``proto`` (marked as external
    data, which no ONNX tool reads without a folder to read it from); :func:`restore_weights` puts them back.
    Small tensors stay: shape inference reads the constants that compute shapes."""
    aside = {}
    for tensor in proto.graph.initializer:
        if tensor.HasField("raw_data") and len(tensor.raw_data) > threshold:
            aside[tensor.name] = tensor.raw_data
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
            del tensor.external_data[:]
            entry = tensor.external_data.add()
            entry.key, entry.value = "location", _ASIDE
    return aside


def restore_weights(proto: onnx.ModelProto, aside: dict[str, bytes]) -> None:
    for tensor in proto.graph.initializer:
        if tensor.name in aside:
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
            tensor.raw_data = aside[tensor.name]


def portable(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` with its model-local functions inlined and the ``relgraph`` domain gone, every value typed.

    Inlining names each call's inner values after the call, and the calls' outputs keep their names, so
    the conservation trace (``relgraph check``) still finds every value it lists. Shape inference in
    strict mode records the element type and rank (symbolic where the batch is) of every intermediate value
    as ``value_info``; a value it cannot type is a compiler bug, reported as such.
    """
    proto = onnx.inliner.inline_local_functions(proto)
    del proto.functions[:]
    kept = [o for o in proto.opset_import if o.domain != DOMAIN]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)
    try:
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise RuntimeError(f"relgraph produced an explainer ONNX cannot type: {exc}") from exc
    untyped = untyped_values(proto)
    if untyped:
        raise RuntimeError(f"relgraph produced values without element type or rank: {', '.join(untyped[:8])}")
    return proto


def untyped_values(proto: onnx.ModelProto) -> list[str]:
    """Names of node outputs in ``proto``'s graph with no known element type or rank."""
    graph = proto.graph
    typed = {v.name: v.type.tensor_type for v in [*graph.input, *graph.output, *graph.value_info]}

    def known(name: str) -> bool:
        t = typed.get(name)
        return t is not None and t.elem_type != onnx.TensorProto.UNDEFINED and t.HasField("shape")

    return [o for node in graph.node for o in node.output if o and not known(o)]


def save(proto: onnx.ModelProto, path: str, *, overwrite: bool = False) -> None:
    """Write ``proto`` at ``path`` atomically (see :func:`relgraph.files.replacing`).

    Past protobuf's 2 GiB limit the weights go to ``PATH.data`` beside it: written by onnx into a staging
    folder, then moved into place before the model that points at them.
    """
    if os.path.lexists(path) and not overwrite:
        raise RelgraphError(f"output exists: {path} (pass --force to overwrite)")
    weights = sum(len(t.raw_data) for t in proto.graph.initializer)  # ByteSize() serializes the whole model
    if weights > 1_800_000_000:
        folder, location = os.path.dirname(os.path.abspath(path)), os.path.basename(path) + ".data"
        make_folder(folder)
        onnx.external_data_helper.convert_model_to_external_data(proto, location=location)
        try:
            with tempfile.TemporaryDirectory(dir=folder, prefix=f".{location}.") as staging:
                onnx.external_data_helper.write_external_data_tensors(proto, staging)
                os.replace(os.path.join(staging, location), os.path.join(folder, location))
        except OSError as exc:
            raise RelgraphError(f"cannot write {os.path.join(folder, location)}: {exc.strerror}") from None
    with replacing(path) as temporary:
        onnx.save_model(proto, temporary)
