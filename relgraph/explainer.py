"""Run a compiled explainer: one call returns the logits and the relevance (onnxruntime, OpenVINO or onnx's
reference evaluator, :mod:`relgraph.runtimes`)."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx

from .errors import RelgraphError
from .fixed_batch import filled_rows
from .runtimes import open_session

EXPLAINER_KEY = "relgraph.input"  # the compile record's key naming the explained input
DEFAULT_BATCH = 64  # samples per session call: bounds the session's working memory, not the input's size


class Explainer:
    """A compiled explainer (``*.onnx``) in a session of one ONNX runtime.

    ``explain(x, target)`` returns a dict with ``logits`` [N, C], ``relevance`` (x's shape),
    ``bias_relevance`` [N], ``target`` [N] (the explained classes) and ``outputs`` (every output of the
    model by name, per-layer bias relevance included when compiled with it), whichever runtime computes it.

    ``runtime``: "onnxruntime" (default), "openvino" or "reference" (:mod:`relgraph.runtimes`);
    ``threads``: intra-op threads; ``spinning=False`` stops onnxruntime's idle worker threads from spinning;
    ``providers``: onnxruntime's execution providers; ``device``: OpenVINO's device (CPU, GPU, NPU).

    On a folder compiled with ``--target triton`` it runs the folder's ``explainer.onnx``;
    :func:`open_explainer` opens the folder's launch plan instead.
    """

    def __init__(self, path, *, runtime: str = "onnxruntime", threads: int | None = None, spinning: bool = True,
                 providers=None, device: str | None = None):
        path = str(path)
        if os.path.isdir(path):  # a triton folder holds the ONNX explainer it was lowered from
            path = os.path.join(path, "explainer.onnx")
        self._read_record(read_explainer(path, weights=False), path)
        self.path = path
        if runtime != "onnxruntime" and self.metadata.get("relgraph.form") == "functions":
            raise RelgraphError(f"{path} keeps relgraph's local functions, which only onnxruntime expands; "
                                f"compile it without --keep-functions to run it on {runtime}")
        self.session = open_session(path, runtime, threads=threads, spinning=spinning, providers=providers,
                                    device=device)
        self.runtime = runtime
        self.inputs = self.session.inputs
        self.input_shape = _recorded(self.session.inputs, self.input_name, "input", path)
        logits = _recorded(self.session.outputs, self.logits_name, "logits output", path)
        self.num_classes = logits[1]
        self.output_names = list(self.session.outputs)

    def _read_record(self, proto: onnx.ModelProto, path: str) -> None:
        """What the compiler recorded in the explainer's metadata, and its inputs' element types."""
        self.metadata = {p.key: p.value for p in proto.metadata_props}
        self.rule = self.metadata.get("relgraph.rule", "")
        self.input_name = self.metadata[EXPLAINER_KEY]
        self.logits_name = self.metadata.get("relgraph.logits", "")
        try:
            self.rules = json.loads(self.metadata.get("relgraph.rules", "{}"))
        except ValueError:
            raise RelgraphError(f"{path}: its compile record (relgraph.rules) is not JSON; recompile it") from None
        self.tokens = self.metadata.get("relgraph.tokens") == "true"  # fed token ids, explained per token
        self.vocabulary = int(self.metadata.get("relgraph.vocabulary", 0)) or None
        self.input_dtypes = {v.name: onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)
                             for v in proto.graph.input if v.type.tensor_type.elem_type}

    def prepare(self, x) -> np.ndarray:
        """Check and batch an input: float array of the model's shape (token ids: integers in the vocabulary),
        batch axis optional."""
        if self.tokens:
            x = self.batched(x).astype(np.int64, copy=False)
            if self.vocabulary and x.size and (x.min() < 0 or x.max() >= self.vocabulary):
                bad = x[(x < 0) | (x >= self.vocabulary)][0]
                raise RelgraphError(f"token id {bad} is out of the vocabulary (0..{self.vocabulary - 1})")
            return np.ascontiguousarray(x)
        x = self.batched(x).astype(np.float32, copy=False)
        if not np.all(np.isfinite(x)):
            raise RelgraphError("input contains NaN or infinite values")
        return np.ascontiguousarray(x)

    def batched(self, x) -> np.ndarray:
        """:meth:`prepare`'s checks of dtype and shape, and the batch axis, without reading the values: a
        memory-mapped input stays mapped (the values are checked chunk by chunk as they are explained)."""
        x = np.asarray(x)
        if self.tokens:
            if x.dtype.kind not in "iu":
                raise RelgraphError(f"input '{self.input_name}' holds token ids: an integer array, got dtype {x.dtype}")
        elif x.dtype.kind not in "fiu" or x.dtype == bool:
            raise RelgraphError(f"input must be a float array, got dtype {x.dtype}")
        elif x.dtype.kind != "f":
            raise RelgraphError(f"input must be a float array, got integer dtype {x.dtype}")
        sample = self.input_shape[1:]
        if list(x.shape) == [d for d in sample] and None not in sample:
            x = x[None]
        if x.ndim != len(self.input_shape) or any(d is not None and d != s for d, s in zip(sample, x.shape[1:])):
            expected = "[N, " + ", ".join(str(d) for d in sample) + "]"
            raise RelgraphError(f"input has shape {list(x.shape)}, the model expects {expected}")
        return x

    def targets(self, target, n: int) -> np.ndarray:
        if target is None:
            return np.full(n, -1, np.int64)
        t = np.asarray(target)
        if t.dtype.kind not in "iu":
            raise RelgraphError(f"target must be an integer class index, got {target!r}")
        t = np.broadcast_to(t.astype(np.int64), (n,)) if t.ndim == 0 else t.astype(np.int64)
        if t.shape != (n,):
            raise RelgraphError(f"target has shape {list(t.shape)}, expected [{n}]")
        if self.num_classes is not None and np.any((t < -1) | (t >= self.num_classes)):
            bad = t[(t < -1) | (t >= self.num_classes)][0]
            raise RelgraphError(f"target {bad} is out of range: the model has {self.num_classes} classes "
                                f"(0..{self.num_classes - 1}, or -1 for the predicted class)")
        return np.ascontiguousarray(t)

    def side_inputs(self, inputs: dict | None, n: int) -> dict:
        """The model's other inputs (a token model's ``attention_mask``, ``token_type_ids``), [N, …] each.

        Hugging Face's defaults fill what is not given: an attention mask of ones, token types and position ids
        as for a single segment. Any other input must be given.
        """
        inputs = dict(inputs or {})
        shape = self.inputs
        wanted = [name for name in shape if name not in (self.input_name, "target", "baseline")]
        unknown = sorted(set(inputs) - set(wanted))
        if unknown:
            raise RelgraphError(f"the model has no input {', '.join(map(repr, unknown))} (its other inputs: "
                                f"{', '.join(wanted) or 'none'})")
        seq = self.input_shape[1] if len(self.input_shape) > 1 else None
        out = {}
        for name in wanted:
            if name in inputs:
                v = np.asarray(inputs[name])
                if v.ndim == len(shape[name]) - 1:
                    v = v[None]
                if v.shape[0] != n or any(d is not None and d != g for d, g in zip(shape[name][1:], v.shape[1:])):
                    raise RelgraphError(f"input '{name}' has shape {list(v.shape)}, expected "
                                        f"[{n}, {', '.join(str(d) for d in shape[name][1:])}]")
                out[name] = np.ascontiguousarray(v.astype(self.input_dtypes[name], copy=False))
            elif name in ("attention_mask", "token_type_ids", "position_ids") and seq is not None:
                fill = np.arange(seq) if name == "position_ids" else np.full(seq, name == "attention_mask")
                out[name] = np.ascontiguousarray(np.broadcast_to(fill, (n, seq)).astype(self.input_dtypes[name]))
            else:
                raise RelgraphError(f"the model needs input '{name}' {shape[name]} as well")
        return out

    def explain(self, x, target=None, *, baseline=None, batch_size: int | None = DEFAULT_BATCH,
                inputs: dict | None = None) -> dict:
        """``baseline`` (compare-to-baseline rules only): one sample or [N, ...]; default: the compiled one.
        ``inputs``: the model's other inputs by name (:meth:`side_inputs`).

        The session runs on ``batch_size`` samples at a time (None: all at once), so its working memory
        is a chunk's; the results are written into arrays of the whole batch as they come.
        """
        n = self.batched(x).shape[0]
        result = None
        for start, out in self.explain_chunks(x, target, baseline=baseline, batch_size=batch_size, inputs=inputs):
            if result is None:
                result = {k: np.empty((n, *v.shape[1:]), v.dtype) for k, v in out["outputs"].items()}
                result["target"] = np.empty(n, np.int64)
            stop = start + len(out["target"])
            for k, v in out["outputs"].items():
                result[k][start:stop] = v
            result["target"][start:stop] = out["target"]
        chosen = result.pop("target")
        return {"logits": result[self.logits_name], "relevance": result["relevance"],
                "bias_relevance": result["bias_relevance"], "target": chosen, "outputs": result}

    def explain_chunks(self, x, target=None, *, baseline=None, batch_size: int | None = DEFAULT_BATCH,
                       inputs: dict | None = None):
        """Yield ``(start, out)`` for each chunk of ``batch_size`` samples, ``out`` as :meth:`explain`
        returns it for rows start..start + len(chunk); for callers that stream results to disk. Each
        chunk is converted and checked (:meth:`prepare`) when its turn comes."""
        x = self.batched(x)
        t = self.targets(target, x.shape[0])
        side = self.side_inputs(inputs, x.shape[0])
        if batch_size is not None and batch_size < 1:
            raise RelgraphError(f"batch size must be at least 1, got {batch_size}")
        b = None
        if baseline is not None:
            if "baseline" not in self.overridable_inputs():
                raise RelgraphError(f"rule '{self.rule}' does not compare to a baseline")
            b = self.prepare(baseline)
            if b.shape[0] not in (1, x.shape[0]):
                raise RelgraphError(f"baseline has {b.shape[0]} samples: give one for all samples or one per "
                                    f"sample ({x.shape[0]})")
        fixed = self.fixed_batch
        step = fixed or (max(x.shape[0], 1) if batch_size is None else batch_size)
        for start in range(0, max(x.shape[0], 1), step):
            feed = {self.input_name: self.prepare(x[start:start + step]), "target": t[start:start + step],
                    **{name: v[start:start + step] for name, v in side.items()}}
            if b is not None:  # one baseline for all, or one per sample
                feed["baseline"] = b if b.shape[0] == 1 else b[start:start + step]
            rows = len(feed["target"])
            if fixed and rows < fixed:  # the last chunk of a fixed-batch explainer, filled up with its last row
                feed = {k: v if k == "baseline" and v.shape[0] == 1 else _filled(v, fixed) for k, v in feed.items()}
            outputs = self.run(feed)
            if rows < len(feed["target"]):
                outputs = {k: v[:rows] for k, v in outputs.items()}
            logits, wanted = outputs[self.logits_name], feed["target"][:rows]
            chosen = np.where(wanted < 0, logits.argmax(1), wanted)
            yield start, {"logits": logits, "relevance": outputs["relevance"],
                          "bias_relevance": outputs["bias_relevance"], "target": chosen, "outputs": outputs}

    @property
    def device(self) -> str:
        """Where it runs, in words (onnxruntime: its first execution provider)."""
        return self.session.device

    def overridable_inputs(self) -> set[str]:
        """Inputs a caller may feed: the graph's, and initializers with a default (the baseline)."""
        return self.session.feedable

    @property
    def fixed_batch(self) -> int | None:
        """The batch size of an explainer whose model was exported for one batch size (its masks and Expand shapes
        spell it out, and ``--keep-functions`` keeps it: the portable form scans chunks of it, see
        :mod:`relgraph.fixed_batch`); None for any batch. :meth:`explain` runs such an explainer on chunks of
        exactly that size, the last one filled up with copies of its last sample, whose results are dropped:
        each sample's relevance depends on that sample alone."""
        fixed = self.inputs.get("target", [None])[0]
        return fixed if isinstance(fixed, int) else None

    def run(self, feed: dict) -> dict:
        """Every output by name, as numpy arrays."""
        fixed = self.fixed_batch
        if fixed and "target" in feed and len(feed["target"]) != fixed:
            raise RelgraphError(f"this explainer takes batches of exactly {fixed} samples (its model was exported "
                                f"with a fixed batch size), not {len(feed['target'])}: export the model with a "
                                "dynamic batch axis")
        return self.session.run(feed)


