"""``relgraph kernels``: compile Triton kernels ahead of time and report their resource usage.

Each kernel specialization (one @triton.jit function with its argument types, constexprs, ``num_warps`` and
``num_stages``) is compiled for each target with ``triton.compile(ASTSource(...), target=GPUTarget("cuda",
80|90, 32))``: no GPU is needed. Registers, stack frame and local memory come from the cubin itself, read
with the ``cuobjdump -res-usage`` that ships inside the triton wheel; shared memory is the compiled kernel's
metadata (Triton allocates it dynamically, so the cubin shows only the static part); spill stores and
loads come from the ``ptxas -v`` log of the same compile (the cubin has no spill count: spilled registers
are part of the stack frame). A kernel that spills is a performance bug of that kernel: the command names
it and exits with status 2.

Triton's jit returns an interpreter object when ``TRITON_INTERPRET=1``, so the compiling always happens in
worker processes started without it (also what spreads the work over the cores).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from .errors import TRITON_STACK, RelgraphError, require
from .progress import Progress

# Targets this triton wheel's ptxas compiles for (Ampere, Ada, Hopper), name → compute capability.
TARGETS = {"sm_80": 80, "sm_86": 86, "sm_89": 89, "sm_90": 90}

# The sources of specializations a worker can rebuild on its own (the @triton.jit functions they hold
# cannot be pickled): ("sweep",) the standard sweep, ("plan", DIR) a compiled explainer's kernels,
# ("python", "module:function" or "path/file.py:function") any function returning specializations.
Source = tuple


@dataclass(frozen=True)
class KernelUsage:
    """What one specialization costs on one target."""

    kernel: str
    family: str
    target: str
    num_warps: int
    num_stages: int
    registers: int  # per thread, cuobjdump
    ptxas_registers: int  # per thread, ptxas -v (a cross-check: it must equal ``registers``)
    spill_stores: int  # bytes per thread, ptxas -v
    spill_loads: int
    local_bytes: int  # per-thread local memory, cuobjdump
    stack_bytes: int  # per-thread stack frame, cuobjdump (spilled registers live here)
    shared_bytes: int  # dynamic (Triton's buffers) + static
    seconds: float  # compile time

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0


# ------------------------------------------------------------------------------------------- parent side


def parse_targets(text: str) -> list[str]:
    """``"sm_80,sm_90"`` → ["sm_80", "sm_90"]; anything unknown is the user's error."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in names if t not in TARGETS]
    if unknown or not names:
        raise RelgraphError(f"unknown target(s) {', '.join(unknown) or repr(text)}; known: {', '.join(TARGETS)}")
    return list(dict.fromkeys(names))


def plan_steps(explainer_dir) -> list[tuple[str, str, dict]]:
    """(op, dtype, flags) of every kernel specialization a compiled Triton explainer launches: its
    ``plan.json``'s ``specializations``, or else its steps of kind "kernel"."""
    path = Path(explainer_dir) / "plan.json"
    if not path.is_file():
        raise RelgraphError(f"not a compiled Triton explainer (no plan.json): {explainer_dir}")
    try:
        plan = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RelgraphError(f"cannot read {path}: {exc}") from None
    if not isinstance(plan, dict):
        raise RelgraphError(f"{path} is not a launch plan")
    entries = plan.get("specializations")
    if entries is None:
        entries = [s for s in plan.get("steps", []) if isinstance(s, dict) and s.get("kind") == "kernel"]
    found = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "op" not in entry or not isinstance(entry.get("flags", {}), dict):
            raise RelgraphError(f"{path}: kernel entry {i} needs an op and a flags object")
        found.append((entry["op"], entry.get("dtype") or plan.get("dtype") or "fp32", entry.get("flags", {})))
    unique = dict.fromkeys((op, dtype, json.dumps(flags, sort_keys=True)) for op, dtype, flags in found)
    return [(op, dtype, json.loads(flags)) for op, dtype, flags in unique]


