"""ONNX export of the bundled Hugging Face transformers: torch's dynamo exporter, opset 18, IR version 10, a dynamic
batch axis, checked with onnx's full checker and against torch with onnxruntime."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

OPSET, IR_VERSION = 18, 10
MAX_ONNX_BYTES = 1024 * 1024


def export(model, feed: dict, path: Path, doc: str, metadata: dict | None = None) -> None:
    """Export ``model`` (called with the keyword arguments ``feed``, returning ``.logits``) to ``path``: inputs
    named after ``feed``'s keys, one output ``logits``, the batch axis dynamic; ``metadata``: JSON values stored
    in ``metadata_props``."""
    import onnx
    import torch

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *args):
            return self.model(**dict(zip(feed, args))).logits

    batch = torch.export.Dim("batch", min=1, max=4096)
    tmp = path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(Logits().eval(), tuple(torch.from_numpy(v) for v in feed.values()),
                                    dynamo=True, opset_version=OPSET, input_names=list(feed),
                                    output_names=["logits"], dynamic_shapes=(tuple({0: batch} for _ in feed),),
                                    verbose=False)
        program.save(str(tmp))
    proto = onnx.load(str(tmp))
    tmp.unlink()
    proto.ir_version = IR_VERSION
    proto.doc_string = doc
    del proto.metadata_props[:]
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    if path.stat().st_size >= MAX_ONNX_BYTES:
        raise RuntimeError(f"{path.name} is {path.stat().st_size} bytes, expected < {MAX_ONNX_BYTES}")


def onnx_logits(path: Path, feed: dict) -> np.ndarray:
    """The model's logits from onnxruntime (one thread)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(["logits"], feed)[0]
