"""The TVM backend: lower the IR through Apache TVM (Relax) to x86, aarch64 and CUDA code."""

from graphpress.backends.tvm.build import compile_model, database_dirs, user_database_dir
from graphpress.backends.tvm.runtime import CompiledModel, load, set_num_threads
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
