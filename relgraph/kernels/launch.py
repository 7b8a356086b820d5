"""Launching: autotune configurations as data, the interpreter bypass, argument checks.

Every op describes its kernel once, as a :class:`KernelSpec` (argument types, constexpr switches, the
flag combinations worth compiling ahead of time). The host wrappers launch through :func:`launch`, and
:mod:`relgraph.kernels.registry` derives the ahead-of-time specializations from the same description, so what
runs and what is compiled ahead of time cannot drift apart.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import triton

from ..errors import RelgraphError
from ..interpreter import interpreting

CONFIGS_FILE = Path(__file__).with_name("configs.json")
LAUNCH_KEYS = ("num_warps", "num_stages")  # the rest of a configuration is block sizes
DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@functools.cache
def _all_configs() -> dict:
    return json.loads(CONFIGS_FILE.read_text())


def configs(family: str) -> list[dict]:
    """The autotune configurations of ``family`` (an op name), from ``relgraph/kernels/configs.json``."""
    table = _all_configs()
    if family not in table or family.startswith("_"):
        raise KeyError(f"no kernel family '{family}' in {CONFIGS_FILE.name}")
    return [dict(c) for c in table[family]]


def blocks(config: dict) -> dict:
    """The block-size constexprs of one configuration (every key but the launch shape)."""
    return {k: v for k, v in config.items() if k not in LAUNCH_KEYS}


@dataclass(frozen=True, eq=False)  # hashed by identity: one autotuner per op
class KernelSpec:
    """One op's kernel and how to specialize it.

    ``params``: the runtime arguments in order, name → type; ``"*op"`` marks the matmul operands, whose
    element type is the op's dtype (every other tensor is fp32). ``flags``: the op's constexpr switches,
    flag → (constexpr name, allowed values, default). ``fixed``: constexprs that never vary.
    ``standard``: the flag combinations a compiled explainer uses, compiled by the standard sweep.
    ``key``: the size arguments autotuning is keyed on.
    """

    op: str
    fn: object
    params: dict
    flags: dict
    key: tuple
    standard: tuple
    fixed: dict = field(default_factory=dict)

    def constexprs(self, **flags) -> dict:
        """The kernel's constexprs for ``flags`` (unset flags take their defaults), blocks excluded."""
        unknown = set(flags) - set(self.flags)
        if unknown:
            raise RelgraphError(f"{self.op}: unknown flag(s) {sorted(unknown)}; flags are {sorted(self.flags)}")
        values = dict(self.fixed)
        for flag, (name, allowed, default) in self.flags.items():
            value = flags.get(flag, default)
            if value not in allowed:
                raise RelgraphError(f"{self.op}: {flag} must be one of {list(allowed)}, got {value!r}")
            values[name] = value
        return values


@functools.cache
def _autotuned(spec: KernelSpec):
    tuned = [triton.Config(blocks(c), num_warps=c["num_warps"], num_stages=c["num_stages"])
             for c in configs(spec.op)]
    return triton.autotune(configs=tuned, key=list(spec.key))(spec.fn)


def launch(spec: KernelSpec, grid, args: tuple, **flags) -> None:
    """Launch ``spec``'s kernel on ``grid`` (a function of the block sizes).

    On a GPU it goes through ``triton.autotune`` over the family's configurations. The interpreter
    cannot autotune (``triton.autotune`` benchmarks with CUDA events), so there the first configuration
    is launched directly.
    """
    constexprs = spec.constexprs(**flags)
    if interpreting():
        first = configs(spec.op)[0]
        spec.fn[grid](*args, **constexprs, **blocks(first),
                      num_warps=first["num_warps"], num_stages=first["num_stages"])
    else:
        _autotuned(spec)[grid](*args, **constexprs)


# ------------------------------------------------------------------------------------------- host checks


def operand_dtype(op: str, *operands: torch.Tensor) -> torch.dtype:
    """The common dtype of the matmul operands (fp32, fp16 or bf16)."""
    dtypes = {t.dtype for t in operands}
    if len(dtypes) != 1 or next(iter(dtypes)) not in DTYPES:
        raise RelgraphError(f"{op}: operands must share one dtype of fp32, fp16, bf16; got "
                            f"{', '.join(str(t.dtype) for t in operands)}")
    return dtypes.pop()


def check(op: str, name: str, t: torch.Tensor, shape: tuple, dtype=torch.float32, device=None) -> None:
    """Reject a tensor of the wrong shape, dtype, layout or device, naming it."""
    if not isinstance(t, torch.Tensor):
        raise RelgraphError(f"{op}: {name} must be a torch tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise RelgraphError(f"{op}: {name} has shape {list(t.shape)}, expected {list(shape)}")
    if t.dtype != dtype:
        raise RelgraphError(f"{op}: {name} has dtype {t.dtype}, expected {dtype}")
    if not t.is_contiguous():
        raise RelgraphError(f"{op}: {name} must be contiguous")
    if device is not None and t.device != device:
        raise RelgraphError(f"{op}: {name} is on {t.device}, expected {device}")


def outputs(op: str, out, names: tuple[str, ...], shapes: tuple[tuple, ...], device) -> tuple:
    """The op's fp32 output tensors: ``out`` checked (one tensor, or a tuple for several), or new ones."""
    if out is None:
        return tuple(torch.empty(s, dtype=torch.float32, device=device) for s in shapes)
    given = (out,) if isinstance(out, torch.Tensor) else tuple(out)
    if len(given) != len(names):
        raise RelgraphError(f"{op}: out must hold {len(names)} tensor(s) ({', '.join(names)}), got {len(given)}")
    for name, t, s in zip(names, given, shapes):
        check(op, f"out ({name})", t, s, device=device)
    return given


def dummy(device) -> torch.Tensor:
    """A stand-in pointer for an absent optional tensor (its constexpr switch keeps it unread)."""
    return torch.empty(1, dtype=torch.float32, device=device)
