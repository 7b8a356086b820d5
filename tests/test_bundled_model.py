"""Checks for the bundled digits classifier in models/digits/."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "digits"
MODEL_PATH = MODEL_DIR / "digits_cnn.onnx"


@pytest.fixture(scope="module")
def session():
    return ort.InferenceSession(str(MODEL_PATH), providers=["CPUExecutionProvider"])


def _logits(session, images):
    return session.run(["logits"], {"input": images.astype(np.float32)})[0]


def test_model_passes_checker():
    model = onnx.load(str(MODEL_PATH))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 10
    assert {op.domain: op.version for op in model.opset_import}.get("", None) == 17
    assert MODEL_PATH.stat().st_size < 2 * 1024 * 1024


def test_model_interface():
    model = onnx.load(str(MODEL_PATH))
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    ops = {node.op_type for node in model.graph.node}
    assert {"Conv", "BatchNormalization", "MaxPool", "Relu", "Gemm"} <= ops


def test_test_split_accuracy(session):
    test_x = np.load(MODEL_DIR / "test_x.npy")
    test_y = np.load(MODEL_DIR / "test_y.npy")
    assert test_x.dtype == np.float32 and test_x.shape[1:] == (1, 8, 8)
    assert test_y.dtype == np.int64 and len(test_y) == len(test_x)
    accuracy = float(np.mean(_logits(session, test_x).argmax(axis=1) == test_y))
    assert accuracy > 0.95


def test_samples_match_test_split(session):
    samples = np.load(MODEL_DIR / "samples.npy")
    labels = np.load(MODEL_DIR / "sample_labels.npy")
    test_x = np.load(MODEL_DIR / "test_x.npy")
    test_y = np.load(MODEL_DIR / "test_y.npy")
    assert samples.shape == (8, 1, 8, 8) and samples.dtype == np.float32
    np.testing.assert_array_equal(samples, test_x[:8])
    np.testing.assert_array_equal(labels, test_y[:8])
    # Dynamic batch: one-by-one and batched inference agree.
    batched = _logits(session, samples)
    single = np.concatenate([_logits(session, s[None]) for s in samples])
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-5)


def test_sample_png_matches_first_sample():
    from relgraph.heatmap import read_png

    pixels = read_png(MODEL_DIR / "sample0.png")
    samples = np.load(MODEL_DIR / "samples.npy")
    assert pixels.shape == (8, 8) and pixels.dtype == np.uint8
    expected = np.round(samples[0, 0] * 255.0).astype(np.uint8)
    np.testing.assert_array_equal(pixels, expected)
