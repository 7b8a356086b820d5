"""The triton target on the command line: ``compile --target triton`` and ``inspect --target triton``."""

from __future__ import annotations

import os
from collections import Counter

from ..explainer import is_explainer, read_onnx
from . import check_target, compile_triton, is_plan_dir, load


def cmd_compile_triton(args, options: dict) -> None:
    """``compile --target triton``; ``options`` are the compiler's, as for the ONNX target."""
    check_target(args.target)
    result = compile_triton(args.model, args.output, overwrite=args.force, dtype=args.dtype,
                            **options)
    rules = Counter(result.relevance.rules().values())
    summary = ", ".join(f"{n}×{r}" for r, n in sorted(rules.items()))
    print(f"wrote {result.path}/ (explainer.onnx, plan.json; {len(result.relevance.nodes)} nodes explained: "
          f"{summary}; {result.seconds:.2f} s)")
    print(plan_summary(result.launch_plan))


def plan_summary(plan) -> str:
    kernels = Counter(s.op for s in plan.kernel_steps())
    torch_ops = len(plan.steps) - sum(kernels.values())
    launched = ", ".join(f"{op}×{n}" for op, n in sorted(kernels.items())) or "none"
    return (f"launch plan: {len(plan.steps)} steps, {sum(kernels.values())} kernel launches ({launched}), "
            f"{torch_ops} torch ops, {len(plan.prelude)} prelude steps on weights, "
            f"{len(plan.specializations())} kernel specializations")


def cmd_inspect_triton(args) -> None:
    """Each step of the launch plan of a triton folder, an ONNX explainer, or a model (compiled with
    ``--rule`` / ``--rule-map`` on the spot)."""
    check_target(args.target)
    compiled = os.path.isfile(args.model) and is_explainer(read_onnx(args.model, weights=False))
    if is_plan_dir(args.model) or compiled:
        plan = load(args.model)[0]
    else:
        plan = compile_triton(args.model, write=False, rule=args.rule, rule_map=args.rule_map).launch_plan
    print(f"{'#':>4}  {'step':58} replaces [why not a kernel]")
    for k, step in enumerate(plan.prelude):
        print(f"{'p' + str(k):>4}  {step.describe():58} {', '.join(step.nodes)} (once, on weights)")
    for k, step in enumerate(plan.steps):
        why = f"  [{step.why}]" if step.why else ""
        print(f"{k:>4}  {step.describe():58} {', '.join(step.nodes)}{why}")
    print(plan_summary(plan))
    for spec in plan.specializations():
        flags = ", ".join(f"{k}={v}" for k, v in spec["flags"].items())
        print(f"  specialization {spec['op']}[{spec['dtype']}]({flags})")
