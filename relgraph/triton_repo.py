"""Export an explainer as an NVIDIA Triton Inference Server model repository (onnxruntime backend).

    REPO/NAME/config.pbtxt
    REPO/NAME/1/model.onnx          (+ its external data file, if any)

Triton batches on the first axis: with ``max_batch_size > 0`` every tensor's ``dims`` leave the batch axis
out. The explainer's per-sample scalars (``target`` and ``bias_relevance``, shape [N]) become ``dims: [1]``
with ``reshape: { shape: [] }``, so clients send and receive [N, 1] while the model sees [N]. Inputs that
carry a default (a compare-to-baseline explainer's ``baseline``) are left to their default.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import onnx

from .errors import RelgraphError
from .explainer import read_explainer
from .files import make_folder, same_file

TRITON_TYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.INT32: "TYPE_INT32",
}


def _tensor_entry(value: onnx.ValueInfoProto, where: str) -> str:
    tensor = value.type.tensor_type
    if tensor.elem_type not in TRITON_TYPES:
        raise RelgraphError(f"{where} '{value.name}' has an element type Triton's onnxruntime backend "
                            f"cannot take here ({onnx.TensorProto.DataType.Name(tensor.elem_type)})")
    shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    if not shape or shape[0] not in (-1,):
        raise RelgraphError(f"{where} '{value.name}' has no dynamic batch axis (shape {shape}); "
                            "Triton's dynamic batching needs one")
    dims, reshape = shape[1:], ""
    if not dims:  # a per-sample scalar: Triton needs at least one dim
        dims, reshape = [1], "\n    reshape: { shape: [ ] }"
    return (f'  {{\n    name: "{value.name}"\n    data_type: {TRITON_TYPES[tensor.elem_type]}\n'
            f'    dims: [ {", ".join(map(str, dims))} ]{reshape}\n  }}')


def model_config(model: onnx.ModelProto, name: str, max_batch: int, max_queue_delay_us: int = 500) -> str:
    """config.pbtxt text for ``model``: inputs and outputs taken from its graph."""
    defaults = {init.name for init in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in defaults]
    entries_in = ",\n".join(_tensor_entry(v, "input") for v in inputs)
    entries_out = ",\n".join(_tensor_entry(v, "output") for v in model.graph.output)
    return (
        f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: {max_batch}\n'
        f"input [\n{entries_in}\n]\noutput [\n{entries_out}\n]\n"
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {max_queue_delay_us}\n}}\n"
        f"instance_group [\n  {{\n    count: 1\n    kind: KIND_AUTO\n  }}\n]\n"
    )


def export_triton(explainer: str, repo: str, *, name: str | None = None, max_batch: int = 64,
                  overwrite: bool = False) -> str:
    """Write ``explainer`` into the Triton model repository ``repo``; returns the model's folder."""
    if max_batch < 1:
        raise RelgraphError(f"--max-batch must be at least 1, got {max_batch}")
    model = read_explainer(explainer, weights=False)
    name = name or os.path.splitext(os.path.basename(explainer))[0].replace(".", "_")
    if not name or any(c in name for c in "/\\ "):
        raise RelgraphError(f"invalid model name '{name}' (no slashes or spaces)")
    config = model_config(model, name, max_batch)
    folder = os.path.join(repo, name)
    locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    copies = {explainer: "model.onnx", **{os.path.join(os.path.dirname(explainer), loc): loc for loc in locations}}
    if os.path.lexists(folder):
        if not os.path.isdir(folder):
            raise RelgraphError(f"cannot write {folder}: it is a file, not a folder")
        inside = [os.path.join(root, f) for root, _, files in os.walk(folder) for f in files]
        taken = next((s for s in copies for f in inside if same_file(s, f)), None)
        if taken:
            raise RelgraphError(f"refusing to replace {folder}: it holds the input {taken}; choose another --repo")
        if not overwrite:
            raise RelgraphError(f"model folder exists: {folder} (pass --force to replace it)")
    # built beside its place, then swapped in: an interrupted export leaves the old folder, or none
    make_folder(repo)
    try:
        staging = tempfile.mkdtemp(dir=repo, prefix=f".{name}.")
        try:
            for source, name_in_repo in copies.items():
                target = os.path.join(staging, "1", name_in_repo)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(source, target)
            with open(os.path.join(staging, "config.pbtxt"), "w") as f:
                f.write(config)
            retired = staging + ".old"
            if os.path.lexists(folder):
                os.replace(folder, retired)
            os.replace(staging, folder)
            if os.path.lexists(retired):
                shutil.rmtree(retired)
        finally:
            if os.path.lexists(staging):
                shutil.rmtree(staging)
    except OSError as exc:
        raise RelgraphError(f"cannot write {folder}: {exc.strerror or exc}") from None
    return folder
