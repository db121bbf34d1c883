"""graphpress's parallel launcher (``csrc/parallel_launch.cc``): every CPU artifact links it, and
loading one runs its parallel loops on it instead of TVM's thread pool. It must compute exactly
what TVM's pool computes (the same shares), follow the thread count, survive two threads on one
library and a fork, and stand aside when the user asks for TVM's pool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

import graphpress as gp
from graphpress.backends import tvm as gtvm
from graphpress.backends.tvm import runtime
from graphpress.errors import GraphpressError
from graphpress.passes import PassContext, PassManager, build_passes

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="the launcher is Linux's (futex)")


@pytest.fixture(autouse=True)
def _private_tuning_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHPRESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GRAPHPRESS_THREAD_POOL", raising=False)


def _net() -> torch.nn.Module:
    """Every CPU kernel family a MobileNet-style network compiles to: a dense 3x3 convolution, a
    depthwise one, a pointwise one, a pooling and a matrix product."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 32, 3, padding=1, groups=32),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(64, 10),
    ).eval()


def _tvm_threads() -> int:
    import tvm

    return int(tvm.get_global_func("runtime.NumThreads")())


def _x(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module", params=["fp32", "int8"])
def built(request, tmp_path_factory):
    """The network compiled for this host (``int8``: quantized static, every layer on its integer
    kernel), its in-process build's output -- computed on TVM's thread pool -- and its artifact."""
    model = gp.load(_net(), torch.from_numpy(_x()))
    name = model.graph.inputs[0].name
    if request.param == "int8":
        samples = [{name: _x(seed)} for seed in range(8)]
        PassManager(build_passes("quantize:mode=static"), context=PassContext(samples=samples)).run(model)
    compiled = gtvm.compile_model(model, "x86", int8_guard=False, measure=False, verify=False)
    if request.param == "int8":
        assert compiled.meta["build"]["int8"]["lowered"], "the integer kernels did not ship"
    refs = [compiled(_x(seed))[0] for seed in range(3)]
    art = compiled.save(tmp_path_factory.mktemp(request.param) / "net")
    return art, refs


def test_a_loaded_artifact_runs_on_the_launcher_bit_for_bit_with_tvms_pool(built):
    art, refs = built
    model = gtvm.load(art)
    assert model._launcher is not None and model._launcher.graphpress_parallel_installed() == 1
    assert model._launcher.graphpress_parallel_threads() == _tvm_threads()  # as many as TVM's pool would run
    for seed, ref in enumerate(refs):
        np.testing.assert_array_equal(model(_x(seed))[0], ref)


def test_the_launcher_follows_the_thread_count_and_two_threads_may_share_one_library(built):
    """Two models loaded from one artifact share its library and so one launcher: a call while
    the other thread's launch holds it runs its loop whole on its own thread. Every result is
    still the reference's, bit for bit, and every thread count computes the same."""
    art, refs = built
    first, second = gtvm.load(art), gtvm.load(art)
    threads = _tvm_threads()
    try:
        for n in (1, 3, threads):
            gtvm.set_num_threads(n)
            assert first._launcher.graphpress_parallel_threads() == n
            np.testing.assert_array_equal(first(_x(1))[0], refs[1])
    finally:
        gtvm.set_num_threads(threads)
    wrong: list[str] = []

    def hammer(model, seed):
        for _ in range(150):
            got = model(_x(seed))[0]
            if not np.array_equal(got, refs[seed]):
                wrong.append(f"seed {seed}: off by {np.abs(got - refs[seed]).max():.3g}")
                return

    workers = [threading.Thread(target=hammer, args=(m, s)) for m, s in ((first, 0), (second, 2))]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    assert not any(w.is_alive() for w in workers), "a call hung"
    assert not wrong, wrong


_FORK = """
import json, os, sys
import numpy as np
sys.path.insert(0, os.getcwd())
from graphpress.backends import tvm as gtvm
model = gtvm.load(sys.argv[1])
x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
parent = model(x)[0]
pid = os.fork()
if pid == 0:  # the child has no worker threads: the launcher starts them again
    os._exit(0 if np.array_equal(model(x)[0], parent) else 3)
_, status = os.waitpid(pid, 0)
print(json.dumps({"child": os.waitstatus_to_exitcode(status), "launcher": model._launcher is not None,
                  "same": bool(np.array_equal(model(x)[0], parent))}))
"""


def test_a_forked_child_runs_the_model_on_workers_of_its_own(built):
    art, _ = built
    out = subprocess.run([sys.executable, "-c", _FORK, str(art)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"child": 0, "launcher": True, "same": True}


_REST = """
import json, sys, time
import numpy as np
from graphpress.backends import tvm as gtvm
gtvm.set_num_threads(2)  # one worker, whatever the machine
first, again, other = gtvm.load(sys.argv[1]), gtvm.load(sys.argv[1]), gtvm.load(sys.argv[2])
x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
ref = first(x)[0]

def asleep(model, seconds):
    end = time.time() + seconds
    while time.time() < end:
        if model._launcher.graphpress_parallel_sleepers() == 1:
            return True
        time.sleep(0.005)
    return False

def awake(model):  # a worker a launch woke runs a few ms later, then yields for a minute
    end = time.time() + 10.0
    while time.time() < end and model._launcher.graphpress_parallel_sleepers() != 0:
        time.sleep(0.005)
    return not asleep(model, 0.3)

out = {"awake_after_its_call": awake(first)}
again(x)  # the same library, so the same launcher: it keeps its worker awake
out["awake_after_the_same_library"] = awake(first)
other(x)  # another library: the first one's idle worker goes to sleep
out["asleep_after_another_library"] = asleep(first, 10.0)
out["other_awake"] = awake(other)
out["same_result_after"] = bool(np.array_equal(first(x)[0], ref))
out["awake_again"] = awake(first)
print(json.dumps(out))
"""


def test_a_model_of_another_library_puts_the_idle_workers_of_the_last_one_to_sleep(built, tmp_path):
    """Each library has a launcher of its own. Two models called in turn: the idle worker of
    the one called before yields the CPU for GRAPHPRESS_SPIN_US, taking time from the running
    model's threads, unless the runtime tells it to sleep at once. Spinning for a minute here,
    it sleeps as soon as a model of another library runs, and not for a model of its own."""
    art, _ = built
    copy = tmp_path / "copy"  # a fresh copy of the artifact is a new library
    copy.mkdir()
    for f in art.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    env = {**os.environ, "GRAPHPRESS_SPIN_US": "60000000"}
    out = subprocess.run([sys.executable, "-c", _REST, str(art), str(copy)], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"awake_after_its_call": True, "awake_after_the_same_library": True, "asleep_after_another_library": True,
                   "other_awake": True, "same_result_after": True, "awake_again": True}, got


def test_tvms_pool_on_request_and_for_artifacts_without_the_launcher(built, tmp_path, monkeypatch):
    art, refs = built
    monkeypatch.setenv("GRAPHPRESS_THREAD_POOL", "tvm")
    # a library already put on the launcher stays there: a fresh copy of the artifact is a new library
    fresh = tmp_path / "copy"
    fresh.mkdir()
    for f in art.iterdir():
        (fresh / f.name).write_bytes(f.read_bytes())
    model = gtvm.load(fresh)
    assert model._launcher is None
    np.testing.assert_array_equal(model(_x(0))[0], refs[0])
    monkeypatch.setenv("GRAPHPRESS_THREAD_POOL", "openmp")
    with pytest.raises(GraphpressError, match="GRAPHPRESS_THREAD_POOL=openmp: give 'sharing'"):
        gtvm.load(art)
    monkeypatch.delenv("GRAPHPRESS_THREAD_POOL")
    # an artifact linked before the launcher existed: TVM's pool, the same results
    compiled = gtvm.compile_model(gp.load(_net(), torch.from_numpy(_x())), "x86", measure=False, verify=False)
    old = tmp_path / "old"
    old.mkdir()
    runtime.export_library(compiled._executable, old / runtime.ARTIFACT_LIB, launcher=False)
    (old / runtime.ARTIFACT_META).write_text(json.dumps(compiled.meta))
    assert b"graphpress_parallel_install" not in (old / runtime.ARTIFACT_LIB).read_bytes()
    loaded = gtvm.load(old)
    assert loaded._launcher is None
    np.testing.assert_array_equal(loaded(_x(0))[0], compiled(_x(0))[0])


def test_an_error_raised_in_any_share_reaches_the_caller(tmp_path):
    """A kernel that fails inside a parallel loop (here an assertion) raises its own error in the
    calling thread, whichever thread ran the failing share (a worker's error is moved to the
    caller: without that, TVM crashed reading the caller's empty error), and the launcher runs
    the next call normally."""
    import ctypes

    import tvm
    from tvm.script import tirx as T

    @T.prim_func
    def check_and_double(a: T.Buffer((2, 1 << 19), "float32"), b: T.Buffer((2, 1 << 19), "float32")):
        T.func_attr({"global_symbol": "check_and_double"})
        for i in T.parallel(2):  # one row a share: long enough that the worker takes the second
            for j in range(1 << 19):
                assert a[i, j] < T.float32(100), "graphpress-test: a value above 100"
                b[i, j] = a[i, j] * T.float32(2)

    path = tmp_path / "check.so"
    runtime.export_library(tvm.compile(tvm.IRModule({"check_and_double": check_and_double}), target={"kind": "llvm"}), path)
    fn = tvm.runtime.load_module(str(path))["check_and_double"]
    lib = ctypes.CDLL(str(path), mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    assert lib.graphpress_parallel_install(2) == 1 and lib.graphpress_parallel_installed() == 1
    a = (np.arange(1 << 20, dtype=np.float32) % 50).reshape(2, 1 << 19)
    out = tvm.runtime.tensor(np.zeros_like(a))
    for call in range(40):
        bad = a.copy()
        bad[call % 2, (1 << 19) - 1 - call] = 1e4  # at the end of the first share or the second (a worker's)
        with pytest.raises(Exception, match="graphpress-test: a value above 100"):
            fn(tvm.runtime.tensor(bad), out)
        fn(tvm.runtime.tensor(a), out)
        np.testing.assert_array_equal(out.numpy(), a * 2)
