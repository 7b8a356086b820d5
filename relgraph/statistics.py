"""Streaming layer statistics for the signal estimators of :mod:`relgraph.patterns`.

The canonical model (:func:`relgraph.frontend.prepare`) becomes a *statistics graph*: the forward path up
to every affine layer, plus per-batch sums over that layer's samples. onnxruntime runs it one batch at a
time and numpy accumulates the sums in float64, so memory is bounded by the batch, not the data set.

A sample of a Gemm layer is one input row x ∈ ℝᴰ with its output row y ∈ ℝᴷ. A sample of a convolution
is one input patch x ∈ ℝᴰ, D = C·k₁·k₂ in the weight's (c, i, j) order, at one output position, with y the
K outputs there: every spatial position counts. y is the pre-activation, bias included (what a ReLU
gates). Per batch the graph returns, with m₊ = [y > 0] and m₋ = 1 − m₊ per neuron:

    cross    [K', D]  Σ_s h_s x_sᵀ  for the per-sample weights h = [1, y, m₊, m₊y, m₋, m₋y]
    moments  [J·K]    Σ_s [y, y², m₊, m₊y, m₊y², m₋, m₋y, m₋y²]
    gram     [D, D]   Σ_s x_s x_sᵀ  (only for the quality measure)

(the m± entries only for the two-component estimator: K' = 1 + K or 1 + 5K, J = 2 or 8).

Convolutions: the cross sums need no unfolded patches. Σ_{n,p} h[n,k,p]·x_pad[n, c, p·s + i·d] is the
weight gradient of the convolution for the output gradient h, itself a convolution: of x transposed to
[C, N, H, W] (the batch becomes the channel axis the convolution sums over) with h transposed to
[K', N, Hₒ, Wₒ] as the kernel, with the forward strides as dilations, the forward dilations as strides and
the same pads; its output [C, K', …] is cropped to the kernel size. The Gram matrix needs the patches
themselves: they are unfolded by strided slices of the padded input (exact copies) and every sum of the
quality graph is taken in float64, with y recomputed from the patches in float64 (onnxruntime has no
float64 convolution, hence the two routes).
"""

from __future__ import annotations

import itertools
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common

from .errors import RelgraphError
from .frontend import prepare
from .graph import Builder, attr, const_array, dims, static_dims, to_proto
from .passes.relevance import explained_values, relevance_nodes
from .progress import Progress
from .rules.linear import _check_affine, conv_pads

FLOAT, DOUBLE = ir.DataType.FLOAT, ir.DataType.DOUBLE


# ------------------------------------------------------------------------------------------------ data


class DataSource:
    """Samples from an array, a .npy file or a folder of .npy files, read one batch at a time.

    Each array holds [N, *sample] or one sample; .npy files are memory-mapped, so a batch is the only
    part in memory. ``sample_shape`` is the model input's shape without the batch axis.
    """

    def __init__(self, data, sample_shape, what: str = "data"):
        self.sample_shape = tuple(sample_shape)
        self.what = what
        self.chunks = [self._check(arr, where) for arr, where in self._arrays(data)]
        self.count = sum(len(c) for c in self.chunks)
        if self.count == 0:
            raise RelgraphError(f"{what} holds no samples")

    def _arrays(self, data):
        if isinstance(data, np.ndarray):
            return [(data, "the array")]
        path = Path(data)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".npy" and p.is_file())
            if not files:
                raise RelgraphError(f"{self.what} folder {path} holds no .npy files")
            return [(_load_npy(p), str(p)) for p in files]
        if not path.exists():
            raise RelgraphError(f"{self.what} not found: {path}")
        if path.suffix.lower() != ".npy":
            raise RelgraphError(f"{self.what} must be a .npy file or a folder of .npy files, got {path}")
        return [(_load_npy(path), str(path))]

    def _check(self, arr, where: str) -> np.ndarray:
        if arr.dtype.kind != "f":
            raise RelgraphError(f"{self.what} {where} has dtype {arr.dtype}; expected floating-point samples")
        if arr.shape == self.sample_shape:
            return arr[None]
        if arr.shape[1:] != self.sample_shape:
            expected = ", ".join(map(str, self.sample_shape))
            raise RelgraphError(f"{self.what} {where} has shape {list(arr.shape)}; the model expects "
                                f"[N, {expected}] or one sample [{expected}]")
        return arr

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None):
        """Float32 batches of samples [start, stop) in order, each exactly ``batch_size`` but the last."""
        stop = self.count if stop is None else stop
        pending, have, offset = [], 0, 0
        for chunk in self.chunks:
            lo, hi = max(start - offset, 0), min(stop - offset, len(chunk))
            offset += len(chunk)
            while lo < hi:
                take = min(hi - lo, batch_size - have)
                pending.append(chunk[lo:lo + take])
                have, lo = have + take, lo + take
                if have == batch_size:
                    yield self._batch(pending)
                    pending, have = [], 0
        if pending:
            yield self._batch(pending)

    def _batch(self, parts) -> np.ndarray:
        batch = np.concatenate([np.asarray(p, np.float32) for p in parts])
        if not np.all(np.isfinite(batch)):
            raise RelgraphError(f"{self.what} contains NaN or infinite values")
        return batch


