"""The evaluation data: images [N, C, H, W] with optional labels and masks, or token ids with their attention
mask, from .npy, .npz or a folder; every array checked before anything runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import RelgraphError


@dataclass
class Dataset:
    x: np.ndarray
    labels: np.ndarray | None
    masks: np.ndarray | None
    source: str


def _read_npy(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise RelgraphError(f"{what} not found: {path}")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise RelgraphError(f"cannot read {what} {path} as a .npy array: {exc}") from None


def load_dataset(data, labels=None, masks=None) -> Dataset:
    """Images, and optionally labels and masks, from a .npy (images only), a .npz or a folder.

    A .npz holds ``x`` and optionally ``y`` and ``masks``; a folder holds ``x.npy`` and optionally
    ``y.npy`` and ``masks.npy``. ``labels`` / ``masks`` paths override what the data carry. Images are
    converted to float32 (float16 on disk is fine); labels to int64; masks to bool.
    """
    path = Path(data)
    arrays = {}
    if path.is_dir():
        for key, name in (("x", "x.npy"), ("y", "y.npy"), ("masks", "masks.npy")):
            if (path / name).is_file():
                arrays[key] = _read_npy(path / name, name)
        if "x" not in arrays:
            raise RelgraphError(f"data folder {path} has no x.npy (expected x.npy, y.npy, masks.npy)")
    elif not path.exists():
        raise RelgraphError(f"data not found: {path}")
    elif path.suffix.lower() == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("x", "y", "masks") if k in z.files}
        except Exception as exc:
            raise RelgraphError(f"cannot read {path} as a .npz archive: {exc}") from None
        if "x" not in arrays:
            raise RelgraphError(f"{path} has no array 'x' (expected x, and optionally y and masks)")
    elif path.suffix.lower() == ".npy":
        arrays["x"] = _read_npy(path, "data")
    else:
        raise RelgraphError(f"data must be a .npy, a .npz or a folder, got {path}")
    if labels is not None:
        arrays["y"] = _read_npy(Path(labels), "labels")
    if masks is not None:
        arrays["masks"] = _read_npy(Path(masks), "masks")
    return _checked(arrays, str(path))


def _checked(arrays: dict, source: str) -> Dataset:
    x = arrays["x"]
    if x.dtype.kind != "f":
        raise RelgraphError(f"data {source} has dtype {x.dtype}; expected floating-point images")
    x = x.astype(np.float32)
    if x.ndim != 4:
        raise RelgraphError(f"data {source} has shape {list(x.shape)}; evaluate needs images [N, C, H, W]")
    if not np.all(np.isfinite(x)):
        raise RelgraphError(f"data {source} contains NaN or infinite values")
    y = arrays.get("y")
    if y is not None:
        if y.dtype.kind not in "iu" or y.shape != (len(x),):
            raise RelgraphError(f"labels must be integers of shape [{len(x)}] (one per image), got "
                                f"{y.dtype} {list(y.shape)}")
        y = y.astype(np.int64)
    m = arrays.get("masks")
    if m is not None:
        if m.ndim == 3:
            m = m[:, None]
        if m.ndim != 4 or len(m) != len(x) or m.shape[2:] != x.shape[2:] or m.shape[1] not in (1, x.shape[1]):
            raise RelgraphError(f"masks have shape {list(arrays['masks'].shape)}; for images {list(x.shape)} "
                                f"they must be [N, H, W], [N, 1, H, W] or [N, C, H, W]")
        m = m.astype(bool)
    return Dataset(x, y, m, source)


@dataclass
class TokenData:
    ids: np.ndarray
    mask: np.ndarray
    labels: np.ndarray | None
    source: str


def is_token_data(path) -> bool:
    """Whether ``path`` is a .npz of token ids (it holds ``input_ids``)."""
    path = Path(path)
    if path.suffix.lower() != ".npz" or not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            return "input_ids" in z.files
    except Exception:
        return False


def load_token_data(path, labels=None) -> TokenData:
    """Token ids from a .npz: ``input_ids`` int [N, S], optionally ``attention_mask`` [N, S] (default all ones)
    and ``y`` int [N]; ``labels`` (a .npy) overrides ``y``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("input_ids", "attention_mask", "y") if k in z.files}
    except Exception as exc:
        raise RelgraphError(f"cannot read {path} as a .npz archive: {exc}") from None
    ids = arrays["input_ids"]
    if ids.dtype.kind not in "iu" or ids.ndim != 2:
        raise RelgraphError(f"input_ids in {path} must be integers [N, S], got {ids.dtype} {list(ids.shape)}")
    mask = arrays.get("attention_mask", np.ones_like(ids))
    if mask.shape != ids.shape or mask.dtype.kind not in "iub":
        raise RelgraphError(f"attention_mask in {path} must be integers of the ids' shape {list(ids.shape)}, got "
                            f"{mask.dtype} {list(mask.shape)}")
    y = _read_npy(Path(labels), "labels") if labels is not None else arrays.get("y")
    if y is not None:
        if y.dtype.kind not in "iu" or y.shape != (len(ids),):
            raise RelgraphError(f"labels must be integers of shape [{len(ids)}] (one per sequence), got "
                                f"{y.dtype} {list(y.shape)}")
        y = y.astype(np.int64)
    return TokenData(ids.astype(np.int64), mask.astype(np.int64), y, str(path))
