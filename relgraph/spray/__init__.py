"""Spectral Relevance Analysis (SpRAy): the strategies a model uses, as clusters of its heatmaps.

Lapuschkin et al. 2019, "Unmasking Clever Hans predictors and assessing what machines really learn"
(Nat. Commun. 10:1096); Anders et al. 2022 (CoRelAy, ViRelAy). For the heatmaps R_1 … R_n of one class:

1. **features**: ``pixels`` — sum over channels, downsample by area sums to h×w, flatten; or ``histogram``
   — the distribution of the values of R / max|R| in 40 bins on [−1, 1] (translation invariant: where on
   the image the relevance lies does not matter, only how it is spread, CoRelAy's "histogram" variant).
   Each feature vector is scaled to unit L2 norm, so the size of the explained logit does not count.
2. **affinity**: the sparse k-nearest-neighbour graph (Euclidean), binary, symmetrized: A = (K + Kᵀ)/2,
   K_ij = 1 when j is among i's ``neighbors`` nearest (CoRelAy's ``SparseKNN``).
3. **spectral embedding**: the normalized Laplacian L = I − D^{−½} A D^{−½}, D = diag(A·1); its smallest
   eigenvalues 0 = λ_1 ≤ λ_2 ≤ … ≤ λ_m and eigenvectors, from ``scipy.sparse.linalg.eigsh`` on
   D^{−½} A D^{−½} (the largest algebraic eigenvalues μ, λ = 1 − μ).
4. **eigengap**: k = argmax_{1 ≤ i < K} (λ_{i+1} − λ_i) — a graph of k well separated groups has k
   eigenvalues near 0 and then a jump.
5. **k-means** (scikit-learn, seeded) on the rows of the first k eigenvectors scaled to unit length
   (Ng, Jordan & Weiss 2001); k = 1 puts every sample in one cluster.
6. a **t-SNE** 2-d map of the spectral embedding for the picture (of at most 1,000 samples per class, a
   seeded subset beyond), and per cluster its **prototypes**: the mean heatmap and the samples nearest the
   cluster's centre in the embedding.

scikit-learn and scipy are optional (``pip install 'relgraph[dataset]'``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from ..dataset import store
from ..dataset.pipeline import downsample
from ..errors import RelgraphError, require
from . import report as _report

FEATURES = ("pixels", "histogram")
HISTOGRAM_BINS = 40
TSNE_SAMPLES = 1000  # the t-SNE map shows at most this many samples of a class
SPRAY_STACK = ("sklearn", "scipy")


@dataclass
class ClassAnalysis:
    """SpRAy of one class: ``clusters[i]`` is sample ``ids[i]``'s cluster."""

    label: int
    ids: list
    clusters: np.ndarray
    eigenvalues: np.ndarray
    k: int
    embedding: np.ndarray | None = None              # t-SNE [m, 2] of the samples embedded_index
    embedded_index: np.ndarray | None = None
    prototypes: dict = field(default_factory=dict)   # cluster → {"size", "central": [indices]}
    means: dict = field(default_factory=dict)        # cluster → mean heatmap [h, w]

    def as_json(self) -> dict:
        out = {"ids": list(self.ids), "clusters": self.clusters.tolist(),
               "eigenvalues": [float(v) for v in self.eigenvalues], "k": int(self.k),
               "sizes": [int(np.sum(self.clusters == c)) for c in range(self.k)],
               "prototypes": {str(c): [self.ids[i] for i in p["central"]] for c, p in self.prototypes.items()}}
        if self.embedding is not None:
            out["tsne"] = np.round(self.embedding, 4).tolist()
            out["tsne_index"] = self.embedded_index.tolist()  # positions in ids
        return out


# ------------------------------------------------------------------------------------------------ the steps


def heatmaps_2d(relevance: np.ndarray) -> np.ndarray:
    """[N, C, H, W] or [N, H, W] → [N, H, W] (channels summed), float64."""
    r = np.asarray(relevance, np.float64)
    if r.ndim == 4:
        r = r.sum(1)
    if r.ndim != 3:
        raise RelgraphError(f"SpRAy needs image heatmaps [N, C, H, W]; got shape {list(relevance.shape)}")
    return r


def features(relevance: np.ndarray, kind: str = "pixels", size=(32, 32)) -> np.ndarray:
    """Step 1: one unit-norm feature vector per heatmap (see the module docstring)."""
    r = heatmaps_2d(relevance)
    n = len(r)
    if kind == "pixels":
        if size and tuple(size) != r.shape[1:]:
            r = downsample(r[:, None], *size)[:, 0].astype(np.float64)
        f = r.reshape(n, -1)
    elif kind == "histogram":
        flat = r.reshape(n, -1)
        scale = np.abs(flat).max(1, keepdims=True)
        # linear in R/max|R|: a square root would lift the many small values, and how many there are follows
        # how dense a background pattern is (a stripe period) more than which strategy the heatmap shows
        flat = flat / np.where(scale > 0, scale, 1.0)
        edges = np.linspace(-1.0, 1.0, HISTOGRAM_BINS + 1)
        bins = np.clip(np.searchsorted(edges, flat, side="right") - 1, 0, HISTOGRAM_BINS - 1)
        f = np.zeros((n, HISTOGRAM_BINS))
        np.add.at(f, (np.repeat(np.arange(n), flat.shape[1]), bins.ravel()), 1.0)
    else:
        raise RelgraphError(f"unknown features {kind!r} (use {' or '.join(FEATURES)})")
    norm = np.linalg.norm(f, axis=1, keepdims=True)
    return f / np.where(norm > 0, norm, 1.0)


