"""graphpress: graph-level compiler passes for model compression, verified numerically."""

__version__ = "0.1.0"

from graphpress.errors import GraphpressError  # noqa: E402
from graphpress.ir import load, save, summarize, verify  # noqa: E402

#: what ``graphpress.<name>`` gives from the layers above the IR, imported on first use (the
#: package itself stays importable without TVM, torch or ONNX Runtime loaded)
_LAZY = {
    "compress": "graphpress.compression",  # a recipe under one accuracy budget, built for a target
    "bench": "graphpress.compression",  # latency against ONNX Runtime fp32 and its best int8, side by side
    "ort_session": "graphpress.compression",  # ONNX Runtime on a compressed model with the settings measured for it
    "to_module": "graphpress.torch_module",  # a compressed model back in the torch.nn.Module it came from
    "recover": "graphpress.recovery",  # fine-tune a compressed model against the original, written back into its graph
    "recover_blocks": "graphpress.recovery",  # the same, block by block, each fed the original's own inputs
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'graphpress' has no attribute '{name}'")


__all__ = ["GraphpressError", "__version__", "bench", "compress", "load", "ort_session", "recover", "recover_blocks", "save", "summarize", "to_module", "verify"]
