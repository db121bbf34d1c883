"""Standalone artifact runner: ``python run_artifact.py ARTIFACT INPUTS.npz OUTPUTS.npz``.

Needs only TVM's runtime and numpy (not graphpress, onnx or torch), so it runs on an
aarch64 board or under ``qemu-aarch64`` with the aarch64 ``apache-tvm`` wheel. It loads
``runtime.py`` from beside this file.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str]) -> int:
    artifact, inputs, outputs = argv
    spec = importlib.util.spec_from_file_location("graphpress_tvm_runtime", Path(__file__).with_name("runtime.py"))
    runtime = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runtime)
    model = runtime.load(artifact)
    with np.load(inputs) as data:
        feeds = {k: data[k] for k in data.files}
    result = model.run_named(**feeds)
    np.savez(outputs, **result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
