"""explain-dataset on a 2-node Ray cluster: the output equals Explainer.explain sample by sample, a node
killed mid-run leaves neither duplicates nor gaps, a rerun computes only the missing blocks, and bad input
ends in one line."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

import relgraph  # noqa: E402
from relgraph.dataset import explain_dataset, store  # noqa: E402
from relgraph.errors import RelgraphError  # noqa: E402
from relgraph.heatmap import write_png  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "models" / "digits"
SHAPES = ROOT / "models" / "shapes"
sys.path.insert(0, str(SHAPES))

import data as shapes_data  # noqa: E402  (models/shapes/data.py)


@pytest.fixture(scope="module")
def explainers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("explainers")
    return {name: relgraph.compile(str(model), rule="epsilon", output=str(folder / f"{name}.onnx")).path
            for name, model in (("digits", DIGITS / "digits_cnn.onnx"), ("shapes", SHAPES / "shapes_cnn.onnx"))}


@pytest.fixture(scope="module")
def cluster():
    """Two nodes on this machine: the head (the driver, no CPUs for work) and one worker node."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    c.add_node(num_cpus=2)
    ray.init(address=c.address, logging_level=logging.ERROR, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


def by_id(out):
    table = store.read_output(str(out))
    ids = table["id"].to_pylist()
    assert len(ids) == len(set(ids)), "duplicate ids"
    order = np.argsort(ids, kind="stable")
    return ([ids[i] for i in order], table["target"].to_numpy()[order], store.tensor(table["logits"])[order],
            store.tensor(table["relevance"])[order], table["bias_relevance"].to_numpy()[order])


def reference(explainer, samples: dict):
    """Explainer.explain one sample at a time, by id."""
    e = relgraph.Explainer(explainer)
    out = {i: e.explain(x[None]) for i, x in samples.items()}
    ids = sorted(out)
    return (ids, np.array([out[i]["target"][0] for i in ids]), np.stack([out[i]["logits"][0] for i in ids]),
            np.stack([out[i]["relevance"][0] for i in ids]), np.array([out[i]["bias_relevance"][0] for i in ids]))


def assert_same(got, ref):
    ids, target, logits, relevance, bias = got
    assert ids == ref[0]
    np.testing.assert_array_equal(target, ref[1])
    for a, b in ((logits, ref[2]), (relevance, ref[3]), (bias, ref[4])):
        a, b = a.reshape(len(ids), -1).astype(np.float64), b.reshape(len(ids), -1).astype(np.float64)
        rel = np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-30)
        assert rel.max() < 1e-5, rel.max()


