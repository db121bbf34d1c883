"""``graphpress pack`` / ``unpack``: bit-exact round trips, smaller files, clear errors."""

from __future__ import annotations

import hashlib
import json
import lzma
import struct
import zlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import graphpress as gp
from graphpress.cli import main
from graphpress.errors import GraphpressError
from graphpress.ir import huffman
from graphpress.ir.pack import MAGIC, huffman_bytes, pack_bytes, unpack_bytes
from graphpress.passes import PassManager, build_passes
from tests.conftest import make_model
from tests.passes.test_dedup import _if_model


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x07",
        bytes(5000),  # one symbol
        np.random.default_rng(0).integers(0, 16, 20_001).astype(np.uint8).tobytes(),
        np.random.default_rng(1).integers(0, 256, 9000).astype(np.uint8).tobytes(),
        # very skewed: unlimited Huffman codes would exceed MAX_LEN bits
        np.minimum(np.random.default_rng(2).geometric(0.5, 300_000), 255).astype(np.uint8).tobytes(),
    ],
)
def test_huffman_round_trip(data):
    coded = huffman.encode(data)
    assert huffman.decode(coded) == data
    if len(data) > 10_000:
        # within 1 bit per symbol (+ tables) of what huffman_bytes computes
        assert len(coded) <= huffman_bytes(data) + 8 * (len(data) // huffman.BLOCK + 2) + 16


def test_huffman_beats_lzma_on_independent_skewed_symbols():
    rng = np.random.default_rng(3)
    p = np.array([0.3, 0.2, 0.15, 0.1, 0.08, 0.06, 0.04, 0.03, 0.02, 0.01, 0.005, 0.005])
    data = rng.choice(len(p), size=200_000, p=p / p.sum()).astype(np.uint8).tobytes()
    assert len(huffman.encode(data)) < len(lzma.compress(data, preset=9))


def _shared_cnn(digits_cnn, tmp_path, clusters=16):
    module, data = digits_cnn
    model = gp.load(module, torch.from_numpy(data.x_test[:2]), dynamic_batch=True)
    PassManager(build_passes(f"cleanup,fuse,share:clusters={clusters}")).run(model)
    return gp.save(model, tmp_path / f"shared{clusters}.onnx")


def test_round_trips_are_bit_exact(digits_cnn, cnn_onnx, tmp_path, mlp_proto):
    subgraphs = tmp_path / "if.onnx"
    onnx.save(_if_model(), subgraphs)
    empty = tmp_path / "empty.onnx"
    onnx.save(make_model([onnx.helper.make_node("Relu", ["x"], ["y"])], [onnx.helper.make_tensor_value_info("x", 1, [2])], [onnx.helper.make_tensor_value_info("y", 1, [2])]), empty)
    for path in (cnn_onnx, _shared_cnn(digits_cnn, tmp_path), _shared_cnn(digits_cnn, tmp_path, 256), subgraphs, empty):
        data = path.read_bytes()
        packed, report = pack_bytes(data, str(path))
        assert unpack_bytes(packed) == data
        assert report.original_bytes == len(data) and report.packed_bytes == len(packed)


def test_packed_shared_model_is_smaller_than_lzma_of_the_file(digits_cnn, cnn_onnx, tmp_path):
    shared = _shared_cnn(digits_cnn, tmp_path)
    packed, report = pack_bytes(shared.read_bytes())
    assert len(packed) < len(lzma.compress(shared.read_bytes(), preset=9))
    # 16 clusters: 4-bit indices, entropy-coded below 4 bits: > 8x smaller than the fp32 file
    assert len(packed) * 8 < cnn_onnx.stat().st_size


def test_cli_pack_unpack(capsys, digits_cnn, tmp_path):
    shared = _shared_cnn(digits_cnn, tmp_path)
    digest = hashlib.sha256(shared.read_bytes()).hexdigest()
    assert main(["pack", str(shared), "-o", str(tmp_path / "m.gpk")]) == 0
    assert "smaller" in capsys.readouterr().out
    assert main(["unpack", str(tmp_path / "m.gpk"), "-o", str(tmp_path / "back.onnx")]) == 0
    assert (tmp_path / "back.onnx").read_bytes() == shared.read_bytes()
    assert hashlib.sha256(shared.read_bytes()).hexdigest() == digest  # input untouched
    import onnxruntime as ort

    ort.InferenceSession(str(tmp_path / "back.onnx"), providers=["CPUExecutionProvider"])
    assert main(["pack", str(shared), "-o", str(tmp_path / "j.gpk"), "--json"]) == 0
    assert '"ratio"' in capsys.readouterr().out


def test_cli_errors(capsys, digits_cnn, tmp_path, cnn_onnx):
    # unpack of something that is not a pack file
    assert main(["unpack", str(cnn_onnx), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "not a graphpress pack file" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
    # a damaged pack file
    packed = bytearray(pack_bytes(cnn_onnx.read_bytes())[0])
    packed[-100] ^= 0xFF
    (tmp_path / "bad.gpk").write_bytes(bytes(packed))
    assert main(["unpack", str(tmp_path / "bad.gpk"), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "damaged" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
    # a missing file
    assert main(["pack", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "e.gpk")]) == 2
    assert not (tmp_path / "e.gpk").exists()


def test_pack_of_an_external_data_model_packs_its_self_contained_form(tmp_path, cnn_onnx):
    ext = gp.save(gp.load(cnn_onnx), tmp_path / "ext.onnx", external_data=True)
    assert (tmp_path / "ext.onnx.data").stat().st_size > 100_000
    assert main(["pack", str(ext), "-o", str(tmp_path / "e.gpk")]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert main(["unpack", str(tmp_path / "e.gpk"), "-o", str(elsewhere / "one.onnx")]) == 0
    proto = onnx.load(str(elsewhere / "one.onnx"), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)}
    ref = ort.InferenceSession(str(cnn_onnx), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = ort.InferenceSession(str(elsewhere / "one.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_array_equal(ref[0], got[0])


def test_unpack_refuses_a_wrong_digest():
    packed = bytearray(pack_bytes(b"\x08\x07")[0])  # a tiny valid ModelProto (ir_version 7)
    (hlen,) = struct.unpack_from("<I", packed, len(MAGIC))
    start = len(MAGIC) + 4
    header = json.loads(zlib.decompress(bytes(packed[start : start + hlen])))
    header["sha256"] = "0" * 64
    new = zlib.compress(json.dumps(header).encode())
    packed = packed[:len(MAGIC)] + struct.pack("<I", len(new)) + new + packed[start + hlen :]
    with pytest.raises(GraphpressError, match="SHA-256"):
        unpack_bytes(bytes(packed))
