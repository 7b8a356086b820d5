"""Run a lowered explainer with the same interface as the onnxruntime one.

``relgraph.open_explainer(DIR)`` on a triton folder (or ``open_explainer(FILE, backend="triton")`` on an ONNX
explainer, lowered on the spot) returns a :class:`TritonExplainer`: the same ``prepare``, ``targets`` and
``explain(x, target)`` result dict, computed by the launch plan on CUDA, or on the CPU under Triton's
interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations


from ..errors import TRITON_STACK, RelgraphError, require
from ..explainer import Explainer
from . import load
from .executor import Executor, read_constants


class TritonExplainer(Explainer):
    """A launch plan bound to its weights on one device.

    ``kernels="torch"`` runs the kernel steps as their torch reference (no Triton needed); ``device``
    defaults to CUDA, or the CPU under the interpreter. onnxruntime's options (``threads``,
    ``spinning``, ``providers``) do not apply and are ignored.
    """

    def __init__(self, path, *, kernels: str = "triton", device=None, threads=None, spinning=True,
                 providers=None, runtime: str = "onnxruntime"):
        require(TRITON_STACK, "the triton backend")
        if runtime != "onnxruntime":
            raise RelgraphError(f"the triton backend runs its launch plan; --runtime {runtime} applies to ONNX "
                                f"explainers (pass --backend onnxruntime to run the folder's explainer.onnx)")

        plan, proto, onnx_path = load(path)
        self.path, self.plan = str(path), plan
        self._read_record(proto, self.path)
        shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
                  for v in [*proto.graph.input, *proto.graph.output]}
        self.inputs = {v.name: shapes[v.name] for v in proto.graph.input}
        self.input_shape = shapes[self.input_name]
        classes = shapes.get(self.logits_name, [None, None])
        self.num_classes = classes[1] if len(classes) > 1 else None
        self.output_names = list(plan.outputs)
        self.executor = Executor(plan, read_constants(proto, plan.constants), kernels=kernels, device=device)

    @property
    def device(self) -> str:
        from .kernel_ops import TritonKernels

        triton_kernels = isinstance(self.executor.kernels, TritonKernels)
        if self.executor.device.type == "cpu":
            return "CPU, Triton kernels in the interpreter" if triton_kernels else "CPU, kernels as torch ops"
        return f"{self.executor.device.type.upper()}, " + ("Triton kernels" if triton_kernels else "kernels as torch ops")

    def overridable_inputs(self) -> set[str]:
        return set(self.plan.inputs)

    def run(self, feed: dict) -> dict:
        """The plan's outputs, back on the host as numpy arrays."""
        return {k: v.detach().cpu().numpy() for k, v in self.executor.run(feed).items()}
