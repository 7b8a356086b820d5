"""Models from the other exporters, as they write them: Keras through tf2onnx, Flax through jax2onnx.

The spellings these exporters produce are mocked up inline in test_spelling; here the exporters themselves run
(the ``frameworks`` test extra). Each model has random weights, randomized BatchNorm statistics and small
inputs, and for each:

- the explainer's logits equal the framework's;
- ``gradient`` equals the framework's own gradient in float64 (the model rebuilt in float64 with the same
  weights): relative L2 per sample below 1e-4;
- ``epsilon`` conserves: Σ relevance + Σ bias relevance = the target logit within 1 %.

tf2onnx writes each of Keras's MobileNetV3-Small hard swishes as x · (Clip(x + 3, 0, 6) · ⅙) and each hard
sigmoid as Clip(x + 3, 0, 6) · ⅙. The same export with those rewritten as the HardSwish and HardSigmoid ops must
give the same relevance under every rule (DESIGN.md 4b): the spelling tf2onnx happens to choose must not change
the explanation. (Left to the half/half split of a product, the +3 soaked up nearly all of ε's relevance.)
"""

from __future__ import annotations

import logging
import os

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import relgraph
from relgraph.frontend import prepare

# torch before tensorflow: the other order crashes torchvision's import (two builds of the same native libraries)
try:
    import torch_models as tm
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import torch_models as tm

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
tf2onnx = pytest.importorskip("tf2onnx")
jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")
jax2onnx = pytest.importorskip("jax2onnx")

RULES = {"gradient": {}, "epsilon": {}, "epsilon-plus-flat": {}, "epsilon-gamma-box": {"bounds": (0.0, 255.0)}}
IR_VERSION = 10  # what the bundled onnxruntime reads
logging.getLogger("jax2onnx").setLevel(logging.ERROR)  # it reports the example plugins it cannot import


# --------------------------------------------------------------------------------------------------- Keras


def _mobilenet_v3(shape):
    """Keras's MobileNetV3-Small (its Rescaling layer included), random weights, logits out."""
    return keras.applications.MobileNetV3Small(input_shape=shape, weights=None, classes=10,
                                               classifier_activation=None)


