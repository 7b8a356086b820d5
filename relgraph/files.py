"""Writing outputs without ever losing a file.

Every file relgraph writes goes through :func:`replacing`: the bytes go to a temporary file in the target
folder, which ``os.replace`` puts in place only once it is complete, so an interrupted run leaves the old
file (or none), never half of one. :func:`check_output` runs first: an output that *is* one of the inputs
(the same inode, however it is reached: symlink, hard link, ``..``) is refused even with ``--force``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterable, Iterator

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