def _filled(a: np.ndarray, rows: int) -> np.ndarray:
    """``a`` [k, ...] with its last row repeated up to ``rows`` rows, as the Scan of a portable explainer fills
    its last chunk."""
    return a[filled_rows(len(a), rows)]


BACKENDS = ("onnxruntime", "triton")


def baseline_default(proto: onnx.ModelProto) -> np.ndarray:
    """The baseline a compare-to-baseline explainer was compiled with: its ``baseline`` initializer [1, ...]."""
    found = [t for t in proto.graph.initializer if t.name == "baseline"]
    if not found:
        raise RelgraphError("this explainer has no compiled baseline")
    return onnx.numpy_helper.to_array(found[0])


def read_onnx(path, what: str = "model", *, weights: bool = True) -> onnx.ModelProto:
    """An ONNX file's ModelProto (``weights=False``: external weight files are not read), or a one-line
    error for a missing or unreadable file."""
    path = str(path)
    if not os.path.isfile(path):
        raise RelgraphError(f"{what} not found: {path}")
    try:
        return onnx.load(path, load_external_data=weights)
    except Exception:
        raise RelgraphError(f"not a readable ONNX model: {path}") from None


def is_explainer(proto: onnx.ModelProto) -> bool:
    """Whether relgraph compiled this model (its compile record names the explained input)."""
    return any(p.key == EXPLAINER_KEY for p in proto.metadata_props)