def report(sources: list[Source], targets: list[str], *, jobs: int | None = None, progress=True) -> list[KernelUsage]:
    """Compile every specialization of ``sources`` for every target, in ``jobs`` worker processes."""
    jobs = max(1, jobs or os.cpu_count() or 1)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=_spawn(), initializer=_worker_init) as pool:
        listings = {s: pool.submit(_list, s) for s in sources}
        names: dict[str, tuple[Source, int]] = {}
        for source, future in listings.items():
            for index, name in enumerate(_result(future)):
                names.setdefault(name, (source, index))  # a plan repeats what the sweep holds: compile once
        tasks = [(source, index, t) for source, index in names.values() for t in targets]
        rows = []
        with Progress(len(tasks), "compiling kernels", min_total=1 if progress else 10**9) as bar:
            futures = [pool.submit(_compile, *task) for task in tasks]
            for future in as_completed(futures):
                rows.append(_result(future))
                bar.update()
    order = {t: i for i, t in enumerate(targets)}
    return sorted(rows, key=lambda r: (r.family, r.kernel, order[r.target]))


def _spawn():
    return multiprocessing.get_context("spawn")  # fresh interpreters: no inherited TRITON_INTERPRET state


def _result(future):
    """A worker's result; its RelgraphError keeps its message, anything else becomes one line naming it."""
    try:
        return future.result()
    except RelgraphError:
        raise
    except Exception as exc:  # a kernel that does not compile, a crashed worker
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise RelgraphError(f"ahead-of-time compile failed: {type(exc).__name__}: {first}") from None


def table(rows: list[KernelUsage]) -> str:
    width = max([len("kernel")] + [len(r.kernel) for r in rows])
    head = (f"{'kernel':{width}} {'target':6} {'warps':>5} {'stages':>6} {'regs':>4} {'spill st':>8} {'spill ld':>8} "
            f"{'stack':>5} {'local':>5} {'shared':>7} {'s':>5}")
    lines = [head, "-" * len(head)]
    for r in rows:
        flag = "  SPILLS" if r.spills else ""
        lines.append(f"{r.kernel:{width}} {r.target:6} {r.num_warps:5d} {r.num_stages:6d} {r.registers:4d} "
                     f"{r.spill_stores:8d} {r.spill_loads:8d} {r.stack_bytes:5d} {r.local_bytes:5d} "
                     f"{r.shared_bytes:7d} {r.seconds:5.1f}{flag}")
    return "\n".join(lines)


def summary(rows: list[KernelUsage]) -> str:
    kernels = len({r.kernel for r in rows})
    regs = [r.registers for r in rows]
    return (f"{kernels} kernel(s) × {len({r.target for r in rows})} target(s) = {len(rows)} compiled; registers "
            f"{min(regs)}–{max(regs)}, shared memory up to {max(r.shared_bytes for r in rows)} B, "
            f"{sum(r.spills for r in rows)} spilling")


def check_spills(rows: list[KernelUsage]) -> None:
    spilling = sorted({f"{r.kernel} ({r.target}: {r.spill_stores} B stored, {r.spill_loads} B loaded)"
                       for r in rows if r.spills})
    if spilling:
        raise RelgraphError(f"{len(spilling)} kernel specialization(s) spill registers: {'; '.join(spilling)}")


def add_command(sub) -> None:
    k = sub.add_parser("kernels", help="compile the Triton kernels ahead of time; registers, spills, shared memory")
    k.add_argument("explainer", nargs="?", help="a compiled Triton explainer folder (plan.json): its kernels too")
    k.add_argument("--aot", metavar="TARGETS", default="sm_80,sm_90",
                   help=f"comma-separated targets (default sm_80,sm_90; known: {', '.join(TARGETS)})")
    k.add_argument("--json", metavar="OUT", help="also write the table as JSON")
    k.add_argument("--force", action="store_true", help="overwrite the --json output if it exists")
    k.add_argument("--jobs", type=int, default=None, help="worker processes (default: one per core)")
    k.add_argument("--no-sweep", action="store_true", help="leave out the standard sweep")
    k.add_argument("--specs", metavar="MODULE:FUNCTION", action="append", default=[],
                   help="also compile the specializations this function returns (repeatable)")
    k.set_defaults(run=cmd_kernels)