def test_output_equals_the_explainer_sample_by_sample(cluster, explainers, tmp_path):
    """Digits (two .npy shards) and shapes (a float16 .npz and a folder of PNGs with one broken file)."""
    digits = np.load(DIGITS / "test_x.npy")[:120]
    data = tmp_path / "digits"
    data.mkdir()
    np.save(data / "a.npy", digits[:70])
    np.save(data / "b.npy", digits[70:])
    out = tmp_path / "digits_out"
    result = explain_dataset(explainers["digits"], str(data), str(out), batch_size=16, block_rows=32, workers=2,
                             progress=False)
    assert result.blocks == 5 and result.computed == 5  # a: 32+32+6, b: 32+18
    samples = {f"a.npy:{i}": x for i, x in enumerate(digits[:70])}
    samples.update({f"b.npy:{i}": x for i, x in enumerate(digits[70:])})
    assert_same(by_id(out), reference(explainers["digits"], samples))
    # the same dataset through Ray Data's own reader
    ds = ray.data.read_parquet(str(out))
    assert ds.count() == 120
    assert ds.take_batch(4, batch_format="numpy")["relevance"].shape == (4, 1, 8, 8)

    shapes = tmp_path / "shapes"
    (shapes / "pictures").mkdir(parents=True)
    held = np.load(SHAPES / "heldout.npz")
    np.savez(shapes / "held.npz", x=held["x"][:40])
    pixels = [np.round(shapes_data.make_sample("heldout", 300 + i)[0][0] * 255).astype(np.uint8) for i in range(3)]
    for i, p in enumerate(pixels):
        write_png(str(shapes / "pictures" / f"p{i}.png"), np.repeat(p[..., None], 3, axis=2))
    (shapes / "pictures" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a picture")
    out = tmp_path / "shapes_out"
    result = explain_dataset(explainers["shapes"], str(shapes), str(out), batch_size=8, block_rows=16, workers=2,
                             store_size=None, progress=False)
    samples = {f"held.npz:{i}": x.astype(np.float32) for i, x in enumerate(held["x"][:40])}
    samples.update({f"pictures/p{i}.png:0": p[None].astype(np.float32) / 255 for i, p in enumerate(pixels)})
    assert_same(by_id(out), reference(explainers["shapes"], samples))
    assert result.summary["failed"] == 1 and result.summary["explained"] == 43
    assert result.summary["failures"][0]["id"] == "pictures/broken.png:0"


def test_resume_computes_only_the_missing_blocks(cluster, explainers, tmp_path):
    np.save(tmp_path / "x.npy", np.load(DIGITS / "test_x.npy")[:150])
    out = tmp_path / "out"
    kwargs = dict(batch_size=16, block_rows=25, workers=1, progress=False)
    first = explain_dataset(explainers["digits"], str(tmp_path / "x.npy"), str(out), **kwargs)
    assert (first.blocks, first.computed) == (6, 6)
    complete = store.read_output(str(out))
    # what an interrupted run leaves: some blocks written, one half-written temporary file
    for block in (1, 4):
        os.remove(out / store.part_name(block))
    (out / ".part-000001.parquet.0123.tmp").write_bytes(b"half")
    # a worker the cluster cannot place would wait forever: refused before anything is queued
    with pytest.raises(RelgraphError, match="no worker could start"):
        explain_dataset(explainers["digits"], str(tmp_path / "x.npy"), str(out), **kwargs, gpus_per_worker=1)
    again = explain_dataset(explainers["digits"], str(tmp_path / "x.npy"), str(out), **kwargs)
    assert again.computed == 2
    assert store.read_output(str(out)).equals(complete)
    nothing = explain_dataset(explainers["digits"], str(tmp_path / "x.npy"), str(out), **kwargs)
    assert nothing.computed == 0 and not list(out.glob(".*.tmp"))
    # another run into this output: refused without --force, so the partial output survives
    os.remove(out / store.part_name(0))
    with pytest.raises(RelgraphError, match="--force"):
        explain_dataset(explainers["digits"], str(tmp_path / "x.npy"), str(out), **{**kwargs, "block_rows": 50})
    assert sorted(store.finished_blocks(str(out))) == [1, 2, 3, 4, 5]
    # with --force it starts over; --store-size keeps each sample's total (area sums: 8×8 → 4×4)
    forced = explain_dataset(explainers["digits"], str(tmp_path / "x.npy"), str(out),
                             **{**kwargs, "block_rows": 50}, store_size=(4, 4), force=True)
    assert (forced.blocks, forced.computed) == (3, 3)
    assert sorted(store.finished_blocks(str(out))) == [0, 1, 2]
    small = by_id(out)[3]
    full = store.tensor(complete["relevance"])[np.argsort(complete["id"].to_pylist(), kind="stable")]
    np.testing.assert_allclose(small, full.reshape(150, 1, 4, 2, 4, 2).sum((3, 5)), rtol=1e-4, atol=1e-6)


def test_a_triton_folder_runs_its_launch_plan_in_the_workers(cluster, tmp_path, monkeypatch):
    """A folder compiled with --target triton runs its launch plan in each actor: its kernels on a GPU worker,
    here in Triton's interpreter on the CPU (the suite sets TRITON_INTERPRET=1). Each block records the
    device it ran on; --backend onnxruntime runs the folder's explainer.onnx instead."""
    pytest.importorskip("triton")
    from relgraph.lowering import compile_triton

    folder = compile_triton(str(DIGITS / "digits_cnn.onnx"), str(tmp_path / "digits.triton"), rule="epsilon").path
    x = np.load(DIGITS / "test_x.npy")[:6]
    np.save(tmp_path / "x.npy", x)
    kwargs = dict(batch_size=3, block_rows=3, workers=1, progress=False)
    result = explain_dataset(folder, str(tmp_path / "x.npy"), str(tmp_path / "plan"), **kwargs)
    assert result.summary["devices"] == {"CPU, Triton kernels in the interpreter": 2}
    samples = {f"x.npy:{i}": s for i, s in enumerate(x)}
    assert_same(by_id(tmp_path / "plan"), reference(folder, samples))  # explainer.onnx on onnxruntime
    result = explain_dataset(folder, str(tmp_path / "x.npy"), str(tmp_path / "onnx"), backend="onnxruntime",
                             **kwargs)
    assert result.summary["devices"] == {"CPU": 2}
    # the kernels need a GPU per worker or the interpreter: refused before Ray starts, naming both ways out
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RelgraphError, match="--gpus-per-worker 1.*--backend onnxruntime"):
        explain_dataset(folder, str(tmp_path / "x.npy"), str(tmp_path / "refused"), **kwargs)
    assert not (tmp_path / "refused").exists()


