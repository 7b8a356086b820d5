"""The package's layout: what a wheel installs, and imports without cycles.

- The wheel built from this checkout holds the Triton kernels as ``relgraph/kernels/`` (sources and
  ``configs.json``, the autotune configurations they read) and no top-level package but ``relgraph``; nor
  does the checkout's root hold another package (tests run from it, with it on ``sys.path``). A top-level
  ``kernels`` would clash with the PyPI package of that name, which transformers probes for and imports.
- Module-level imports between relgraph's modules form no cycle: the graph of ``import`` / ``from … import``
  statements at module level (read with ``ast``, not by importing) has no strongly connected component of
  more than one module. A package that imports its own submodules is no cycle; a submodule that imports
  a name its package defines is an edge to the package.
"""

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> dict[str, tuple[Path, bool]]:
    """Module name → (file, is a package's __init__), for every module under relgraph/ (kernels included)."""
    found = {}
    files = [Path(folder, f) for folder, _, names in os.walk(ROOT / "relgraph") for f in names]
    for path in sorted(p for p in files if p.suffix == ".py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def import_graph(modules: dict[str, tuple[Path, bool]]) -> dict[str, set[str]]:
    """Module → the relgraph modules its module-level statements import."""
    edges = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        out = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                out.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package
                    for _ in range(node.level - 1):
                        base = base.rpartition(".")[0]
                    target = f"{base}.{node.module}" if node.module else base
                else:
                    target = node.module or ""
                submodules = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
                out.update(submodules)
                if target in modules and len(submodules) < len(node.names):  # names the module itself defines
                    out.add(target)
        edges[name] = out - {name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_planted_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(edges) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_module_level_imports_have_no_cycle():
    modules = _modules()
    assert "relgraph.kernels.gemm" in modules and "relgraph.evaluate.images" in modules
    edges = import_graph(modules)
    assert "relgraph.frontend" in edges["relgraph.statistics"]  # the graph sees relative imports
    assert cycles(edges) == []


def test_the_checkout_root_holds_no_package_but_relgraph():
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert packages == {"relgraph"}


def test_wheel_installs_the_kernels_as_relgraph_kernels(tmp_path):
    pytest.importorskip("setuptools")
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "relgraph", source / "relgraph", ignore=ignore)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "wheel"), str(source)], capture_output=True, text=True, timeout=300)
    if done.returncode and "No module named pip" in done.stderr:
        pytest.skip("no pip in this environment")
    assert done.returncode == 0, done.stderr
    (wheel,) = (tmp_path / "wheel").glob("relgraph-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"relgraph"}
    kernels = {n[len("relgraph/kernels/"):] for n in names if n.startswith("relgraph/kernels/")}
    expected = {p.name for p in (ROOT / "relgraph" / "kernels").iterdir() if p.suffix in (".py", ".json")}
    assert "configs.json" in expected and "__init__.py" in expected
    assert kernels == expected
