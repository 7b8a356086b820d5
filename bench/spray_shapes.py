"""SpRAy on the shapes shortcut model: how often the eigengap finds the two strategies, by sample count,
neighbours and histogram value map (the figures in README's SpRAy section).

    python bench/spray_shapes.py [--samples 6000]

Held-out samples 0 … ``--samples``−1 (texture independent of the class) are explained once (ε, the
predicted class); each slice of them is then analysed per class with ``spray.analyse`` (histogram features,
no t-SNE), and its clusters scored by the adjusted Rand index against "the texture is the class's own".
``sqrt`` feeds sign(R)·√|R| instead of R: the histogram then bins the signed square root of R/max|R|, the
value map the features used before.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score

import relgraph
from relgraph import spray

SHAPES = Path(__file__).resolve().parents[1] / "models" / "shapes"
sys.path.insert(0, str(SHAPES))
import data as shapes_data  # noqa: E402

SLICES = ((0, 300), (0, 600), (600, 1200), (0, 1500), (1500, 3000), (0, 3000), (3000, 6000), (0, 6000))


def scores(relevance, target, texture, lo, hi, neighbors=10):
    """(k, ARI) per class on samples lo … hi−1."""
    out = []
    for c in range(3):
        sel = lo + np.flatnonzero(target[lo:hi] == c)
        r = spray.analyse(relevance[sel], list(sel), c, kind="histogram", neighbors=neighbors, embed=False)
        out.append(f"k={r.k} {adjusted_rand_score(texture[sel] == c, r.clusters):.2f}")
    return "  ".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=6000)
    args = p.parse_args()
    d = shapes_data.make_split("heldout", args.samples)
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for name in ("shapes_cnn", "shapes_control_cnn"):
            path = relgraph.compile(str(SHAPES / f"{name}.onnx"), rule="epsilon", output=f"{tmp}/{name}.onnx").path
            results[name] = relgraph.Explainer(path).explain(d["x"])
    slices = [(lo, hi) for lo, hi in SLICES if hi <= args.samples]
    for name, e in results.items():
        r, t = e["relevance"], e["target"]
        for label, maps in (("linear", r), ("sqrt", np.sign(r) * np.sqrt(np.abs(r)))):
            print(f"\n{name}, {label} histogram, 10 neighbours: k and ARI of classes 0, 1, 2")
            for lo, hi in slices:
                print(f"  samples {lo:>5}–{hi:<5} {scores(maps, t, d['texture'], lo, hi)}")
    e = results["shapes_cnn"]
    print("\nshapes_cnn, linear histogram, by neighbours")
    for lo, hi in [(lo, hi) for lo, hi in ((0, 3000), (3000, 6000)) if hi <= args.samples]:
        for k in (5, 10, 15, 20, 30):
            print(f"  samples {lo:>5}–{hi:<5} {k:>2} neighbours  {scores(e['relevance'], e['target'], d['texture'], lo, hi, k)}")


if __name__ == "__main__":
    main()
