"""Compiler passes, one concern per file. :func:`canonicalize` runs them in order."""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common

from .bias_as_input import BiasAsInputPass
from .cleanup import CleanupPass
from .fold_batchnorm import FoldBatchNormPass
from .fold_constants import FoldConstantsPass
from .normalize_gemm import NormalizeGemmPass
from .relevance import build_relevance
from .shapes import InferShapesPass

__all__ = ["canonicalize", "build_relevance", "BiasAsInputPass", "CleanupPass", "FoldBatchNormPass",
           "FoldConstantsPass", "NormalizeGemmPass", "InferShapesPass"]


def canonicalize(model: ir.Model) -> list[str]:
    """Bring a model to the form the rules expect; returns what the passes skipped, and why.

    Order matters: constants must be folded before shapes are final, BatchNorm folded before biases are
    made explicit inputs, and shapes inferred again after every pass that creates values.
    """
    folds, bns, gemms = FoldConstantsPass(), FoldBatchNormPass(), NormalizeGemmPass()
    ir.passes.Sequential(
        common.NameFixPass(),
        common.InlinePass(),
        CleanupPass(),
        InferShapesPass(),
        folds,
        CleanupPass(),
        InferShapesPass(),
        gemms,
        bns,
        BiasAsInputPass(),
        common.RemoveUnusedNodesPass(),
        common.TopologicalSortPass(),
        InferShapesPass(),
    )(model)
    return folds.skipped + bns.skipped + gemms.skipped
