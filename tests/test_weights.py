"""Weights from load to save (``relgraph/weights.py``): decoded once, memory-mapped when external, written
straight from their arrays, inline or beside the explainer past the inline limit. Every check compares with
onnx's own loader and onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

import relgraph
from relgraph import weights
from relgraph.errors import RelgraphError
from relgraph.graph import load_model

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "models" / "digits" / "digits_cnn.onnx"


def run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x, "target": np.full(len(x), -1, np.int64)})


def samples():
    return np.load(ROOT / "models" / "digits" / "test_x.npy")[:4]


def external_copy(tmp_path) -> Path:
    model = onnx.load(str(DIGITS))
    path = tmp_path / "digits_external.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="digits_external.onnx.data",
                    size_threshold=0)
    return path


def test_inline_explainer_equals_one_proto(tmp_path):
    """The explainer written record by record parses, with onnx, as the proto with every weight inline."""
    result = relgraph.compile(str(DIGITS), rule="epsilon", output=str(tmp_path / "e.onnx"))
    assert result.weights, "no weight was set aside"
    written = onnx.load(result.path)
    onnx.checker.check_model(written, full_check=True)
    joined = {t.name: onnx.numpy_helper.to_array(t) for t in result.proto.graph.initializer}
    read = {t.name: onnx.numpy_helper.to_array(t) for t in written.graph.initializer}
    assert joined.keys() == read.keys()
    for name, array in joined.items():
        np.testing.assert_array_equal(read[name], array, err_msg=name)
    session = ort.InferenceSession(result.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = samples()
    want = session.run(None, {session.get_inputs()[0].name: x, "target": np.full(len(x), -1, np.int64)})
    for got, expected in zip(run(result.path, x), want):
        np.testing.assert_array_equal(got, expected)


def test_past_the_inline_limit_weights_go_beside(tmp_path, monkeypatch):
    """Above the limit (2 GiB in use; lowered here) the weights are written to PATH.data and the explainer
    computes what the inline one does."""
    inline = relgraph.compile(str(DIGITS), rule="epsilon", output=str(tmp_path / "inline.onnx"))
    monkeypatch.setattr(relgraph.export, "INLINE_LIMIT", 0)
    beside = relgraph.compile(str(DIGITS), rule="epsilon", output=str(tmp_path / "beside.onnx"))
    data = tmp_path / "beside.onnx.data"
    assert data.stat().st_size >= sum(t.nbytes for t in beside.weights.values())
    assert Path(beside.path).stat().st_size < data.stat().st_size
    x = samples()
    for got, expected in zip(run(beside.path, x), run(inline.path, x)):
        np.testing.assert_array_equal(got, expected)


def test_external_weights_are_mapped_not_copied(tmp_path):
    """A model with external data is loaded as memory maps of its file; compiled, it explains as the
    inline model does."""
    path = external_copy(tmp_path)
    model = load_model(path)
    kinds = {type(v.const_value) for v in model.graph.initializers.values()
             if v.const_value.nbytes > weights.SMALL}
    assert kinds == {ir.ExternalTensor}
    x = samples()
    a = relgraph.compile(str(path), rule="epsilon-plus-flat", output=str(tmp_path / "a.onnx"))
    b = relgraph.compile(str(DIGITS), rule="epsilon-plus-flat", output=str(tmp_path / "b.onnx"))
    for got, expected in zip(run(a.path, x), run(b.path, x)):
        np.testing.assert_array_equal(got, expected)


def test_external_data_shorter_than_declared_is_refused(tmp_path):
    path = external_copy(tmp_path)
    data = tmp_path / "digits_external.onnx.data"
    data.write_bytes(data.read_bytes()[:-8])
    with pytest.raises(RelgraphError, match="invalid ONNX model .* declares"):
        load_model(path)


def test_raw_data_longer_than_declared_is_refused(tmp_path):
    model = onnx.load(str(DIGITS))
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    tensor.raw_data = tensor.raw_data + b"\0\0\0\0"
    path = tmp_path / "long.onnx"
    onnx.save_model(model, str(path))
    with pytest.raises(RelgraphError, match=f"tensor '{tensor.name}' holds"):
        load_model(path)


def test_explainer_data_never_replaces_the_models_weights(tmp_path, monkeypatch):
    """An explainer whose PATH.data would be the model's own external-data file (memory-mapped while writing)
    is refused in one line, and the model's weights are left as they were."""
    model = onnx.load(str(DIGITS))
    path = tmp_path / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="explainer.onnx.data",
                    size_threshold=0)
    data = tmp_path / "explainer.onnx.data"
    before = data.read_bytes()
    monkeypatch.setattr(relgraph.export, "INLINE_LIMIT", 0)
    with pytest.raises(RelgraphError, match="model's own weights"):
        relgraph.compile(str(path), rule="epsilon", output=str(tmp_path / "explainer.onnx"))
    assert data.read_bytes() == before
