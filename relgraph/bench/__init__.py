"""``relgraph bench``: how fast the explainer runs, and whether its kernels are right.

On a GPU: per-layer and whole-model time of the Triton explainer against the same explainer in
onnxruntime (CUDA provider) and against zennit, each kernel step's achieved TFLOP/s and GB/s set against
the device's measured ceilings (a large device-to-device copy for bandwidth, a large bf16 matmul for
FLOP/s).

Without a GPU: the interpreter correctness sweep (every public kernel op on small ragged shapes against
``relgraph.kernels.reference``'s float64 references, under ``TRITON_INTERPRET=1``), the ahead-of-time kernel report
(``relgraph kernels``), and the onnxruntime CPU explainer timed against the model's forward pass.

- :mod:`.sweep`: the interpreter correctness sweep of the kernels.
- :mod:`.timing`: the timer, onnxruntime's CPU explainer against the forward pass, and the peers (zennit on
  torchvision models).
- :mod:`.gpu`: the device's ceilings, per-step profiles of the launch plan and of onnxruntime's CUDA provider.
- :mod:`.command`: the ``relgraph bench`` command.
"""

from .command import add_command, cmd_bench, cpu_bench
from .gpu import device_ceilings, gpu_bench, profile_onnxruntime_cuda, profile_triton, step_cost
from .sweep import TOLERANCE, relative_error, run_sweep, sweep_cases, sweep_in_interpreter
from .timing import TORCHVISION, cpu_explainer_vs_forward, export_torchvision, time_call, torch_model, zennit_ms

__all__ = [
    "TOLERANCE", "TORCHVISION", "add_command", "cmd_bench", "cpu_bench", "cpu_explainer_vs_forward",
    "device_ceilings", "export_torchvision", "gpu_bench", "profile_onnxruntime_cuda", "profile_triton",
    "relative_error", "run_sweep", "step_cost", "sweep_cases", "sweep_in_interpreter", "time_call", "torch_model",
    "zennit_ms",
]
