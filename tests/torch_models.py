"""Torch models and their ONNX exports, shared by the comparison tests (not a test module).

Every model here is built with a fixed seed, put in eval mode and exported by :func:`export` in one
of the two forms torch produces:

* the *legacy* form (``torch.onnx.export(dynamo=False)``, opset 17): TorchScript tracing, with
  BatchNormalization kept as its own node and adaptive average pooling as GlobalAveragePool + Flatten;
* the *dynamo* form (``torch.onnx.export(dynamo=True)``, opset 18): ``torch.export`` + onnxscript's
  optimizer, which folds BatchNormalization into the preceding convolution and writes the mean over the
  spatial axes as ReduceMean and flattening as Reshape.

Both have one input ``input`` and one output ``logits``, with a dynamic batch axis, and are saved with
``ir_version = 10`` (what the bundled onnxruntime reads).

The small models cover every op relgraph supports between them; each exposes ``logits(x)``, the
tensor relgraph explains (the input of a final Softmax when the model has one).
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import relgraph

INPUT, OUTPUT = "input", "logits"
IR_VERSION = 10
LEGACY_OPSET, DYNAMO_OPSET = 17, 18


# ------------------------------------------------------------------------------------------------ export


def export(model: nn.Module, x: torch.Tensor, path, dynamo: bool, opset: int | None = None) -> Path:
    """Export ``model`` (switched to eval mode) to ONNX at ``path``, at ``opset`` (default: the form's);
    returns the path.

    ``x`` is an example input; its batch axis becomes dynamic (the example is widened to a batch of two
    so that tracing cannot specialise on a batch of one).
    """
    path = Path(path)
    model = model.eval()
    example = x[:1].expand(2, *x.shape[1:]).contiguous()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            program = torch.onnx.export(
                model, (example,), dynamo=True, opset_version=opset or DYNAMO_OPSET, optimize=True,
                input_names=[INPUT], output_names=[OUTPUT], verbose=False,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
            )
            proto = program.model_proto
        else:
            # TrainingMode.PRESERVE keeps BatchNormalization (in inference mode, the model being in eval
            # mode); the default would fold it into the convolutions during export.
            torch.onnx.export(
                model, (example,), str(path), dynamo=False, opset_version=opset or LEGACY_OPSET,
                training=torch.onnx.TrainingMode.PRESERVE,
                input_names=[INPUT], output_names=[OUTPUT],
                dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
            )
            proto = onnx.load(str(path))
    proto.ir_version = IR_VERSION
    onnx.save(proto, str(path))
    return path


@contextlib.contextmanager
def compiled(path, **options):
    """Compile ``path`` with ``options`` into a temporary folder beside it; yield the result, then delete it.

    An explainer is as large as its model (half a gigabyte for VGG-16, more with a composite's copies of
    the weights); the comparison tests compile dozens, so none outlives its test.
    """
    folder = tempfile.mkdtemp(prefix=".explainers.", dir=Path(path).parent)
    try:
        yield relgraph.compile(str(path), output=str(Path(folder) / Path(path).name), **options)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def op_types(path) -> set[str]:
    """The op types of an exported model's main graph."""
    return {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}


# ------------------------------------------------------------------------------------------------ inputs


def random_input(shape, seed: int, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Standard-normal float32 samples kept away from zero (|v| ≥ 0.05), optionally clipped to [low, high]."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(shape)
    v = np.where(np.abs(v) < 0.05, np.copysign(0.05, v) + v, v)
    if low is not None or high is not None:
        v = np.clip(v, low, high)
    return v.astype(np.float32)


def pick_targets(logits: np.ndarray, seed: int) -> np.ndarray:
    """One class per sample that is not the arg-max (the interesting case for an explanation)."""
    rng = np.random.default_rng(seed)
    n, classes = logits.shape
    top = logits.argmax(1)
    return np.array([(top[i] + 1 + rng.integers(classes - 1)) % classes for i in range(n)], np.int64)


# ------------------------------------------------------------------------------------------------ init


def randomize_batchnorm(model: nn.Module, seed: int) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, so that folding them matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.weight.copy_(0.6 + 0.8 * torch.rand(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
    return model


def randomize_biases(model: nn.Module, seed: int, scale: float = 0.05) -> nn.Module:
    """Small random biases for every convolution (1-d, 2-d, 3-d, transposed) and Linear (torch's default init
    keeps them tiny but non-zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and m.bias is not None:
                m.bias.copy_(scale * torch.randn(m.bias.shape, generator=g))
    return model


def vgg16(seed: int = 0) -> nn.Module:
    """torchvision VGG-16 (no BatchNorm) with random weights and random small biases."""
    torch.manual_seed(seed)
    return randomize_biases(torchvision.models.vgg16(weights=None), seed).eval()


def resnet18(seed: int = 0) -> nn.Module:
    """torchvision ResNet-18 with random weights and randomized BatchNorm statistics."""
    torch.manual_seed(seed)
    return randomize_batchnorm(torchvision.models.resnet18(weights=None), seed).eval()


# ------------------------------------------------------------------------------------------------ small


class ConvZoo(nn.Module):
    """Convolutions and pools in every geometry, the activations, a residual sum, squeeze-excitation.

    Conv: stride, padding, dilation, groups, depthwise, ``padding='same'`` with an even kernel (ONNX
    ``auto_pad=SAME_UPPER`` in the legacy form, asymmetric pads in the dynamo form), a stride-2 conv that
    leaves a row unread; BatchNorm folded into a conv and one kept after a ReLU; MaxPool k3 s2 p1;
    AveragePool with and without ``count_include_pad``; squeeze-excitation (ReduceMean, 1×1 convs,
    Sigmoid, Mul); global average pooling; Gemm; Softmax at the output.
    """

    input_shape = (3, 16, 16)

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn_stem = nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.same = nn.Conv2d(8, 8, 4, padding="same")
        self.depthwise = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.branch = nn.Conv2d(8, 8, 1)
        self.bn_after_relu = nn.BatchNorm2d(8)
        self.se_reduce = nn.Conv2d(8, 4, 1)
        self.se_expand = nn.Conv2d(4, 8, 1)
        self.wide = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 24)
        self.head = nn.Linear(24, classes)

    def logits(self, x):
        x = F.relu(self.bn_stem(self.stem(x)))                            # 16x16
        x = F.leaky_relu(self.grouped(x), 0.1)
        x = F.relu6(self.same(x))
        x = F.max_pool2d(x, 3, stride=2, padding=1)                       # 8x8
        x = F.hardswish(self.depthwise(x))                                # 4x4
        x = F.relu(x + self.branch(x))                                    # residual sum
        x = self.bn_after_relu(x)
        x = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=True)
        x = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        gate = torch.sigmoid(self.se_expand(F.relu(self.se_reduce(x.mean((2, 3), keepdim=True)))))
        x = x * gate                                                      # squeeze-excitation
        x = F.relu(self.wide(x))                                          # 2x2
        x = torch.flatten(self.pool(x), 1)
        return self.head(torch.tanh(self.fc(x)))

    def forward(self, x):
        return torch.softmax(self.logits(x), dim=1)


class StructureZoo(nn.Module):
    """Ops that move values, arithmetic with constants, the smooth activations and a MatMul with weights.

    Pad (constant), Split (torch.split and torch.chunk), Slice, Concat, Unsqueeze/Squeeze, Reshape,
    Transpose, Flatten; Add/Sub/Mul/Div by constants; MatMul of a 3-D activation by a weight matrix
    (Linear on a sequence); SiLU (x·σ(x)), Sigmoid, Tanh, Hardsigmoid; ReduceMean; Gemm.
    """

    input_shape = (4, 6, 6)

    def __init__(self, classes: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, padding=1)
        self.mix = nn.Parameter(torch.randn(8, 12) / 8 ** 0.5)
        self.token = nn.Linear(12, 10)
        self.fc = nn.Linear(10 * 2 + 12, classes)
        self.register_buffer("shift", torch.linspace(-0.5, 0.5, 6).reshape(1, 6, 1, 1))

    def logits(self, x):
        n = x.shape[0]
        x = F.silu(self.conv(x))                                      # [N, 6, 6, 6]
        x = F.pad(x, (1, 0, 2, 1))                                    # [N, 6, 9, 7]
        a, b = torch.split(x, [2, 4], dim=1)
        c, d = torch.chunk(b, 2, dim=1)
        a = (a + 0.25) * 1.5
        c = torch.sigmoid(c - self.shift[:, :2]) / 2.0
        d = F.hardsigmoid(d * -2.0)
        x = torch.cat([d, a, c], dim=1)                               # [N, 6, 9, 7]
        x = x[:, :, 1:9, 2:6]                                         # [N, 6, 8, 4]
        x = x.unsqueeze(1).squeeze(1)
        x = x.reshape(n, 6, 32).permute(0, 2, 1)                      # [N, 32, 6]
        x = torch.cat([x, x[:, :, :2]], dim=2).reshape(n, 8, 32)      # [N, 8, 32]
        x = x.transpose(1, 2) @ self.mix                              # [N, 32, 12]
        pooled = x.mean(dim=1)                                        # [N, 12]
        tokens = torch.tanh(self.token(x))                            # [N, 32, 10]
        first_last = torch.cat([tokens[:, :1], tokens[:, -1:]], dim=1).flatten(1)   # [N, 20]
        return self.fc(torch.cat([first_last, pooled], dim=1))

    def forward(self, x):
        return self.logits(x)


class SmallCNN(nn.Module):
    """A small ReLU network (conv, max/avg pooling, fully connected) for rule-by-rule comparisons."""

    input_shape = (3, 12, 12)

    def __init__(self, classes: int = 10, bias: bool = True):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=bias), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1, bias=bias), nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1, bias=bias), nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * 3 * 3, 32, bias=bias), nn.ReLU(),
            nn.Linear(32, classes, bias=bias),
        )

    def logits(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))

    def forward(self, x):
        return self.logits(x)


class ConvGeometryNet(nn.Module):
    """Every convolution and pooling geometry as modules (so that zennit can hook each of them).

    Dilated grouped conv, ``padding='same'`` with an even kernel, max pooling k3 s2 p1, a strided
    depthwise conv that leaves a row unread, average pooling with and without ``count_include_pad``,
    a stride-2 k2 conv, adaptive average pooling to 1×1; LeakyReLU between some of them.
    """

    input_shape = (3, 15, 15)

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2), nn.LeakyReLU(0.1),
            nn.Conv2d(8, 8, 4, padding="same"), nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),                             # 8x8
            nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.ReLU(),   # 4x4
            nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
            nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=True),    # 2x2
            nn.Conv2d(8, 16, 2, stride=2), nn.ReLU(),                        # 1x1
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.classifier = nn.Linear(16, classes)

    def logits(self, x):
        return self.classifier(self.features(x))

    def forward(self, x):
        return self.logits(x)


class SmallVGG(nn.Module):
    """A VGG-style network built only from modules captum's LRP supports (conv, ReLU, max pool, linear)."""

    input_shape = (3, 16, 16)

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2, 2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * 4 * 4, 32), nn.ReLU(),
            nn.Linear(32, classes),
        )

    def logits(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))

    def forward(self, x):
        return self.logits(x)


def small(cls, seed: int = 0, **kwargs) -> nn.Module:
    """A small model of class ``cls`` with seeded random weights (BatchNorm statistics included)."""
    torch.manual_seed(seed)
    model = cls(**kwargs)
    return randomize_batchnorm(randomize_biases(model, seed + 1), seed + 2).eval()


# ------------------------------------------------------------------------------------------------ metrics


def reference_gradient(model: nn.Module, x: np.ndarray, target, dtype=torch.float64) -> np.ndarray:
    """∂ logits[n, target[n]] / ∂x by torch autograd on a copy of ``model`` in ``dtype``.

    float64 (the default) keeps the reference free of float32 round-off: on CPU, oneDNN's float32
    convolution backward alone differs from the exact gradient by ~3e-3 (relative) on VGG-16. float32
    runs with oneDNN disabled, so that it only carries ordinary float32 round-off.
    """
    cast = copy.deepcopy(model).to(dtype).eval()
    xt = torch.tensor(x, dtype=dtype, requires_grad=True)
    onednn = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = onednn and dtype != torch.float32
    try:
        logits = cast.logits(xt) if hasattr(cast, "logits") else cast(xt)
        picked = logits[torch.arange(len(x)), torch.tensor(np.asarray(target))]
        (grad,) = torch.autograd.grad(picked.sum(), xt)
    finally:
        torch.backends.mkldnn.enabled = onednn
    return grad.double().numpy()


def reference_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """The explained logits (pre-softmax) of ``model`` in float64."""
    double = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        xt = torch.tensor(x, dtype=torch.float64)
        return (double.logits(xt) if hasattr(double, "logits") else double(xt)).numpy()


def per_sample(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, np.float64).reshape(len(a), -1)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each sample's flattened ``a`` and ``b``."""
    a, b = per_sample(a), per_sample(b)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def relative_error(actual: np.ndarray, desired: np.ndarray) -> np.ndarray:
    """‖actual − desired‖ / ‖desired‖ per sample."""
    actual, desired = per_sample(actual), per_sample(desired)
    return np.linalg.norm(actual - desired, axis=1) / np.linalg.norm(desired, axis=1)
