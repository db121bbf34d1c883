"""Remote targets over TVM's own RPC: an RPC tracker and an aarch64 RPC server under qemu, both on
the loopback address and started here. A compile with ``--rpc`` times the int8 guard's kernels and
runs the check against ONNX Runtime on that server, and says so in its report; ``run`` and
``bench`` run the artifact there. Every wait is bounded."""

from __future__ import annotations

import gc
import importlib.util
import json

import numpy as np
import pytest
import torch

import graphpress as gp
from graphpress.backends.tvm.qemu import arm_env_ready, run_aarch64, start_rpc_server
from graphpress.backends.tvm.runtime import Remote
from graphpress.errors import GraphpressError
from graphpress.passes import PassContext, PassManager, build_passes

KEY = "qemu-aarch64"


def test_rpc_addresses_are_checked_in_one_line():
    for bad in ("localhost", "host:port", ":9190", "a:1:2:3"):
        with pytest.raises(GraphpressError, match="give HOST:PORT:KEY"):
            Remote(bad)
    remote = Remote("127.0.0.1:1:nokey")  # nothing listens on port 1
    assert (remote.host, remote.port, remote.key) == ("127.0.0.1", 1, "nokey")
    with pytest.raises(GraphpressError, match="nothing answers at 127.0.0.1:1.*start the RPC tracker"):
        remote.session


@pytest.fixture(scope="module")
def tracker_and_server():
    if not arm_env_ready():
        pytest.skip("no qemu-aarch64 / arm env (make arm-env)")
    if importlib.util.find_spec("tornado") is None:
        pytest.skip("TVM's RPC tracker needs tornado (pip install graphpress[rpc])")
    from tvm.rpc.tracker import Tracker

    tracker = Tracker("127.0.0.1", port=9190, port_end=9390, silent=True)
    address = f"127.0.0.1:{tracker.port}"
    try:
        server = start_rpc_server(address, KEY, port=9400, ready_timeout_s=120)
    except BaseException:
        tracker.terminate()
        raise
    yield f"{address}:{KEY}"
    server.terminate()
    server.wait(timeout=30)
    tracker.terminate()


@pytest.fixture(scope="module")
def qdq_cnn(digits_cnn, tmp_path_factory):
    module, data = digits_cnn
    model = gp.load(module, torch.from_numpy(data.x_test[:1]))
    name = model.graph.inputs[0].name
    context = PassContext(samples=[{name: data.x_train[i : i + 1]} for i in range(16)])
    PassManager(build_passes("cleanup,fuse,quantize:mode=static"), context=context).run(model)
    path = tmp_path_factory.mktemp("rpc") / "cnn.qdq.onnx"
    gp.save(model, path)
    inputs = path.with_suffix(".npz")
    np.savez(inputs, **{name: data.x_test[:4]})
    return path, inputs, name, data.x_test[:1]