def _cropped_layer_norm(shape):
    """Conv → Cropping2D → LayerNormalization over the channels → ReLU → Dense on a rank-4 tensor → pool →
    Dense: tf2onnx slices every axis for the crop, writes the norm out op by op (over axis 1 once it has moved
    the graph to NCHW) and the rank-4 Dense as Reshape → MatMul → Reshape through Shape arithmetic."""
    x = keras.Input(shape)
    h = keras.layers.Conv2D(8, 3, padding="same")(x)
    h = keras.layers.Cropping2D(((1, 2), (2, 1)))(h)
    h = keras.layers.LayerNormalization()(h)
    h = keras.layers.Activation("relu")(h)
    h = keras.layers.Dense(6)(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(x, keras.layers.Dense(10)(h))


KERAS = {"mobilenet_v3_small": (_mobilenet_v3, (32, 32, 3)), "cropped_layer_norm": (_cropped_layer_norm, (16, 16, 3))}


def _randomize(model, seed: int):
    """BatchNorm statistics and every norm's γ, β away from their init, so no normalization is an identity."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, (keras.layers.BatchNormalization, keras.layers.LayerNormalization)):
            layer.set_weights([w + rng.uniform(0.1, 0.5, w.shape).astype(w.dtype) if i % 4 == 3 else
                               w + rng.normal(0.0, 0.2, w.shape).astype(w.dtype)
                               for i, w in enumerate(layer.get_weights())])
        elif layer.get_weights():  # biases start at zero: give them a share
            layer.set_weights([w + rng.normal(0.0, 0.05, w.shape).astype(w.dtype) if w.ndim == 1 else w
                               for w in layer.get_weights()])
    return model


def _keras_model(name: str, floatx: str, weights=None):
    build, shape = KERAS[name]
    previous = keras.config.floatx()
    keras.config.set_floatx(floatx)
    try:
        keras.utils.set_random_seed(0)
        model = build(shape)
    finally:
        keras.config.set_floatx(previous)
    if weights is None:
        return _randomize(model, 0)
    model.set_weights([w.astype(floatx) for w in weights])
    return model


def _tf2onnx(model, shape, opset: int, path):
    signature = (tf.TensorSpec((None, *shape), tf.float32, name="input"),)

    @tf.function(input_signature=signature)
    def forward(x):
        return model(x, training=False)

    proto, _ = tf2onnx.convert.from_function(forward, input_signature=signature, opset=opset)
    proto.ir_version = IR_VERSION
    onnx.save(proto, str(path))
    return path


@pytest.fixture(scope="module")
def keras_models(tmp_path_factory):
    """name → (float64 copy of the model, ONNX path, input in [0, 255])."""
    folder, out = tmp_path_factory.mktemp("keras"), {}
    for name, (_, shape) in KERAS.items():
        model = _keras_model(name, "float32")
        double = _keras_model(name, "float64", model.get_weights())
        x = tm.random_input((2, *shape), 5, 0.0, 255.0)
        out[name] = (double, _tf2onnx(model, shape, 17, folder / f"{name}.onnx"), x)
    return out


def _tf_gradient(model, x, target) -> np.ndarray:
    x = tf.constant(x, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = model(x, training=False)
        picked = tf.gather(logits, target, axis=1, batch_dims=1)
    return tape.gradient(picked, x).numpy()


def _check(path, x, logits64, gradient, conserve=True):
    """The explainer's logits and gradient against the framework's float64 ones; ε conservation."""
    target = logits64.argmax(1)
    with tm.compiled(path, rule="gradient") as result:
        out = relgraph.Explainer(result.path).explain(x, target=target)
    assert np.all(tm.relative_error(out["logits"], logits64) < 1e-5)
    error = tm.relative_error(out["relevance"], gradient(target))
    assert np.all(error < 1e-4), f"gradient: relative error per sample {error}"
    with tm.compiled(path, rule="epsilon") as result:
        out = relgraph.Explainer(result.path).explain(x, target=target)
    logit = out["logits"][np.arange(len(x)), target]
    total = tm.per_sample(out["relevance"]).sum(1) + out["bias_relevance"]
    np.testing.assert_allclose(total, logit, rtol=1e-2)


@pytest.mark.parametrize("name", sorted(KERAS))
def test_keras_gradient_and_conservation(keras_models, name):
    double, path, x = keras_models[name]
    logits = double(x.astype(np.float64), training=False).numpy()
    _check(path, x, logits, lambda target: _tf_gradient(double, x, target))


def test_keras_spellings_fold(keras_models):
    """Every norm tf2onnx wrote out becomes the op, every hard swish and hard sigmoid too: the relevance of
    each is then the op's (test_spelling checks each spelling against its op, number for number)."""
    ln = [n.op_type for n in prepare(keras_models["cropped_layer_norm"][1])[0].graph]
    assert ln.count("LayerNormalization") == 1 and ln.count("ReduceMean") == 1  # the pool's mean remains
    mobilenet = [n.op_type for n in prepare(keras_models["mobilenet_v3_small"][1])[0].graph]
    assert (mobilenet.count("HardSwish"), mobilenet.count("HardSigmoid"), mobilenet.count("Clip")) == (19, 9, 0)


def _hard_ops(path, out):
    """The tf2onnx export with each x · Clip(x + 3, 0, 6) · ⅙ rewritten as the ops: HardSigmoid(x) for the gate,
    HardSwish(x) where the gate multiplies x itself. Returns how many of each."""
    proto = onnx.load(str(path))
    graph = proto.graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}

    def constant(name, value):
        return name in values and values[name].size == 1 and np.isclose(float(values[name].reshape(())), value)

    def hard_sigmoid_input(node):
        """x when ``node`` computes Clip(x + 3, 0, 6) · ⅙, else None."""
        clip = producer.get(node.input[0]) if node.op_type == "Mul" and constant(node.input[1], 1 / 6) else None
        if clip is None or clip.op_type != "Clip" or not (constant(clip.input[1], 0) and constant(clip.input[2], 6)):
            return None
        add = producer.get(clip.input[0])
        return add.input[0] if add is not None and add.op_type == "Add" and constant(add.input[1], 3) else None

    counts = {"HardSigmoid": 0, "HardSwish": 0}
    for node in graph.node:
        x = hard_sigmoid_input(node)
        if x is not None:
            node.op_type, node.input[:] = "HardSigmoid", [x]
            node.attribute.extend([onnx.helper.make_attribute("alpha", 1 / 6)])
            counts["HardSigmoid"] += 1
    for node in graph.node:
        gate = producer.get(node.input[1]) if node.op_type == "Mul" else None
        if gate is not None and gate.op_type == "HardSigmoid" and gate.input[0] == node.input[0]:
            node.op_type, node.input[:] = "HardSwish", [node.input[0]]
            counts["HardSwish"] += 1
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    gates = [n for n in graph.node if n.op_type == "HardSigmoid" and n.output[0] not in used]
    for node in gates:  # the gates HardSwish took over
        graph.node.remove(node)
    counts["HardSigmoid"] -= len(gates)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))
    return counts


