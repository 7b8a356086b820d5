"""Shared test setup.

Without a CUDA device the Triton kernels run under Triton's interpreter, on CPU tensors. The switch
must be set before anything imports triton: ``triton.jit`` reads ``TRITON_INTERPRET`` when a kernel is
decorated, i.e. at import time, so setting it inside a test would come too late for every module
already collected. ``setdefault`` leaves an explicit choice (e.g. ``TRITON_INTERPRET=0`` on a GPU
runner) alone.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
