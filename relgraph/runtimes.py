"""The ONNX runtimes an explainer runs on, behind one small interface.

A portable explainer (standard ONNX operators, every value typed: :mod:`relgraph.export`) runs on any
ONNX runtime. Each runtime here is a :class:`Session` over one model file:

    inputs   name → shape (None for a symbolic dimension)
    outputs  name → shape
    feedable the names a caller may feed (graph inputs, and initializers with a default such as a baseline)
    device   where it runs, in words
    run(feed) → every output by name, as numpy arrays

``onnxruntime`` is the default and the reference; ``openvino`` (``pip install 'relgraph[openvino]'``) runs
on Intel CPUs, GPUs and NPUs; ``reference`` is ``onnx.reference.ReferenceEvaluator``, the ONNX
specification's own runtime in numpy: exact to the letter of the operator specs and slow, for checking
small models.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator

from .errors import RelgraphError

RUNTIMES = ("onnxruntime", "openvino", "reference")
_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "reference": "onnx"}
EXTRAS = {"onnxruntime": "cpu", "openvino": "openvino"}


def installed_runtimes() -> list[str]:
    """The runtimes whose Python package is importable here, in :data:`RUNTIMES` order."""
    return [r for r in RUNTIMES if importlib.util.find_spec(_MODULES[r]) is not None]


def open_session(path: str, runtime: str = "onnxruntime", *, threads: int | None = None, spinning: bool = True,
                 providers=None, device: str | None = None) -> "Session":
    """A :class:`Session` of ``runtime`` over the ONNX file ``path``.

    ``threads``: intra-op threads (onnxruntime, OpenVINO); ``spinning=False`` stops onnxruntime's idle
    worker threads from spinning; ``providers``: onnxruntime's execution providers; ``device``: OpenVINO's
    device name (CPU, GPU, NPU; default CPU).
    """
    if runtime not in RUNTIMES:
        raise RelgraphError(f"unknown runtime '{runtime}' (choose one of: {', '.join(RUNTIMES)})")
    if runtime not in installed_runtimes():
        raise RelgraphError(f"the {runtime} runtime is not installed: pip install 'relgraph[{EXTRAS[runtime]}]'")
    if runtime == "onnxruntime":
        return OnnxruntimeSession(path, threads=threads, spinning=spinning, providers=providers)
    if runtime == "openvino":
        return OpenVINOSession(path, threads=threads, device=device or "CPU")
    return ReferenceSession(path)


def add_runtime_argument(parser) -> None:
    """``--runtime``, for the commands that run an ONNX explainer."""
    parser.add_argument("--runtime", default="onnxruntime", metavar="{" + ",".join(RUNTIMES) + "}",
                        help="the ONNX runtime that runs the explainer (default: onnxruntime)")


def _dims(shape) -> list:
    return [d if isinstance(d, int) and d >= 0 else None for d in shape]


class Session:
    """What every runtime provides (see the module docstring)."""

    runtime: str
    inputs: dict[str, list]
    outputs: dict[str, list]
    feedable: set[str]
    device: str

    def run(self, feed: dict) -> dict[str, np.ndarray]:
        raise NotImplementedError


class OnnxruntimeSession(Session):
    runtime = "onnxruntime"

    def __init__(self, path, *, threads=None, spinning=True, providers=None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        # errors still raise; the warnings are about what relgraph writes on purpose (a baseline is an initializer
        # that is also an input, so that a caller may override it) and would print on every load
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        if not spinning:  # on small VMs, spinning worker threads steal the cores the kernels need
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(path, options, providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:
            raise RelgraphError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0]}") from None
        self.inputs = {i.name: _dims(i.shape) for i in self.session.get_inputs()}
        self.outputs = {o.name: _dims(o.shape) for o in self.session.get_outputs()}
        self.feedable = set(self.inputs) | {i.name for i in self.session.get_overridable_initializers()}
        self.device = self.session.get_providers()[0].replace("ExecutionProvider", "")
        self._names = list(self.outputs)

    def run(self, feed):
        return dict(zip(self._names, self.session.run(None, feed)))


class OpenVINOSession(Session):
    """OpenVINO's ONNX front end and runtime. Inference precision is pinned to f32: on CPUs with bf16 or
    fp16 units OpenVINO would otherwise compute in those, and relevance needs the stabilizer's float32."""

    runtime = "openvino"

    def __init__(self, path, *, threads=None, device="CPU"):
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            model = core.read_model(path)
            self.compiled = core.compile_model(model, device, config)
        except Exception as exc:
            raise RelgraphError(f"OpenVINO cannot load {path}: {str(exc).strip().splitlines()[0]}") from None
        self.request = self.compiled.create_infer_request()
        self.inputs = {p.get_any_name(): _ov_dims(p.get_partial_shape()) for p in self.compiled.inputs}
        self.outputs = {p.get_any_name(): _ov_dims(p.get_partial_shape()) for p in self.compiled.outputs}
        # OpenVINO's ONNX front end turns initializers into constants: only graph inputs can be fed
        self.feedable = set(self.inputs)
        self.device = f"OpenVINO {device}"

    def run(self, feed):
        result = self.request.infer(feed, share_inputs=False)
        return {name: np.array(result[port]) for name, port in
                ((p.get_any_name(), p) for p in self.compiled.outputs)}


def value_dims(value: onnx.ValueInfoProto) -> list:
    """A graph value's dimensions, None where symbolic."""
    return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]


def _ov_dims(shape) -> list:
    return [d.get_length() if d.is_static else None for d in shape]


class ReferenceSession(Session):
    """``onnx.reference.ReferenceEvaluator``: the specification's runtime, op by op in numpy."""

    runtime = "reference"

    def __init__(self, path):
        try:
            proto = onnx.load(path)
            self.evaluator = ReferenceEvaluator(proto)
        except Exception as exc:
            raise RelgraphError(f"onnx's reference evaluator cannot load {path}: "
                                f"{str(exc).strip().splitlines()[0]}") from None
        self.inputs = {v.name: value_dims(v) for v in proto.graph.input}
        self.outputs = {v.name: value_dims(v) for v in proto.graph.output}
        self.feedable = set(self.inputs)
        self.device = "onnx reference evaluator (numpy)"

    def run(self, feed):
        return dict(zip(self.outputs, self.evaluator.run(None, feed)))

