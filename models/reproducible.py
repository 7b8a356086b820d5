"""What makes the training scripts in models/ give byte-identical files on every run."""

from __future__ import annotations

import os
import random

import numpy as np


def configure_determinism(seed: int) -> None:
    """Fix every seed and force deterministic single-threaded execution."""
    # Must be set before cuBLAS initializes; harmless on CPU.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
