"""graphpress: graph-level compiler passes for model compression, verified numerically."""

__version__ = "0.1.0"

from graphpress.errors import GraphpressError  # noqa: E402
from graphpress.ir import load, save, summarize, verify  # noqa: E402

__all__ = ["GraphpressError", "__version__", "load", "save", "summarize", "verify"]
