"""Writing outputs without ever losing a file.

Every file relgraph writes goes through :func:`replacing`: the bytes go to a temporary file in the target
folder, which ``os.replace`` puts in place only once it is complete, so an interrupted run leaves the old
file (or none), never half of one. :func:`check_output` runs first: an output that *is* one of the inputs
(the same inode, however it is reached: symlink, hard link, ``..``) is refused even with ``--force``.
:class:`NpyRows` and :class:`NpzRows` write results as they are computed, block by block.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import zipfile
from typing import Iterable, Iterator

import numpy as np

from .errors import RelgraphError


def same_file(a, b) -> bool:
    """Whether paths ``a`` and ``b`` name one file (device and inode, through links); False if either is missing."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _candidates(path) -> list:
    """An input and, for a folder (a data folder, a triton explainer folder), the files directly in it."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        return [path]
    try:
        return [path] + [os.path.join(path, name) for name in os.listdir(path)]
    except OSError:
        return [path]


def check_output(path, inputs: Iterable = (), *, overwrite: bool = False) -> str:
    """Refuse an output that is an input (even with ``overwrite``), an existing one without ``overwrite``,
    a folder, or one below a regular file. Returns ``path`` as a string."""
    path = os.fspath(path)
    for given in inputs:
        if given is None:
            continue
        for candidate in _candidates(given):
            if same_file(path, candidate):
                raise RelgraphError(f"refusing to overwrite the input {candidate}: {path} is the same file; "
                                    "choose another -o")
    if os.path.isdir(path):
        raise RelgraphError(f"output is a folder: {path}")
    if os.path.lexists(path) and not overwrite:
        raise RelgraphError(f"output exists: {path} (pass --force to overwrite)")
    _check_folder(os.path.dirname(os.path.abspath(path)), path)
    return path


def _check_folder(folder: str, path: str) -> None:
    """The nearest existing ancestor of ``folder`` must be a folder (``-o model.onnx/out.npy`` is a mistake)."""
    while not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            return
        folder = parent
    if not os.path.isdir(folder):
        raise RelgraphError(f"cannot write {path}: {folder} is a file, not a folder")


def make_folder(folder) -> None:
    """``os.makedirs`` with a one-line error (a path below a file, no permission)."""
    folder = os.fspath(folder) or "."
    _check_folder(os.path.abspath(folder), folder)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise RelgraphError(f"cannot create the folder {folder}: {exc.strerror}") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def replacing(path) -> Iterator[str]:
    """Yield a temporary path beside ``path``; once the block finishes, it replaces ``path`` atomically.

    If the block raises, the temporary file is removed and ``path`` is untouched. The folder is created
    if missing. The new file gets the usual permissions (0666 less the umask), not mkstemp's 0600.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    make_folder(folder)
    try:
        # the same extension: writers that pick a format by it (np.save, savefig) see the real one
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.",
                                             suffix=".part" + os.path.splitext(path)[1])
    except OSError as exc:
        raise RelgraphError(f"cannot write {path}: {exc.strerror}") from None
    os.close(handle)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except OSError as exc:
        raise RelgraphError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)


def write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`replacing`."""
    with replacing(path) as temporary, open(temporary, "wb") as f:
        f.write(data)


class NpyRows:
    """A .npy file written block of rows by block of rows: the header ([n, ...], dtype) goes first, so the
    n rows are never held together. ``close`` checks that exactly n rows came."""

    def __init__(self, path, n: int, row_shape: tuple, dtype):
        self.path, self.n, self.row_shape, self.dtype, self.written = path, n, tuple(row_shape), np.dtype(dtype), 0
        self.file = open(path, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (n, *self.row_shape)}
        np.lib.format.write_array_header_1_0(self.file, header)

    def write(self, rows: np.ndarray) -> None:
        if tuple(rows.shape[1:]) != self.row_shape or self.written + len(rows) > self.n:
            raise ValueError(f"rows of shape {list(rows.shape)} do not continue [{self.n}, {self.row_shape}] "
                             f"at row {self.written}")
        self.file.write(np.ascontiguousarray(rows, dtype=self.dtype).data)
        self.written += len(rows)

    def close(self) -> None:
        self.file.close()
        if self.written != self.n:
            raise ValueError(f"{self.path}: {self.written} rows written, {self.n} declared")

    def __enter__(self):
        return self

    def __exit__(self, kind, *_):
        self.file.close() if kind else self.close()


class NpzRows:
    """Named arrays streamed block by block into an .npz (as ``np.savez`` lays it out: one stored ``NAME.npy``
    per array): each array goes to its own :class:`NpyRows` in a staging folder, zipped at ``close``."""

    def __init__(self, path, n: int):
        self.path, self.n, self.parts = path, n, {}
        self.staging = tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(path)), prefix=".npz.")

    def write(self, arrays: dict) -> None:
        for name, rows in arrays.items():
            if name not in self.parts:
                self.parts[name] = NpyRows(os.path.join(self.staging.name, f"{len(self.parts)}.npy"), self.n,
                                           rows.shape[1:], rows.dtype)
            self.parts[name].write(rows)

    def close(self) -> None:
        try:
            with zipfile.ZipFile(self.path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                for name, part in self.parts.items():
                    part.close()
                    archive.write(part.path, arcname=f"{name}.npy")
        finally:
            self.staging.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, kind, *_):
        if kind is None:
            return self.close()
        for part in self.parts.values():
            part.file.close()
        self.staging.cleanup()
