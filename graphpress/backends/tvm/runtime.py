"""Run, save and load compiled TVM artifacts.

An artifact is a directory written whole (a temporary directory renamed into place):

* ``model.so``: the shared library (``Executable.export_library``), for the target's
  architecture (an aarch64 artifact is linked with ``aarch64-linux-gnu-g++``); a CPU
  artifact's links graphpress's parallel launcher too (``csrc/parallel_launch.cc``), which
  :func:`load` puts in place of TVM's thread pool;
* ``graphpress.json``: input/output names, shapes and dtypes, the target dict, the
  graphpress and TVM versions, and the build report.

:func:`load` restores a :class:`CompiledModel` from such a directory on the machine it was
built for. This module imports only TVM's runtime API, so an aarch64 board (or qemu) with
the ``apache-tvm`` wheel and numpy can run it.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import os
import shutil
import sys
import tempfile
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ARTIFACT_LIB", "ARTIFACT_META", "CompiledModel", "Remote", "current_remote", "load", "load_program", "running_on", "set_num_threads", "time_side_by_side",
           "vm_timings"]

ARTIFACT_LIB = "model.so"
ARTIFACT_META = "graphpress.json"


def default_thread_settings() -> None:
    """graphpress's defaults for TVM's CPU thread pool, unless the user set them: run on every
    CPU this process may use, and leave the threads to the OS. Called on import, before any
    kernel starts the pool (which reads ``TVM_NUM_THREADS`` and ``TVM_BIND_THREADS`` then).

    - TVM sizes the pool to half the logical CPUs on x86 (it assumes two hyper-threads per
      core): one thread on a 2-vCPU machine, while ONNX Runtime and torch use both.
    - TVM pins each worker thread to one CPU. A worker pinned to a CPU that another process
      keeps busy cannot move, and every parallel kernel waits for it at its join: MobileNetV2
      int8 went from 0.7 ms to 224 ms a call with a busy loop pinned to the second of 2 CPUs.
      Unpinned: 1.4 ms under that load, and the same 0.7 ms on a quiet machine
      (``benchmarks/contention.py``).
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ.setdefault("TVM_NUM_THREADS", str(cpus))
    os.environ.setdefault("TVM_BIND_THREADS", "0")


default_thread_settings()


#: the C++ source of graphpress's parallel launcher, linked into every CPU artifact's library
LAUNCHER_SOURCE = Path(__file__).resolve().parent / "csrc" / "parallel_launch.cc"
LAUNCHER_OPTIONS = ["-O2", "-std=c++17", "-pthread"]

#: the thread count set by :func:`set_num_threads` (None: the launcher's default, ``TVM_NUM_THREADS``)
_THREADS: list[int | None] = [None]
_LAUNCHERS: weakref.WeakSet = weakref.WeakSet()  # loaded models whose loops run on the launcher
#: the launcher model called last (a weak reference), whose idle workers rest when another runs
_ACTIVE: list[Any] = [None]


def set_num_threads(n: int) -> None:
    """Size TVM's CPU thread pool and graphpress's parallel launcher (every model in this process).

    Known TVM 0.27 issue: after this call, MetaSchedule tuning databases no longer apply to
    compiles in the same process. Compile first, or set ``TVM_NUM_THREADS`` before TVM starts.
    """
    import tvm

    tvm.get_global_func("runtime.config_threadpool")(1, int(n))  # 1: big cores, no pinning preference
    _THREADS[0] = int(n)
    for model in list(_LAUNCHERS):
        model._launcher.graphpress_parallel_set_threads(int(n))


def launcher_wanted() -> bool:
    """Whether loaded artifacts run their parallel loops on graphpress's launcher: unless
    ``GRAPHPRESS_THREAD_POOL=tvm``, or ``TVM_BIND_THREADS=1`` (pinned threads are TVM's pool's)."""
    pool = os.environ.get("GRAPHPRESS_THREAD_POOL", "sharing")
    if pool not in ("sharing", "tvm"):
        raise _error(f"GRAPHPRESS_THREAD_POOL={pool}: give 'sharing' (graphpress's launcher, the default) or 'tvm' (TVM's thread pool)")
    return pool == "sharing" and os.environ.get("TVM_BIND_THREADS", "0") != "1"


