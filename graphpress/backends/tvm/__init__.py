"""The TVM backend: lower the IR through Apache TVM (Relax) to x86, aarch64 and CUDA code."""

import os

# TVM sizes its CPU thread pool to half the logical CPUs on x86 (it assumes two hyper-threads per
# core): a single thread on a 2-vCPU machine, while ONNX Runtime and torch use both. Use the CPUs
# this process may run on, unless the user chose (TVM reads the variable when it runs a kernel).
os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))

from graphpress.backends.tvm.build import compile_model
from graphpress.backends.tvm.tuning import database_dirs, user_database_dir
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
