"""``relgraph.compile``: model.onnx → explainer.onnx.

    load → canonicalize (one pass per concern) → bias as input → relevance pass (rules) → export
"""

from __future__ import annotations

import functools
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from .errors import RelgraphError
from .export import explainer_proto, full_proto, save
from .files import check_output
from .frontend import prepare
from .passes import build_relevance
from .patterns import check_patterns, load_patterns
from .rules import RuleParams, load_rule_map, resolve, to_q_formulation
from .rules.patternnet import PATTERN_RULES
from .text import TOKENIZER_KEY, check_vocabulary, read_tokenizer
from .version import __version__


@dataclass
class CompileResult:
    path: str | None
    skeleton: onnx.ModelProto  # the explainer with its weights set aside (``weights.py``)
    weights: dict
    relevance: object
    skipped: list
    seconds: float

    @functools.cached_property
    def proto(self) -> onnx.ModelProto:
        """The explainer as one proto, weights inline (built on first use)."""
        return full_proto(self.skeleton, self.weights)


def default_output(model_path, rule: str) -> str:
    p = Path(model_path)
    return str(p.with_name(f"{p.stem}.{rule}.onnx"))


def parse_position(position) -> int:
    """'last' → −1; an integer (or its text) as it is."""
    if position in ("last", None):
        return -1
    try:
        return int(position)
    except (TypeError, ValueError):
        raise RelgraphError(f"--position must be 'last' or an integer, got '{position}'") from None


def composite_for(rule: str = "epsilon", rule_map=None, *, epsilon: float = RuleParams.epsilon,
                  gamma: float = RuleParams.gamma, alpha: float = RuleParams.alpha, beta: float = RuleParams.beta,
                  bounds=None, patterns=None, formulation: str = "r"):
    """(the composite, its label) for a named ``rule`` or a TOML ``rule_map``, with the rule parameters
    checked: what ``compile`` and ``relgraph inspect`` both apply."""
    for name, value in (("epsilon", epsilon), ("gamma", gamma), ("alpha", alpha), ("beta", beta),
                        *((("bounds", b) for b in bounds) if bounds is not None else ())):
        if not math.isfinite(value):
            raise RelgraphError(f"--{name} must be a finite number, got {value}")
    params = RuleParams(epsilon=epsilon, gamma=gamma, alpha=alpha, beta=beta)
    if bounds is not None:
        low, high = bounds
        if not low < high:
            raise RelgraphError(f"bounds must satisfy LOW < HIGH, got {low} {high}")
        params = replace(params, low=low, high=high)
    if patterns is not None:
        params = replace(params, patterns=_load_patterns(patterns))
    composite = load_rule_map(rule_map, params) if rule_map else resolve(rule, params)
    label = Path(rule_map).stem if rule_map else rule
    if formulation not in ("r", "q"):
        raise RelgraphError(f"--formulation must be 'r' or 'q', got '{formulation}'")
    if formulation == "q":
        composite, label = to_q_formulation(composite), f"{label}-q"
    return composite, label


