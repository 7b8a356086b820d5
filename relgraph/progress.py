"""A dependency-free progress bar on stderr for long work (compiling big models, streaming data sets).

It draws only when stderr is a terminal, so logs and pipes stay clean.
"""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, label: str, *, min_total: int = 1, stream=None):
        self.total, self.label, self.done = max(total, 1), label, 0
        self.stream = stream or sys.stderr
        self.enabled = total >= min_total and getattr(self.stream, "isatty", lambda: False)()
        self._last = 0.0

    def __enter__(self):
        return self

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.1 or self.done >= self.total):
            self._last = now
            filled = int(30 * self.done / self.total)
            self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total}")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
            self.enabled = False

    def __exit__(self, *exc):
        self.close()
