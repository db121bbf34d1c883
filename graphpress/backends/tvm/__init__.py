"""The TVM backend: lower the IR through Apache TVM (Relax) to x86, aarch64 and CUDA code."""

# Before anything runs a kernel: TVM's thread pool reads its settings when it starts, and the
# runtime module sets graphpress's defaults for them on import (all CPUs, threads not pinned).
from graphpress.backends.tvm.runtime import CompiledModel, load, set_num_threads  # isort: skip

from graphpress.backends.tvm.build import compile_model
from graphpress.backends.tvm.tuning import database_dirs, user_database_dir
from graphpress.backends.tvm.targets import TargetSpec, resolve_target

__all__ = [
    "CompiledModel",
    "TargetSpec",
    "compile_model",
    "database_dirs",
    "load",
    "resolve_target",
    "set_num_threads",
    "user_database_dir",
]
