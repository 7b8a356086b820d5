"""The ``relgraph bench`` command: on a GPU the profiles of :mod:`.gpu`; without one the interpreter sweep, the
ahead-of-time report and the CPU timing."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .. import aot
from ..errors import TRITON_STACK, RelgraphError, require
from .gpu import gpu_bench
from .sweep import sweep_in_interpreter
from .timing import TORCHVISION, cpu_explainer_vs_forward, export_torchvision

BUNDLED = Path(__file__).resolve().parents[2] / "models" / "digits" / "digits_cnn.onnx"


def add_command(sub) -> None:
    b = sub.add_parser("bench", help="time the explainer (GPU), or check the kernels and time the CPU explainer")
    b.add_argument("--model", default=None,
                   help=f"an ONNX model, or one of {', '.join(TORCHVISION)} (torchvision, random weights; compared "
                        "with zennit on a GPU); default: the bundled digits CNN")
    b.add_argument("--rule", default="epsilon")
    b.add_argument("--batch", type=int, default=8)
    b.add_argument("--repeats", type=int, default=20)
    b.add_argument("--sweep", choices=("small", "full", "none"), default="full",
                   help="interpreter correctness sweep without a GPU: small (fp32), full (fp32, fp16, bf16, two "
                        "convolution geometries) or none")
    b.add_argument("--aot", metavar="TARGETS", default="sm_80,sm_90",
                   help="targets of the ahead-of-time kernel report without a GPU, or 'none'")
    b.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    b.add_argument("--force", action="store_true", help="overwrite the --json output if it exists")
    b.set_defaults(run=cmd_bench)


def _resolve_model(name: str | None, tmp: str) -> tuple[str, str | None]:
    """(ONNX path, torchvision name or None)."""
    if name is None:
        return str(BUNDLED), None
    if name in TORCHVISION:
        require(("torchvision",), f"--model {name}", extra="test")
        path = os.path.join(tmp, f"{name}.onnx")
        export_torchvision(name, path)
        return path, name
    if not os.path.isfile(name):
        raise RelgraphError(f"model not found: {name} (an .onnx file or one of {', '.join(TORCHVISION)})")
    return name, None


def cmd_bench(args):
    require(TRITON_STACK, "relgraph bench")
    if args.batch < 1 or args.repeats < 1:
        raise RelgraphError("--batch and --repeats must be at least 1")
    if args.json and os.path.exists(args.json) and not args.force:
        raise RelgraphError(f"output exists: {args.json} (pass --force to overwrite)")
    targets = [] if args.aot == "none" else None
    if targets is None:
        targets = aot.parse_targets(args.aot)
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        model, model_name = _resolve_model(args.model, tmp)
        if torch.cuda.is_available():
            result = gpu_bench(args, model, model_name)
            failed = False
        else:
            result, failed = cpu_bench(args, model, targets)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
        print(f"wrote {args.json}")
    if failed:
        raise RelgraphError("the interpreter sweep failed: see the FAIL lines above")


def cpu_bench(args, model: str, targets: list[str]) -> tuple[dict, bool]:
    print("no GPU: running the interpreter correctness sweep, the ahead-of-time kernel report and the "
          "onnxruntime CPU explainer instead", flush=True)
    result: dict = {"gpu": False}
    passed = True
    if args.sweep != "none":
        print(f"\ninterpreter sweep ({args.sweep}): every kernel op against float64 references", flush=True)
        passed = sweep_in_interpreter(args.sweep)
        result["sweep"] = {"size": args.sweep, "passed": passed}
    if targets:
        print(f"\nahead-of-time kernel report ({', '.join(targets)})", flush=True)
        rows = aot.report(aot.sources_for(), targets)
        print(aot.table(rows))
        print(aot.summary(rows))
        result["aot"] = [dict(r.__dict__, spills=r.spills) for r in rows]
    timing = cpu_explainer_vs_forward(model, args.rule, args.batch, args.repeats)
    print(f"\nonnxruntime CPU, {Path(model).name}, rule {args.rule}, batch {args.batch}: explainer "
          f"{timing['explainer_s'] * 1e3:.2f} ms, forward {timing['forward_s'] * 1e3:.2f} ms, "
          f"ratio {timing['ratio']:.2f}× (medians of {args.repeats})")
    result["cpu"] = timing
    return result, not passed
