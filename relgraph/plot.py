"""Figures for ``relgraph evaluate``: perturbation curves and a grid of heatmaps (matplotlib, Agg).

matplotlib is optional (``pip install 'relgraph[eval]'``); :func:`available` says whether it is there.
"""

from __future__ import annotations

import numpy as np


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    return plt


def perturbation_curves(path, result, title: str = "") -> None:
    """Mean p(x⁽ⁿ⁾) of the target against n, one line per method, AOPC ± s.e. in the legend."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    steps = np.arange(result.steps + 1)
    for label, curve in result.curves.items():
        style = dict(color="0.4", linestyle="--") if label == "random" else {}
        ax.plot(steps, curve, label=f"{label}  AOPC {result.aopc[label]:.3f} ± {result.stderr[label]:.3f}",
                linewidth=1.6, **style)
    ax.set_xlabel(f"patches replaced by the data mean ({result.patch}×{result.patch} px, most relevant first)")
    ax.set_ylabel("softmax probability of the target")
    ax.set_title(title or "image degradation")
    ax.set_xlim(0, result.steps)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def heatmap_grid(path, x, relevances: dict, targets, predicted, masks=None, mask_share=None,
                 rows: int = 6) -> None:
    """The first ``rows`` inputs (the mask's outline in green) and each method's heatmap, summed over
    channels, in a diverging map symmetric around zero (red positive, blue negative), each heatmap scaled
    by its own max |R|."""
    plt = _pyplot()
    rows = min(rows, len(x))
    cols = 1 + len(relevances)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows + 0.5), dpi=120, squeeze=False)
    for i in range(rows):
        image = x[i].transpose(1, 2, 0)
        ax = axes[i, 0]
        ax.imshow(image[..., 0] if image.shape[2] == 1 else _unit(image), cmap="gray")
        if masks is not None:
            ax.contour(masks[i].any(axis=0), levels=[0.5], colors="lime", linewidths=0.8)
        ax.set_ylabel(f"target {targets[i]}\npredicted {predicted[i]}", fontsize=7)
        for j, (label, relevance) in enumerate(relevances.items(), start=1):
            heat = relevance[i].sum(axis=0)
            scale = np.abs(heat).max() or 1.0
            axes[i, j].imshow(heat, cmap="bwr", vmin=-scale, vmax=scale)
            if masks is not None:
                axes[i, j].contour(masks[i].any(axis=0), levels=[0.5], colors="k", linewidths=0.5)
    for j, label in enumerate(relevances, start=1):
        share = (mask_share or {}).get(label)
        axes[0, j].set_title(label + (f"\nR⁺ on mask {share:.2f}" if share is not None else ""), fontsize=7)
    axes[0, 0].set_title("input", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _unit(image: np.ndarray) -> np.ndarray:
    lo, hi = float(image.min()), float(image.max())
    return (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)


def token_ablation_curves(path, result, title: str = "") -> None:
    """Mean p of the target against the fraction of tokens ablated: MoRF solid, LeRF dashed, one colour per
    method; the areas and ΔA in the legend."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    grid = np.asarray(result.grid)
    colours = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    for label, curves in result.curves.items():
        auc = result.auc[label]
        if label == "random":
            ax.plot(grid, curves["morf"], color="0.4", linestyle=":", linewidth=1.6,
                    label=f"random  AUC {auc['morf']:.3f}")
            continue
        colour = next(colours)
        ax.plot(grid, curves["morf"], color=colour, linewidth=1.6, label=f"{label} MoRF  AUC {auc['morf']:.3f}")
        ax.plot(grid, curves["lerf"], color=colour, linewidth=1.6, linestyle="--",
                label=f"{label} LeRF  AUC {auc['lerf']:.3f}  (ΔA {result.delta[label]:.3f})")
    ax.set_xlabel("fraction of tokens whose embedding is set to zero")
    ax.set_ylabel("softmax probability of the target")
    ax.set_title(title or "token ablation")
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
