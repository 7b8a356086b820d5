"""Learned signal estimators for PatternNet and PatternAttribution (Kindermans et al. 2018).

For one neuron of an affine layer, y = wᵀx + b (a convolution: x is one input patch, every spatial
position a sample), a signal estimator S splits the input into signal S(x) and distractor x − S(x).
The two estimators learned from data, with the bias taken as a constant that does not covary with y:

- linear (Eq. 4):         S_a(x) = a·wᵀx,      a = cov[x, y] / σ²_y
- two-component (Eq. 8):  S_a±(x) = a₊·wᵀx where y > 0, a₋·wᵀx elsewhere,

      a₊ = (E₊[xy] − E₊[x]·E[y]) / (wᵀE₊[xy] − wᵀE₊[x]·E[y])

  with E₊ the mean over the samples where y > 0 and E[y] the mean over all samples (a₋ likewise over
  y ≤ 0). Both satisfy wᵀa = 1: the signal reproduces the neuron's output.

A pattern has its layer's weight shape ([out, in] for Gemm, [Cout, Cin, k…] for Conv). PatternNet
back-projects the output along the patterns (R_x = R ⋆ᵀ A), PatternAttribution along W ⊙ A (the rules
live in :mod:`relgraph.rules.patternnet`). Patterns are saved as .npz: one array per layer (node) name —
a₊ for the two-component estimator, whose a₋ is stored as ``<name>::negative`` — and ``__estimator__``.

The quality of an estimator (Eq. 1) is how little of y a linear read-out can still find in the
distractor d = x − S(x):

    ρ(S) = 1 − max_v corr(y, vᵀd),

the max being the multiple correlation of a least-squares regression of y on d, which needs only the
second moments of x and the first moments of each regime (:func:`quality`).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from .errors import RelgraphError
from .files import replacing
from .statistics import LayerStats, StatisticsRunner

ESTIMATORS = ("linear", "two-component")
NEGATIVE = "::negative"
ESTIMATOR_KEY = "__estimator__"
# a neuron whose output variance is below this fraction of E[y²] is constant: the float32 per-batch sums
# leave about this much noise, and no pattern can be read from it
CONSTANT = 1e-6


# ------------------------------------------------------------------------------------------------ fitting


def fit_patterns(model_path, data, estimator: str = "linear", batch_size: int = 64, progress: bool = True,
                 *, providers=None) -> dict[str, np.ndarray]:
    """Fit the patterns of every Gemm and ungrouped Conv layer of ``model_path`` on ``data``.

    ``data``: a .npy file, a folder of .npy files (each [N, ...] or one sample) or an array, streamed in
    batches of ``batch_size``. Returns layer name → pattern (and ``<name>::negative`` → a₋ for the
    two-component estimator). Grouped convolutions are skipped with a warning.
    """
    check_estimator(estimator)
    stats = collect_statistics(model_path, data, two_component=estimator == "two-component",
                               batch_size=batch_size, progress=progress, providers=providers)
    return patterns_from(stats, estimator)


def collect_statistics(model_path, data, *, two_component: bool, batch_size: int = 64, progress: bool = True,
                       providers=None) -> dict[str, LayerStats]:
    """Stream ``data`` through the model's statistics graph (:mod:`relgraph.statistics`)."""
    runner = StatisticsRunner(model_path, two_component=two_component, providers=providers)
    for note in runner.skipped:
        warnings.warn(note, stacklevel=3)
    return runner.collect(runner.source(data), batch_size=batch_size, progress=progress, label="fitting patterns")