def test_a_gpu_run_that_fell_back_to_the_cpu_says_so(cluster, explainers, tmp_path):
    """--gpus-per-worker on a node Ray counts a GPU on, with an onnxruntime that has no CUDA provider (this
    machine's): the session falls back to the CPU, the blocks record it, and the command warns."""
    node = cluster.add_node(num_cpus=1, num_gpus=1)
    try:
        np.save(tmp_path / "x.npy", np.load(DIGITS / "test_x.npy")[:8])
        proc = _cli(explainers["digits"], "--data", tmp_path / "x.npy", "-o", tmp_path / "out", "--gpus-per-worker",
                    "1", "--address", cluster.address, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert "on CPU" in proc.stdout and "blocks ran on CPU" in proc.stderr and "relgraph[gpu]" in proc.stderr, proc
    finally:
        cluster.remove_node(node)


def test_a_worker_that_cannot_open_the_explainer_is_one_line(cluster, tmp_path, monkeypatch):
    """A triton folder sent to a node that Ray counts a GPU on but torch sees none, without the interpreter:
    the actor cannot open the launch plan. The command says so in one line naming the worker, exit 2, with no
    traceback and no block written (raised in the actor, it was an ActorDiedError and two tracebacks)."""
    pytest.importorskip("triton")
    from relgraph.lowering import compile_triton

    folder = compile_triton(str(DIGITS / "digits_cnn.onnx"), str(tmp_path / "digits.triton"), rule="epsilon").path
    np.save(tmp_path / "x.npy", np.load(DIGITS / "test_x.npy")[:4])
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # inherited by the node's workers and by the command
    node = cluster.add_node(num_cpus=1, num_gpus=1)
    try:
        proc = _cli(folder, "--data", tmp_path / "x.npy", "-o", tmp_path / "out", "--gpus-per-worker", "1",
                    "--address", cluster.address, timeout=300)
    finally:
        cluster.remove_node(node)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
    assert proc.stderr.startswith("relgraph: error: a worker on ") and "needs a CUDA GPU" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not store.finished_blocks(str(tmp_path / "out"))


def test_only_a_local_run_needs_the_triton_stack_on_the_driver(monkeypatch, tmp_path):
    """The kernels run in the workers: joining a cluster, the driver need not import triton itself."""
    import relgraph.dataset as dataset

    folder = tmp_path / "digits.triton"
    folder.mkdir()
    (folder / "plan.json").write_text("{}")  # what makes a triton folder (the backend is read, not run)
    monkeypatch.setattr(dataset, "TRITON_STACK", ("a_module_nobody_installed",))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dataset.check_backend(str(folder), None, 0, address="10.0.0.1:6379") == "triton"
    with pytest.raises(RelgraphError, match="a_module_nobody_installed"):
        dataset.check_backend(str(folder), None, 0)


def test_a_node_killed_mid_run_leaves_no_duplicates_and_no_gaps(cluster, explainers, tmp_path):
    """The node that runs the actors and read tasks is removed after the first blocks are written; then a
    fresh node joins, Ray restarts the actors there and retries the lost tasks."""
    d = shapes_data.make_split("heldout", 240)
    np.save(tmp_path / "x.npy", d["x"])
    out = tmp_path / "out"
    result, errors = {}, []

    def work():
        try:
            result["r"] = explain_dataset(explainers["shapes"], str(tmp_path / "x.npy"), str(out), batch_size=8,
                                          block_rows=12, workers=2, cpus_per_worker=1, progress=False)
        except Exception as exc:  # reported below
            errors.append(exc)

    victim = [n for n in cluster.list_all_nodes() if not n.head]
    thread = threading.Thread(target=work)
    thread.start()
    deadline = time.monotonic() + 300
    while not store.finished_blocks(str(out)) and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.2)
    for node in victim:
        cluster.remove_node(node, allow_graceful=False)
    written_at_kill = len(store.finished_blocks(str(out)))  # counted once the node is gone
    cluster.add_node(num_cpus=2)
    thread.join(600)
    assert not errors, errors
    assert 0 < written_at_kill < 20, written_at_kill  # the kill happened mid-run
    got = by_id(out)
    assert got[0] == sorted(f"x.npy:{i}" for i in range(240))  # every id once: no gaps, no duplicates
    sample = {f"x.npy:{i}": d["x"][i] for i in range(0, 240, 19)}
    keep = [got[0].index(i) for i in sorted(sample)]
    assert_same(([got[0][k] for k in keep], *(a[keep] for a in got[1:])), reference(explainers["shapes"], sample))


