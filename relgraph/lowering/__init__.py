"""The triton target: a compiled ONNX explainer lowered to Triton kernel launches and torch ops.

    relgraph compile MODEL --rule R --target triton -o DIR   →   DIR/explainer.onnx + DIR/plan.json

``explainer.onnx`` is the ONNX explainer itself (the weights, and the reference the plan reproduces);
``plan.json`` is the launch plan (:mod:`relgraph.lowering.plan`), run by :mod:`relgraph.lowering.executor`.
Importing this package is cheap: torch and triton are imported when a plan is checked or run.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import onnx

from ..compiler import compile
from ..errors import TRITON_STACK, RelgraphError, require
from ..explainer import read_explainer
from ..export import save
from ..files import check_output
from .plan import Plan, Step, lower

EXPLAINER_FILE, PLAN_FILE = "explainer.onnx", "plan.json"
TARGETS = ("onnx", "triton")

__all__ = ["Plan", "Step", "lower", "compile_triton", "load", "is_plan_dir", "TARGETS"]


def is_plan_dir(path) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, PLAN_FILE))


def check_target(target: str) -> None:
    if target not in TARGETS:
        raise RelgraphError(f"unknown target '{target}' (choose one of: {', '.join(TARGETS)})")


def default_output_dir(model_path, label: str) -> str:
    p = Path(model_path)
    return str(p.with_name(f"{p.stem}.{label}.triton"))


@dataclass
class TritonCompileResult:
    path: str | None        # the output folder
    proto: onnx.ModelProto  # the ONNX explainer
    relevance: object       # the relevance pass's decisions (node → rule), as relgraph.compile returns them
    launch_plan: Plan
    skipped: list
    seconds: float


def compile_triton(model_path, output=None, *, overwrite: bool = False, dtype: str = "fp32", write: bool = True,
                   **options) -> TritonCompileResult:
    """Compile ``model_path`` for the triton target: the ONNX explainer (``relgraph.compile`` with
    ``options``), then its launch plan; both are written to the folder ``output`` (default
    ``MODEL.<rule>.triton`` beside the model), which must not exist unless ``overwrite``."""
    require(TRITON_STACK, "the triton target")
    start = time.perf_counter()
    if write:
        label = Path(options["rule_map"]).stem if options.get("rule_map") else options.get("rule", "epsilon")
        if options.get("formulation") == "q":
            label += "-q"
        output = str(output or default_output_dir(model_path, label))
        inputs = [model_path, *(options.get(k) for k in ("rule_map", "baseline", "patterns")
                                if isinstance(options.get(k), (str, os.PathLike)))]
        for name in (EXPLAINER_FILE, PLAN_FILE):  # the folder's files, never one of the inputs
            check_output(os.path.join(output, name), inputs, overwrite=True)
        if os.path.exists(output) and not overwrite:
            raise RelgraphError(f"output exists: {output} (pass --force to overwrite)")
        if os.path.exists(output) and not os.path.isdir(output):
            raise RelgraphError(f"output {output} is a file; the triton target writes a folder, choose another -o")
    result = compile(model_path, write=False, target="triton", **options)
    plan = lower(result.proto, dtype=dtype)
    if write:
        os.makedirs(output, exist_ok=True)
        save(result.proto, os.path.join(output, EXPLAINER_FILE), overwrite=True)
        plan.save(os.path.join(output, PLAN_FILE))
    return TritonCompileResult(output if write else None, result.proto, result.relevance, plan, result.skipped,
                               time.perf_counter() - start)


def load(path) -> tuple[Plan, onnx.ModelProto, str]:
    """(launch plan, ONNX explainer, its file) of a triton folder, or of an ONNX explainer file, which is
    lowered on the spot."""
    path = str(path)
    if os.path.isdir(path):
        if not is_plan_dir(path):
            raise RelgraphError(f"{path} is not a triton explainer folder (no {PLAN_FILE}); "
                                f"compile one with: relgraph compile MODEL --target triton -o {path}")
        onnx_path = os.path.join(path, EXPLAINER_FILE)
        plan = Plan.load(os.path.join(path, PLAN_FILE))
        return plan, read_explainer(onnx_path), onnx_path
    proto = read_explainer(path)
    return lower(proto), proto, path
