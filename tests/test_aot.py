"""``relgraph kernels``: ahead-of-time compiles for sm_80 and sm_90, registers and spills from the cubins.

The compiling happens in worker processes without TRITON_INTERPRET (set for the tests by conftest), so
the kernels defined here are plain @triton.jit functions there. Figures are checked against ptxas's own
``-v`` report of the same PTX, an account independent of the cubin that cuobjdump reads.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import triton
import triton.language as tl

from relgraph import aot
from relgraph.cli import main

HERE = Path(__file__).resolve()


@dataclass(frozen=True)
class Spec:
    """The fields the AOT report reads from ``relgraph.kernels.Specialization``."""

    family: str
    fn: object
    signature: dict
    constexprs: dict
    num_warps: int
    num_stages: int

    @property
    def name(self) -> str:
        return f"{self.family}-" + "-".join(f"{k}={v}" for k, v in self.constexprs.items()) + \
            f"-w{self.num_warps}-s{self.num_stages}"


@triton.jit
def _scale(x, y, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y + i, tl.load(x + i, mask=i < n) * 2.0, mask=i < n)


@triton.jit
def _hog(x, y, BLOCK: tl.constexpr):
    """One warp holds BLOCK values per row through a reduction and two elementwise uses: with BLOCK = 4096
    that is 128 live fp32 values per thread, twice over, more than the 255 registers a thread has."""
    i = tl.arange(0, BLOCK)
    v = tl.load(x + i)
    e = tl.exp(v)
    tl.store(y + i, e / tl.sum(e, 0) + v * tl.max(v * e, 0))


def small_specs():
    return [Spec("scale", _scale, {"x": "*fp32", "y": "*fp32", "n": "i32", "BLOCK": "constexpr"}, {"BLOCK": 1024},
                 4, 2)]


def spilling_specs():
    return [Spec("hog", _hog, {"x": "*fp32", "y": "*fp32", "BLOCK": "constexpr"}, {"BLOCK": 4096}, 1, 1)]


def run_cli(capsys, *argv):
    code = main(["kernels", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_small_kernel_figures_and_json(tmp_path, capsys):
    out_json = tmp_path / "usage.json"
    code, out, err = run_cli(capsys, "--aot", "sm_80,sm_90", "--no-sweep", "--specs", f"{HERE}:small_specs",
                             "--json", str(out_json), "--jobs", "2")
    assert code == 0, err
    rows = json.loads(out_json.read_text())
    assert [r["target"] for r in rows] == ["sm_80", "sm_90"]
    for r in rows:
        assert r["kernel"] == "scale-BLOCK=1024-w4-s2" and r["num_warps"] == 4 and r["num_stages"] == 2
        assert 0 < r["registers"] <= 255 and r["spill_stores"] == 0 and not r["spills"]
        assert r["shared_bytes"] == 0  # an elementwise kernel stages nothing in shared memory
    assert "scale-BLOCK=1024-w4-s2" in out and "0 spilling" in out
    code, _, err = run_cli(capsys, "--aot", "sm_80", "--no-sweep", "--specs", f"{HERE}:small_specs",
                           "--json", str(out_json))
    assert code == 2 and "exists" in err and len(err.strip().splitlines()) == 1


def test_spilling_kernel_is_named_and_fails(capsys):
    code, out, err = run_cli(capsys, "--aot", "sm_80,sm_90", "--no-sweep", "--specs", f"{HERE}:spilling_specs")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "hog-BLOCK=4096-w1-s1" in err and "spill" in err
    rows = [line for line in out.splitlines() if line.startswith("hog-")]
    assert len(rows) == 2 and all(line.endswith("SPILLS") for line in rows)
    for target in ("sm_80", "sm_90"):
        stores = re.search(rf"hog-BLOCK=4096-w1-s1 \({target}: (\d+) B stored", err)
        assert stores and int(stores.group(1)) > 0


@pytest.mark.parametrize("targets", ["sm_70", "sm_80,sm_99", "", "cuda"])
def test_unknown_target_is_one_line(capsys, targets):
    code, out, err = run_cli(capsys, "--aot", targets, "--no-sweep", "--specs", f"{HERE}:small_specs")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "unknown target" in err


def test_not_an_explainer_folder_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, str(tmp_path), "--no-sweep")
    assert code == 2 and "plan.json" in err and len(err.strip().splitlines()) == 1


def test_cubin_figures_agree_with_ptxas():
    """cuobjdump's reading of the cubin and ptxas's -v account of the same compile agree on registers;
    the spills ptxas counts sit in the stack frame the cubin declares."""
    rows = aot.report(aot.sources_for(sweep=False, specs=[f"{HERE}:spilling_specs", f"{HERE}:small_specs"]),
                      ["sm_80"], jobs=1, progress=False)
    assert len(rows) == 2
    for row in rows:
        assert row.registers == row.ptxas_registers
    hog = next(r for r in rows if r.family == "hog")
    assert hog.registers == 255 and hog.spill_stores > 0 and hog.spill_loads > 0
    assert hog.stack_bytes >= hog.spill_stores


def test_standard_sweep_has_no_spills():
    """Every specialization of relgraph.kernels.sweep(), for sm_80 and sm_90: compiled, sane, no spills."""
    rows = aot.report(aot.sources_for(), ["sm_80", "sm_90"], progress=False)
    names = {r.kernel for r in rows}
    assert len(rows) == 2 * len(names) and len(names) >= 8
    assert {r.family for r in rows} >= {"linear", "epsilon_linear", "conv2d", "epsilon_conv2d", "lrp_parts_linear",
                                        "lrp_parts_linear_back", "lrp_parts_conv2d", "lrp_parts_conv2d_back"}
    spilling = [f"{r.kernel} {r.target}" for r in rows if r.spills]
    assert not spilling, spilling
    for r in rows:
        assert 0 < r.registers <= 255 and r.registers == r.ptxas_registers, r
        assert 0 <= r.shared_bytes <= (163 if r.target == "sm_80" else 227) * 1024, r  # per-block maxima


def test_compiled_explainers_kernels_have_no_spills(tmp_path):
    """The specializations a model's launch plans ask for (flag combinations outside the standard sweep
    among them: ReLU epilogues without z, γ and αβ on rectified inputs) compile for sm_80 and sm_90 without
    spills."""
    from relgraph.lowering import compile_triton

    model = HERE.parents[1] / "models" / "digits" / "digits_cnn.onnx"
    sources = []
    for rule in ("epsilon", "epsilon-plus-flat", "gamma", "alpha-beta"):
        out = compile_triton(str(model), str(tmp_path / rule), rule=rule).path
        sources += aot.sources_for(out, sweep=False)
    rows = aot.report(sources, ["sm_80", "sm_90"], progress=False)
    families = {r.family for r in rows}
    assert {"conv2d", "linear", "epsilon_conv2d", "lrp_parts_conv2d", "lrp_parts_conv2d_back"} <= families
    spilling = [f"{r.kernel} {r.target}" for r in rows if r.spills]
    assert not spilling, spilling
    assert all(0 < r.registers <= 255 and r.registers == r.ptxas_registers for r in rows)
