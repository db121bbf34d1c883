"""ONNX Runtime (whichever ``onnxruntime`` comes first on the path) running ResNet-18 for about
three seconds: int8 (ORT's U8S8 per-channel static recipe) by default, ``fp32`` for the float
model. What ``_ort_isa.py`` samples."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import onnxruntime as ort  # noqa: E402
from _models import speed_model  # noqa: E402

import graphpress as gp  # noqa: E402


def main() -> None:
    model, args = speed_model("resnet18")
    feeds = {v.name: a.numpy() for v, a in zip(model.graph.inputs, args)}
    with tempfile.TemporaryDirectory() as tmp:
        path = gp.save(model, Path(tmp) / "m.onnx")
        if (sys.argv[1] if len(sys.argv) > 1 else "int8") != "fp32":
            from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

            class Reader(CalibrationDataReader):
                def __init__(self):
                    self.feeds = iter([feeds])

                def get_next(self):
                    return next(self.feeds, None)

            quantize_static(str(path), str(Path(tmp) / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)  # fmt: skip
            path = Path(tmp) / "q.onnx"
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        end = time.perf_counter() + 3
        while time.perf_counter() < end:
            session.run(None, feeds)
    print(ort.__file__)


if __name__ == "__main__":
    main()