def export_library(executable: Any, path: str | os.PathLike, *, cross_compiler: str | None = None, launcher: bool = True) -> None:
    """Link ``executable`` (a ``relax.Executable``) into the shared library ``path``, with the
    target's cross compiler, and -- ``launcher`` (CPU targets) -- graphpress's parallel launcher
    (``csrc/parallel_launch.cc``), which :func:`load` puts in place of TVM's thread pool."""
    from tvm.support import cc

    kwargs: dict[str, Any] = {}
    if cross_compiler:
        kwargs["fcompile"] = cc.cross_compiler(cross_compiler)
    if launcher:
        kwargs.update(addons=[str(LAUNCHER_SOURCE)], options=list(LAUNCHER_OPTIONS))  # a new list: TVM appends to it
    with quiet_native_stderr():
        executable.export_library(str(path), **kwargs)


def _install_launcher(model: CompiledModel, path: Path) -> None:
    """Run the loaded library's parallel loops on graphpress's launcher, where it has one (an
    artifact saved before it existed has not) and :func:`launcher_wanted`."""
    import ctypes

    if not launcher_wanted():
        return
    try:  # the library TVM opened (the same path: dlopen finds the loaded copy)
        lib = ctypes.CDLL(str(path), mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    except OSError:
        return
    try:
        install = lib.graphpress_parallel_install
    except AttributeError:
        return
    finally:  # TVM's reference keeps it loaded; ours would keep it after the model is freed
        ctypes.CDLL(None).dlclose(ctypes.c_void_p(lib._handle))
    install.argtypes = [ctypes.c_int]
    if install(_THREADS[0] or 0):
        model._launcher = lib
        model._active_ref = weakref.ref(model)
        try:
            model._rest = lib.graphpress_parallel_rest
        except AttributeError:  # an artifact saved before the launcher could rest
            pass
        _LAUNCHERS.add(model)


def _switch_launcher(model: CompiledModel) -> None:
    """``model`` runs now: the idle workers of the launcher model called before it, if that is
    another library's (each library has a launcher of its own), go to sleep at once instead of
    taking CPU time from this one's threads while they wait for work."""
    previous = _ACTIVE[0]() if _ACTIVE[0] is not None else None
    _ACTIVE[0] = model._active_ref
    if previous is not None and previous._rest is not None and previous._launcher._handle != model._launcher._handle:
        previous._rest()


class Remote:
    """A device reached through TVM's own RPC: ``HOST:PORT:KEY`` asks the RPC tracker at
    HOST:PORT for a server registered under KEY (``python -m tvm.exec.rpc_server --tracker
    HOST:PORT --key KEY`` on the device); ``HOST:PORT`` talks to one RPC server directly.

    Code runs there as it would here: the library is exported (with the target's cross
    compiler), uploaded and loaded by the server, and TVM's time evaluator times it on the
    device. One session is opened on first use and kept (``close`` ends it).
    """

    def __init__(self, address: str, *, timeout_s: float = 600, cross_compiler: str | None = None):
        parts = str(address).split(":")
        try:
            if len(parts) not in (2, 3) or not parts[0]:
                raise ValueError
            self.host, self.port, self.key = parts[0], int(parts[1]), (parts[2] if len(parts) == 3 and parts[2] else None)
        except ValueError:
            raise _error(f"--rpc {address}: give HOST:PORT:KEY (an RPC tracker and the key its devices registered with) or HOST:PORT (one RPC server)") from None
        self.address = str(address)
        self.timeout_s = timeout_s
        self.cross_compiler = cross_compiler
        self._session = None
        self._uploads = 0

    def describe(self) -> str:
        """Where the timings come from, in words (the report's ``measured_on``)."""
        return f"rpc tracker {self.host}:{self.port}, key {self.key}" if self.key else f"rpc server {self.host}:{self.port}"

    @property
    def session(self):
        if self._session is None:
            import socket

            from tvm import rpc

            try:  # TVM's own connect retries for a minute: a wrong address gets its line at once
                socket.create_connection((self.host, self.port), timeout=10).close()
            except OSError as e:
                what = "RPC tracker" if self.key else "RPC server"
                raise _error(f"--rpc {self.address}: nothing answers at {self.host}:{self.port} ({e.strerror or e}); start the {what} there first") from None
            try:
                if self.key:
                    self._session = rpc.connect_tracker(self.host, self.port).request(self.key, priority=1, session_timeout=self.timeout_s)
                else:
                    self._session = rpc.connect(self.host, self.port, session_timeout=self.timeout_s)
            except Exception as e:  # no tracker, no server under the key, refused: one line
                first = (str(e).strip().splitlines() or [type(e).__name__])[-1][:200]
                raise _error(f"--rpc {self.address}: cannot open a session on {self.describe()} ({first}); is the "
                             f"{'tracker running and a server registered under that key' if self.key else 'server running'}?") from None  # fmt: skip
        return self._session

    @property
    def device(self):
        return self.session.cpu(0)

    def num_threads(self) -> int:
        """The size of TVM's thread pool on the device (what MetaSchedule calls num-cores)."""
        return int(self.session.get_function("runtime.NumThreads")())

    def load_executable(self, executable: Any) -> Any:
        """``executable`` (a ``relax.Executable``) exported here, uploaded, loaded on the device."""
        self._uploads += 1
        name = f"graphpress-{os.getpid()}-{self._uploads}.so"
        with tempfile.TemporaryDirectory(prefix="graphpress-rpc-") as tmp:
            # TVM's RPC server loads it with TVM's thread pool: no launcher (nothing there installs it)
            export_library(executable, Path(tmp) / name, cross_compiler=self.cross_compiler, launcher=False)
            return self.load_file(Path(tmp) / name, name)

    def load_file(self, path: str | os.PathLike, name: str | None = None) -> Any:
        """A library file uploaded and loaded on the device."""
        name = name or Path(path).name
        try:
            self.session.upload(str(path), name)
            return self.session.load_module(name)
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[-1][:200]
            raise _error(f"--rpc {self.address}: the device cannot load the library ({first}); was it built for that device's target?") from e

    def close(self) -> None:
        """End the session, so the device is free for the next one: a server serves one session at
        a time, and a tracker hands a busy one to nobody (MetaSchedule's runner asks for its own).
        Modules loaded through the session hold it too: drop them first."""
        import gc

        self._session = None
        gc.collect()  # an RPC session closes when its last reference goes


_REMOTE: contextvars.ContextVar[Remote | None] = contextvars.ContextVar("graphpress_remote", default=None)


def current_remote() -> Remote | None:
    """The device every run and timing in the current :func:`running_on` block goes to."""
    return _REMOTE.get()


@contextlib.contextmanager
def running_on(remote: Remote | None):
    """Within the block, :func:`time_side_by_side` and every :class:`CompiledModel` made run on
    ``remote`` (``None``: here)."""
    token = _REMOTE.set(remote)
    try:
        yield remote
    finally:
        _REMOTE.reset(token)


class CompiledModel:
    """A compiled model, callable on numpy arrays or torch tensors.

    Call it positionally (graph input order) or by input name; it returns a list of numpy
    arrays in graph output order (:meth:`run_named` returns a dict).

    Attributes:
        meta: the metadata written to ``graphpress.json``.
    """

    def __init__(self, executable: Any, meta: dict[str, Any], *, device: str | None = None, library: Any = None, remote: Remote | None = None):
        import tvm

        self.meta = meta
        self._executable = executable
        #: where it runs: a device over TVM's RPC (default: the one of the :func:`running_on`
        #: block it was made in), else this machine
        self.remote = remote if remote is not None else current_remote()
        kind = meta["target"]["kind"]
        self._local_device = tvm.cuda(0) if (device or kind) == "cuda" else tvm.cpu(0)
        self._vm = None
        self._main = None  # (the VM, its "main"), looked up once
        self._stage: list[tuple[np.ndarray, Any]] | None = None  # small static inputs' aligned buffers (:meth:`_staged`)
        self._frozen: dict[str, np.ndarray] = {}  # inputs fixed at compile time, their values (:meth:`_staged`)
        self._library = library
        self._library_file: Path | None = None  # an artifact's model.so, for a remote device
        #: the loaded library (ctypes) when its parallel loops run on graphpress's launcher
        #: (:func:`load`), else None: TVM's thread pool
        self._launcher: Any = None
        self._active_ref: Any = None  # a weak reference to itself, for :func:`_switch_launcher`
        self._rest: Any = None  # its launcher's graphpress_parallel_rest, where the library has it

    # -- running -----------------------------------------------------------------------

    @property
    def device(self):
        """Where it runs: this machine's CPU (or GPU), or the remote device of the current session."""
        return self.remote.device if self.remote is not None else self._local_device

    def release(self) -> None:
        """On a remote device: drop the VM, the uploaded library and the RPC session, freeing the
        device for other sessions; the next call uploads the library again."""
        if self.remote is not None:
            # the looked-up entry holds the VM too: kept, it kept the session open, and the
            # tracker handed the device to no one until the session timed out (600 s)
            self._vm = self._library = self._main = None
            self.remote.close()

    @property
    def vm(self):
        if self._vm is None:
            if self.remote is None and self.meta["target"]["kind"] == "cuda" and not _usable(self._local_device):
                raise _error("this artifact runs on a CUDA GPU and TVM finds none usable here (no device, or no NVIDIA driver); "
                             "run it on a machine with the GPU and its driver")  # fmt: skip
            program = self._library if self._library is not None else self._executable
            if self.remote is not None and self._library is None:  # uploaded now (again after release)
                program = self._library = (self.remote.load_executable(self._executable) if self._executable is not None
                                           else self.remote.load_file(self._library_file, f"graphpress-{os.getpid()}-{Path(self._library_file).parent.name}.so"))  # fmt: skip
            try:
                self._vm = _vm_class()(program, self.device)
            except Exception as e:  # TVM's own serialization fails (e.g. a zero-size constant tensor)
                first = (str(e).strip().splitlines() or [type(e).__name__])[-1][:200]
                raise _error(f"TVM's runtime cannot load the compiled library ({first}); export ONNX for ONNX Runtime instead") from e
        return self._vm

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self.meta["inputs"]]

    @property
    def output_names(self) -> list[str]:
        return [o["name"] for o in self.meta["outputs"]]

    def _arrays(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[np.ndarray]:
        names = self.input_names
        if args and kwargs:
            raise _error("give inputs either positionally or by name, not both")
        frozen = {f["name"]: f for f in self.meta.get("frozen_inputs", [])}
        order = self.meta.get("input_order", names)
        if frozen and args and len(args) == len(order) != len(names):  # the model's inputs, in its order
            kwargs, args = dict(zip(order, args)), ()
        for name, f in frozen.items():
            if name in kwargs:
                got = np.asarray(kwargs[name])
                if got.shape != np.shape(f["value"]) or not np.array_equal(got, np.asarray(f["value"], dtype=f["dtype"])):
                    raise _error(
                        f"input '{name}' was fixed to {f['value']} when this artifact was compiled (it decides shapes); "
                        f"got {got.tolist()}: compile again with samples holding that value"
                    )
        if kwargs:
            missing = [n for n in names if n not in kwargs]
            if missing:
                raise _error(f"missing input(s) {', '.join(missing)}; inputs: {', '.join(names)}")
            args = [kwargs[n] for n in names]
        if len(args) != len(names):
            raise _error(f"expected {len(names)} input(s) ({', '.join(names)}), got {len(args)}")
        arrays = []
        sizes: dict[str, int] = {}  # a dynamic dim takes one size across the inputs that have it
        for spec, value in zip(self.meta["inputs"], args):
            if hasattr(value, "detach"):  # torch tensor
                value = value.detach().cpu().numpy()
            given = np.asarray(value)
            want = np.dtype(spec["dtype"])
            if given.dtype != want and not (given.dtype.kind == want.kind == "f" or (given.dtype.kind in "iub" and want.kind in "iu")):
                raise _error(f"input '{spec['name']}' expects {want} {spec['shape']}, was given {given.dtype} {list(given.shape)}")
            arr = np.asarray(given, dtype=want, order="C")  # ascontiguousarray would make 0-d arrays 1-d
            if not _shape_fits(arr.shape, spec["shape"], sizes):
                raise _error(
                    f"input '{spec['name']}' has shape {list(arr.shape)}; this artifact was built for {spec['shape']} "
                    "(named dims are dynamic; recompile with --input-shape or --dynamic to change it)"
                )
            arrays.append(arr)
        return arrays

    def __call__(self, *args: Any, **kwargs: Any) -> list[np.ndarray]:
        """The outputs for these inputs. Not reentrant: one call at a time per model (TVM's VM
        is not either)."""
        import tvm

        local_cpu = self.remote is None and self._local_device.dlpack_device_type() == 1
        vm = self.vm  # first: it says so when the device is not usable here, before inputs go there
        inputs = self._staged(args, kwargs) if local_cpu else None
        if inputs is None:
            inputs = [_cpu_view(a) if local_cpu else tvm.runtime.tensor(a, self.device) for a in self._arrays(args, kwargs)]
        if self._main is None or self._main[0] is not vm:  # looked up once: 13 us a call on a small model's 22
            self._main = (vm, vm["main"])
        if self._active_ref is not None and _ACTIVE[0] is not self._active_ref:
            _switch_launcher(self)
        return _flatten(self._main[1](*inputs), local_cpu)

    def _staged(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[Any] | None:
        """The fast path of a small model's call: numpy inputs of the artifact's dtypes and static
        shapes, each at most :data:`STAGED_BYTES`, copied into 64-byte-aligned buffers made once
        that TVM reads in place (0.3 us each, against 3 us of checks and conversions and 2 us of
        alignment test in the general path: the wake-word classifier's call is 20 us of kernels).
        None when anything else was given: the general path checks and converts it."""
        if self._stage is None:
            # inputs fixed at compile time (silero's sample rate) are checked here, cheaply; a
            # value that differs takes the general path, which says what was fixed
            self._frozen = {f["name"]: np.asarray(f["value"], dtype=f["dtype"]) for f in self.meta.get("frozen_inputs", [])}
            static = all(isinstance(d, int) for i in self.meta["inputs"] for d in i["shape"])
            try:
                specs = [(np.dtype(i["dtype"]), tuple(i["shape"])) for i in self.meta["inputs"]]
            except TypeError:  # a dtype numpy does not have (bfloat16): the general path
                specs, static = [], False
            small = static and all(dt.itemsize * int(np.prod(shape)) <= STAGED_BYTES for dt, shape in specs)
            self._stage = [_aligned_buffer(dt, shape) for dt, shape in specs] if small else []
        stage = self._stage
        if not stage:
            return None
        if kwargs:
            given = len(kwargs)
            for name, value in self._frozen.items():
                if name in kwargs:
                    got = kwargs[name]
                    if type(got) is not np.ndarray or got.shape != value.shape or got.dtype != value.dtype or not np.array_equal(got, value):
                        return None
                    given -= 1
            if args or given != len(stage):
                return None
            try:
                args = [kwargs[n] for n in self.input_names]
            except KeyError:
                return None
        elif len(args) != len(stage):
            return None
        for (buffer, view), value in zip(stage, args):
            if type(value) is not np.ndarray or value.dtype != buffer.dtype or value.shape != buffer.shape:
                return None
        for (buffer, _), value in zip(stage, args):
            np.copyto(buffer, value)
        return [view for _, view in stage]

    def run_named(self, *args: Any, **kwargs: Any) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self(*args, **kwargs)))

    def benchmark(self, *args: Any, repeat: int = 50, warmup: int = 5, **kwargs: Any) -> dict[str, float]:
        """Median/mean/min latency in milliseconds of ``repeat`` runs after ``warmup`` runs."""
        import tvm

        fn = self.vm["main"]
        inputs = [tvm.runtime.tensor(a, self.device) for a in self._arrays(args, kwargs)]
        for _ in range(warmup):
            fn(*inputs)
        times = vm_timings(self.vm, self.device, inputs, number=1, repeat=repeat)
        return {"median_ms": float(np.median(times)), "mean_ms": float(np.mean(times)), "min_ms": float(np.min(times)), "repeat": repeat}

    # -- saving ------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the artifact directory (library + ``graphpress.json``) whole, or not at all
        (:func:`graphpress.ir.atomic.write_directory_atomic`): an earlier artifact at ``path``
        is replaced in one step."""
        if self._executable is None:
            raise _error("this model was loaded from an artifact; copy that directory instead of saving it again")
        dest = Path(path)
        parent = dest.parent if str(dest.parent) else Path(".")
        if not parent.is_dir():
            raise _error(f"{dest}: cannot write the artifact, directory {parent} does not exist")
        if dest.exists() and not (dest / ARTIFACT_META).is_file():
            raise _error(f"{dest}: exists and is not a graphpress artifact; choose another -o path")
        from graphpress.ir.atomic import write_directory_atomic

        cxx = self.meta.get("cross_compiler")
        if cxx:
            require_compiler(cxx)
        # linked in the system's temporary directory (the compiler needs names); the artifact
        # directory is then assembled from anonymous copies and swapped in
        with tempfile.TemporaryDirectory(prefix="graphpress-artifact-") as build:
            lib, meta = Path(build) / ARTIFACT_LIB, Path(build) / ARTIFACT_META
            export_library(self._executable, lib, cross_compiler=cxx, launcher=self.meta["target"]["kind"] == "llvm")
            meta.write_text(json.dumps(self.meta, indent=2, sort_keys=True) + "\n")
            write_directory_atomic(dest, [lib, meta])
        return dest


def vm_timings(vm: Any, device: Any, args: Sequence[Any], *, number: int = 1, repeat: int = 10, function: str = "main") -> list[float]:
    """Milliseconds per call of ``vm[function](*args)``, one figure per ``repeat`` (each the mean
    of ``number`` calls), from TVM's own time evaluator (it synchronizes the device). The one
    timer of the backend: builds, guards and :meth:`CompiledModel.benchmark` use it."""
    evaluator = vm.time_evaluator(function, device, number=number, repeat=repeat)
    return [t * 1e3 for t in evaluator(*args).results]


def load_program(program: Any) -> Any:
    """A Relax VM of the executable ``program``, on the device of the current :func:`running_on`
    block (uploaded there) or this machine's CPU: to time several of its functions."""
    import tvm

    remote = current_remote()
    return _vm_class()(remote.load_executable(program) if remote is not None else program, remote.device if remote is not None else tvm.cpu())


