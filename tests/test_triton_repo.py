"""The Triton Inference Server repository export, read back with tritonclient's own config schema."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

import relgraph

ROOT = Path(__file__).resolve().parents[1]
MODEL = str(ROOT / "models" / "digits" / "digits_cnn.onnx")
TYPES = {onnx.TensorProto.FLOAT: mc.TYPE_FP32, onnx.TensorProto.INT64: mc.TYPE_INT64}


@pytest.mark.parametrize("rule,extra", [("epsilon", {"bias_relevance": "per-layer"}), ("deeplift", {})])
def test_config_matches_graph(tmp_path, rule, extra):
    explainer = relgraph.compile(MODEL, rule=rule, output=str(tmp_path / f"{rule}.onnx"), **extra).path
    proc = subprocess.run([sys.executable, "-m", "relgraph.cli", "export-triton", explainer, "--repo",
                           str(tmp_path / "repo"), "--name", "digits", "--max-batch", "32"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "repo" / "digits"
    assert (folder / "1" / "model.onnx").read_bytes() == Path(explainer).read_bytes()
    config = text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())
    assert config.name == "digits" and config.backend == "onnxruntime" and config.max_batch_size == 32
    assert config.HasField("dynamic_batching")
    graph = onnx.load(explainer).graph
    defaults = {i.name for i in graph.initializer}
    for entries, values in ((config.input, [v for v in graph.input if v.name not in defaults]),
                            (config.output, list(graph.output))):
        assert [e.name for e in entries] == [v.name for v in values]
        for entry, value in zip(entries, values):
            t = value.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
            assert shape[0] == -1  # the batch axis, which Triton leaves out of dims
            assert entry.data_type == TYPES[t.elem_type]
            if len(shape) == 1:  # [N] ↔ Triton [N, 1]
                assert list(entry.dims) == [1] and list(entry.reshape.shape) == []
            else:
                assert list(entry.dims) == shape[1:]
    names = {e.name for e in config.input}
    assert "target" in names and "baseline" not in names  # a default stays a default


def test_refuses_overwrite_and_non_explainers(tmp_path):
    from relgraph.triton_repo import export_triton

    explainer = relgraph.compile(MODEL, rule="epsilon", output=str(tmp_path / "e.onnx")).path
    export_triton(explainer, str(tmp_path / "repo"))
    with pytest.raises(relgraph.RelgraphError, match="exists"):
        export_triton(explainer, str(tmp_path / "repo"))
    with pytest.raises(relgraph.RelgraphError, match="not a relgraph explainer"):
        export_triton(MODEL, str(tmp_path / "repo2"))