@pytest.mark.slow
def test_compile_with_rpc_times_the_guard_and_checks_on_the_device(tracker_and_server, qdq_cnn, tmp_path, capsys):
    from graphpress.cli import main

    path, inputs, name, x = qdq_cnn
    art, rep = tmp_path / "cnn.arm", tmp_path / "build.json"
    argv = ["compile", str(path), "--target", "aarch64", "--rpc", tracker_and_server, "--inputs", str(inputs), "-o", str(art), "--report", str(rep)]
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    where = f"rpc tracker {tracker_and_server.rsplit(':', 1)[0]}, key {KEY}"
    assert f"timed on {where}" in out and f"run on {where}" in out
    build = json.loads(rep.read_text())["build"]
    assert build["measured_on"] == where
    i8 = build["int8"]
    # the guard ran there: every layer's int8 and fp32 kernels were timed, and the whole model too
    assert i8["isa"] == "sdot" and i8["measured_on"] == where and i8["guard"] is True
    assert i8["nodes"] and all(n["int8_ms"] > 0 and n["fp32_ms"] > 0 for n in i8["nodes"])
    assert i8["model_guard"]["chosen"] in ("int8", "close_calls_int8", "fp32") and i8["model_guard"]["int8_ms"] > 0
    assert build["check_vs_onnxruntime"]["ran_on"] == where and build["check_vs_onnxruntime"]["passed"]
    assert "not measured" in build["vs_onnxruntime_note"]
    # what ran there is what was written: the artifact under qemu here gives the same outputs
    out_npz, one = tmp_path / "out.npz", tmp_path / "one.npz"
    np.savez(one, **{name: x})
    assert main(["run", str(art), "--rpc", tracker_and_server, "--inputs", str(one), "--output", str(out_npz)]) == 0
    capsys.readouterr()
    with np.load(out_npz) as remote_out:
        local = run_aarch64(art, {name: x})
        assert set(local) == set(remote_out.files)
        for k, v in local.items():
            np.testing.assert_array_equal(remote_out[k], v)
    assert main(["bench", "--artifact", str(art), "--rpc", tracker_and_server, "--json", "--seconds", "0.5"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert len(rows) == 1 and rows[0]["engine"].endswith(f"on {where}") and 0 < rows[0]["p10_ms"] <= rows[0]["median_ms"] <= rows[0]["p90_ms"]


@pytest.mark.slow
def test_compress_with_rpc_judges_the_artifact_on_the_device(tracker_and_server, digits_cnn):
    module, data = digits_cnn
    model = gp.load(module, torch.from_numpy(data.x_test[:1]))
    name = model.graph.inputs[0].name
    samples = [{name: data.x_test[i : i + 1]} for i in range(48)]
    result = gp.compress(model, "aarch64", samples=samples, recipe="int8", budget="2%", measure=False, rpc=tracker_and_server)
    assert result.compiled.remote is not None and result.compiled.meta["build"]["int8"]["measured_on"].startswith("rpc tracker")
    row = next(r for r in result.rows if r["variant"].startswith("graphpress, compiled for aarch64"))
    assert "held-out run on rpc tracker" in row["variant"] and row["held_out_loss"] <= 0.02
    # the device is free again: nothing here holds a module of the session (the compiled
    # model's looked-up entry held its VM, the session stayed open, and the held-out run waited
    # 600 s for the tracker to hand the device out again)
    import tvm

    gc.collect()
    assert not [m for m in gc.get_objects() if isinstance(m, tvm.runtime.Module) and m.kind == "rpc"]


def test_require_faster_and_rpc_exclude_each_other(tmp_path, capsys, qdq_cnn):
    from graphpress.cli import main

    path, *_ = qdq_cnn
    assert main(["compile", str(path), "--target", "aarch64", "--rpc", "127.0.0.1:1:k", "--require-faster", "-o", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "drop one of them" in err and err.count("\n") == 1
    assert main(["compile", str(path), "--target", "aarch64", "--rpc", "127.0.0.1:1:k", "-o", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "nothing answers at 127.0.0.1:1" in err and err.count("\n") == 1
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_tuning_with_rpc_measures_candidates_on_the_device(tracker_and_server, tmp_path):
    """MetaSchedule's RPC runner: candidates linked here for aarch64, timed on the qemu server;
    the records land in the database and a later compile applies them."""
    from graphpress.backends.tvm import compile_model
    from graphpress.backends.tvm.tuning import open_database

    module = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.ReLU()).eval()
    model = gp.load(module, torch.randn(1, 32))
    db = tmp_path / "db"
    compiled = compile_model(model, "aarch64", tune_trials=2, max_trials_per_task=2, database=db, shipped_databases=False, rpc=tracker_and_server)
    build = compiled.meta["build"]
    assert build["tuned_on"].startswith("rpc tracker") and build["check_vs_onnxruntime"]["passed"]
    assert build["tuning_records_added"] > 0, f"no candidate built and ran: see {db}/logs"
    records = open_database(db).get_all_tuning_records()
    assert records and all(r.run_secs is not None and all(float(t) < 1e9 for t in r.run_secs) for r in records)