def sources_for(explainer=None, *, sweep=True, specs=()) -> list[Source]:
    sources: list[Source] = [("sweep",)] if sweep else []
    if explainer:
        plan_steps(explainer)  # the user's input: check it here, in one line
        sources.append(("plan", str(Path(explainer).resolve())))
    for spec in specs:
        if ":" not in spec:
            raise RelgraphError(f"--specs wants MODULE:FUNCTION or FILE.py:FUNCTION, got '{spec}'")
        module = spec.rpartition(":")[0]
        if module.endswith(".py"):
            if not os.path.isfile(module):
                raise RelgraphError(f"--specs: file not found: {module}")
            spec = f"{os.path.abspath(module)}:{spec.rpartition(':')[2]}"
        sources.append(("python", spec))
    if not sources:
        raise RelgraphError("nothing to compile: --no-sweep without an explainer or --specs")
    return sources


def cmd_kernels(args):
    targets = parse_targets(args.aot)
    require(TRITON_STACK, "relgraph kernels")
    if args.json and os.path.exists(args.json) and not args.force:
        raise RelgraphError(f"output exists: {args.json} (pass --force to overwrite)")
    if args.jobs is not None and args.jobs < 1:
        raise RelgraphError("--jobs must be at least 1")
    sources = sources_for(args.explainer, sweep=not args.no_sweep, specs=args.specs)
    start = time.perf_counter()
    rows = report(sources, targets, jobs=args.jobs)
    if not rows:
        raise RelgraphError("no kernel specializations to compile (the explainer's plan launches no kernels)")
    print(table(rows))
    print(f"{summary(rows)}; {time.perf_counter() - start:.1f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps([dataclasses.asdict(r) | {"spills": r.spills} for r in rows], indent=1))
        print(f"wrote {args.json}")
    check_spills(rows)


# ------------------------------------------------------------------------------------------- worker side

_SPECS: dict = {}


def _worker_init() -> None:
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"  # ptxas -v, the spill figures, printed on each fresh compile
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:  # the modules --specs names (tests/, bench/) live beside relgraph/
        sys.path.insert(0, root)


def _specializations(source: Source) -> list:
    if source not in _SPECS:
        _SPECS[source] = _load(source)
    return _SPECS[source]


def _load(source: Source) -> list:
    if source[0] == "sweep":
        from . import kernels

        return list(kernels.sweep())
    if source[0] == "plan":
        from . import kernels

        found = []
        for op, dtype, flags in plan_steps(source[1]):
            try:
                found += kernels.specializations(op, dtype, **flags)
            except RelgraphError as exc:
                raise RelgraphError(f"{source[1]}/plan.json: {exc}") from None
            except (KeyError, TypeError, ValueError) as exc:
                raise RelgraphError(f"{source[1]}/plan.json: no kernel for {op} {dtype} {flags}: {exc}") from None
        return found
    module, _, function = source[1].rpartition(":")
    try:
        if module.endswith(".py"):  # a file: load it under its own name, whatever package it sits in
            spec = importlib.util.spec_from_file_location(Path(module).stem, module)
            loaded = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = loaded  # dataclasses and pickling look a class's module up there
            spec.loader.exec_module(loaded)
        else:
            loaded = importlib.import_module(module)
        return list(getattr(loaded, function)())
    except (ImportError, AttributeError, FileNotFoundError) as exc:
        raise RelgraphError(f"cannot load specializations from {source[1]}: {exc}") from None


def _list(source: Source) -> list[str]:
    return [s.name for s in _specializations(source)]


def _compile(source: Source, index: int, target: str) -> KernelUsage:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    spec = _specializations(source)[index]
    # A launch with torch tensors tells the compiler its pointers are 16-byte aligned (torch allocates them
    # so); say the same here, or the compiled code (vector widths, registers) would differ from what runs.
    attrs = {(spec.fn.arg_names.index(a),): [["tt.divisibility", 16]]
             for a, t in spec.signature.items() if t.startswith("*")}
    log = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(log):  # TRITON_DUMP_PTXAS_LOG prints ptxas -v here on a fresh compile
        compiled = triton.compile(ASTSource(spec.fn, dict(spec.signature), dict(spec.constexprs), attrs),
                                  target=GPUTarget("cuda", TARGETS[target], 32),
                                  options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})
    seconds = time.perf_counter() - start
    name = compiled.metadata.name
    usage = cubin_usage(compiled.asm["cubin"], name)
    stores, loads, registers = parse_ptxas(_ptxas_log(compiled, log.getvalue(), TARGETS[target]), name)
    return KernelUsage(kernel=spec.name, family=spec.family, target=target, num_warps=spec.num_warps,
                       num_stages=spec.num_stages, registers=usage["REG"], ptxas_registers=registers,
                       spill_stores=stores, spill_loads=loads,
                       local_bytes=usage["LOCAL"], stack_bytes=usage["STACK"],
                       shared_bytes=compiled.metadata.shared + usage["SHARED"], seconds=seconds)


