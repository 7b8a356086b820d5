"""Serialize a forward + relevance IR as the explainer ModelProto.

The explainer is a plain ONNX model: opset ≥ the model's (at least 17), ``ir_version`` 10, the ε steps
as model-local functions of the ``relgraph`` domain, and a metadata record of how it was compiled.
It passes ``onnx.checker.check_model(full_check=True)``.
"""

from __future__ import annotations

import json
import os
import tempfile

import onnx
import onnx_ir.passes.common as common

from .errors import RelgraphError
from .files import make_folder, replacing
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
    """Write ``proto`` at ``path`` atomically (see :func:`relgraph.files.replacing`).

    Past protobuf's 2 GiB limit the weights go to ``PATH.data`` beside it: written by onnx into a staging
    folder, then moved into place before the model that points at them.
    """
    if os.path.lexists(path) and not overwrite:
        raise RelgraphError(f"output exists: {path} (pass --force to overwrite)")
    if proto.ByteSize() > 1_900_000_000:
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