def check_estimator(estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise RelgraphError(f"unknown estimator '{estimator}' (known: {', '.join(ESTIMATORS)})")


def patterns_from(stats: dict[str, LayerStats], estimator: str) -> dict[str, np.ndarray]:
    """The closed form of ``estimator`` (Eq. 4 or Eq. 8) for every layer's sums."""
    check_estimator(estimator)
    out = {}
    for name, st in stats.items():
        shape = st.layer.weight.shape
        if estimator == "linear":
            out[name] = linear_pattern(st).reshape(shape).astype(np.float32)
            continue
        if "+" not in st.regimes:
            raise RelgraphError("the two-component estimator needs statistics collected with two_component=True")
        out[name] = regime_pattern(st, "+").reshape(shape).astype(np.float32)
        out[name + NEGATIVE] = regime_pattern(st, "-").reshape(shape).astype(np.float32)
    return out


def linear_pattern(st: LayerStats) -> np.ndarray:
    """Eq. 4 per neuron: a = cov[x, y] / σ²_y, as [K, D]; 0 for neurons whose output is constant."""
    r, n = st.all, st.n
    ex, ey = r.sum_x / n, r.sum_y / n
    cov_xy = r.sum_xy / n - ex * ey[:, None]
    var_y = r.sum_yy / n - ey ** 2
    varies = var_y > CONSTANT * (r.sum_yy / n)
    return np.where(varies[:, None], cov_xy / np.where(varies, var_y, 1.0)[:, None], 0.0)


def regime_pattern(st: LayerStats, regime: str) -> np.ndarray:
    """Eq. 8 per neuron for one regime ("+": y > 0, "-": y ≤ 0), as [K, D].

    num = E_r[xy] − E_r[x]·E[y] (E[y] over all samples, as the paper), a_r = num / (wᵀnum). A neuron
    never in the regime, or whose denominator vanishes against the numerator (the regime's signal is
    orthogonal to w: no direction reproduces y there), gets 0.
    """
    r = st.regimes[regime]
    ey = st.all.sum_y / st.n
    count = np.maximum(r.n, 1.0)[:, None]
    num = r.sum_xy / count - (r.sum_x / count) * ey[:, None]
    w = st.layer.matrix
    den = np.einsum("kd,kd->k", w, num)
    scale = np.linalg.norm(w, axis=1) * np.linalg.norm(num, axis=1)
    ok = (r.n > 0) & (np.abs(den) > 1e-6 * scale)
    return np.where(ok[:, None], num / np.where(ok, den, 1.0)[:, None], 0.0)


# ------------------------------------------------------------------------------------------------ files


def save_patterns(path, patterns: dict, estimator: str) -> None:
    """Write ``patterns`` and the estimator's name as .npz at exactly ``path``."""
    check_estimator(estimator)
    with replacing(path) as temporary, open(temporary, "wb") as f:
        np.savez(f, **{ESTIMATOR_KEY: np.array(estimator)}, **patterns)


def load_patterns(path) -> tuple[dict[str, np.ndarray], str | None]:
    """Read a patterns .npz: (layer name → float array, estimator name or None)."""
    path = str(path)
    if not os.path.isfile(path):
        raise RelgraphError(f"patterns file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as exc:
        raise RelgraphError(f"cannot read patterns {path}: not a .npz archive ({type(exc).__name__})") from None
    return check_patterns(arrays, path)


def check_patterns(arrays: dict, where: str = "patterns") -> tuple[dict[str, np.ndarray], str | None]:
    arrays = dict(arrays)
    estimator = arrays.pop(ESTIMATOR_KEY, None)
    estimator = None if estimator is None else str(estimator)
    for key, value in arrays.items():
        value = np.asarray(value)
        if value.dtype.kind != "f" or not np.all(np.isfinite(value)):
            raise RelgraphError(f"{where}: pattern '{key}' must be a finite float array, got {value.dtype}")
        arrays[key] = value
    if not arrays:
        raise RelgraphError(f"{where} holds no patterns")
    return arrays, estimator


# ------------------------------------------------------------------------------------------------ quality


QUALITY_NOTE = ("S_x (the identity) leaves the distractor x − S_x(x) = 0: corr(y, vᵀ0) is 0/0, so ρ(S_x) "
                "is undefined (n/a); as a limit it is 1 for every layer and says nothing")


@dataclass
class LayerQuality:
    """ρ(S) of Eq. 1 for one layer, averaged over its measured neurons; higher is better.

    In sample ρ ∈ [0, 1]; out of sample a read-out that does not generalize can anti-correlate with y,
    and ρ can exceed 1 a little.
    """

    layer: str
    op: str
    features: int                 # D: inputs per sample (a convolution: per patch)
    neurons: int                  # K
    measured: int                 # neurons evaluated (evenly spaced when K > max_neurons)
    constant: int                 # of those, neurons whose output does not vary: left out of the means
    samples: tuple                # (samples v was fitted on, samples ρ was measured on); patches count
    rho: dict = field(default_factory=dict)  # estimator → ρ; S_x is NaN (QUALITY_NOTE)
    note: str = ""


def quality(model_path, data, patterns: dict, *, split: float | None = 0.5, batch_size: int = 64,
            max_neurons: int = 64, max_features: int = 8192, progress: bool = True,
            providers=None) -> list[LayerQuality]:
    """ρ(S) (Eq. 1) per layer on held-out ``data`` for S_x, S_w = w·wᵀx / wᵀw and every pattern set.

    ``patterns``: label → patterns (a dict from :func:`fit_patterns` or a .npz path), e.g.
    ``{"S_a": linear, "S_a+-": two_component}``; a set with ``::negative`` entries is two-component.

    The read-out v is a least-squares regression of y on d = x − S(x). With ``split`` (the paper's
    protocol) it is fitted on the first ``split`` fraction of ``data`` and ρ is measured on the rest,
    on samples neither the patterns nor v have seen; ``split=None`` fits and measures on all of ``data``
    (an in-sample, optimistic correlation: ρ biased low, and meaningless when samples ≤ features).

    Every neuron needs its own D×D residual covariance and regression, so layers with more than
    ``max_neurons`` neurons are measured on that many evenly spaced neurons, and layers with more than
    ``max_features`` inputs per sample (the float64 Σ x xᵀ would not fit) are not measured at all.
    """
    sets = {label: _pattern_set(value) for label, value in patterns.items()}
    runner = StatisticsRunner(model_path, two_component=True, gram=True, providers=providers,
                              layer_filter=lambda layer: layer.features <= max_features)
    source = runner.source(data, "held-out data")
    fit, measured = _split_statistics(runner, source, split, batch_size, progress)
    results = []
    for layer in runner.all_layers:
        if layer.name in fit:
            results.append(_layer_quality(fit[layer.name], measured[layer.name], sets, max_neurons))
        else:
            results.append(LayerQuality(layer.name, layer.op, layer.features, layer.neurons, 0, 0, (0, 0), {},
                                        f"not measured: {layer.features} features > max_features {max_features}"))
    return results


def _pattern_set(value) -> dict:
    if isinstance(value, (str, os.PathLike)):
        return load_patterns(value)[0]
    return check_patterns(value)[0]


def _split_statistics(runner, source, split, batch_size, progress):
    if split is None:
        stats = runner.collect(source, batch_size=batch_size, progress=progress, label="quality")
        return stats, stats
    cut = int(round(source.count * split))
    if not 0 < cut < source.count:
        raise RelgraphError(f"split {split} of {source.count} held-out samples leaves one part empty")
    fit = runner.collect(source, batch_size=batch_size, stop=cut, progress=progress, label="quality (read-out)")
    measured = runner.collect(source, batch_size=batch_size, start=cut, progress=progress, label="quality")
    return fit, measured


def _layer_quality(fit: LayerStats, measured: LayerStats, sets: dict, max_neurons: int) -> LayerQuality:
    layer = fit.layer
    estimators = _estimators(layer, sets)
    neurons = _neuron_subset(layer.neurons, max_neurons)
    per_neuron = {label: [] for label in estimators}
    constant = 0
    for k in neurons:
        if _constant(fit, k) or _constant(measured, k):
            constant += 1
            continue
        for label, parts in estimators.items():
            per_neuron[label].append(neuron_rho(fit, measured, k, [(regime, a[k]) for regime, a in parts]))
    rho = {"S_x": float("nan")}
    rho.update({label: float(np.mean(v)) if v else float("nan") for label, v in per_neuron.items()})
    return LayerQuality(layer.name, layer.op, layer.features, layer.neurons, len(neurons), constant,
                        (int(fit.n), int(measured.n)), rho)


def _estimators(layer, sets: dict) -> dict:
    """label → [(regime, A as [K, D])]: S(x) = A_r[k]·wₖᵀx in regime r."""
    w = layer.matrix
    norm = np.einsum("kd,kd->k", w, w)
    out = {"S_w": [("all", w / np.where(norm > 0, norm, 1.0)[:, None])]}
    for label, patterns in sets.items():
        a = _pattern_matrix(patterns, layer.name, layer)
        negative = patterns.get(layer.name + NEGATIVE)
        if negative is None:
            out[label] = [("all", a)]
        else:
            out[label] = [("+", a), ("-", _pattern_matrix(patterns, layer.name + NEGATIVE, layer))]
    return out


def _pattern_matrix(patterns: dict, key: str, layer) -> np.ndarray:
    """The pattern as float64 [K, D], with wᵀa = 1 restored where float32 storage rounded it.

    The estimators satisfy wᵀa = 1, so d = x − a·wᵀx has no component along w. Stored in float32, wᵀa is
    1 only to ~1e-7, and d keeps a sliver (1 − wᵀa)·wᵀx that is perfectly correlated with y: the
    regression of Eq. 1 would read y from the rounding. Patterns far from wᵀa = 1 are left as they are.
    """
    a = patterns.get(key)
    if a is None:
        raise RelgraphError(f"no pattern for {layer.op} '{key}' (fitted for another model?)")
    if a.shape != layer.weight.shape:
        raise RelgraphError(f"pattern '{key}' has shape {list(a.shape)}, the layer's weight "
                            f"{list(layer.weight.shape)}")
    a = a.reshape(layer.neurons, -1).astype(np.float64)
    dots = np.einsum("kd,kd->k", layer.matrix, a)
    rounded = np.abs(dots - 1) < 1e-4
    return np.where(rounded[:, None], a / np.where(rounded, dots, 1.0)[:, None], a)


def _neuron_subset(k: int, limit: int) -> list[int]:
    if k <= limit:
        return list(range(k))
    return sorted(set(np.linspace(0, k - 1, limit).round().astype(int).tolist()))


def _constant(st: LayerStats, k: int) -> bool:
    r = st.all
    ey, eyy = r.sum_y[k] / st.n, r.sum_yy[k] / st.n
    return eyy - ey ** 2 <= CONSTANT * eyy


def neuron_rho(fit: LayerStats, measured: LayerStats, k: int, estimator: list) -> float:
    """1 − corr(y, vᵀd) on ``measured`` for v = the least-squares read-out of y from d on ``fit``.

    With ``fit`` = ``measured`` this is 1 − the multiple correlation √(cᵀ Σ_dd⁺ c / σ²_y).
    """
    cov_f, c_f, _ = residual_moments(fit, k, estimator)
    cov_m, c_m, var_m = residual_moments(measured, k, estimator)
    v = _least_squares(cov_f, c_f)
    spread = float(v @ cov_m @ v) * var_m
    return 1.0 - (float(v @ c_m) / np.sqrt(spread) if spread > 0 else 0.0)


def residual_moments(st: LayerStats, k: int, estimator: list):
    """cov[d], cov[d, y] and σ²_y of neuron k for d = x − A_r·u, u = wₖᵀx = y − b, r the sample's regime.

    From the sums of each regime r (Σ_r u = Σ_r y − b·n_r, Σ_r xu = Σ_r xy − b·Σ_r x, …):

        E[d]   = E[x]   − Σ_r A_r·Σ_r u / n
        E[dy]  = E[xy]  − Σ_r A_r·Σ_r uy / n
        E[ddᵀ] = E[xxᵀ] − Σ_r (A_r·Σ_r xuᵀ + Σ_r xu·A_rᵀ − A_r A_rᵀ·Σ_r u²) / n
    """
    n, b, r = st.n, st.layer.bias[k], st.all
    ex, ey = r.sum_x[k] / n, r.sum_y[k] / n
    e_d, e_dy, e_dd = ex.copy(), r.sum_xy[k] / n, st.gram / n
    for regime, a in estimator:
        g = st.regimes[regime]
        nr, sy, syy = g.n[k], g.sum_y[k], g.sum_yy[k]
        su, suy, suu = sy - b * nr, syy - b * sy, syy - 2 * b * sy + b * b * nr
        sxu = g.sum_xy[k] - b * g.sum_x[k]
        e_d = e_d - a * su / n
        e_dy = e_dy - a * suy / n
        e_dd = e_dd - (np.outer(a, sxu) + np.outer(sxu, a) - np.outer(a, a) * suu) / n
    var_y = r.sum_yy[k] / n - ey ** 2
    return e_dd - np.outer(e_d, e_d), e_dy - e_d * ey, var_y


def _least_squares(cov: np.ndarray, c: np.ndarray) -> np.ndarray:
    """v = (cov + λI)⁻¹ c with a vanishing ridge λ = 1e-9 · mean variance: the least-squares read-out.

    cov is singular by construction (wᵀd = 0 for S_w and S_a) and constant inputs (a border pixel, a dead
    channel) add null directions; c has no component there, so the ridge only keeps the solve defined and
    leaves every direction that carries variance as the pseudo-inverse would.
    """
    scale = np.trace(cov) / len(cov)
    if scale <= 0:
        return np.zeros_like(c)
    return np.linalg.solve(cov + 1e-9 * scale * np.eye(len(cov)), c)
