"""CUDA kernels compiled ahead of time, on a machine with or without a GPU.

TVM 0.27's CUDA code generator hands its source to ``ffi.Module.create.cuda``, a factory of
TVM's CUDA runtime (``libtvm_runtime_cuda``), which compiles it through the
``tvm_callback_cuda_compile`` hook. Where that runtime is not loaded -- it links against the
driver's ``libcuda.so.1``, absent on a machine without a GPU -- the generator falls back to a
module that keeps the *source*, and the artifact then compiles it when it is loaded: with
TVM's compiler and NVRTC on the deployment machine, which TVM's runtime alone (what a GPU
server deploys) does not have ("module 'tvm.target._ffi_api' has no attribute
'TargetCurrent'", seen on an H200).

:func:`ahead_of_time` makes every CUDA build a compiled one: it loads TVM's CUDA runtime,
against a stub of the driver's entry points where the driver is absent (built here with the C
compiler; building only creates modules, it never calls the driver), and compiles the source
with ``nvcc`` into a fatbin for the target's architecture (its machine code, and its PTX for
newer GPUs). The artifact then loads with TVM's runtime and the driver alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from graphpress.errors import GraphpressError

__all__ = ["ahead_of_time"]

#: the driver entry points TVM 0.27's CUDA runtime links against (more are added as the loader
#: names them: :func:`_driver_stub`)
DRIVER_ENTRY_POINTS = ("cuDeviceGetName", "cuFuncSetAttribute", "cuGetErrorName", "cuGetErrorString", "cuLaunchKernelEx", "cuModuleGetFunction", "cuModuleLoadData",
                       "cuModuleUnload", "cuTensorMapEncodeTiled")  # fmt: skip

_stub_dir: Path | None = None


def _driver_stub(names: tuple[str, ...]) -> Path:
    """A ``libcuda.so.1`` whose entry points all return CUDA_ERROR_STUB_LIBRARY (34), built with
    the C compiler into a directory of this process."""
    global _stub_dir
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise GraphpressError("target cuda: no C compiler (cc, gcc or clang) to build against TVM's CUDA runtime on this machine without a GPU driver; install one")
    _stub_dir = Path(tempfile.mkdtemp(prefix="graphpress-cuda-stub-"))
    source = _stub_dir / "stub.c"
    source.write_text("".join(f"int {n}(void) {{ return 34; }}\n" for n in names))
    library = _stub_dir / "libcuda.so.1"
    subprocess.run([cc, "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(library), str(source)], check=True, capture_output=True)
    return library


def _load_cuda_runtime() -> None:
    """TVM's CUDA runtime loaded (its module factory registered), against a driver stub where
    the driver is absent."""
    import tvm_ffi
    from tvm.base import _LOADED_LIBS
    from tvm_ffi.libinfo import load_lib_ctypes

    if tvm_ffi.get_global_func("ffi.Module.create.cuda", allow_missing=True) is not None:
        return
    runtime_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent

    def load():
        _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(package="tvm", target_name="tvm_runtime_cuda", extra_lib_paths=[runtime_dir], mode="RTLD_LOCAL")

    try:
        load()
        return
    except (OSError, RuntimeError) as e:
        if "libcuda.so.1" not in str(e):
            raise GraphpressError(f"target cuda: TVM's CUDA runtime does not load ({str(e).strip()[:200]})") from e
    names = DRIVER_ENTRY_POINTS
    for _ in range(64):  # the dynamic loader names one missing entry point at a time
        stub = ctypes.CDLL(str(_driver_stub(names)), mode=ctypes.RTLD_GLOBAL)
        try:
            load()
            return
        except (OSError, RuntimeError) as e:
            missing = re.search(r"undefined symbol: (\w+)", str(e))
            if missing is None or missing.group(1) in names:
                raise GraphpressError(f"target cuda: TVM's CUDA runtime does not load against a driver stub ({str(e).strip()[:200]})") from e
            names = (*names, missing.group(1))
            del stub
    raise GraphpressError("target cuda: TVM's CUDA runtime needs more driver entry points than a stub can give")


@contextlib.contextmanager
def ahead_of_time(arch: str):
    """Within the block, TVM's CUDA builds compile their kernels with ``nvcc`` for ``arch``
    (``sm_90``): machine code for it and PTX for newer GPUs, in one fatbin."""
    import tvm_ffi

    if shutil.which("nvcc") is None:
        raise GraphpressError("target cuda: nvcc not found on PATH; install the CUDA toolkit (the compiler is needed to build, not a GPU)")
    _load_cuda_runtime()
    suffix = arch.removeprefix("sm_")
    flags = ["-gencode", f"arch=compute_{suffix},code=sm_{suffix}", "-gencode", f"arch=compute_{suffix},code=compute_{suffix}"]
    previous = tvm_ffi.get_global_func("tvm_callback_cuda_compile", allow_missing=True)

    def compile_cuda(code):
        from tvm.support.nvcc import compile_cuda as nvcc
        from tvm.target import Target

        with Target({"kind": "cuda", "arch": arch}):  # TVM's nvcc wrapper reads the current target's version
            return nvcc(code, target_format="fatbin", arch=flags, compiler="nvcc")

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_cuda, override=True)
    try:
        yield
    finally:
        if previous is not None:
            tvm_ffi.register_global_func("tvm_callback_cuda_compile", previous, override=True)

