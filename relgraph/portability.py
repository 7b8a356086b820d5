"""``relgraph check EXPLAINER INPUT --runtimes``: does the explainer give the same numbers everywhere?

Every installed runtime (:mod:`relgraph.runtimes`) runs the same explainer on the same input and target,
and is measured against onnxruntime's result: relevance, bias relevance and logits.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import onnx

from .explainer import Explainer
from .runtimes import EXTRAS, RUNTIMES, installed_runtimes

# onnx's reference evaluator runs op by op in numpy: fine for small models, minutes for a ResNet
REFERENCE_MAX_BYTES = 16 << 20


@dataclass
class RuntimeResult:
    """One runtime's run of an explainer, against onnxruntime's: per output, the relative L2 distance
    ‖a − b‖ / ‖b‖ and the largest absolute difference. ``skipped`` says why it did not run."""

    runtime: str
    device: str = ""
    seconds: float = 0.0
    relative: dict = field(default_factory=dict)
    absolute: dict = field(default_factory=dict)
    skipped: str | None = None


def compare_runtimes(path: str, x: np.ndarray, target=None, runtimes=None) -> list[RuntimeResult]:
    """Run the explainer at ``path`` on every installed runtime (or ``runtimes``) and measure each against
    onnxruntime's outputs: relevance, bias relevance and logits, the same result dict from each."""
    reference = Explainer(path, runtime="onnxruntime")
    x = reference.prepare(x)
    start = time.perf_counter()
    expected = reference.explain(x, target)
    rows = [RuntimeResult("onnxruntime", reference.device, time.perf_counter() - start)]
    size = os.path.getsize(path) + sum(os.path.getsize(os.path.join(os.path.dirname(path), f))
                                       for f in _external_files(path))
    for runtime in runtimes or [r for r in RUNTIMES if r != "onnxruntime"]:
        if runtime not in installed_runtimes():
            rows.append(RuntimeResult(runtime, skipped=f"not installed (pip install 'relgraph[{EXTRAS[runtime]}]')"))
            continue
        if runtime == "reference" and size > REFERENCE_MAX_BYTES:
            rows.append(RuntimeResult(runtime, skipped=f"model over {REFERENCE_MAX_BYTES >> 20} MB: numpy op by op "
                                                       f"would take minutes"))
            continue
        explainer = Explainer(path, runtime=runtime)
        start = time.perf_counter()
        got = explainer.explain(x, expected["target"])
        row = RuntimeResult(runtime, explainer.device, time.perf_counter() - start)
        for key in ("relevance", "bias_relevance", "logits"):
            a, b = np.asarray(got[key], np.float64), np.asarray(expected[key], np.float64)
            row.relative[key] = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), np.finfo(np.float64).tiny))
            row.absolute[key] = float(np.abs(a - b).max(initial=0.0))
        rows.append(row)
    return rows


def _external_files(path: str) -> set[str]:
    proto = onnx.load(path, load_external_data=False)
    return {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
