"""The HTML report (``--report-html``): the weights it draws are the weights the layers compute
with (checked against what ONNX Runtime computes: a Linear layer fed the identity), its metrics
follow their definitions, and the page opens in a real headless Chromium with every picture
decoded and nothing fetched."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import graphpress as gp
from graphpress.cli import main
from graphpress.ir.io import save, to_proto
from graphpress.ir.weights import LayerWeight, layer_weights
from graphpress.passes import PassManager, build_passes
from graphpress.passes.context import PassContext
from graphpress.report_html import WeightTrace, layer_metrics, write_html_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _linear_model():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(64, 32)).eval()
    return gp.load(module, torch.randn(1, 64), dynamic_batch=True)


def _weight_by_behaviour(model) -> np.ndarray:
    """``W`` of ``y = x W^T + b`` as ONNX Runtime computes it: f(I) - f(0), transposed."""
    session = ort.InferenceSession(to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    eye = np.eye(64, dtype=np.float32)
    return (session.run(None, {name: eye})[0] - session.run(None, {name: np.zeros((1, 64), np.float32)})[0]).T


@pytest.mark.parametrize("spec, stored", [("quantize:mode=weight_only", "int8"), ("share:clusters=16", "shared"), ("prune:mode=unstructured;ratio=0.5", "float")])
def test_layer_weights_are_what_the_layer_computes_with(spec, stored):
    model = _linear_model()
    samples = [{model.graph.inputs[0].name: np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32)}]
    PassManager(build_passes(spec), context=PassContext(samples=samples)).run(model)
    (layer,) = layer_weights(model).values()
    assert layer.key == "0.weight" and layer.stored == stored
    np.testing.assert_allclose(layer.values, _weight_by_behaviour(model), atol=2e-6)
    if stored == "shared":  # every weight is one of the codebook's centroids
        assert len(layer.grid) <= 16 and np.isin(layer.values, layer.grid).all()
    if stored == "int8":  # output channel 0 lies on its quantization grid
        step = np.diff(layer.grid)
        assert np.allclose(step, step[0]) and np.abs((layer.values[0] - layer.grid[0]) / step[0] - np.round((layer.values[0] - layer.grid[0]) / step[0])).max() < 1e-3
    if spec.startswith("prune"):
        assert np.count_nonzero(layer.values) <= layer.values.size // 2 + 1


def test_layer_metrics_follow_their_definitions():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 16)).astype(np.float32)
    pruned = w.copy()
    pruned[:, ::4] = 0.0
    grid = np.linspace(-3, 3, 256).astype(np.float32)
    quantized = grid[np.abs(pruned[..., None] - grid).argmin(-1)]
    lw = lambda v, stored="float", g=None: LayerWeight("fc.weight", "fc", "Gemm", v, stored, g, v.nbytes)  # noqa: E731
    snapshots = [("the model given", {"fc.weight": lw(w)}), ("prune", {"fc.weight": lw(pruned)}), ("quantize", {"fc.weight": lw(quantized, "int8", grid)})]
    (row,) = layer_metrics(snapshots)
    nonzero_before, nonzero_after = np.count_nonzero(w), np.count_nonzero(quantized)
    assert row["r_p"] == pytest.approx((nonzero_before - nonzero_after) / nonzero_before)
    assert row["eps_q"] == pytest.approx(float(np.mean((pruned.astype(np.float64) - quantized) ** 2)))
    assert [label for label, _ in row["steps"]] == ["prune", "quantize"]
    assert row["sparsity"] == pytest.approx(1 - nonzero_after / w.size)


def _open_in_chromium(page_path: Path, screenshot: Path) -> dict:
    """Load the page in headless Chromium; return what the test checks: each image's decoded
    size, the requests made, the text."""
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.resolve().as_uri())
            page.wait_for_load_state("load")
            images = page.evaluate("() => Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight}))")
            text = page.inner_text("body")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"images": images, "requests": requests, "text": text}


@pytest.fixture
def browser():
    if CHROMIUM is None:
        if os.environ.get("GRAPHPRESS_REQUIRE_BROWSER"):
            pytest.fail("Chromium is not installed: run `make browser-env` (Debian's chromium)")
        pytest.skip("Chromium is not installed (make browser-env)")
    return _open_in_chromium


@pytest.fixture(scope="module")
def digits_files(tmp_path_factory):
    from graphpress.models.cnn import digits_data, fit

    data = digits_data()
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 10))
    fit(module, data, epochs=4)
    model = gp.load(module.eval(), torch.from_numpy(data.x_test[:1]), dynamic_batch=True)
    d = tmp_path_factory.mktemp("report")
    save(model, d / "mlp.onnx")
    np.savez(d / "s.npz", **{model.graph.inputs[0].name: data.x_test})
    np.save(d / "y.npy", data.y_test)
    return d


@pytest.mark.slow
def test_compress_page_opens_in_chromium_with_every_picture(digits_files, tmp_path, browser, capsys):
    d = digits_files
    page = tmp_path / "report.html"
    code = main(["compress", str(d / "mlp.onnx"), "--recipe", "smallest", "--samples", str(d / "s.npz"), "--labels", str(d / "y.npy"),
                 "--budget", "3%", "-o", str(tmp_path / "small.onnx"), "--report-html", str(page)])  # fmt: skip
    assert code == 0 and f"report: {page}" in capsys.readouterr().out
    seen = browser(page, tmp_path / "report.png")
    assert seen["images"] and all(i["complete"] and i["w"] > 0 and i["h"] > 0 for i in seen["images"]), seen["images"]
    alts = [i["alt"] for i in seen["images"]]
    assert {"1.weight", "3.weight"} <= set(alts) and "latency" in alts and "pass timeline" in alts
    assert all(u.startswith(("file:", "data:")) for u in seen["requests"]), seen["requests"]  # nothing fetched
    assert (tmp_path / "report.png").stat().st_size > 10_000
    text = seen["text"]
    for needed in ("rp = (params before", "rw = shared weights / all weights", "Recipe steps", "held-out samples", "cluster"):
        assert needed.replace("rp", "r") in text.replace("\n", " ") or needed in text, needed
    # r_w: both layers shared by the smallest recipe (independently: the compressed model holds a codebook per layer)
    compressed = gp.load(tmp_path / "small.onnx")
    codebooks = [n for n in compressed.graph.initializers if n.endswith(".share_codebook")]
    if len(codebooks) == 2:
        assert re.search(r"100\.0%\s*r\s*w", text), text[:400]


@pytest.mark.slow
def test_optimize_and_compile_pages(digits_files, tmp_path, browser):
    d = digits_files
    page = tmp_path / "opt.html"
    assert main(["optimize", str(d / "mlp.onnx"), "-o", str(tmp_path / "q.onnx"), "--passes", "cleanup,quantize", "--inputs", str(d / "s.npz"),
                 "--verify", "--report-html", str(page)]) == 0  # fmt: skip
    seen = browser(page, tmp_path / "opt.png")
    assert all(i["complete"] and i["w"] > 0 for i in seen["images"]) and "sensitivity" in [i["alt"] for i in seen["images"]]
    assert "int8" in seen["text"] and "pass (quantization" in seen["text"]
    compiled = tmp_path / "compile.html"
    assert main(["compile", str(tmp_path / "q.onnx"), "--target", "x86", "-o", str(tmp_path / "art"), "--inputs", str(d / "s.npz"),
                 "--report-html", str(compiled)]) == 0  # fmt: skip
    seen = browser(compiled, tmp_path / "compile.png")
    assert "latency" in [i["alt"] for i in seen["images"]] and all(i["w"] > 0 for i in seen["images"])
    assert "the compiled code against ONNX Runtime" in seen["text"]
    assert "Integer kernels" in seen["text"] and "whole model" in seen["text"]  # the int8 guard's measurements, layer by layer


def test_a_stopped_run_still_gets_its_page(digits_files, tmp_path, capsys):
    d = digits_files
    page = tmp_path / "stopped.html"
    code = main(["optimize", str(d / "mlp.onnx"), "-o", str(tmp_path / "p.onnx"), "--passes", "prune:mode=unstructured;ratio=0.95",
                 "--inputs", str(d / "s.npz"), "--verify", "--min-cosine", "0.9999", "--report-html", str(page)])  # fmt: skip
    assert code == 2 and not (tmp_path / "p.onnx").exists()
    streams = capsys.readouterr()
    assert len(streams.err.strip().splitlines()) == 1 and f"report of the stopped run: {page}" in streams.out
    html = page.read_text()
    assert "Stopped:" in html and "min_cosine" in html and "prune" in html


def test_report_page_is_written_whole(tmp_path):
    model = _linear_model()
    trace = WeightTrace()
    PassManager(build_passes("prune:mode=unstructured;ratio=0.5"), [trace]).run(model)
    out = write_html_report(tmp_path / "r.html", title="t", snapshots=trace.snapshots, passes=[r.to_dict() for r in trace.records])
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert html.count("<img") == 2  # the layer's picture and the timeline
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]  # no temporaries left


def test_a_layer_keeps_its_name_when_folding_renames_its_weight():
    """torch.export puts a 3-D Linear's weight behind a Transpose; cleanup folds it into a new
    initializer and dynamic quantization renames the node: the layer is still the same row."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 16)).eval()
    model = gp.load(module, torch.randn(1, 8, 64))
    trace = WeightTrace()
    PassManager(build_passes("cleanup,quantize:mode=dynamic"), [trace]).run(model)
    rows = {r["layer"]: r for r in layer_metrics(trace.snapshots)}
    assert set(rows) == {"0.weight", "2.weight"}, list(rows)
    assert all(r["stored"] == "int8" and r["eps_q"] is not None and 0 < r["eps_q"] < 1e-4 for r in rows.values()), rows