@pytest.mark.parametrize("rule", sorted(RULES))
def test_keras_hard_swish_spelling_does_not_change_relevance(keras_models, tmp_path, rule):
    """tf2onnx's spelling of hard swish and hard sigmoid against the same export written with the ops."""
    _, path, x = keras_models["mobilenet_v3_small"]
    ops = tmp_path / "ops.onnx"
    assert _hard_ops(path, ops) == {"HardSigmoid": 9, "HardSwish": 19}
    outs = []
    for path in (path, ops):
        with tm.compiled(path, rule=rule, **RULES[rule]) as result:
            outs.append(relgraph.Explainer(result.path).explain(x, target=np.array([1, 7])))
    # the two differ in float32 round-off only (x·Clip(x + 3, 0, 6)·⅙ is not bitwise HardSwish)
    assert np.all(tm.relative_error(outs[0]["logits"], outs[1]["logits"]) < 1e-5)
    error = tm.relative_error(outs[0]["relevance"], outs[1]["relevance"])
    assert np.all(error < 1e-4), f"relative error per sample {error}"


# ---------------------------------------------------------------------------------------------------- Flax


class FlaxCNN(nnx.Module):
    """Conv → BatchNorm → ReLU → average pool → Conv → GELU (tanh, which jax2onnx writes out) → max pool →
    LayerNorm → flatten → Dense, in NHWC."""

    def __init__(self, rngs):
        self.conv1 = nnx.Conv(3, 8, kernel_size=(3, 3), rngs=rngs)
        self.norm1 = nnx.BatchNorm(8, rngs=rngs)
        self.conv2 = nnx.Conv(8, 16, kernel_size=(3, 3), rngs=rngs)
        self.norm2 = nnx.LayerNorm(16, rngs=rngs)
        self.dense = nnx.Linear(16 * 4 * 4, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.norm1(self.conv1(x)))
        x = nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = nnx.gelu(self.conv2(x))
        x = self.norm2(nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2)))
        return self.dense(x.reshape(x.shape[0], -1))


def _flax_model(seed: int) -> FlaxCNN:
    model = FlaxCNN(nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    for path, variable in nnx.iter_graph(model):
        if isinstance(variable, (nnx.BatchStat, nnx.Param)) and path[-1] in ("mean", "var", "bias", "scale"):
            shift = rng.uniform(0.1, 0.5, variable.shape) if path[-1] == "var" else \
                rng.normal(0.0, 0.2, variable.shape)
            variable.value = variable.value + shift.astype(np.float32)
    model.eval()
    return model


@pytest.fixture(scope="module")
def flax_cnn(tmp_path_factory):
    model = _flax_model(0)
    proto = jax2onnx.to_onnx(model, [("B", 16, 16, 3)])
    proto.ir_version = IR_VERSION
    path = tmp_path_factory.mktemp("flax") / "flax_cnn.onnx"
    onnx.save(proto, str(path))
    return model, path


def test_flax_gradient_and_conservation(flax_cnn):
    model, path = flax_cnn
    x = tm.random_input((2, 16, 16, 3), 6, -1.0, 1.0)
    graph, state = nnx.split(model)
    with jax.enable_x64(True):
        double = nnx.merge(graph, jax.tree.map(lambda a: a.astype(np.float64), state))
        x64 = jax.numpy.asarray(x, np.float64)
        logits = np.asarray(double(x64))

        def gradient(target):
            picked = lambda v: double(v)[np.arange(len(x)), target].sum()  # noqa: E731
            return np.asarray(jax.grad(picked)(x64))

        _check(path, x, logits, gradient)