# ------------------------------------------------------------------------------------------------ command line


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "relgraph.cli", "explain-dataset", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_input_is_one_line_and_exit_2(explainers, tmp_path):
    bad_npy = tmp_path / "bad.npy"
    bad_npy.write_bytes(b"not an array")
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((4, 1, 9, 9), np.float32))
    good = tmp_path / "good.npy"
    np.save(good, np.load(DIGITS / "test_x.npy")[:4])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    other = tmp_path / "other"  # a partial output of another run
    other.mkdir()
    (other / store.MANIFEST).write_text('{"format": 1, "data": "elsewhere"}')
    (other / store.part_name(0)).write_bytes(b"kept")
    cases = [((tmp_path / "missing",), "data not found"),
             ((bad_npy,), "cannot read"),
             ((wrong,), "holds shape [4, 1, 9, 9]"),
             ((good, "--address", f"127.0.0.1:{_free_port()}"), "no Ray cluster answers"),
             ((good, "--target", "12"), "target 12 is out of range"),
             ((good, "-o", foreign), "holds no explain-dataset output"),
             ((good, "-o", other), "--force")]
    for (data, *extra), message in cases:
        out = [] if "-o" in extra else ["-o", tmp_path / "out"]
        start = time.monotonic()
        proc = _cli(explainers["digits"], "--data", data, *out, *extra)
        assert proc.returncode == 2, (message, proc.stderr)
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert time.monotonic() - start < 60
    assert (other / store.part_name(0)).read_bytes() == b"kept" and (foreign / "notes.txt").exists()


def test_parquet_sources_read_across_row_groups(explainers, tmp_path):
    """A Parquet source (a fixed-shape tensor column in several row groups) is cut into blocks and read back
    row for row (the readers alone, without Ray)."""
    import pyarrow as pa

    from relgraph.dataset import sources

    x = np.load(DIGITS / "test_x.npy")[:50]
    table = pa.table({"x": pa.FixedShapeTensorArray.from_numpy_ndarray(x), "label": np.arange(50)})
    pq.write_table(table, tmp_path / "digits.parquet", row_group_size=16)
    spec = sources.spec_of(relgraph.Explainer(explainers["digits"]))
    srcs = sources.sources(str(tmp_path / "digits.parquet"), spec)
    assert [(s.name, s.kind, s.rows) for s in srcs] == [("digits.parquet", "parquet", 50)]
    blocks = sources.blocks(srcs, 20)
    assert [b[0][3:] for b in blocks] == [[0, 20], [20, 40], [40, 50]]
    read = np.concatenate([sources.read_segment(b[0], spec)[0] for b in blocks])
    np.testing.assert_array_equal(read, x)
    pq.write_table(pa.table({"x": pa.FixedShapeTensorArray.from_numpy_ndarray(x[:, :, :4])}), tmp_path / "bad.parquet")
    with pytest.raises(RelgraphError, match=r"holds shape \[50, 1, 4, 8\]"):
        sources.sources(str(tmp_path / "bad.parquet"), spec)
