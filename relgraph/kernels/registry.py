"""Every kernel specialization, for ahead-of-time compilation and register/spill reports.

A :class:`Specialization` is everything ``triton.compile(ASTSource(fn, signature, constexprs))`` needs,
plus the launch shape (warps, stages). ``specializations(op, dtype, **flags)`` gives one per autotune
configuration; ``sweep()`` the standard set CI compiles for sm_80 and sm_90.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import RelgraphError

from .conv import CONV2D
from .epsilon_conv import EPSILON_CONV2D
from .epsilon_matmul import EPSILON_LINEAR
from .gemm import LINEAR
from .launch import KernelSpec, blocks, configs
from .lrp_parts import LRP_PARTS_CONV2D, LRP_PARTS_CONV2D_BACK, LRP_PARTS_LINEAR, LRP_PARTS_LINEAR_BACK
from .pointwise import EPSILON_SUM
from .pooling import MAXPOOL2D_BACK

SPECS: dict[str, KernelSpec] = {s.op: s for s in (
    LINEAR, EPSILON_LINEAR, CONV2D, EPSILON_CONV2D,
    LRP_PARTS_LINEAR, LRP_PARTS_LINEAR_BACK, LRP_PARTS_CONV2D, LRP_PARTS_CONV2D_BACK,
    MAXPOOL2D_BACK, EPSILON_SUM)}
SWEEP_DTYPES = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class Specialization:
    """One compilable instance of a kernel: argument types, constexpr values, launch shape."""

    family: str
    fn: object
    signature: dict
    constexprs: dict
    num_warps: int
    num_stages: int

    @property
    def name(self) -> str:
        """E.g. ``epsilon_linear-fp16-MODE=stab-WANT_S=1-DOT_PRECISION=ieee-GROUP_M=8-64x64x32-w4-s3``."""
        dtype = next((t[1:] for n, t in self.signature.items() if t != "constexpr"
                      and self._operand(n)), "fp32")
        sizes = blocks(configs(self.family)[0])
        tile = "x".join(str(self.constexprs[b]) for b in sizes)
        flags = "-".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in self.constexprs.items()
                         if k not in sizes)
        return "-".join(p for p in (self.family, dtype, flags, tile) if p) + f"-w{self.num_warps}-s{self.num_stages}"

    def _operand(self, name: str) -> bool:
        return SPECS[self.family].params.get(name) == "*op"


def has_operands(spec: KernelSpec) -> bool:
    """Whether the op takes matmul operands (x, W) in the pass's dtype; pointwise ops read fp32 only."""
    return "*op" in spec.params.values()


def _signature(spec: KernelSpec, dtype: str) -> dict:
    """Every argument of the kernel in order: its type, or "constexpr"."""
    types = {n: (f"*{dtype}" if t == "*op" else t) for n, t in spec.params.items()}
    return {n: types.get(n, "constexpr") for n in spec.fn.arg_names}


def specializations(op: str, dtype: str = "fp32", **flags) -> list[Specialization]:
    """One specialization per autotune configuration of ``op`` for ``dtype`` and ``flags`` (the op's
    constexpr switches, e.g. relu=True, mode="stab", has_bias=True, x_nonneg=True; unset ones default).
    An op without matmul operands (max pooling's route, the residual sum) is fp32 whatever ``dtype``."""
    if op not in SPECS:
        raise RelgraphError(f"unknown kernel op '{op}'; ops are {', '.join(SPECS)}")
    if dtype not in SWEEP_DTYPES:
        raise RelgraphError(f"dtype must be one of {', '.join(SWEEP_DTYPES)}, got {dtype!r}")
    spec = SPECS[op]
    values = spec.constexprs(**flags)
    return [Specialization(op, spec.fn, _signature(spec, dtype), {**values, **blocks(c)},
                           c["num_warps"], c["num_stages"]) for c in configs(op)]


def sweep() -> list[Specialization]:
    """The standard sweep: every op × dtype (fp32, fp16, bf16; fp32 alone for ops without matmul operands)
    × its standard flag combinations × config."""
    return [s for op, spec in SPECS.items() for dtype in (SWEEP_DTYPES if has_operands(spec) else ("fp32",))
            for flags in spec.standard for s in specializations(op, dtype, **flags)]
