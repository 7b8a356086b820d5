"""What every canonicalization pass shares: it says why it left something alone."""

from __future__ import annotations

import onnx_ir as ir


class ReportingPass(ir.passes.InPlacePass):
    """An in-place pass that collects, in ``skipped``, one line per node it declined to rewrite and why
    (``relgraph inspect`` prints them)."""

    def __init__(self):
        super().__init__()
        self.skipped: list[str] = []