def _ptxas_log(compiled, captured: str, capability: int) -> str:
    """triton's own ``ptxas -v`` log of this kernel. A fresh compile prints it (captured here) and it is kept
    beside the cubin in triton's cache; a cache hit reads it back; a kernel cached without it gets ptxas
    run once more, with triton's flags."""
    from triton.runtime.cache import get_cache_manager

    cache = get_cache_manager(compiled.hash)
    filename = f"{compiled.metadata.name}.ptxas.log"
    if "Function properties for" in captured:
        cache.put(captured, filename, binary=False)
        return captured
    if (path := cache.get_file(filename)) is not None:
        return Path(path).read_text()
    log = rerun_ptxas(compiled.asm["ptx"], capability)
    cache.put(log, filename, binary=False)
    return log


def rerun_ptxas(ptx: str, capability: int) -> str:
    from triton.backends.nvidia.compiler import sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        done = subprocess.run([_nvidia_tool("ptxas"), "-lineinfo", "-v", "--regAllocOptLevel=2",
                               f"--gpu-name={sm_arch_from_capability(capability)}", str(src), "-o",
                               str(Path(tmp) / "kernel.cubin")], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ptxas failed: {done.stderr.strip()[:300]}")
    return done.stderr


def _nvidia_tool(name: str) -> str:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if not path.is_file():
        raise RelgraphError(f"{name} not found in the triton wheel ({path})")
    return str(path)


def cubin_usage(cubin: bytes, function: str) -> dict[str, int]:
    """REG, STACK, SHARED (static), LOCAL, … of ``function`` in a cubin, from ``cuobjdump -res-usage``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        text = subprocess.run([_nvidia_tool("cuobjdump"), "-res-usage", str(path)], check=True,
                              capture_output=True, text=True).stdout
    return parse_res_usage(text)[function]


def parse_res_usage(text: str) -> dict[str, dict[str, int]]:
    """``Function NAME:`` followed by ``REG:28 STACK:0 SHARED:0 LOCAL:0 …`` → {NAME: {"REG": 28, …}}."""
    usage, function = {}, None
    for line in text.splitlines():
        if m := re.match(r"\s*Function (\S+):\s*$", line):
            function = m.group(1)
        elif function and "REG:" in line:
            usage[function] = {k: int(v) for k, v in re.findall(r"(\w+)(?:\[\d+\])?:(\d+)", line)}
            function = None
    return usage


def parse_ptxas(log: str, function: str) -> tuple[int, int, int]:
    """(spill store bytes, spill load bytes, registers) of ``function`` from a ``ptxas -v`` log."""
    props = re.search(rf"Function properties for {re.escape(function)}\s*\n\s*(.*)\n.*?Used (\d+) registers", log)
    if props is None:
        raise RuntimeError(f"ptxas -v reported nothing for {function}")
    stores = re.search(r"(\d+) bytes spill stores", props.group(1))
    loads = re.search(r"(\d+) bytes spill loads", props.group(1))
    return int(stores.group(1)), int(loads.group(1)), int(props.group(2))