def _recorded(values: dict, name: str, what: str, path: str) -> list:
    """The dimensions of the session input or output the compile record names, or a one-line error for an
    edited record."""
    found = values.get(name)
    if found is None or ("logits" in what and len(found) != 2):
        raise RelgraphError(f"{path}: its compile record names the {what} '{name}', which the graph does not "
                            "have as such; recompile the model")
    return found


def read_explainer(path, *, weights: bool = True) -> onnx.ModelProto:
    """A compiled explainer's ModelProto, or a one-line error for anything else."""
    proto = read_onnx(path, "explainer", weights=weights)
    if not is_explainer(proto):
        raise RelgraphError(f"{path} is not a relgraph explainer (compile it first: relgraph compile MODEL)")
    return proto


def open_explainer(path, *, backend: str | None = None, **options) -> Explainer:
    """The explainer at ``path`` with the backend that runs it: ``backend`` "onnxruntime" or "triton"; by default
    "triton" for a folder compiled with ``--target triton`` (a
    :class:`relgraph.lowering.explainer.TritonExplainer`), else "onnxruntime" (an :class:`Explainer`; on such a
    folder, its ``explainer.onnx``). ``options`` go to the explainer's constructor."""
    if backend_of(path, backend) == "triton":
        from .lowering.explainer import TritonExplainer  # optional: torch and triton

        return TritonExplainer(path, **options)
    return Explainer(path, **options)


def backend_of(path, backend: str | None = None) -> str:
    """The backend that runs ``path``: ``backend`` checked, or by default "triton" for a triton folder."""
    if backend is None:
        return "triton" if os.path.isfile(os.path.join(str(path), "plan.json")) else "onnxruntime"
    if backend not in BACKENDS:
        raise RelgraphError(f"unknown backend '{backend}' (choose one of: {', '.join(BACKENDS)})")
    return backend
