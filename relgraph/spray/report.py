"""The SpRAy report: per class an eigenvalue spectrum, the t-SNE map coloured by cluster and a grid of
prototypes (each cluster's mean heatmap and its most central samples), and ``index.html`` that shows them
all (relative links, no scripts, no external resources: it opens offline)."""

from __future__ import annotations

import html
import os

import numpy as np

from ..plot import _pyplot

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive")


def write(report: str, results: dict, maps_of: dict) -> str:
    """All figures and the page; returns the page's path. ``maps_of``: class → its heatmaps [N, H, W]."""
    sections = []
    for c, r in results.items():
        files = (f"class{c}_eigenvalues.png", f"class{c}_embedding.png", f"class{c}_prototypes.png")
        eigenvalues(os.path.join(report, files[0]), r)
        embedding(os.path.join(report, files[1]), r)
        prototypes(os.path.join(report, files[2]), r, maps_of[c])
        sizes = ", ".join(f"cluster {k}: {p['size']}" for k, p in r.prototypes.items())
        sections.append(f"<h2>class {c}</h2><p>{len(r.ids)} heatmaps; the eigengap chose <b>k = {r.k}</b> "
                        f"({html.escape(sizes)})</p>" + "".join(f'<img src="{f}" alt="{f}">' for f in files))
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>SpRAy report</title><style>"
            "body{font-family:sans-serif;margin:2em;max-width:1400px}img{max-width:32%;margin:0.3%;"
            "vertical-align:top}</style></head><body><h1>Spectral relevance analysis</h1><p>Each class's "
            "heatmaps clustered by a k-NN graph's normalized Laplacian (Lapuschkin et al. 2019). A cluster "
            "is a strategy: look at its prototypes. Details per sample are in spray.json.</p>"
            + "".join(sections) + "</body></html>")
    path = os.path.join(report, "index.html")
    with open(path, "w") as f:
        f.write(page)
    return path


def eigenvalues(path: str, r) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 3.4), dpi=110)
    lam = r.eigenvalues
    ax.plot(np.arange(1, len(lam) + 1), lam, "o-", markersize=3)
    ax.axvline(r.k + 0.5, color="tab:red", linestyle="--", linewidth=1, label=f"eigengap: k = {r.k}")
    ax.set_xlabel("i")
    ax.set_ylabel("eigenvalue λᵢ of the normalized Laplacian")
    ax.set_title(f"class {r.label}: spectrum", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def embedding(path: str, r) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 3.4), dpi=110)
    e = r.embedding if r.embedding is not None else np.zeros((len(r.ids), 2))
    clusters = r.clusters[r.embedded_index] if r.embedding is not None else r.clusters
    for c in range(r.k):
        m = clusters == c
        ax.scatter(e[m, 0], e[m, 1], s=8, color=COLORS[c % len(COLORS)], label=f"cluster {c} ({m.sum()})")
    shown = "" if len(e) == len(r.ids) else f" ({len(e)} of {len(r.ids)})"
    ax.set_title(f"class {r.label}: t-SNE of the spectral embedding{shown}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=1.5)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def prototypes(path: str, r, maps: np.ndarray) -> None:
    """One row per cluster: the mean heatmap, then the most central samples (each scaled to its own max)."""
    plt = _pyplot()
    cols = 1 + max(len(p["central"]) for p in r.prototypes.values())
    fig, axes = plt.subplots(r.k, cols, figsize=(1.3 * cols, 1.4 * r.k + 0.3), dpi=110, squeeze=False)
    for c, p in r.prototypes.items():
        panels = [(r.means[c], f"mean of {p['size']}")] + [(maps[i], r.ids[i]) for i in p["central"]]
        for j in range(cols):
            ax = axes[c, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(panels):
                ax.axis("off")
                continue
            heat, title = panels[j]
            s = np.abs(heat).max() or 1.0
            ax.imshow(heat, cmap="bwr", vmin=-s, vmax=s)
            ax.set_title(title if len(title) <= 20 else "…" + title[-19:], fontsize=5)
        axes[c, 0].set_ylabel(f"cluster {c}", fontsize=7)
    fig.suptitle(f"class {r.label}: prototypes", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
