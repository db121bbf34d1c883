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

:func:`relax_pipeline` is TVM's CUDA pipeline with one schedule rule before dlight's:
:func:`small_grid_matmul`, smaller tiles for a GEMM that dlight's would launch as too few
thread blocks to fill the GPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from graphpress.errors import GraphpressError

__all__ = ["MIN_BLOCKS", "ahead_of_time", "relax_pipeline", "small_grid_matmul"]

#: the driver entry points TVM 0.27's CUDA runtime links against (more are added as the loader
#: names them: :func:`_driver_stub`)
DRIVER_ENTRY_POINTS = ("cuDeviceGetName", "cuFuncSetAttribute", "cuGetErrorName", "cuGetErrorString", "cuLaunchKernelEx", "cuModuleGetFunction", "cuModuleLoadData",
                       "cuModuleUnload", "cuTensorMapEncodeTiled")  # fmt: skip

def _driver_stub(names: tuple[str, ...]) -> Path:
    """A ``libcuda.so.1`` whose entry points all return CUDA_ERROR_STUB_LIBRARY (34), built with
    the C compiler into a directory of this process."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise GraphpressError("target cuda: no C compiler (cc, gcc or clang) to build against TVM's CUDA runtime on this machine without a GPU driver; install one")
    directory = Path(tempfile.mkdtemp(prefix="graphpress-cuda-stub-"))
    source = directory / "stub.c"
    source.write_text("".join(f"int {n}(void) {{ return 34; }}\n" for n in names))
    library = directory / "libcuda.so.1"
    subprocess.run([cc, "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(library), str(source)], check=True, capture_output=True)
    return library


def _load_cuda_runtime() -> None:
    """TVM's CUDA runtime loaded (its module factory registered; ``runtime._runtime_backend``),
    against a driver stub where the driver is absent."""
    import tvm_ffi

    from graphpress.backends.tvm.runtime import _runtime_backend

    if tvm_ffi.get_global_func("ffi.Module.create.cuda", allow_missing=True) is not None:
        return
    error = _runtime_backend("cuda")
    if error is None:
        return
    if "libcuda.so.1" not in error:
        raise GraphpressError(f"target cuda: TVM's CUDA runtime does not load ({error})")
    names = DRIVER_ENTRY_POINTS
    for _ in range(64):  # the dynamic loader names one missing entry point at a time
        ctypes.CDLL(str(_driver_stub(names)), mode=ctypes.RTLD_GLOBAL)  # the soname TVM's runtime asks for, loaded first
        error = _runtime_backend("cuda")
        if error is None:
            return
        missing = re.search(r"undefined symbol: (\w+)", error)
        if missing is None or missing.group(1) in names:
            raise GraphpressError(f"target cuda: TVM's CUDA runtime does not load against a driver stub ({error})")
        names = (*names, missing.group(1))
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


#: a matmul-like kernel (a convolution as a GEMM too) that dlight's CUDA tiles (32 x 64 outputs a
#: block) would launch as fewer thread blocks than this is scheduled with smaller tiles
#: (:func:`small_grid_matmul`)
MIN_BLOCKS = 128


def _thread_blocks(sch) -> int:
    """The number of thread blocks the scheduled function launches: the product of the extents
    of its ``blockIdx`` loops, read from its TVMScript (0 where one is not a constant)."""
    blocks = 1
    for extent in re.findall(r'T\.thread_binding\((?:T\.int64\()?(\w+)\)?, thread="blockIdx\.[xyz]"\)', sch.mod["main"].script()):
        blocks *= int(extent) if extent.isdigit() else 0
    return blocks


def small_grid_matmul(micro: int = 2, threads: tuple[int, int] = (8, 16)):
    """dlight's CUDA matmul rule with smaller tiles where its own tiles leave the GPU idle.

    At batch 1 ResNet-18's last convolutions (49 x 512 outputs, K = 4608) ran as 16 blocks of
    128 threads on an H200's 132 multiprocessors, 0.62 ms each, 60 % of the model's time
    (``ncu``); the whole model 3.18 ms against torch eager's 2.11. With 2 x 2 outputs a thread
    (dlight: 4 x 4) in blocks of 8 x 16 threads the same convolutions run as 64 blocks and the
    model in 1.94 ms; blocks of 8 x 8 threads measured 2.47 ms (``benchmarks/cuda.py``, one run
    each, the same session). ``micro`` x ``micro`` outputs a thread, ``threads`` threads a
    block."""
    from tvm.s_tir import dlight as dl

    class SmallGridMatmul(dl.gpu.Matmul):
        def __init__(self):
            super().__init__()
            self._small = False

        def get_configs(self, target):
            config = super().get_configs(target)
            if self._small:
                config = dataclasses.replace(config, block_size_x=threads[0], block_size_y=threads[1], micro_size_x=micro, micro_size_y=micro,
                                             vector_size=min(config.vector_size, micro))  # fmt: skip
            return config

        def apply(self, func, target, tunable):
            default = super().apply(func, target, tunable)
            if default is None or not 0 < _thread_blocks(default) < MIN_BLOCKS:
                return None  # the default rule schedules it
            self._small = True
            try:
                small = super().apply(func, target, tunable)
            finally:
                self._small = False
            return small if small is not None and _thread_blocks(small) > _thread_blocks(default) else None

    return SmallGridMatmul()


def relax_pipeline(target, matmul_rule=None):
    """TVM's default CUDA pipeline (``tvm.relax.backend.cuda.pipeline``) with
    :func:`small_grid_matmul` tried before dlight's own rules."""
    import tvm
    from tvm.relax.backend.cuda import pipeline as cuda
    from tvm.s_tir import dlight as dl

    legalize = cuda.legalize_passes(target)
    at = next((i for i, p in enumerate(legalize) if type(p).__name__ == "ApplyDefaultSchedule"), None)
    if at is None:  # a TVM whose CUDA pipeline changed: its own schedules, as they are
        return "default"
    legalize[at] = dl.ApplyDefaultSchedule(matmul_rule or small_grid_matmul(), dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback())

    @tvm.transform.module_pass(opt_level=0)
    def pipeline(mod, _ctx):
        with target:
            return tvm.transform.Sequential(cuda.library_dispatch_passes(target) + legalize + cuda.dataflow_lower_passes(target) + cuda.finalize_passes(target))(mod)

    return pipeline