def knn_affinity(x: np.ndarray, neighbors: int = 10):
    """Step 2: A = (K + Kᵀ)/2 with K_ij = 1 for the ``neighbors`` nearest j ≠ i (sparse CSR)."""
    import scipy.sparse as sp
    from sklearn.neighbors import NearestNeighbors

    n = len(x)
    k = min(neighbors, n - 1)
    idx = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x, return_distance=False)
    # the query point is its own nearest neighbour, except among duplicates: drop i itself, keep k others
    others = np.array([[j for j in row if j != i][:k] for i, row in enumerate(idx)])
    rows = np.repeat(np.arange(n), k)
    knn = sp.csr_matrix((np.ones(n * k), (rows, others.ravel())), shape=(n, n))
    return ((knn + knn.T) / 2.0).tocsr()


def spectral_embedding(affinity, n_eigval: int = 32):
    """Step 3: the smallest ``n_eigval`` eigenvalues of L = I − D^{−½}AD^{−½} (ascending) and eigenvectors."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import eigsh

    n = affinity.shape[0]
    degree = np.asarray(affinity.sum(1)).ravel()
    d = sp.diags(1.0 / np.sqrt(degree))
    normalized = (d @ affinity @ d).tocsr()
    m = min(n_eigval, n - 1)
    if n <= 2 * m + 1 or n < 64:  # small: dense is exact and faster than Lanczos
        mu, vectors = np.linalg.eigh(normalized.toarray())
        mu, vectors = mu[-m:], vectors[:, -m:]
    else:
        v0 = np.random.default_rng(0).standard_normal(n)  # a fixed start: the same eigenvectors every run
        mu, vectors = eigsh(normalized, k=m, which="LA", v0=v0, tol=1e-8)
    order = np.argsort(-mu)
    return np.clip(1.0 - mu[order], 0.0, 2.0), vectors[:, order]


def eigengap(eigenvalues: np.ndarray, max_clusters: int = 4) -> int:
    """Step 4: k = argmax_{1 ≤ i < K} (λ_{i+1} − λ_i), K = ``max_clusters``."""
    lam = np.asarray(eigenvalues)[: max_clusters + 1]
    if len(lam) < 2:
        return 1
    return int(np.argmax(np.diff(lam))) + 1


def kmeans(vectors: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Step 5: k-means on the unit-length rows of the first k eigenvectors."""
    if k <= 1:
        return np.zeros(len(vectors), np.int64)
    from sklearn.cluster import KMeans

    e = vectors[:, :k]
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(e).astype(np.int64)


def tsne(vectors: np.ndarray, seed: int = 0, limit: int = TSNE_SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """Step 6: a 2-d t-SNE map of the spectral embedding (perplexity ≤ 30, below n/3 for small classes).

    The map is a picture, and t-SNE's cost grows faster than the rest of SpRAy: beyond ``limit`` samples it
    maps a seeded random subset of ``limit``. Returns (indices mapped, coordinates [len(indices), 2])."""
    from sklearn.manifold import TSNE

    n = len(vectors)
    index = np.arange(n) if n <= limit else np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))
    if n < 5:
        return index, np.zeros((n, 2))
    return index, TSNE(n_components=2, perplexity=min(30.0, (len(index) - 1) / 3), init="pca",
                       random_state=seed, max_iter=500).fit_transform(vectors[index])


def analyse(relevance: np.ndarray, ids, label: int, *, kind: str = "pixels", size=(32, 32), neighbors: int = 10,
            n_eigval: int = 32, max_clusters: int = 4, clusters: int | None = None, embed: bool = True,
            prototypes: int = 4, seed: int = 0) -> ClassAnalysis:
    """SpRAy of one class's heatmaps ``relevance`` [N, C, H, W]; ``clusters`` overrides the eigengap."""
    require(SPRAY_STACK, "spray", "dataset")
    n = len(relevance)
    if n < 3:
        raise RelgraphError(f"class {label}: SpRAy needs at least 3 heatmaps, got {n}")
    x = features(relevance, kind, size)
    lam, vectors = spectral_embedding(knn_affinity(x, neighbors), n_eigval)
    k = clusters or eigengap(lam, max_clusters)
    labels = kmeans(vectors, k, seed)
    k = int(labels.max()) + 1
    result = ClassAnalysis(label, list(ids), labels, lam, k)
    space = vectors[:, :max(k, 2)]
    if embed:
        result.embedded_index, result.embedding = tsne(vectors[:, :min(len(lam), 16)], seed)
    maps = heatmaps_2d(relevance)
    for c in range(k):
        members = np.flatnonzero(labels == c)
        centre = space[members].mean(0)
        central = members[np.argsort(np.linalg.norm(space[members] - centre, axis=1))[:prototypes]]
        result.prototypes[c] = {"size": len(members), "central": central.tolist()}
        result.means[c] = maps[members].mean(0)
    return result


