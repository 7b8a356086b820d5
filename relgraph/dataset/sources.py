"""What ``explain-dataset`` reads: the files behind ``--data``, and their split into deterministic blocks.

``--data`` is a folder (searched recursively), a glob, or one file. Each file is a *source*:

| file | rows | sample |
|---|---|---|
| ``.npy`` | its first axis (one sample without a batch axis: 1 row) | ``x[i]`` |
| ``.npz`` | the first axis of its array ``x`` | ``x[i]`` |
| ``.parquet`` | its rows | the tensor column named like the model's input, ``x``, ``input`` or the only one |
| ``.png``, ``.jpg``, ``.jpeg`` | 1 | the picture, preprocessed as the model's ``relgraph.preprocess`` says |

A sample's id is ``"<source>:<row>"``, ``<source>`` the file's path relative to the folder (or to the glob's
fixed prefix), so ids do not depend on where the data are mounted. Sources are taken in sorted order and cut
into *blocks* of at most ``block_rows`` rows (consecutive rows of one array file, or consecutive picture
files): the same data and the same ``block_rows`` give the same blocks on every run, which is what lets a
rerun skip the blocks already written.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

import numpy as np

from ..errors import RelgraphError
from ..preprocess import Preprocess, decode_image, model_preprocess

ARRAY_KINDS = {".npy": "npy", ".npz": "npz", ".parquet": "parquet"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TENSOR_COLUMNS = ("x", "input")  # tried after the model's own input name


@dataclass(frozen=True)
class Source:
    name: str   # path relative to the data root: the id's prefix
    path: str
    kind: str   # npy, npz, parquet, image
    rows: int


@dataclass(frozen=True)
class Spec:
    """What a reader needs to turn rows into model inputs (sent to every read task)."""

    sample_shape: tuple            # the model's input without the batch axis
    input_name: str
    preprocess: dict | None        # Preprocess.as_dict() for pictures, None where pictures cannot be read


def spec_of(explainer) -> Spec:
    """The reading spec of an :class:`~relgraph.explainer.Explainer`: its input shape and picture preprocessing."""
    sample = tuple(explainer.input_shape[1:])
    if None in sample:
        raise RelgraphError(f"the explainer's input has a free dimension {list(explainer.input_shape)}: "
                            "explain-dataset needs a fixed sample shape")
    pre = model_preprocess(explainer.metadata)
    if pre is None and len(sample) == 3 and sample[0] in (1, 3):
        pre = Preprocess(channels=sample[0], height=sample[1], width=sample[2])  # pixels / 255, stretched
    return Spec(sample, explainer.input_name, pre.as_dict() if pre else None)


def discover(data: str) -> list[tuple[str, str]]:
    """(name, path) of every readable file behind ``data``, sorted by name."""
    suffixes = tuple(ARRAY_KINDS) + IMAGE_SUFFIXES
    if os.path.isdir(data):
        root = data
        paths = [os.path.join(d, f) for d, _, files in os.walk(data) for f in files]
    elif glob.has_magic(data):
        root = _fixed_prefix(data)
        paths = [p for p in glob.glob(data, recursive=True) if os.path.isfile(p)]
    elif os.path.isfile(data):
        if not data.lower().endswith(suffixes):
            raise RelgraphError(f"unsupported data file: {data} (use .npy, .npz, .parquet, .png or .jpg)")
        return [(os.path.basename(data), data)]
    else:
        raise RelgraphError(f"data not found: {data}")
    found = sorted((os.path.relpath(p, root).replace(os.sep, "/"), p) for p in paths
                   if p.lower().endswith(suffixes) and not os.path.basename(p).startswith((".", "_")))
    if not found:
        raise RelgraphError(f"no .npy, .npz, .parquet or image files in {data}")
    return found


def _fixed_prefix(pattern: str) -> str:
    parts = pattern.split(os.sep)
    fixed = []
    for part in parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return os.sep.join(fixed) or "."


def sources(data: str, spec: Spec) -> list[Source]:
    """Every source behind ``data`` with its row count; array files are checked against the model's input
    shape here, from their headers, so a wrong shape stops the run before anything is computed."""
    found = discover(data)
    out = []
    for name, path in found:
        suffix = os.path.splitext(path)[1].lower()
        if suffix in IMAGE_SUFFIXES:
            if spec.preprocess is None:
                raise RelgraphError(f"{path}: pictures need a model input [N, 1 or 3, H, W]; the explainer's is "
                                    f"[N, {', '.join(map(str, spec.sample_shape))}]")
            if len(found) == 1:  # one picture named directly: unreadable is an error, not a failed sample
                read_image(path, spec)
            out.append(Source(name, path, "image", 1))
        else:
            kind = ARRAY_KINDS[suffix]
            shape = _array_shape(path, kind, spec)
            out.append(Source(name, path, kind, _rows(shape, spec, path)))
    return out


def _rows(shape: tuple, spec: Spec, path: str) -> int:
    if tuple(shape) == spec.sample_shape:
        return 1
    if len(shape) != len(spec.sample_shape) + 1 or tuple(shape[1:]) != spec.sample_shape:
        raise RelgraphError(f"{path} holds shape {list(shape)}; the model expects "
                            f"[N, {', '.join(map(str, spec.sample_shape))}]")
    return int(shape[0])


def _array_shape(path: str, kind: str, spec: Spec) -> tuple:
    try:
        if kind == "npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            _check_dtype(array.dtype, path)
            return array.shape
        if kind == "npz":
            with np.load(path, allow_pickle=False) as z:
                if "x" not in z.files:
                    raise RelgraphError(f"{path} has no array 'x'")
                array = z["x"]
            _check_dtype(array.dtype, path)
            return array.shape
        import pyarrow.parquet as pq

        schema = pq.read_schema(path)
        column = _tensor_column(schema, spec, path)
        rows = pq.ParquetFile(path).metadata.num_rows
        return (rows, *_column_shape(schema.field(column).type, path))
    except RelgraphError:
        raise
    except Exception as exc:
        raise RelgraphError(f"cannot read {path} as {kind}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _check_dtype(dtype, path):
    if np.dtype(dtype).kind != "f":
        raise RelgraphError(f"{path} holds {dtype} values; the model takes floats")


def _tensor_column(schema, spec: Spec, path: str) -> str:
    for name in (spec.input_name, *TENSOR_COLUMNS):
        if name in schema.names:
            return name
    tensors = [f.name for f in schema if _is_tensor(f.type)]
    if len(tensors) == 1:
        return tensors[0]
    raise RelgraphError(f"{path}: no input column (looked for {spec.input_name!r}, 'x', 'input' or a single "
                        f"tensor column among {schema.names})")


def _is_tensor(t) -> bool:
    import pyarrow as pa

    return isinstance(t, pa.FixedShapeTensorType) or pa.types.is_fixed_size_list(t) or pa.types.is_list(t)


def _column_shape(t, path: str) -> tuple:
    import pyarrow as pa

    if isinstance(t, pa.FixedShapeTensorType):
        if not pa.types.is_floating(t.value_type):
            raise RelgraphError(f"{path}: the input column holds {t.value_type}; the model takes floats")
        return tuple(t.shape)
    if pa.types.is_fixed_size_list(t):
        return (t.list_size,)
    raise RelgraphError(f"{path}: the input column is {t}; store inputs as a fixed-shape tensor column")


def blocks(srcs: list[Source], block_rows: int) -> list[list[list]]:
    """The deterministic split: each block a list of segments ``[name, path, kind, start, stop]``."""
    out, current, size = [], [], 0
    for s in srcs:
        if s.kind == "image":
            current.append([s.name, s.path, s.kind, 0, 1])
            size += 1
            if size == block_rows:
                out.append(current)
                current, size = [], 0
            continue
        if current:  # an array file starts a block of its own
            out.append(current)
            current, size = [], 0
        for start in range(0, s.rows, block_rows):
            out.append([[s.name, s.path, s.kind, start, min(start + block_rows, s.rows)]])
    if current:
        out.append(current)
    return out


# ------------------------------------------------------------------------------------------------ reading


def read_segment(segment, spec: Spec):
    """Rows ``start:stop`` of one source as float32 [n, *sample] and one error message per row (None: read)."""
    name, path, kind, start, stop = segment
    n = stop - start
    if kind == "image":
        try:
            return read_image(path, spec)[None], [None]
        except RelgraphError as exc:
            return np.zeros((1, *spec.sample_shape), np.float32), [str(exc)]
    if kind == "npy":
        x = np.load(path, mmap_mode="r", allow_pickle=False)
        x = x.reshape(-1, *spec.sample_shape)[start:stop]
    elif kind == "npz":
        with np.load(path, allow_pickle=False) as z:
            x = z["x"].reshape(-1, *spec.sample_shape)[start:stop]
    else:
        x = _parquet_rows(path, spec, start, stop)
    x = np.asarray(x, np.float32)
    finite = np.isfinite(x.reshape(n, -1)).all(1)
    errors = [None if ok else "the sample contains NaN or infinite values" for ok in finite]
    return np.where(finite.reshape(n, *([1] * len(spec.sample_shape))), x, 0).astype(np.float32), errors


def read_image(path: str, spec: Spec) -> np.ndarray:
    """One picture as the model's input [*sample]; a one-line error for an unreadable file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise RelgraphError(f"cannot read {path}: {exc.strerror}") from None
    try:
        pixels = decode_image(data)
    except RelgraphError as exc:
        raise RelgraphError(f"cannot read image {path}: {exc}") from None
    pre = Preprocess(**{**spec.preprocess, "mean": tuple(spec.preprocess["mean"]),
                        "std": tuple(spec.preprocess["std"])})
    return pre(pixels)[0].reshape(spec.sample_shape)


def _parquet_rows(path: str, spec: Spec, start: int, stop: int) -> np.ndarray:
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    column = _tensor_column(f.schema_arrow, spec, path)
    # the row groups that cover [start, stop), then the slice
    first, offset, groups = 0, 0, []
    for g in range(f.metadata.num_row_groups):
        rows = f.metadata.row_group(g).num_rows
        if offset + rows > start and offset < stop:
            if not groups:
                first = offset
            groups.append(g)
        offset += rows
    table = f.read_row_groups(groups, columns=[column]).slice(start - first, stop - start)
    values = table.column(column).combine_chunks()
    if hasattr(values, "to_numpy_ndarray"):
        return values.to_numpy_ndarray()
    return np.asarray(values.flatten().to_numpy(zero_copy_only=False)).reshape(stop - start, *spec.sample_shape)
