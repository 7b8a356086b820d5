"""The explainers ``relgraph evaluate`` compares: one compiled per method (patterns fitted on training data for
PatternNet / PatternAttribution, the data's range as bounds for z^B), or given, and the relevance each returns."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx.utils import Extractor

from ..compiler import compile
from ..errors import RelgraphError
from ..explainer import Explainer
from ..export import save
from ..patterns import fit_patterns
from ..rules import RULE_NAMES
from .data import load_dataset
from .images import RANDOM

DEFAULT_METHODS = ("gradient", "input-x-gradient", "epsilon", "epsilon-plus-flat", "patternattribution")
TOKEN_METHODS = ("attnlrp", "cp-lrp", "input-x-gradient")  # the default methods on a token model
PATTERN_METHODS = ("patternnet", "patternattribution")
BOX_METHODS = ("zbox", "epsilon-gamma-box")   # need input bounds: the data's range
TRAIN_FILES = ("train_x.npy", "train.npz")     # training data beside a model, for fitting patterns


def forward_of(explainer_path: str):
    """The classifier inside an explainer: the subgraph from its input to its logits."""
    proto = onnx.load(explainer_path)
    meta = {p.key: p.value for p in proto.metadata_props}
    return Extractor(proto).extract_model([meta["relgraph.input"]], [meta["relgraph.logits"]])


def check_methods(methods: list[str]) -> None:
    for m in methods:
        if m != RANDOM and m not in RULE_NAMES:
            raise RelgraphError(f"unknown method '{m}' (known: {', '.join(RULE_NAMES)}, {RANDOM})")


def training_data(model_path: str, train: str | None, data_path: str) -> str | None:
    """Where to fit patterns: ``--train``, else a training split beside the model; never the evaluation data."""
    if train is None:
        folder = Path(model_path).resolve().parent
        train = next((str(folder / f) for f in TRAIN_FILES if (folder / f).is_file()), None)
        if train is None:
            return None
    if Path(train).resolve() == Path(data_path).resolve():
        raise RelgraphError("patterns must be fitted on training data, not on the evaluation data: "
                            "pass another --train")
    return train


def compile_methods(model_path: str, methods: list[str], folder: str, *, bounds, train, explicit: bool,
                    notes: list) -> dict[str, str]:
    """Compile one explainer per method into ``folder``; label → path.

    Pattern methods fit two-component patterns (Kindermans et al.'s best estimator, S_a±) on ``train``;
    without training data they are left out with a note unless the user asked for them.
    """
    paths, patterns = {}, None
    for method in methods:
        if method == RANDOM:
            continue
        kwargs = {}
        if method in BOX_METHODS:
            kwargs["bounds"] = bounds
        if method in PATTERN_METHODS:
            if train is None:
                if explicit:
                    raise RelgraphError(f"{method} needs training data to fit its patterns: pass --train DATA")
                notes.append(f"{method} left out: no training data to fit patterns on (pass --train DATA)")
                continue
            if patterns is None:
                patterns = _fit_patterns(model_path, train, notes)
            kwargs["patterns"] = patterns
        result = compile(model_path, rule=method, write=False, **kwargs)
        paths[method] = os.path.join(folder, f"{method}.onnx")
        save(result.skeleton, paths[method], overwrite=True, aside=result.weights)
    return paths


def _fit_patterns(model_path: str, train: str, notes: list) -> dict:
    data = load_dataset(train).x
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        patterns = fit_patterns(model_path, data, estimator="two-component", progress=True)
    notes.extend(str(w.message) for w in caught)
    notes.append(f"patterns: two-component (S_a±), fitted on {len(data)} samples of {train}")
    return patterns


def token_relevance_of(explainer_path: str, ids: np.ndarray, mask: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """A token explainer's relevance per token, [N, S]."""
    explainer = Explainer(explainer_path, spinning=False)
    if not explainer.tokens:
        raise RelgraphError(f"{explainer_path} does not explain token ids; the data are token ids")
    inputs = {"attention_mask": mask} if "attention_mask" in explainer.inputs else None
    return explainer.explain(ids, targets, inputs=inputs)["relevance"]


def relevance_of(explainer_path: str, x: np.ndarray, targets: np.ndarray, batch: int = 256) -> np.ndarray:
    explainer = Explainer(explainer_path, spinning=False)
    if explainer.input_shape[1:] != list(x.shape[1:]):
        raise RelgraphError(f"{explainer_path} expects inputs {explainer.input_shape}, the data are "
                            f"{list(x.shape)}")
    return np.concatenate([explainer.explain(x[i:i + batch], targets[i:i + batch])["relevance"]
                           for i in range(0, len(x), batch)])
