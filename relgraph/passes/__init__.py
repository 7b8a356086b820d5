"""Compiler passes, one concern per file. :func:`canonicalize` runs them in order."""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common

from .bias_as_input import BiasAsInputPass
from .cleanup import CleanupPass
from .decompose_gates import DecomposeGatesPass
from .drop_noop_reshapes import DropNoopReshapesPass
from .einsum_as_matmul import EinsumAsMatMulPass
from .fold_batchnorm import FoldBatchNormPass
from .fold_constants import FoldConstantsPass
from .fold_group_norm import FoldGroupNormPass
from .fuse_clip import FuseClipPass
from .fuse_hard_sigmoid import FuseHardSigmoidPass
from .fuse_hardswish import FuseHardSwishPass
from .fuse_layer_norm import FuseLayerNormPass
from .fuse_softmax import FuseSoftmaxPass
from .fuse_softsign import FuseSoftsignPass
from .gather_nd_as_gather import GatherNDAsGatherPass
from .lerp_as_resize import LerpAsResizePass
from .normalize_gemm import NormalizeGemmPass
from .reduce_sum_as_mean import ReduceSumAsMeanPass
from .relevance import build_relevance
from .shapes import InferShapesPass

__all__ = ["canonicalize", "build_relevance", "BiasAsInputPass", "CleanupPass", "DecomposeGatesPass",
           "DropNoopReshapesPass", "EinsumAsMatMulPass", "FoldBatchNormPass", "FoldConstantsPass", "FoldGroupNormPass",
           "FuseClipPass", "FuseHardSigmoidPass", "FuseHardSwishPass", "FuseLayerNormPass", "FuseSoftmaxPass",
           "FuseSoftsignPass", "GatherNDAsGatherPass", "LerpAsResizePass", "NormalizeGemmPass", "InferShapesPass",
           "ReduceSumAsMeanPass"]


def canonicalize(model: ir.Model) -> list[str]:
    """Bring a model to the form the rules expect; returns what the passes skipped, and why.

    Order matters: constants must be folded before shapes are final, BatchNorm folded before biases are
    made explicit inputs, and shapes inferred again after every pass that creates values. The spelling
    passes (einsums with a constant as MatMuls, GatherNDs of rows as Gathers, lerps of such Gathers as
    linear Resizes (after the GatherND fold, whose Gathers they read), gates, softmaxes, clamps, hard
    sigmoid, hard swish, no-op reshapes, sums as means, group norms, written-out LayerNorms) read constants and
    shapes, so they run after folding; clamps are folded first, as the hard sigmoid and hard swish read one
    Clip; einsums and softmaxes before the sums, as an einsum may sum an axis and a written-out softmax reads
    one ReduceSum.
    """
    folds, bns, gemms = FoldConstantsPass(), FoldBatchNormPass(), NormalizeGemmPass()
    spellings = [EinsumAsMatMulPass(), GatherNDAsGatherPass(), LerpAsResizePass(), DecomposeGatesPass(),
                 FuseSoftmaxPass(), FuseSoftsignPass(), FuseClipPass(), FuseHardSigmoidPass(), FuseHardSwishPass(),
                 DropNoopReshapesPass(), ReduceSumAsMeanPass(), FoldGroupNormPass(), FuseLayerNormPass()]
    ir.passes.Sequential(
        common.NameFixPass(),
        common.InlinePass(),
        CleanupPass(),
        InferShapesPass(),
        folds,
        CleanupPass(),
        InferShapesPass(),
        *spellings,
        gemms,
        bns,
        BiasAsInputPass(),
        common.RemoveUnusedNodesPass(),
        common.TopologicalSortPass(),
        InferShapesPass(),
    )(model)
    return folds.skipped + sum((p.skipped for p in spellings), []) + bns.skipped + gemms.skipped
