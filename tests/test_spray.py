"""SpRAy: each step against an independent reference (dense numpy, brute-force distances, CoRelAy), and the
analysis on the shapes models: the shortcut model's texture strategy is a cluster, the control has none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("scipy")
pytest.importorskip("pyarrow")

from sklearn.metrics import adjusted_rand_score  # noqa: E402

import relgraph  # noqa: E402
from relgraph import spray  # noqa: E402
from relgraph.dataset import store  # noqa: E402
from relgraph.dataset.pipeline import downsample  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ROOT / "models" / "shapes"
sys.path.insert(0, str(SHAPES))

import data as shapes_data  # noqa: E402  (models/shapes/data.py)

# held-out shapes samples (texture independent of the class): about a thousand heatmaps per class. With a few
# hundred, the eigengap also splits the texture-driven heatmaps by the texture's period.
HELDOUT = 3000


def blobs(seed=0, n=(60, 50, 40), dim=12, spread=0.15):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(n), dim)) * 3
    x = np.concatenate([c + spread * rng.standard_normal((m, dim)) for c, m in zip(centres, n)])
    return x, np.repeat(np.arange(len(n)), n)


def test_knn_affinity_is_the_symmetrized_brute_force_graph():
    x, _ = blobs(1)
    a = spray.knn_affinity(x, 7).toarray()
    dist = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    k = np.zeros_like(dist)
    np.put_along_axis(k, np.argsort(dist, axis=1)[:, :7], 1.0, axis=1)
    np.testing.assert_array_equal(a, (k + k.T) / 2)


@pytest.mark.parametrize("n", [40, 300])  # dense path and eigsh path
def test_spectral_embedding_matches_the_dense_normalized_laplacian(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 6))
    a = spray.knn_affinity(x, 8)
    lam, vec = spray.spectral_embedding(a, 12)
    dense = a.toarray()
    d = dense.sum(1)
    laplacian = np.eye(n) - dense / np.sqrt(d[:, None] * d[None, :])
    ref = np.linalg.eigvalsh(laplacian)[:12]
    assert np.linalg.norm(lam - ref) / np.linalg.norm(ref) < 1e-7
    # each returned vector is an eigenvector of L with its eigenvalue
    residual = laplacian @ vec - vec * lam
    assert np.abs(residual).max() < 1e-6


def test_eigengap_and_kmeans_recover_planted_clusters():
    x, truth = blobs(2)
    lam, vec = spray.spectral_embedding(spray.knn_affinity(x, 10), 16)
    k = spray.eigengap(lam, 6)
    assert k == 3
    assert np.all(lam[:3] < 1e-8) and lam[3] > 1e-3  # three components: three zero eigenvalues
    assert adjusted_rand_score(truth, spray.kmeans(vec, k)) == 1.0


def test_pixel_features_are_unit_norm_area_sums():
    rng = np.random.default_rng(3)
    r = rng.standard_normal((5, 2, 32, 32))
    f = spray.features(r, "pixels", (8, 8))
    ref = r.sum(1).reshape(5, 8, 4, 8, 4).sum((2, 4)).reshape(5, -1)
    np.testing.assert_allclose(f, ref / np.linalg.norm(ref, axis=1, keepdims=True), rtol=1e-6, atol=1e-7)


def test_downsample_keeps_the_total():
    r = np.random.default_rng(4).standard_normal((3, 1, 10, 7)).astype(np.float32)
    small = downsample(r, 3, 4)
    np.testing.assert_allclose(small.sum((1, 2, 3)), r.sum((1, 2, 3)), rtol=1e-5)


def test_histogram_features_ignore_where_the_relevance_lies():
    r = np.zeros((2, 1, 16, 16))
    r[0, 0, 2:5, 3:6] = np.arange(9).reshape(3, 3)
    r[1, 0, 9:12, 10:13] = np.arange(9).reshape(3, 3)  # the same heatmap, shifted
    f = spray.features(r, "histogram")
    np.testing.assert_array_equal(f[0], f[1])
    assert not np.array_equal(spray.features(r, "pixels", (16, 16))[0], spray.features(r, "pixels", (16, 16))[1])


# ------------------------------------------------------------------------------------------------ shapes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Held-out shapes data explained by both models (ε rule; predicted class), stored as explain-dataset
    output folders (written with the store's own writer: the Parquet format, no Ray needed)."""
    folder = tmp_path_factory.mktemp("spray")
    d = shapes_data.make_split("heldout", HELDOUT)
    out = {"texture": d["texture"]}
    for name in ("shapes_cnn", "shapes_control_cnn"):
        path = relgraph.compile(str(SHAPES / f"{name}.onnx"), rule="epsilon",
                                output=str(folder / f"{name}.onnx")).path
        e = relgraph.Explainer(path).explain(d["x"])
        target = folder / f"{name}_out"
        target.mkdir()
        ids = [f"heldout:{i}" for i in range(HELDOUT)]
        store._write_json(str(target / store.MANIFEST), {"format": store.FORMAT})
        for block, start in enumerate(range(0, HELDOUT, 256)):
            s = slice(start, start + 256)
            store.write_block(str(target), block, store.block_table(
                ids[s], ["heldout"] * len(ids[s]), np.arange(HELDOUT)[s], e["target"][s], e["logits"][s],
                e["relevance"][s], e["bias_relevance"][s], []))
        out[name] = (target, e)
    return out