def compile(model_path, rule: str = "epsilon", output: str | None = None, *, epsilon: float = RuleParams.epsilon,
            gamma: float = RuleParams.gamma, alpha: float = RuleParams.alpha, beta: float = RuleParams.beta,
            bounds=None, rule_map=None,
            bias_relevance: str = "total", input_name: str | None = None, overwrite: bool = False,
            formulation: str = "r", baseline=None, patterns=None, write: bool = True,
            target: str = "onnx", keep_functions: bool = False, input_shapes=None, position="last",
            embedding_relevance: bool = False, tokenizer=None) -> CompileResult:
    """Compile ``model_path`` into an explainer for ``rule`` (or a TOML ``rule_map``).

    ``target``: the graph is shaped for onnxruntime and other ONNX runtimes ("onnx") or for the triton
    lowering ("triton": the forms its kernels fuse; ``relgraph.lowering.compile_triton`` passes it).

    ``keep_functions``: keep relgraph's model-local functions (the compact form the triton lowering reads)
    instead of writing standard ONNX operators only (the portable default, see :mod:`relgraph.export`).

    ``input_shapes``: shapes that fix the inputs' dynamic dimensions, ``{"input": ["N", 3, 224, 224]}`` or
    ``["input=Nx3x224x224"]`` (``--input-shape``; see :func:`relgraph.frontend.fix_input_shapes`).

    ``position``: where the logits of a sequence model ([N, S, V], a language model's) are explained: "last"
    or a position K (negative counts from the end). ``embedding_relevance``: a token model's explainer also
    returns ``relevance_embedding`` [N, S, D] next to the per-token ``relevance`` [N, S].

    ``tokenizer``: a Hugging Face ``tokenizers`` file (``tokenizer.json``) stored in a token model's explainer
    (metadata ``relgraph.tokenizer``), so that it explains text (:mod:`relgraph.text`).

    ``patterns``: the fitted patterns the pattern rules read (``patternnet``, ``patternattribution``): a
    .npz file from ``relgraph fit-patterns`` or the dict :func:`relgraph.patterns.fit_patterns` returns.

    Returns the written path (default: ``MODEL.<rule>.onnx`` beside the model), the ModelProto, the
    relevance pass's decisions (node → rule) and what canonicalization skipped.
    """
    start = time.perf_counter()
    if bias_relevance not in ("total", "per-layer"):
        raise RelgraphError(f"--bias-relevance must be 'total' or 'per-layer', got '{bias_relevance}'")
    composite, label = composite_for(rule, rule_map, epsilon=epsilon, gamma=gamma, alpha=alpha, beta=beta,
                                     bounds=bounds, patterns=patterns, formulation=formulation)
    if baseline is not None:
        if composite.baseline is None:
            raise RelgraphError(f"--baseline applies to rules that compare to a baseline (deeplift), not '{label}'")
        composite.baseline = _load_baseline(baseline)
    if target not in ("onnx", "triton"):
        raise RelgraphError(f"target must be 'onnx' or 'triton', got '{target}'")
    if write:
        output = output or default_output(model_path, label)
        files = [f for f in (rule_map, baseline, patterns) if isinstance(f, (str, os.PathLike))]
        check_output(output, [model_path, *files], overwrite=overwrite)
    tokenizer_text = read_tokenizer(tokenizer) if tokenizer is not None else None
    model, skipped = prepare(model_path, input_shapes)
    relevance = build_relevance(model, composite, input_name=input_name,
                           per_layer_bias=bias_relevance == "per-layer", residual_shares=target == "onnx",
                           position=parse_position(position), embedding_relevance=embedding_relevance)
    if embedding_relevance and relevance.tokens is None:
        raise RelgraphError(f"--embedding-relevance applies to models fed token ids; input '{relevance.input.name}' "
                            "is the explained value itself")
    vocabulary = relevance.input.producer().inputs[0].shape[0] if relevance.tokens is not None else None
    if tokenizer_text is not None:
        if relevance.tokens is None:
            raise RelgraphError(f"--tokenizer applies to models fed token ids; input '{relevance.input.name}' is the "
                                "explained value itself")
        check_vocabulary(tokenizer_text, vocabulary, os.fspath(tokenizer))
    if patterns is not None and not any(c.rule in PATTERN_RULES for c in relevance.choices.values()):
        raise RelgraphError(f"--patterns applies to the pattern rules (patternnet, patternattribution), "
                            f"not '{label}'")
    metadata = {
        "relgraph.version": __version__,
        "relgraph.rule": composite.name,
        "relgraph.params": {k: v for k, v in vars(composite.params).items() if k != "patterns"},
        "relgraph.input": relevance.fed.name,
        "relgraph.tokens": relevance.tokens is not None,
        **({"relgraph.vocabulary": vocabulary} if relevance.tokens is not None else {}),
        **({TOKENIZER_KEY: tokenizer_text} if tokenizer_text is not None else {}),
        "relgraph.logits": relevance.logits_output,
        "relgraph.output_init": composite.output_init,
        "relgraph.rules": relevance.rules(),
    }
    form = "functions" if keep_functions or target == "triton" else "portable"
    proto, aside = explainer_proto(model, relevance, metadata, form=form)
    if write:
        save(proto, output, overwrite=overwrite, aside=aside)
    return CompileResult(output if write else None, proto, aside, relevance, skipped, time.perf_counter() - start)


def _load_patterns(patterns) -> dict:
    """A patterns .npz path, or a dict of layer name → array."""
    if isinstance(patterns, (str, os.PathLike)):
        return load_patterns(patterns)[0]
    if not isinstance(patterns, dict):
        raise RelgraphError(f"patterns must be a .npz path or a dict of arrays, got {type(patterns).__name__}")
    return check_patterns(patterns)[0]


def _load_baseline(baseline):
    """'zeros', a .npy path, or an array."""
    if isinstance(baseline, str):
        if baseline == "zeros":
            return "zeros"
        if not os.path.isfile(baseline):
            raise RelgraphError(f"baseline must be 'zeros' or a .npy file; not found: {baseline}")
        try:
            return np.load(baseline, allow_pickle=False).astype("float32")
        except Exception as exc:
            raise RelgraphError(f"cannot read baseline {baseline}: {exc}") from None
    return baseline
