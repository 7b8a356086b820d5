"""The page at / in headless Chromium: upload a digit, see the direct call's class and its heatmap."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import relgraph
from relgraph.explainer import Explainer
from relgraph.heatmap import decode_png, heatmap_image, read_png
from relgraph.serve import ExplainServer

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "digits" / "digits_cnn.onnx"
SAMPLE = ROOT / "models" / "digits" / "sample0.png"
CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1000, "height": 720}

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"no Chromium at {CHROMIUM} (apt install chromium)")


@pytest.fixture(scope="module")
def explainer_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("browser") / "digits.onnx"
    return relgraph.compile(str(MODEL), rule="epsilon-plus-flat", output=str(out)).path


@pytest.fixture(scope="module")
def server(explainer_path):
    srv = ExplainServer(Explainer(explainer_path), "127.0.0.1", 0).start()
    yield srv
    srv.close()


def test_upload_shows_the_direct_calls_class_and_heatmap(server, explainer_path, tmp_path):
    from playwright.sync_api import sync_playwright

    # the reference: sample0.png is light ink on black like the training data, so the input is pixel / 255
    pixels = read_png(SAMPLE)
    x = (pixels / 255.0).astype(np.float32)[None, None]
    session = ort.InferenceSession(explainer_path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    ref = dict(zip(names, session.run(None, {"input": x, "target": np.array([-1], np.int64)})))
    predicted = int(ref["logits"][0].argmax())
    expected_heatmap = heatmap_image(ref["relevance"][0], image=pixels, size=256)

    # RELGRAPH_SCREENSHOT=path keeps the screenshot (the README's picture of the page is made this way)
    shot = Path(os.environ.get("RELGRAPH_SCREENSHOT") or tmp_path / "page.png")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport=VIEWPORT, device_scale_factor=1)
            outside = []  # the page must work offline: nothing but our own server
            page.on("request", lambda r: None if r.url.startswith(server.url) or r.url.startswith(("data:", "blob:"))
                    else outside.append(r.url))
            page.goto(server.url + "/")
            page.wait_for_function("document.querySelectorAll('#target option').length === 11", timeout=20000)
            page.set_input_files("#file", str(SAMPLE))
            page.wait_for_selector("body[data-done='1']", timeout=20000)
            page.wait_for_function("document.getElementById('heatmap').complete && "
                                   "document.getElementById('heatmap').naturalWidth > 0", timeout=20000)
            shown = page.text_content("#predicted").strip()
            rows = page.locator("#top tr").count()
            box = page.locator("#heatmap").bounding_box()
            page.screenshot(path=str(shot))
        finally:
            browser.close()

    assert shown == str(predicted)
    assert rows == 5 and not outside
    image = decode_png(shot.read_bytes())
    assert image.shape[:2] == (VIEWPORT["height"], VIEWPORT["width"])
    left, top = round(box["x"]), round(box["y"])
    region = image[top:top + 256, left:left + 256, :3].astype(int)
    assert region.shape == (256, 256, 3) and region.std() > 20  # not blank: red and blue over the digit
    # drawn at its own size, the heatmap on screen is the server's PNG pixel for pixel (up to color rounding)
    assert np.mean(np.abs(region - expected_heatmap.astype(int)) <= 3) > 0.99