def _load_npy(path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise RelgraphError(f"cannot read {path} as a .npy array: {exc}") from None


# ------------------------------------------------------------------------------------------------ layers


@dataclass(eq=False)
class AffineLayer:
    """One Gemm or (ungrouped) Conv of the canonical model; the weight in its ONNX layout."""

    node: ir.Node
    weight: np.ndarray            # Gemm [K, D]; Conv [K, C, k…]
    bias: np.ndarray              # [K] float64, zeros when the layer has none
    geometry: dict = field(default_factory=dict)  # Conv: kernel, strides, dilations, pads, out_dims; Gemm: rows

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def op(self) -> str:
        return self.node.op_type

    @property
    def neurons(self) -> int:
        return self.weight.shape[0]

    @property
    def features(self) -> int:
        return int(np.prod(self.weight.shape[1:]))

    @property
    def matrix(self) -> np.ndarray:
        """The weight as [K, D] float64: row k is neuron k's filter w over one sample x."""
        return self.weight.reshape(self.neurons, -1).astype(np.float64)

    def samples_per_input(self) -> int:
        return int(np.prod(self.geometry.get("out_dims", [1])))


def affine_layers(model: ir.Model) -> tuple[ir.Value, list[AffineLayer], list[str]]:
    """The explained input, the layers patterns are fitted for, and the grouped convolutions skipped.

    Raises for affine layers no pattern rule covers (MatMul, non-canonical Gemm), all of them at once.
    """
    x, logits = explained_values(model)
    layers, skipped, unsupported = [], [], []
    for node in relevance_nodes(model.graph, x, logits):
        if node.op_type not in ("Gemm", "Conv", "MatMul"):
            continue
        why = "fitted for Gemm and Conv only" if node.op_type == "MatMul" else _check_affine(node)
        if why:
            unsupported.append(f"{node.op_type} '{node.name}' ({why})")
        elif node.op_type == "Conv" and attr(node, "group", 1) != 1:
            skipped.append(f"Conv '{node.name}' (group={attr(node, 'group', 1)}): patterns of grouped "
                           "convolutions are not fitted")
        else:
            layers.append(_layer(node, conv_pads))
    if unsupported:
        raise RelgraphError(f"cannot fit patterns for {len(unsupported)} layer(s): {'; '.join(unsupported)}")
    if not layers:
        raise RelgraphError("the model has no Gemm or Conv layer to fit patterns for")
    return x, layers, skipped


def _rows_per_input(x: ir.Value) -> int:
    """The rows a Gemm sees per model input: 1, or S when it runs on the flattened [N·S, D] tokens of a
    weight applied per token (canonicalization's Reshape from [N, S, D], or [S, N, D]: every static leading
    dimension, the batch being the one dynamic)."""
    source = x.producer()
    if source is None or source.op_type != "Reshape" or source.inputs[0].shape is None:
        return 1
    return int(np.prod([d for d in dims(source.inputs[0])[:-1] if d is not None]))


def _layer(node: ir.Node, conv_pads) -> AffineLayer:
    w = const_array(node.inputs[1]).astype(np.float32)
    b = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    bias = np.zeros(w.shape[0]) if b is None else b.astype(np.float64).reshape(-1)
    if node.op_type == "Gemm":
        return AffineLayer(node, w, bias, dict(out_dims=[_rows_per_input(node.inputs[0])]))
    kernel, spatial = list(w.shape[2:]), w.ndim - 2
    strides = list(attr(node, "strides", [1] * spatial))
    dilations = list(attr(node, "dilations", [1] * spatial))
    in_dims = static_dims(node.inputs[0], "Conv input")[2:]
    geometry = dict(kernel=kernel, strides=strides, dilations=dilations,
                    pads=conv_pads(node, in_dims, kernel, strides, dilations),
                    out_dims=static_dims(node.outputs[0], "Conv output")[2:])
    return AffineLayer(node, w, bias, geometry)


# ------------------------------------------------------------------------------------------------ graph


def statistics_model(model: ir.Model, layers: list[AffineLayer], *, two_component: bool, gram: bool):
    """Replace the model's outputs by every layer's per-batch sums (module docstring); returns the proto."""
    graph = model.graph
    outputs = []
    for layer in layers:
        b = Builder(graph, prefix=f"statistics/{layer.name}")
        sums = _sums_float64(b, layer, two_component) if gram else _sums_streamed(b, layer, two_component)
        for key, value in sums.items():
            out = b.op("Identity", value)
            out.name = f"statistics/{layer.name}/{key}"
            out.type, out.shape = ir.TensorType(DOUBLE if gram else FLOAT), None
            outputs.append(out)
    graph.outputs.clear()
    graph.outputs.extend(outputs)
    common.RemoveUnusedNodesPass()(model)
    return to_proto(model)


def _regime_weights(b: Builder, y, two_component: bool, dtype):
    """h = [1, y, m₊, m₊y, m₋, m₋y] and q = [y, y², m₊, m₊y, m₊y², m₋, m₋y, m₋y²] along axis 1 of y."""
    one, onnx_type = b.scalar(1.0, dtype), ir.DataType.from_numpy(np.dtype(dtype))
    shape = b.op("Shape", y)
    ones_shape = b.op("Concat", b.op("Slice", shape, b.ints([0]), b.ints([1])), b.ints([1]),
                      b.op("Slice", shape, b.ints([2]), b.ints([np.iinfo(np.int64).max])), axis=0)
    ones = b.op("ConstantOfShape", ones_shape, value=ir.tensor(np.ones(1, dtype)))
    h, q = [ones, y], [y, b.op("Mul", y, y)]
    if two_component:
        positive = b.op("Cast", b.op("Greater", y, b.scalar(0.0, dtype)), to=onnx_type)
        for mask in (positive, b.op("Sub", one, positive)):
            my = b.op("Mul", mask, y)
            h += [mask, my]
            q += [mask, my, b.op("Mul", my, y)]
    return b.op("Concat", *h, axis=1), b.op("Concat", *q, axis=1)


def _sums_streamed(b: Builder, layer: AffineLayer, two_component: bool) -> dict:
    """float32 cross sums and moments of the layer's own input and output; convolutions by the
    weight-gradient convolution."""
    x, y = layer.node.inputs[0], layer.node.outputs[0]
    h, q = _regime_weights(b, y, two_component, np.float32)
    rank = 2 + len(layer.geometry.get("kernel", []))
    axes = [0] + list(range(2, rank))
    moments = b.op("ReduceSum", q, b.ints(axes), keepdims=0)
    if layer.op == "Gemm":
        cross = b.op("MatMul", b.op("Transpose", h, perm=[1, 0]), x)
    else:
        cross = _conv_cross(b, layer, x, h)
    return {"cross": cross, "moments": moments}


def _conv_cross(b: Builder, layer: AffineLayer, x, h):
    """Σ_{n,p} h[n,k',p]·patch(x)[n,p] as [K', D]: the weight gradient written as one convolution."""
    g = layer.geometry
    rank = 2 + len(g["kernel"])
    swap = [1, 0] + list(range(2, rank))
    grad = b.op("Conv", b.op("Transpose", x, perm=swap), b.op("Transpose", h, perm=swap),
                strides=g["dilations"], dilations=g["strides"], pads=g["pads"])
    crop = b.op("Slice", grad, b.ints([0] * len(g["kernel"])), b.ints(g["kernel"]), b.ints(list(range(2, rank))))
    return b.op("Reshape", b.op("Transpose", crop, perm=swap), b.ints([-1, layer.features]))


def _sums_float64(b: Builder, layer: AffineLayer, two_component: bool) -> dict:
    """float64 cross sums, moments and Gram matrix over the unfolded samples [S, D] and outputs [S, K].

    y is recomputed in float64 from the samples, y = x·Wᵀ + b: the model's float32 output differs from it
    by rounding, which the regressions of the quality measure would otherwise pick up as signal along w.
    """
    x = layer.node.inputs[0]
    xs = b.op("Cast", _unfold(b, layer, x) if layer.op == "Conv" else x, to=DOUBLE)
    y = b.op("Add", b.op("MatMul", xs, b.const(layer.matrix.T.copy())), b.const(layer.bias))
    h, q = _regime_weights(b, y, two_component, np.float64)
    return {"cross": b.op("MatMul", b.op("Transpose", h, perm=[1, 0]), xs),
            "moments": b.op("ReduceSum", q, b.ints([0]), keepdims=0),
            "gram": b.op("MatMul", b.op("Transpose", xs, perm=[1, 0]), xs)}


def _unfold(b: Builder, layer: AffineLayer, x):
    """The patches of x as [N·P, D] (im2col) by strided slices of the zero-padded input."""
    g = layer.geometry
    spatial = len(g["kernel"])
    pads = g["pads"]
    padded = b.op("Pad", x, b.ints([0, 0] + pads[:spatial] + [0, 0] + pads[spatial:]))
    axes = b.ints(list(range(2, 2 + spatial)))
    taps = []
    for offset in itertools.product(*(range(k) for k in g["kernel"])):
        starts = [o * d for o, d in zip(offset, g["dilations"])]
        ends = [s0 + s * (n - 1) + 1 for s0, s, n in zip(starts, g["strides"], g["out_dims"])]
        tap = b.op("Slice", padded, b.ints(starts), b.ints(ends), axes, b.ints(g["strides"]))
        taps.append(b.op("Unsqueeze", tap, b.ints([2])))
    stacked = b.op("Concat", *taps, axis=2)                                   # [N, C, Πk, *out]
    flat = b.op("Reshape", stacked, b.ints([0, layer.features, -1]))         # [N, D, P]
    return b.op("Reshape", b.op("Transpose", flat, perm=[0, 2, 1]), b.ints([-1, layer.features]))


# ------------------------------------------------------------------------------------------------ sums


@dataclass
class Regime:
    """Sums over the samples of one regime, per neuron k: n, Σx, Σxy, Σy, Σy²."""

    n: np.ndarray        # [K]
    sum_x: np.ndarray    # [K, D]
    sum_xy: np.ndarray   # [K, D]
    sum_y: np.ndarray    # [K]
    sum_yy: np.ndarray   # [K]


@dataclass
class LayerStats:
    """A layer's float64 sums: all samples ("all") and, for two-component, y > 0 ("+") and y ≤ 0 ("-")."""

    layer: AffineLayer
    n: float
    regimes: dict
    gram: np.ndarray | None = None

    @property
    def all(self) -> Regime:
        return self.regimes["all"]

    @property
    def inputs(self) -> int:
        """How many model inputs the sums cover (n counts a convolution's patches)."""
        return int(round(self.n / self.layer.samples_per_input()))


def _unpack(layer: AffineLayer, n: float, sums: dict) -> LayerStats:
    k = layer.neurons
    cross, moments = sums["cross"], sums["moments"].reshape(-1, k)
    regimes = {"all": Regime(np.full(k, n), np.broadcast_to(cross[0], (k, cross.shape[1])), cross[1:1 + k],
                             moments[0], moments[1])}
    for i, name in enumerate(("+", "-")[: (len(moments) - 2) // 3]):
        rows, m = 1 + k + 2 * k * i, 2 + 3 * i
        regimes[name] = Regime(moments[m], cross[rows:rows + k], cross[rows + k:rows + 2 * k],
                               moments[m + 1], moments[m + 2])
    return LayerStats(layer, n, regimes, sums.get("gram"))


class StatisticsRunner:
    """An onnxruntime session of the statistics graph of a model; :meth:`collect` streams data through it."""

    def __init__(self, model_path, *, two_component: bool, gram: bool = False, layer_filter=None,
                 providers=None):
        model, _ = prepare(model_path)
        x, layers, self.skipped = affine_layers(model)
        if len(model.graph.inputs) - len([v for v in model.graph.inputs if v.is_initializer()]) != 1:
            raise RelgraphError("fitting patterns needs a model with exactly one input")
        if x.dtype != FLOAT:
            raise RelgraphError(f"input '{x.name}' has type {x.dtype}; relgraph explains float32 models")
        self.layers = [layer for layer in layers if layer_filter is None or layer_filter(layer)]
        self.all_layers = layers
        if not self.layers:
            raise RelgraphError("no layer is left to collect statistics for")
        self.input_name = x.name
        self.sample_shape = static_dims(x, "model input")[1:]
        proto = statistics_model(model, self.layers, two_component=two_component, gram=gram)
        self._folder = None  # holds a large statistics graph on disk for as long as the session lives
        self.session = self._session(proto, providers)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def source(self, data, what: str = "data") -> DataSource:
        return data if isinstance(data, DataSource) else DataSource(data, self.sample_shape, what)

    def collect(self, source: DataSource, *, batch_size: int = 64, start: int = 0, stop: int | None = None,
                progress: bool = True, label: str = "statistics") -> dict[str, LayerStats]:
        """Stream samples [start, stop) of ``source``; returns layer name → :class:`LayerStats`."""
        if batch_size < 1:
            raise RelgraphError(f"batch size must be ≥ 1, got {batch_size}")
        stop = source.count if stop is None else stop
        total = -(-(stop - start) // batch_size)
        sums: dict[str, np.ndarray] = {}
        samples = 0
        with Progress(total, label, min_total=1 if progress else total + 1) as bar:
            for batch in source.batches(batch_size, start, stop):
                for name, value in zip(self.output_names, self.session.run(None, {self.input_name: batch})):
                    sums[name] = sums.get(name, 0.0) + np.asarray(value, np.float64)
                samples += len(batch)
                bar.update()
        return {layer.name: self._layer_stats(layer, samples, sums) for layer in self.layers}

    @staticmethod
    def _layer_stats(layer: AffineLayer, inputs: int, sums: dict) -> LayerStats:
        prefix = f"statistics/{layer.name}/"
        mine = {name[len(prefix):]: value for name, value in sums.items() if name.startswith(prefix)}
        return _unpack(layer, float(inputs * layer.samples_per_input()), mine)

    def _session(self, proto, providers):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # the transposed kernels of the statistics graph have no static shapes
        providers = providers or ["CPUExecutionProvider"]
        if proto.ByteSize() < 1_900_000_000:
            return ort.InferenceSession(proto.SerializeToString(), options, providers=providers)
        self._folder = tempfile.TemporaryDirectory(prefix="relgraph-statistics-")
        path = os.path.join(self._folder.name, "statistics.onnx")
        onnx.save_model(proto, path, save_as_external_data=True, location="statistics.onnx.data")
        return ort.InferenceSession(path, options, providers=providers)