def time_side_by_side(programs: Sequence[tuple[Any, Sequence[np.ndarray]]], *, number: int = 10, rounds: int = 5, function: str = "main") -> list[float]:
    """Median milliseconds of ``function`` of each ``(program, input arrays)`` (an executable, or
    a VM from :func:`load_program`), timed in the same run in alternating order (A B, then B A,
    ``rounds`` times; each figure the mean of ``number`` calls). One after the other instead, a
    burst of other work on a shared host lands on one of them: ResNet-18's int8 stem measured
    slower than its fp32 kernel in one compile of two (0.50 ms against 0.27 in the other) and
    shipped in fp32, 0.3 ms more per inference."""
    import tvm

    remote = current_remote()
    device = remote.device if remote is not None else tvm.cpu()
    runs = []
    for program, arrays in programs:
        vm = program if isinstance(program, _vm_class()) else load_program(program)
        args = [tvm.runtime.tensor(a, device) for a in arrays]
        vm[function](*args)
        runs.append((vm, args))
    samples: list[list[float]] = [[] for _ in runs]
    order = list(range(len(runs)))
    for r in range(2 * rounds):
        for i in order if r % 2 == 0 else order[::-1]:
            samples[i] += vm_timings(runs[i][0], device, runs[i][1], number=number, repeat=1, function=function)
    return [float(np.median(s)) for s in samples]


