"""``graphpress demo``: the main job on a built-in model, no arguments, no network.

1. Train :class:`~graphpress.models.DigitsCNN` for a few seconds on scikit-learn's digits.
2. Bring it into the IR through torch.export (parameter names kept).
3. Run the pipeline that exists so far (:data:`DEMO_PIPELINE`) under the pass manager with
   invariant checks after every pass and numeric verification of every pass against the
   model it received, on real test images.
4. Print a before/after table: nodes, params, bytes, MACs, accuracy (ONNX Runtime on the
   held-out split), verification.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

#: The passes the demo runs. Extended as passes land (fuse, prune, quantize, dedup).
DEMO_PIPELINE = "cleanup"


def _ort_logits(model_path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return sess.run(None, {name: x})[0]


def run_demo(output_dir: str | None = None, epochs: int = 8) -> dict:
    """Run the demo; print the table; return the numbers shown (for tests)."""
    import torch
    from rich.console import Console
    from rich.table import Table

    from graphpress.ir import load, save, summarize
    from graphpress.models.cnn import accuracy, train_digits_cnn
    from graphpress.passes import InvariantInstrument, NumericInstrument, PassManager, build_passes

    console = Console()
    t0 = time.perf_counter()
    with console.status("training a CNN on scikit-learn digits..."):
        module, data = train_digits_cnn(epochs=epochs)
    torch_acc = accuracy(module(torch.from_numpy(data.x_test)).detach().numpy(), data.y_test)
    console.print(f"trained DigitsCNN in {time.perf_counter() - t0:.1f} s: torch test accuracy {torch_acc:.4f}")

    with console.status("exporting through torch.export into the IR..."):
        model = load(module, torch.from_numpy(data.x_test[:1]), dynamic_batch=True)
    out_dir = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="graphpress-demo-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    before_path = save(model, out_dir / "digits_cnn.onnx")
    before = summarize(model)

    feeds = {model.graph.inputs[0].name: data.x_test[:64]}
    numeric = NumericInstrument(feeds, "64 held-out digits images")
    with console.status(f"running passes: {DEMO_PIPELINE}"):
        run = PassManager(build_passes(DEMO_PIPELINE), [InvariantInstrument(), numeric]).run(model)
    after = summarize(model)
    after_path = save(model, out_dir / "digits_cnn.optimized.onnx")

    acc_before = accuracy(_ort_logits(before_path, data.x_test), data.y_test)
    acc_after = accuracy(_ort_logits(after_path, data.x_test), data.y_test)
    ver = numeric.final

    table = Table(title=f"graphpress demo: DigitsCNN, pipeline '{DEMO_PIPELINE}'")
    for col in ("", "nodes", "params", "weight bytes", "MACs/sample", "accuracy (ORT)"):
        table.add_column(col, justify="right")
    table.add_row("before", f"{before.nodes}", f"{before.params:,}", f"{before.bytes:,}", f"{before.macs:,}", f"{acc_before:.4f}")
    table.add_row("after", f"{after.nodes}", f"{after.params:,}", f"{after.bytes:,}", f"{after.macs:,}", f"{acc_after:.4f}")
    console.print(table)
    passes = Table(title="passes")
    for col in ("pass", "modified", "seconds", "max_abs_diff vs its input"):
        passes.add_column(col)
    for rec in run.records:
        v = rec.verification
        passes.add_row(rec.name, str(rec.modified), f"{rec.seconds:.3f}", f"{v['max_abs_diff']:.3g}" if v else "-")
    console.print(passes)
    console.print(
        f"verification vs the exported model ({ver.inputs_source}): max_abs_diff={ver.max_abs_diff:.3g}, "
        f"cosine={ver.min_cosine:.8f}, tolerance family '{ver.family}' -> {'PASS' if ver.passed else 'FAIL'}"
    )
    console.print(f"models written to {out_dir}")
    return {
        "before": before.brief(),
        "after": after.brief(),
        "accuracy_before": acc_before,
        "accuracy_after": acc_after,
        "torch_accuracy": torch_acc,
        "verification": ver.to_dict(),
        "output_dir": str(out_dir),
    }
