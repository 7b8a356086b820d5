"""Progress bars: tqdm on a terminal, nothing on a pipe, for small work or without tqdm."""

import io

import pytest

from relgraph import progress

pytest.importorskip("tqdm")


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _draw(total, stream, steps=None, **kwargs):
    with progress.Progress(total, "fitting", stream=stream, **kwargs) as bar:
        for _ in range(total if steps is None else steps):
            bar.update()
    return stream.getvalue()


def test_draws_on_a_terminal():
    text = _draw(5, Terminal())
    assert "fitting" in text and "5/5" in text and text.endswith("\n")


@pytest.mark.parametrize("case", ["pipe", "small", "no-tqdm", "disabled"])
def test_draws_nothing(case, monkeypatch):
    stream = io.StringIO() if case == "pipe" else Terminal()
    if case == "no-tqdm":
        monkeypatch.setattr(progress, "tqdm", None)  # as if tqdm were not installed
    if case == "disabled":
        bar = progress.Progress(5, "fitting", stream=stream)
        bar.enabled = False  # cleared before the first update: the bar never starts
        bar.update(5)
        bar.close()
        assert stream.getvalue() == ""
        return
    assert _draw(5, stream, min_total=10 if case == "small" else 1) == ""
