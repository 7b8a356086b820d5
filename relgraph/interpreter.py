"""Triton's interpreter: with ``TRITON_INTERPRET=1`` set when a kernel is compiled, Triton runs it in numpy on
the CPU instead of on a CUDA GPU. The kernels, the launch plan's executor and the dataset workers all ask
here, so the three agree on where kernels run (this module imports neither torch nor triton)."""

from __future__ import annotations

import os

INTERPRETER_HINT = ("the triton backend needs a CUDA GPU; on the CPU run its kernels in Triton's interpreter: "
                    "set TRITON_INTERPRET=1")


def interpreting() -> bool:
    """Whether kernels run on the CPU under Triton's interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
