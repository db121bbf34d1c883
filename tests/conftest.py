"""Shared fixtures: small hand-built ONNX graphs and exported real models (cached per session)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# pytest-xdist runs one worker per core: a TVM pool of one thread each keeps them from
# oversubscribing the cores (set before graphpress.backends.tvm sizes it to every CPU)
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("TVM_NUM_THREADS", "1")

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphpress as gp

PLUGINS = Path(__file__).parent / "plugins"
if str(PLUGINS) not in sys.path:
    sys.path.insert(0, str(PLUGINS))

OPSET = 20
IR_VERSION = 10


def _host_cpu() -> tuple[str, set[str]]:
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown CPU":
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return model, flags


def host_lacks(*flags: str) -> str:
    """"" when this host's CPU has every one of ``flags`` (``/proc/cpuinfo`` names), else a skip
    reason naming the ISA, the host and what it lacks."""
    model, have = _host_cpu()
    missing = [f for f in flags if f not in have]
    return f"needs a CPU with {', '.join(flags)}; this host ({model}) lacks {', '.join(missing)}" if missing else ""


def make_model(nodes, inputs, outputs, initializers=(), opset=OPSET, ir_version=IR_VERSION) -> onnx.ModelProto:
    """An ONNX model from helper-made pieces with an IR version ORT reads."""
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


def tensor(name: str, array) -> TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


@pytest.fixture
def mlp_proto() -> onnx.ModelProto:
    """x[1,8] -> MatMul(W1) -> Add(b1) -> Relu -> Identity -> MatMul(W2) -> y[1,4]."""
    rng = np.random.default_rng(0)
    return make_model(
        [
            helper.make_node("MatMul", ["x", "W1"], ["h0"], name="mm1"),
            helper.make_node("Add", ["h0", "b1"], ["h1"], name="add1"),
            helper.make_node("Relu", ["h1"], ["h2"], name="relu1"),
            helper.make_node("Identity", ["h2"], ["h3"], name="id1"),
            helper.make_node("MatMul", ["h3", "W2"], ["y"], name="mm2"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [
            tensor("W1", rng.standard_normal((8, 16)).astype(np.float32)),
            tensor("b1", rng.standard_normal(16).astype(np.float32)),
            tensor("W2", rng.standard_normal((16, 4)).astype(np.float32)),
        ],
    )


@pytest.fixture
def mlp_path(tmp_path, mlp_proto) -> Path:
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp_proto, path)
    return path


@pytest.fixture(scope="session")
def digits_cnn():
    """A DigitsCNN trained briefly on scikit-learn digits, with its data."""
    from graphpress.models.cnn import train_digits_cnn

    return train_digits_cnn(epochs=2)


@pytest.fixture(scope="session")
def cnn_onnx(tmp_path_factory, digits_cnn) -> Path:
    """The trained DigitsCNN exported with graphpress (dynamo), saved to a file."""
    import torch

    module, data = digits_cnn
    path = tmp_path_factory.mktemp("cnn") / "cnn.onnx"
    gp.save(gp.load(module, torch.from_numpy(data.x_test[:2]), dynamic_batch=True), path)
    return path


@pytest.fixture(scope="session")
def minilm_onnx(tmp_path_factory) -> Path:
    """all-MiniLM-L6-v2 (real weights) exported with graphpress at [1, 128]."""
    import torch

    from graphpress.models.minilm import load_minilm, tokenize

    enc = load_minilm()
    toks = tokenize(["graphpress proves it did no harm"], seq_len=128)
    path = tmp_path_factory.mktemp("minilm") / "minilm.onnx"
    gp.save(gp.load(enc, (toks["input_ids"], toks["attention_mask"])), path)
    np.savez(path.with_suffix(".npz"), **{k: v.numpy() for k, v in toks.items()})
    with torch.no_grad():
        np.save(path.with_suffix(".ref.npy"), enc(**toks).numpy())
    return path
