"""Serialize a forward + relevance IR as the explainer ModelProto.

The explainer is a plain ONNX model: opset ≥ the model's (at least 17), ``ir_version`` 10 and a metadata
record of how it was compiled. It passes ``onnx.checker.check_model(full_check=True)``.

Two forms (metadata ``relgraph.form``):

* ``portable`` (the default): standard ONNX operators only. The relevance pass emits its ε steps, max-pool
  routes and γ/αβ splits as model-local functions of the ``relgraph`` domain; here they are inlined, and
  every value gets its element type and shape from ONNX shape inference, so that runtimes which neither
  expand local functions nor infer ranks themselves (OpenVINO's ONNX front end) load the explainer. An
  explainer fixed to one batch size (its model's export spelled it out) takes any batch, as a Scan over
  chunks of that size (:mod:`relgraph.fixed_batch`), and a square weight is read the same way round by every
  product that takes it as its right operand (:mod:`relgraph.shared_weights`).
* ``functions``: the calls stay, the compact graph that the triton lowering reads (one call, one fused
  kernel) and ``relgraph compile --keep-functions`` writes. onnxruntime inlines them when it loads the model.
"""

from __future__ import annotations

import json
import os

import onnx
import onnx.inliner
import onnx.shape_inference
import onnx_ir as ir
import onnx_ir.passes.common as common

from .errors import RelgraphError
from .files import make_folder, replacing
from .fixed_batch import any_batch
from .graph import EXPORT_IR_VERSION
from .rules.functions import DOMAIN, DOMAIN_VERSION, function_proto
from .shared_weights import read_one_way
from .weights import (INLINE_LIMIT, check_skeleton, restore_weights, skeleton_proto, total_bytes, write_external,
                      write_inline)


FORMS = ("portable", "functions")


def explainer_proto(model, relevance, metadata: dict, *, form: str = "portable") -> tuple[onnx.ModelProto, dict]:
    """The explainer of ``model`` (forward + relevance IR) in ``form`` (see the module docstring), as a skeleton
    and its weights set aside (``weights.py``): :func:`save` writes them, :func:`full_proto` joins them."""
    if form not in FORMS:
        raise RelgraphError(f"explainer form must be one of {', '.join(FORMS)}, got '{form}'")
    common.RemoveUnusedNodesPass()(model)  # rules may leave a shared scalar unused
    # inlining, shape inference and the checker re-serialize the whole model several times: they run on its
    # skeleton (a 440 MB BERT-base compiles in seconds instead of a minute, and a model past protobuf's
    # 2 GiB limit can be typed at all)
    proto, aside = skeleton_proto(model)
    proto.ir_version = EXPORT_IR_VERSION
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if relevance.functions:
        if not any(o.domain == DOMAIN for o in proto.opset_import):
            proto.opset_import.append(onnx.helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
        proto.functions.extend(function_proto(name, opset) for name in relevance.functions)
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
    return proto, aside


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
    proto = typed(proto)
    rewritten = read_one_way(proto)  # both read the ranks and the batch typing found
    wrapped = any_batch(proto)
    if rewritten or wrapped is not proto:
        proto = typed(wrapped)
    untyped = untyped_values(proto)
    if untyped:
        raise RuntimeError(f"relgraph produced values without element type or rank: {', '.join(untyped[:8])}")
    return proto


def typed(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` with ONNX shape inference's types and shapes, strict: a failure is a compiler bug."""
    try:
        return onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise RuntimeError(f"relgraph produced an explainer ONNX cannot type: {exc}") from exc


def untyped_values(proto: onnx.ModelProto) -> list[str]:
    """Names of node outputs in ``proto``'s graph and its subgraphs (a Scan's body) with no known element type
    or rank."""
    untyped, graphs = [], [proto.graph]
    while graphs:
        graph = graphs.pop()
        types = {v.name: v.type.tensor_type for v in [*graph.input, *graph.output, *graph.value_info]}

        def known(name: str) -> bool:
            t = types.get(name)
            return t is not None and t.elem_type != onnx.TensorProto.UNDEFINED and t.HasField("shape")

        untyped += [o for node in graph.node for o in node.output if o and not known(o)]
        graphs += [a.g for node in graph.node for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
    return untyped


def full_proto(skeleton: onnx.ModelProto, aside: dict) -> onnx.ModelProto:
    """A copy of ``skeleton`` with its weights inline: one proto, for a runtime fed from memory."""
    proto = onnx.ModelProto()
    proto.CopyFrom(skeleton)
    restore_weights(proto, aside)
    return proto


def save(proto: onnx.ModelProto, path: str, *, overwrite: bool = False, aside: dict | None = None) -> None:
    """Write ``proto`` (a skeleton when weights are ``aside``) at ``path`` atomically (see
    :func:`relgraph.files.replacing`).

    The weights are written inline, straight from their arrays; past protobuf's 2 GiB limit they go to
    ``PATH.data`` beside it instead: staged, then moved into place before the model that points at them.
    """
    if os.path.lexists(path) and not overwrite:
        raise RelgraphError(f"output exists: {path} (pass --force to overwrite)")
    aside = aside or {}
    if total_bytes(aside) > INLINE_LIMIT:
        folder, location = os.path.dirname(os.path.abspath(path)), os.path.basename(path) + ".data"
        make_folder(folder)
        target = os.path.join(folder, location)
        for tensor in aside.values():  # the weights may be memory maps of the very file this would replace
            if isinstance(tensor, ir.ExternalTensor) and os.path.exists(target) and os.path.samefile(tensor.path, target):
                raise RelgraphError(f"{target} holds the model's own weights; write the explainer under another name")
        try:
            write_external(proto, aside, folder, location)
        except OSError as exc:
            raise RelgraphError(f"cannot write {os.path.join(folder, location)}: {exc.strerror}") from None
        aside = {}
    with replacing(path) as temporary, open(temporary, "wb") as file:
        write_inline(proto, aside, file)