def _texture_agrees(shapes, ids, label):
    rows = np.array([int(i.split(":")[1]) for i in ids])
    return shapes["texture"][rows] == label


def _spray_cli(out, report, *extra):
    proc = subprocess.run([sys.executable, "-m", "relgraph.cli", "spray", str(out), "-o", str(report), *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    with open(report / "spray.json") as f:
        return json.load(f), proc.stdout


def test_spray_finds_the_texture_shortcut(shapes, tmp_path):
    """In every class the eigengap finds two strategies, and they are the texture-driven and the object-driven
    samples (the texture is the class's own training texture, or not): adjusted Rand index ≥ 0.8."""
    report, stdout = _spray_cli(shapes["shapes_cnn"][0], tmp_path / "report", "--features", "histogram")
    assert sorted(report) == ["0", "1", "2"]
    page = (tmp_path / "report" / "index.html").read_text()
    for label, r in report.items():
        assert r["k"] == 2, stdout
        ari = adjusted_rand_score(_texture_agrees(shapes, r["ids"], int(label)), r["clusters"])
        assert ari >= 0.8, (label, ari, stdout)
        assert len(r["ids"]) == len(set(r["ids"])) == len(r["clusters"])
        assert len(r["eigenvalues"]) == 32 and r["eigenvalues"][0] < 1e-8
        assert len(r["tsne"]) == len(r["tsne_index"]) == min(len(r["ids"]), spray.TSNE_SAMPLES)
        for name in (f"class{label}_eigenvalues.png", f"class{label}_embedding.png", f"class{label}_prototypes.png"):
            assert (tmp_path / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert (tmp_path / "report" / name).stat().st_size > 5000 and f'src="{name}"' in page
    assert "http" not in page and "<script" not in page  # opens offline


def test_spray_finds_no_texture_cluster_on_the_control(shapes, tmp_path):
    report, stdout = _spray_cli(shapes["shapes_control_cnn"][0], tmp_path / "report", "--features", "histogram",
                                "--no-plots")
    for label, r in report.items():
        ari = adjusted_rand_score(_texture_agrees(shapes, r["ids"], int(label)), r["clusters"])
        assert ari < 0.2, (label, ari, stdout)


def test_corelay_spectral_clustering_agrees(shapes):
    """CoRelAy's SpRAy pipeline (SciPyPDist, SparseKNN, SymmetricNormalLaplacian, EigenDecomposition, KMeans)
    on the same features: the same eigenvalues, the same number of clusters, the same assignment.

    CoRelAy's EigenDecomposition defaults to eigsh's ``which="LM"`` (largest magnitude of D^-½AD^-½), which
    mixes in eigenvalues from the top of the Laplacian's spectrum (near 2); the SpRAy embedding is the
    bottom of the spectrum, ``which="LA"``, asked for here."""
    corelay = pytest.importorskip("corelay")
    from corelay.pipeline.spectral import SpectralClustering
    from corelay.processor.affinity import SparseKNN
    from corelay.processor.clustering import KMeans
    from corelay.processor.distance import SciPyPDist
    from corelay.processor.embedding import EigenDecomposition

    _, e = shapes["shapes_cnn"]
    sel = np.flatnonzero(e["target"] == 0)
    x = spray.features(e["relevance"][sel], "histogram")
    ours = spray.analyse(e["relevance"][sel], list(sel), 0, kind="histogram", embed=False)
    reference = SpectralClustering(
        preprocessing=lambda v: v, pairwise_distance=SciPyPDist(metric="euclidean"),
        affinity=SparseKNN(n_neighbors=10, symmetric=True), embedding=EigenDecomposition(n_eigval=32, which="LA", is_output=True),
        clustering=KMeans(n_clusters=ours.k, index=(slice(None), slice(-ours.k, None)), is_output=True,
                          kwargs={"n_init": 10, "random_state": 0}))
    (eigval, _), labels = reference(x)
    eigval = np.sort(eigval)
    np.testing.assert_allclose(eigval, ours.eigenvalues, atol=1e-6)
    assert spray.eigengap(eigval, 4) == ours.k
    assert adjusted_rand_score(labels, ours.clusters) >= 0.9
    assert corelay is not None


def test_spray_errors_are_one_line(tmp_path, shapes):
    for args, message in (([str(tmp_path / "missing"), "-o", str(tmp_path / "r")], "not found"),
                          ([str(shapes["shapes_cnn"][0]), "-o", str(tmp_path / "r"), "--class", "7"],
                           "no heatmaps explain class 7"),
                          ([str(shapes["shapes_cnn"][0]), "-o", str(tmp_path / "r"), "--size", "big"], "--size")):
        proc = subprocess.run([sys.executable, "-m", "relgraph.cli", "spray", *args], capture_output=True,
                              text=True, cwd=ROOT, timeout=300)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    os.makedirs(tmp_path / "r2")
    (tmp_path / "r2" / "spray.json").write_text("{}")
    proc = subprocess.run([sys.executable, "-m", "relgraph.cli", "spray", str(shapes["shapes_cnn"][0]), "-o",
                           str(tmp_path / "r2")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and "--force" in proc.stderr