@contextlib.contextmanager
def quiet_native_stderr():
    """Hold back what native code writes to fd 2 (TVM logs a 'Scope Saving/Loaded' warning per
    function when a library is exported or loaded); replay it if the block raises."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (e.g. captured by a test harness)
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace")[-4000:])
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def require_compiler(cxx: str) -> None:
    """Refuse, with what to install, when the C++ compiler that links an artifact is missing."""
    if shutil.which(cxx) is None:
        hint = "run 'make arm-env' or install Debian's g++-aarch64-linux-gnu" if "aarch64" in cxx else f"install {cxx}"
        raise _error(f"the C++ cross compiler '{cxx}' that links this target's library is not installed; {hint}")


def _usable(device) -> bool:
    """Whether TVM can run on ``device`` here (its query raises where CUDA's runtime finds no
    driver, or only the stub a GPU-less build loads)."""
    try:
        return bool(device.exist)
    except Exception:
        return False


def _vm_class() -> type:
    """Relax's virtual machine, from TVM's runtime package: the same class as
    ``tvm.relax.VirtualMachine``, which TVM's runtime alone cannot import (``TVM_USE_RUNTIME_LIB=1``,
    or a wheel without ``libtvm_compiler``: what a GPU server or a board deploys)."""
    from tvm.runtime.vm import VirtualMachine

    return VirtualMachine


def _runtime_backend(kind: str) -> str | None:
    """Load the device runtime a ``kind`` artifact needs; why it could not be loaded, or None. A
    full ``import tvm`` loads ``libtvm_runtime_cuda`` itself (its backend hooks) where the CUDA
    driver is present; TVM's runtime alone does not, and its loader then refuses the library ("a
    loader of that name is not registered"). Loaded here for CUDA artifacts when missing."""
    if kind != "cuda":
        return None
    from tvm.base import _LOADED_LIBS

    if "tvm_runtime_cuda" in _LOADED_LIBS:
        return None
    from tvm_ffi.libinfo import load_lib_ctypes

    try:
        _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(package="tvm", target_name="tvm_runtime_cuda", extra_lib_paths=[Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent],
                                                           mode="RTLD_LOCAL")  # fmt: skip
    except (OSError, RuntimeError) as e:
        return str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
    return None


