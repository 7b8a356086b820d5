"""Serialize a forward + relevance IR as the explainer ModelProto.

The explainer is a plain ONNX model: opset ≥ the model's (at least 17), ``ir_version`` 10, the ε steps
as model-local functions of the ``relgraph`` domain, and a metadata record of how it was compiled.
It passes ``onnx.checker.check_model(full_check=True)``.
"""

from __future__ import annotations

import json
import os

import onnx
import onnx_ir.passes.common as common

from .errors import RelgraphError
from .graph import EXPORT_IR_VERSION, to_proto
from .rules.functions import DOMAIN, DOMAIN_VERSION, function_proto


def explainer_proto(model, plan, metadata: dict) -> onnx.ModelProto:
    common.RemoveUnusedNodesPass()(model)  # rules may leave a shared scalar unused
    proto = to_proto(model)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if plan.functions:
        if not any(o.domain == DOMAIN for o in proto.opset_import):
            proto.opset_import.append(onnx.helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
        proto.functions.extend(function_proto(name, opset) for name in plan.functions)
    for key, value in metadata.items():  # the source model's own keys ride along; the compiler's replace them
        entry = next((p for p in proto.metadata_props if p.key == key), None) or proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    proto.ir_version = EXPORT_IR_VERSION
    proto.producer_name = "relgraph"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # a compiler bug, not a user error: keep the reason visible
        raise RuntimeError(f"relgraph produced an invalid explainer: {exc}") from exc
    return proto


def save(proto: onnx.ModelProto, path: str, *, overwrite: bool = False) -> None:
    if os.path.exists(path) and not overwrite:
        raise RelgraphError(f"output exists: {path} (pass --force to overwrite)")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    big = proto.ByteSize() > 1_900_000_000
    try:
        onnx.save_model(proto, path, save_as_external_data=big,
                        location=os.path.basename(path) + ".data" if big else None)
    except OSError as exc:
        raise RelgraphError(f"cannot write {path}: {exc.strerror}") from None
