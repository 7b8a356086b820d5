"""Triton kernels for relevance propagation: fused forward layers, the fused ε step, γ/αβ in one pass, max
pooling's route without indices and the residual sum's ε split.

All ops take and return contiguous torch tensors (CUDA on a GPU, CPU under ``TRITON_INTERPRET=1``),
accumulate in fp32, accept fp16/bf16 matmul operands (x, W), and return fp32. Every op takes ``out=``
(preallocated outputs). ``relgraph.kernels.reference`` holds float64 numpy references of every op.
"""

from .conv import conv2d
from .epsilon_conv import epsilon_conv2d
from .epsilon_matmul import epsilon_linear
from .gemm import linear
from .launch import configs, interpreting
from .lrp_parts import lrp_parts_conv2d, lrp_parts_conv2d_back, lrp_parts_linear, lrp_parts_linear_back
from .pointwise import epsilon_sum
from .pooling import maxpool2d_back
from .registry import Specialization, specializations, sweep

__all__ = ["linear", "epsilon_linear", "conv2d", "epsilon_conv2d", "lrp_parts_linear", "lrp_parts_linear_back",
           "lrp_parts_conv2d", "lrp_parts_conv2d_back", "maxpool2d_back", "epsilon_sum", "Specialization",
           "specializations", "sweep", "configs", "interpreting"]