# ------------------------------------------------------------------------------------------------ on a dataset


def load(out: str, *, columns=("id", "target", "relevance")):
    """ids, targets and relevance [N, ...] from an explain-dataset output."""
    table = store.read_output(out, columns=list(columns))
    return table["id"].to_pylist(), table["target"].to_numpy(), store.tensor(table["relevance"])


def spray_dataset(out: str, report: str, *, classes="all", force: bool = False, plots: bool = True, **options):
    """SpRAy per class of an explain-dataset output; writes ``report``/spray.json, PNGs and index.html."""
    require(SPRAY_STACK, "spray", "dataset")
    target = os.path.join(report, "spray.json")
    if os.path.exists(target) and not force:
        raise RelgraphError(f"output exists: {target} (pass --force to overwrite)")
    ids, targets, relevance = load(out)
    chosen = sorted(set(targets.tolist())) if classes == "all" else [int(classes)]
    if classes != "all" and int(classes) not in set(targets.tolist()):
        raise RelgraphError(f"no heatmaps explain class {classes} in {out} (classes: "
                            f"{', '.join(map(str, sorted(set(targets.tolist()))))})")
    results = {}
    for c in chosen:
        sel = np.flatnonzero(targets == c)
        if len(sel) < 3:
            continue
        results[c] = analyse(relevance[sel], [ids[i] for i in sel], c, **options)
    if not results:
        raise RelgraphError("no class has the 3 heatmaps SpRAy needs")
    os.makedirs(report, exist_ok=True)
    with open(target, "w") as f:
        json.dump({str(c): r.as_json() for c, r in results.items()}, f)
    if plots:
        _report.write(report, results, maps_of={c: heatmaps_2d(relevance[targets == c]) for c in results})
    return results


def add_command(sub) -> None:
    s = sub.add_parser("spray", help="spectral relevance analysis of an explain-dataset output",
                       description="Cluster each class's heatmaps (k-NN graph, normalized Laplacian, eigengap, "
                                   "k-means) to find the strategies the model uses (Lapuschkin et al. 2019).")
    s.add_argument("output", metavar="OUT", help="an explain-dataset output folder")
    s.add_argument("--class", dest="classes", default="all", metavar="K|all", help="class to analyse (default all)")
    s.add_argument("-o", "--report", required=True, metavar="REPORT", help="report folder")
    s.add_argument("--features", choices=FEATURES, default="pixels",
                   help="pixels: downsampled heatmaps; histogram: their value distribution (position-free)")
    s.add_argument("--size", default="32x32", metavar="HxW", help="pixels: downsample to H×W (default 32x32)")
    s.add_argument("--neighbors", type=int, default=10, help="k of the k-NN graph (default 10)")
    s.add_argument("--eigenvalues", type=int, default=32, help="eigenvalues computed (default 32)")
    s.add_argument("--max-clusters", type=int, default=4, help="largest k the eigengap may choose (default 4)")
    s.add_argument("--clusters", type=int, help="use this k instead of the eigengap")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-plots", action="store_true", help="write spray.json only (and skip the t-SNE map)")
    s.add_argument("--force", action="store_true", help="overwrite an existing report")
    s.set_defaults(run=cmd_spray)


def cmd_spray(args) -> None:
    try:
        size = tuple(int(v) for v in args.size.lower().split("x"))
        assert len(size) == 2 and min(size) > 0
    except (ValueError, AssertionError):
        raise RelgraphError(f"--size must be HxW, e.g. 32x32, got {args.size!r}") from None
    if args.classes != "all" and not args.classes.lstrip("-").isdigit():
        raise RelgraphError(f"--class must be a class index or all, got {args.classes!r}")
    if args.neighbors < 1 or args.max_clusters < 1 or args.eigenvalues < 2:
        raise RelgraphError("--neighbors and --max-clusters must be at least 1, --eigenvalues at least 2")
    results = spray_dataset(args.output, args.report, classes=args.classes, force=args.force,
                            plots=not args.no_plots, embed=not args.no_plots, kind=args.features, size=size, neighbors=args.neighbors,
                            n_eigval=args.eigenvalues, max_clusters=args.max_clusters, clusters=args.clusters,
                            seed=args.seed)
    for c, r in results.items():
        sizes = ", ".join(str(p["size"]) for p in r.prototypes.values())
        print(f"class {c}: {len(r.ids)} heatmaps, k = {r.k} clusters (sizes {sizes}); "
              f"eigenvalues {' '.join(f'{v:.3f}' for v in r.eigenvalues[:6])} …")
    print(f"wrote {os.path.join(args.report, 'spray.json')}"
          + ("" if args.no_plots else f" and {os.path.join(args.report, 'index.html')}"))
