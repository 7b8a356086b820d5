"""Run a launch plan on torch tensors: the constants and the prelude once, the steps per call.

Values live in one dict from name to tensor; each step frees the values it read last, so memory follows
the explainer's live set, not its total size. Kernel steps go to the Triton kernels
(``kernels="triton"``: CUDA, or the CPU under ``TRITON_INTERPRET=1``) or to their torch reference
(``kernels="torch"``), which is what the plan computes without Triton.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import RelgraphError
from ..interpreter import INTERPRETER_HINT, interpreting
from ..progress import Progress
from .plan import Plan


def default_device(kernels: str) -> str:
    """CUDA when there is a GPU; the CPU for the torch reference or under Triton's interpreter."""
    import torch

    if kernels == "torch" or interpreting():
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    raise RelgraphError(INTERPRETER_HINT)


def read_constants(proto: onnx.ModelProto, names) -> dict[str, np.ndarray]:
    """The named initializers of the ONNX explainer a plan was lowered from."""
    tensors = {t.name: t for t in proto.graph.initializer}
    missing = [n for n in names if n not in tensors]
    if missing:
        raise RelgraphError(f"the launch plan reads constants the explainer lacks ({', '.join(missing[:5])}); "
                            "compile it again")
    return {n: numpy_helper.to_array(tensors[n]) for n in names}


class Executor:
    """A plan bound to its constants on one device; ``run(feeds)`` returns every output by name."""

    def __init__(self, plan: Plan, constants: dict, *, kernels: str = "triton", device=None):
        import torch

        from .kernel_ops import TorchKernels, TritonKernels

        if kernels not in ("triton", "torch"):
            raise RelgraphError(f"kernels must be 'triton' or 'torch', got '{kernels}'")
        self.plan = plan
        self.device = torch.device(device or default_device(kernels))
        if kernels == "triton" and self.device.type == "cpu" and not interpreting():
            raise RelgraphError(INTERPRETER_HINT)
        self.kernels = TritonKernels() if kernels == "triton" else TorchKernels()
        self.constants = {n: self._tensor(constants[n]) for n in plan.constants}
        with torch.no_grad():
            for step in plan.prelude:
                self._run_torch(step, self.constants)
        # a Constant has no input to take a device from: the prelude's results are moved once
        self.constants = {k: v.to(self.device) for k, v in self.constants.items()}

    def _tensor(self, a):
        import torch

        if isinstance(a, torch.Tensor):
            return a.to(self.device)
        return torch.from_numpy(np.array(a, copy=True)).to(self.device)

    def run(self, feeds: dict) -> dict:
        """Outputs by name (torch tensors on the executor's device) for ``feeds`` (name → array)."""
        import torch

        from .kernel_ops import TritonKernels

        unknown = set(feeds) - set(self.plan.inputs)
        if unknown:
            raise RelgraphError(f"unknown input(s) {sorted(unknown)}; the plan takes {self.plan.inputs}")
        values = dict(self.constants)
        values.update({k: self._tensor(v) for k, v in feeds.items()})
        missing = [n for n in self.plan.inputs if n not in values]
        if missing:
            raise RelgraphError(f"missing input(s) {missing}")
        # Triton's interpreter runs a kernel in seconds to minutes: show how far the plan has come
        slow = isinstance(self.kernels, TritonKernels) and self.device.type == "cpu"
        with torch.no_grad(), Progress(len(self.plan.steps) if slow else 0, "triton interpreter") as progress:
            for step in self.plan.steps:
                if step.kind == "kernel":
                    self._run_kernel(step, values)
                else:
                    self._run_torch(step, values)
                for name in step.free:
                    values.pop(name, None)
                progress.update()
        return {name: values[name] for name in self.plan.outputs}

    def _run_kernel(self, step, values):
        from .kernel_ops import run_kernel

        outs = run_kernel(self.kernels, step, [values[i] if i else None for i in step.inputs])
        values.update(zip(step.outputs, outs))

    @staticmethod
    def _run_torch(step, values):
        from .torch_ops import TORCH_OPS

        try:
            out = TORCH_OPS[step.op]([values[i] if i else None for i in step.inputs], step.attrs)
        except RelgraphError:
            raise
        except Exception as exc:  # say which explainer node failed; the traceback stays with the cause
            raise RuntimeError(f"{step.op} step for '{step.nodes[0] if step.nodes else '?'}' failed: {exc}") from exc
        outs = out if isinstance(out, tuple) else (out,)
        values.update((name, v) for name, v in zip(step.outputs, outs) if name)
