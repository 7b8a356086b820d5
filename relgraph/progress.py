"""Progress bars on stderr for long work (compiling big models, streaming data sets), drawn by tqdm.

A bar is drawn only when stderr is a terminal, the work is big enough (``min_total``) and tqdm is installed
(it comes with the ``[cpu]`` extra; without it there is simply no bar), so logs and pipes stay clean.
"""

from __future__ import annotations

import sys

try:
    from tqdm import tqdm
except ImportError:  # an optional dependency: no bar
    tqdm = None


class Progress:
    """``with Progress(total, label) as bar: ... bar.update(n)``. ``enabled`` may be cleared before the
    first update; the tqdm bar is created then, so a bar that is never updated never draws."""

    def __init__(self, total: int, label: str, *, min_total: int = 1, stream=None):
        self.total, self.label = max(total, 1), label
        self.stream = stream or sys.stderr
        self.enabled = (tqdm is not None and total >= min_total
                        and getattr(self.stream, "isatty", lambda: False)())
        self._bar = None

    def __enter__(self):
        return self

    def update(self, n: int = 1) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            self._bar = tqdm(total=self.total, desc=self.label, file=self.stream, leave=True,
                             dynamic_ncols=True, mininterval=0.1)
        self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.enabled = False

    def __exit__(self, *exc):
        self.close()