def _error(message: str) -> Exception:
    """A GraphpressError, or a RuntimeError where graphpress itself is not importable
    (this module also runs standalone on an aarch64 machine with only TVM and numpy)."""
    try:
        from graphpress.errors import GraphpressError
    except ImportError:  # pragma: no cover - standalone runner
        return RuntimeError(message)
    return GraphpressError(message)


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise _error(f"{path}: damaged artifact metadata ({str(e).splitlines()[0][:120]}); compile the model again") from None
    missing = [k for k in ("target", "inputs", "outputs") if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise _error(f"{path}: damaged artifact metadata (no {', '.join(missing)}); compile the model again")
    try:
        for io in meta["inputs"]:
            io["name"], np.dtype(io["dtype"]), [d if isinstance(d, str) else int(d) for d in io["shape"]]  # a size, or a dynamic dim's name
        for io in meta["outputs"]:
            io["name"]
    except (KeyError, TypeError, ValueError):
        raise _error(f"{path}: damaged artifact metadata (bad inputs/outputs entries); compile the model again") from None
    return meta


def _cpu_view(array: np.ndarray):
    """A TVM tensor on the CPU reading ``array`` in place (DLPack, no copy: 0.7 us against 17 for
    ``tvm.runtime.tensor``'s copy) when it is C-contiguous and 64-byte aligned, as TVM's kernels
    assume of their buffers; else numpy's copy into an aligned buffer, read in place (2 us
    against 20 for ``tvm.runtime.tensor`` on silero's two small inputs, whose call was then
    more than half conversion). The kernels never write their inputs."""
    import tvm

    if array.flags["C_CONTIGUOUS"] and array.ctypes.data % 64 == 0 and array.size:
        return tvm.runtime.from_dlpack(array)
    if array.size:
        try:
            buffer, view = _aligned_buffer(array.dtype, array.shape)
            np.copyto(buffer, array)
            return view
        except (BufferError, TypeError, RuntimeError, ValueError):  # a dtype DLPack does not take: TVM's own copy
            pass
    return tvm.runtime.tensor(array, tvm.cpu(0))


#: inputs up to this size (bytes) are copied into buffers made once (:meth:`CompiledModel._staged`)
STAGED_BYTES = 1 << 16


def _aligned_buffer(dtype: np.dtype, shape: tuple[int, ...]) -> tuple[np.ndarray, Any]:
    """A C-contiguous numpy array starting on a 64-byte boundary, and a TVM tensor reading it."""
    import tvm

    count = math.prod(shape)  # not np.prod: 4 us on a tuple, twice a call on the general path
    size = max(1, count) * dtype.itemsize
    raw = np.empty(size + 64, np.uint8)
    offset = -raw.ctypes.data % 64
    array = raw[offset : offset + size].view(dtype)[:count].reshape(shape)
    return array, tvm.runtime.from_dlpack(array) if array.size else tvm.runtime.tensor(array, tvm.cpu(0))


def _flatten(out: Any, local_cpu: bool = False) -> list[np.ndarray]:
    """The VM's result as numpy arrays (copies: the caller owns them). On the local CPU the
    copy is made through DLPack: 0.5 us against 7 for ``Tensor.numpy``."""
    if hasattr(out, "numpy"):
        if local_cpu:
            try:
                return [np.from_dlpack(out).copy()]
            except (BufferError, TypeError, RuntimeError):  # a dtype numpy's DLPack does not take (bfloat16)
                pass
        return [out.numpy()]
    result: list[np.ndarray] = []
    for item in out:
        result.extend(_flatten(item, local_cpu))
    return result


def load(path: str | os.PathLike, *, num_threads: int | None = None, remote: Remote | str | None = None) -> CompiledModel:
    """Load an artifact directory written by :meth:`CompiledModel.save`.

    Args:
        path: the artifact directory.
        num_threads: size of TVM's CPU thread pool (default: TVM's, all cores).
        remote: run it on a device over TVM's RPC (a :class:`Remote` or its ``HOST:PORT[:KEY]``):
            the library is uploaded there and loaded by the device, not here.
    """
    import tvm

    root = Path(path)
    meta_path = root / ARTIFACT_META
    if not meta_path.is_file() or not (root / ARTIFACT_LIB).is_file():
        raise _error(f"{root}: not a graphpress artifact (expected {ARTIFACT_LIB} and {ARTIFACT_META}); build one with graphpress compile")
    meta = _read_meta(meta_path)
    if num_threads is not None and num_threads < 1:
        raise _error(f"threads must be >= 1, got {num_threads}")
    if remote is not None:
        model = CompiledModel(None, meta, remote=remote if isinstance(remote, Remote) else Remote(remote))
        model._library_file = root / ARTIFACT_LIB
        model.vm  # uploaded and loaded now: a library the device refuses is refused here
        return model
    backend_missing = _runtime_backend(meta["target"]["kind"])
    try:
        with quiet_native_stderr():
            library = tvm.runtime.load_module(str(root / ARTIFACT_LIB))
    except Exception as e:
        if backend_missing is not None:  # the reason, not TVM's "no loader registered"
            raise _error(f"{root / ARTIFACT_LIB}: cannot load: TVM's {meta['target']['kind'].upper()} runtime did not load ({backend_missing}); "
                         "run it on a machine with the device and its driver") from e  # fmt: skip
        raise _error(f"{root / ARTIFACT_LIB}: cannot load ({str(e).strip().splitlines()[-1][:200]}); was it built for this machine? target: {json.dumps(meta['target'])}") from e
    if num_threads:
        set_num_threads(num_threads)
    model = CompiledModel(None, meta, library=library)
    if meta["target"]["kind"] == "llvm":
        _install_launcher(model, root / ARTIFACT_LIB)
    return model


def _shape_fits(shape: Sequence[int], want: Sequence[Any], sizes: dict[str, int]) -> bool:
    """Whether ``shape`` matches the artifact's ``want`` (ints, and names of dynamic dims: any
    size, the same for every input with that name; ``sizes`` remembers them)."""
    if len(shape) != len(want):
        return False
    for got, w in zip(shape, want):
        if isinstance(w, str):
            if sizes.setdefault(w, int(got)) != int(got):
                return False
        elif int(got) != int(w):
            return False
    return True


def concrete_input_specs(inputs: Sequence[Mapping[str, Any]], size: int = 1) -> list[dict[str, Any]]:
    """The artifact's input specs with every dynamic (named) dim set to ``size``: for generated inputs."""
    return [{**i, "shape": [size if isinstance(d, str) else d for d in i["shape"]]} for i in inputs]
