"""The bad-input table: every bad input gets one line naming the file, option or node and what
to do -- exit code 2 from the CLI, a GraphpressError from the API -- the inputs stay byte for
byte as they were, and no output or temporary file is left anywhere.

Each row is one bad input. The files they use are built once (``world``); every row runs
against an empty output directory and checks the digests of every file in ``world``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

import graphpress as gp
from graphpress.cli import main
from graphpress.errors import GraphpressError
from tests.conftest import make_model, tensor


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _mlp() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    return make_model(
        [
            helper.make_node("MatMul", ["x", "W1"], ["h0"], name="mm1"),
            helper.make_node("Relu", ["h0"], ["h1"], name="relu1"),
            helper.make_node("MatMul", ["h1", "W2"], ["y"], name="mm2"),
        ],
        [_vi("x", [1, 8])],
        [_vi("y", [1, 4])],
        [tensor("W1", rng.standard_normal((8, 16)).astype(np.float32)), tensor("W2", rng.standard_normal((16, 4)).astype(np.float32))],
    )


def _one(op_nodes, opset=20, opsets=()) -> onnx.ModelProto:
    graph = helper.make_graph(op_nodes, "g", [_vi("x", [1, 4])], [_vi("y", [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *[helper.make_opsetid(d, 1) for d in opsets]])
    model.ir_version = 10
    return model


def _external(proto: onnx.ModelProto, location: str, offset: int = 0, length: int | None = None) -> onnx.ModelProto:
    """``proto`` with its first initializer pointing at external data."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    t = proto.graph.initializer[0]
    n = len(t.raw_data)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length if length is not None else n))):
        t.external_data.add(key=key, value=value)
    return proto


PLUGINS = {
    "gp_raising_pass.py": '''
from graphpress.passes import Pass, register

@register
class Raising(Pass):
    name = "test_raising"
    def call(self, model):
        raise RuntimeError("something inside the pass went wrong")
''',
    "gp_broken_import.py": "import module_that_does_not_exist_xyz\n",
    "gp_syntax_error.py": "def broken(:\n    pass\n",
    "gp_no_pass.py": "X = 1\n",
    "gp_not_a_pass.py": "class NotAPass:\n    pass\n",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("world")
    mlp = _mlp()
    onnx.save(mlp, d / "mlp.onnx")
    (d / "dir.onnx").mkdir()
    (d / "text.onnx").write_text("this is not a model\n")
    (d / "truncated.onnx").write_bytes(mlp.SerializeToString()[:-40])
    (d / "empty.onnx").write_bytes(b"")
    (d / "nograph.onnx").write_bytes(onnx.ModelProto(ir_version=10).SerializeToString())
    noopset = onnx.ModelProto.FromString(mlp.SerializeToString())
    del noopset.opset_import[:]
    (d / "noopset.onnx").write_bytes(noopset.SerializeToString())
    onnx.save(_one([helper.make_node("Relu", ["x"], ["y"], name="r")], opset=99), d / "opset99.onnx")
    onnx.save(_one([helper.make_node("Relu", ["x"], ["y"], name="r")], opset=0), d / "opset0.onnx")
    cycle = [helper.make_node("Relu", ["b"], ["a"], name="n1"), helper.make_node("Relu", ["a"], ["b"], name="n2"), helper.make_node("Relu", ["b"], ["y"], name="n3")]
    onnx.save(_one(cycle), d / "cycle.onnx")
    onnx.save(_one([helper.make_node("Relu", ["nope"], ["y"], name="r")]), d / "dangling.onnx")
    onnx.save(_one([helper.make_node("Relu", ["x"], ["y"], name="r1"), helper.make_node("Relu", ["x"], ["y"], name="r2")]), d / "twice.onnx")
    onnx.save(_one([helper.make_node("Foo", ["x"], ["y"], name="foo", domain="com.acme")], opsets=["com.acme"]), d / "custom_op.onnx")
    # external data: a good pair, a missing file, a file outside, a short file, an absolute path
    w1 = mlp.graph.initializer[0].raw_data
    (d / "ext.onnx").write_bytes(_external(mlp, "ext.onnx.data").SerializeToString())
    (d / "ext.onnx.data").write_bytes(w1)
    (d / "ext_missing.onnx").write_bytes(_external(mlp, "gone.data").SerializeToString())
    (d / "secret.bin").write_bytes(w1)
    sub = d / "sub"
    sub.mkdir()
    (sub / "ext_outside.onnx").write_bytes(_external(mlp, "../secret.bin").SerializeToString())
    (d / "ext_short.onnx").write_bytes(_external(mlp, "short.data").SerializeToString())
    (d / "short.data").write_bytes(w1[:100])
    (d / "ext_abs.onnx").write_bytes(_external(mlp, str(d / "secret.bin")).SerializeToString())
    (d / "ext_length.onnx").write_bytes(_external(mlp, "secret.bin", length=12).SerializeToString())
    # sample inputs
    np.savez(d / "good.npz", x=np.ones((1, 8), np.float32))
    np.savez(d / "wrong_shape.npz", x=np.ones((1, 5), np.float32))
    np.savez(d / "wrong_dtype.npz", x=np.ones((1, 8), np.int32))
    np.savez(d / "wrong_key.npz", input=np.ones((1, 8), np.float32))
    np.save(d / "single.npy", np.ones((1, 8), np.float32))
    (d / "notnpz.npz").write_text("not a zip")
    (d / "afile").write_text("a file, not a directory")
    (d / "notartifact").mkdir()
    (d / "notartifact" / "README").write_text("something else")
    for name, meta in (("corrupt_artifact", "{not json"), ("keyless_artifact", json.dumps({"inputs": []}))):
        (d / name).mkdir()
        (d / name / "model.so").write_bytes(b"\x7fELF not really")
        (d / name / "graphpress.json").write_text(meta)
    from graphpress.ir.pack import pack_bytes

    packed = bytearray(pack_bytes(mlp.SerializeToString())[0])
    packed[-20:] = bytes(b ^ 0xFF for b in packed[-20:])
    (d / "damaged.gpk").write_bytes(bytes(packed))
    (d / "no_compiler_path").mkdir()
    plugins = d / "plugins"
    plugins.mkdir()
    for name, text in PLUGINS.items():
        (plugins / name).write_text(text)
    return d


@dataclasses.dataclass
class Row:
    id: str
    argv: list[str]
    message: str  # a fragment of the one line; the file or option it names
    env: dict[str, str] = dataclasses.field(default_factory=dict)


M = "{d}/mlp.onnx"
O = "{o}/out.onnx"  # noqa: E741 - the output path of a row
OPT = ["optimize", M, "-o", O, "--passes"]

CLI_ROWS = [
    # -- the model file
    Row("inspect-missing", ["inspect", "{d}/nope.onnx"], "nope.onnx: no such file"),
    Row("inspect-directory", ["inspect", "{d}/dir.onnx"], "dir.onnx: is a directory"),
    Row("inspect-text", ["inspect", "{d}/text.onnx"], "text.onnx: not an ONNX model"),
    Row("inspect-truncated", ["inspect", "{d}/truncated.onnx"], "truncated.onnx: not an ONNX model or a truncated/corrupted file"),
    Row("inspect-empty", ["inspect", "{d}/empty.onnx"], "empty.onnx: not an ONNX model (no graph"),
    Row("inspect-no-graph", ["inspect", "{d}/nograph.onnx"], "nograph.onnx: not an ONNX model (no graph"),
    Row("inspect-no-opset", ["inspect", "{d}/noopset.onnx"], "noopset.onnx: ONNX model has no opset_import"),
    Row("inspect-opset-99", ["inspect", "{d}/opset99.onnx"], "opset99.onnx: declares opset 99"),
    Row("optimize-opset-99", ["optimize", "{d}/opset99.onnx", "-o", O, "--passes", "cleanup"], "opset99.onnx: declares opset 99"),
    Row("inspect-opset-0", ["inspect", "{d}/opset0.onnx"], "opset0.onnx: declares opset 0"),
    Row("inspect-cycle", ["inspect", "{d}/cycle.onnx"], "cycle.onnx: the graph has a cycle (n1 -> n2 -> n1)"),
    Row("optimize-cycle", ["optimize", "{d}/cycle.onnx", "-o", O, "--passes", "cleanup", "--verify"], "cycle.onnx: the graph has a cycle"),
    Row("inspect-dangling", ["inspect", "{d}/dangling.onnx"], "dangling.onnx: not a valid ONNX graph: graph 'g': node 'r' (Relu) uses 'nope'"),
    Row("inspect-defined-twice", ["inspect", "{d}/twice.onnx"], "twice.onnx: the ONNX model is malformed (Output 'y' is redeclared"),
    Row("inspect-ext-missing", ["inspect", "{d}/ext_missing.onnx"], "ext_missing.onnx: initializer 'W1' keeps its weights in 'gone.data', which is missing"),
    Row("optimize-ext-missing", ["optimize", "{d}/ext_missing.onnx", "-o", O, "--passes", "cleanup"], "ext_missing.onnx: initializer 'W1'"),
    Row("inspect-ext-outside", ["inspect", "{d}/sub/ext_outside.onnx"], "ext_outside.onnx: initializer 'W1' refers to external data '../secret.bin' outside"),
    Row("inspect-ext-short", ["inspect", "{d}/ext_short.onnx"], "ext_short.onnx: initializer 'W1' needs bytes 0..512 of 'short.data', which holds 100"),
    Row("inspect-ext-absolute", ["inspect", "{d}/ext_abs.onnx"], "ext_abs.onnx: initializer 'W1' keeps its data at the absolute path"),
    Row("inspect-ext-length", ["inspect", "{d}/ext_length.onnx"], "ext_length.onnx: initializer 'W1' declares 12 bytes"),
    Row("verify-custom-op", ["optimize", "{d}/custom_op.onnx", "-o", O, "--passes", "cleanup", "--verify"], "custom_op.onnx: node 'foo' is op 'Foo' of domain 'com.acme'"),
    # -- the pass SPEC
    Row("spec-unknown-pass", [*OPT, "nosuchpass"], "unknown pass 'nosuchpass'; valid passes:"),
    Row("spec-unknown-option", [*OPT, "cleanup:foo=1"], "pass 'cleanup' has no option 'foo'"),
    Row("spec-bad-type", [*OPT, "cleanup:max_iterations=lots"], "pass 'cleanup' option 'max_iterations': 'lots' is not a int"),
    Row("spec-below-min", [*OPT, "cleanup:max_iterations=0"], "option 'max_iterations': 0 is below the minimum 1"),
    Row("spec-above-max", [*OPT, "prune:ratio=1.5"], "pass 'prune' option 'ratio': 1.5 is above the maximum"),
    Row("spec-bad-choice", [*OPT, "quantize:mode=int3"], "pass 'quantize' option 'mode': 'int3' is not allowed"),
    Row("spec-empty", [*OPT, ""], "empty pass SPEC"),
    Row("spec-stray-comma", [*OPT, "cleanup,,dce"], "empty pass name in SPEC 'cleanup,,dce'"),
    Row("spec-twice", [*OPT, "cleanup:max_iterations=2;max_iterations=3"], "option 'max_iterations' is given twice"),
    Row("spec-not-key-value", [*OPT, "cleanup:max_iterations"], "pass 'cleanup': option 'max_iterations' is not key=value"),
    # -- user passes
    Row("user-module-missing", [*OPT, "nosuch_mod_xyz.Pass"], "pass 'nosuch_mod_xyz.Pass': no module 'nosuch_mod_xyz'"),
    Row("user-module-import-fails", [*OPT, "gp_broken_import"], "importing module 'gp_broken_import' failed: ModuleNotFoundError"),
    Row("user-module-syntax-error", [*OPT, "gp_syntax_error"], "importing module 'gp_syntax_error' failed: SyntaxError"),
    Row("user-module-no-pass", [*OPT, "gp_no_pass"], "pass 'gp_no_pass': module registers 0 passes"),
    Row("user-class-not-a-pass", [*OPT, "gp_not_a_pass.NotAPass"], "'NotAPass' in module 'gp_not_a_pass' is not a graphpress Pass subclass"),
    Row("user-pass-raises", [*OPT, "gp_raising_pass"], "pass 'test_raising' (gp_raising_pass.Raising) raised RuntimeError: something inside the pass went wrong"),
    Row("user-pass-breaks-ir", [*OPT, "break_ir_pass"], "after pass 'test_break_ir'"),
    Row("user-pass-wrong-numerics", [*OPT, "scale_weight_pass", "--verify"], "pass 'test_scale_weight' changed the outputs beyond its 'exact' tolerance"),
    Row("lossy-beyond-budget", [*OPT, "quantize:mode=dynamic", "--verify", "--min-cosine", "1"], "beyond the budget cosine >= 1 against the input model"),
    # -- outputs
    Row("output-dir-missing", ["optimize", M, "-o", "{o}/missing/out.onnx", "--passes", "cleanup"], "out.onnx: cannot write the output, directory"),
    Row("output-is-directory", ["optimize", M, "-o", "{d}/dir.onnx", "--passes", "cleanup"], "dir.onnx: is a directory; give a file path for the output"),
    Row("output-is-input", ["optimize", M, "-o", M, "--passes", "cleanup"], "mlp.onnx: is the input model"),
    Row("output-is-input-data", ["optimize", "{d}/ext.onnx", "-o", "{d}/ext.onnx.data", "--passes", "cleanup"], "ext.onnx.data: holds the input model's external data"),
    Row("output-data-is-input-data", ["optimize", "{d}/ext.onnx", "-o", "{d}/ext.onnx", "--passes", "cleanup"], "ext.onnx: is the input model"),
    Row("report-dir-missing", [*OPT, "cleanup", "--report", "{o}/missing/r.json"], "r.json: cannot write the report, directory"),
    Row("report-is-output", [*OPT, "cleanup", "--report", O], "out.onnx: is also the output model"),
    Row("dump-ir-is-a-file", [*OPT, "cleanup", "--dump-ir", "{d}/afile"], "afile: is a file; give a directory for the IR dumps"),
    Row("dump-ir-under-a-file", [*OPT, "cleanup", "--dump-ir", "{d}/afile/dumps"], "dumps: cannot create the IR dump directory"),
    # -- sample inputs
    Row("inputs-missing", [*OPT, "cleanup", "--verify", "--inputs", "{d}/nope.npz"], "nope.npz: no such file"),
    Row("inputs-not-npz", [*OPT, "cleanup", "--verify", "--inputs", "{d}/notnpz.npz"], "notnpz.npz: not a readable .npz file"),
    Row("inputs-npy", [*OPT, "cleanup", "--verify", "--inputs", "{d}/single.npy"], "single.npy: not a readable .npz file (a single .npy array"),
    Row("inputs-wrong-key", [*OPT, "cleanup", "--verify", "--inputs", "{d}/wrong_key.npz"], "wrong_key.npz: missing input(s) x"),
    Row("inputs-wrong-shape", [*OPT, "cleanup", "--verify", "--inputs", "{d}/wrong_shape.npz"], "wrong_shape.npz: input 'x' expects float32 [1, 8], the .npz gives float32 [1, 5]"),
    Row("inputs-wrong-dtype", [*OPT, "cleanup", "--verify", "--inputs", "{d}/wrong_dtype.npz"], "wrong_dtype.npz: input 'x' expects float32 [1, 8], the .npz gives int32 [1, 8]"),
    # inputs given without --verify to passes that read none are used for the check, so they are checked too
    Row("inputs-implied-verify-wrong-shape", [*OPT, "cleanup", "--inputs", "{d}/wrong_shape.npz"], "wrong_shape.npz: input 'x' expects float32 [1, 8], the .npz gives float32 [1, 5]"),
    # -- command-line syntax
    Row("argparse-missing-output", ["optimize", M, "--passes", "cleanup"], "the following arguments are required: -o/--output"),
    Row("argparse-unknown-command", ["squeeze", M], "invalid choice: 'squeeze'"),
    Row("argparse-min-cosine", [*OPT, "cleanup", "--min-cosine", "2"], "argument --min-cosine: a cosine lies in [-1, 1], got 2.0"),
    Row("argparse-unknown-flag", [*OPT, "cleanup", "--fast"], "unrecognized arguments: --fast"),
    # -- compile
    Row("compile-unknown-target", ["compile", M, "--target", "riscv", "-o", "{o}/a"], "unknown target 'riscv'"),
    Row("compile-target-bad-json", ["compile", M, "--target", "{not json", "-o", "{o}/a"], "target: not valid JSON"),
    Row("compile-unknown-x86-path", ["compile", M, "--target", "x86:avx3", "-o", "{o}/a"], "'avx3' is neither an x86 ISA path (amx, avx512_vnni"),
    Row("compress-unknown-target", ["compress", M, "--target", "riscv", "-o", "{o}/a"], "target 'riscv': choose one of onnxruntime, x86, aarch64, cuda"),
    Row("compile-target-no-kind", ["compile", M, "--target", '{"mcpu": "znver4"}', "-o", "{o}/a"], "a TVM target dict needs a 'kind'"),
    Row("compile-tune-trials", ["compile", M, "--target", "x86", "-o", "{o}/a", "--tune-trials", "-1"], "argument --tune-trials: must be >= 0, got -1"),
    Row("compile-input-shape-syntax", ["compile", M, "--target", "x86", "-o", "{o}/a", "--input-shape", "x:1,8"], "--input-shape 'x:1,8': expected NAME=DxDx..."),
    Row("compile-input-shape-name", ["compile", M, "--target", "x86", "-o", "{o}/a", "--input-shape", "z=1x8"], "input shape given for 'z', which is not an input"),
    Row("compile-output-not-artifact", ["compile", M, "--target", "x86", "-o", "{d}/notartifact"], "notartifact: exists and is not a graphpress artifact"),
    Row("compile-output-dir-missing", ["compile", M, "--target", "x86", "-o", "{o}/missing/a"], "cannot write the artifact, directory"),
    Row("compile-output-is-input", ["compile", M, "--target", "x86", "-o", M], "mlp.onnx: is the input model"),
    Row("compile-report-dir-missing", ["compile", M, "--target", "x86", "-o", "{o}/a", "--report", "{o}/missing/r.json"], "r.json: cannot write the report"),
    Row("compile-no-cross-compiler", ["compile", M, "--target", "aarch64", "-o", "{o}/a"], "cross compiler 'aarch64-linux-gnu-g++'", {"PATH": "{d}/no_compiler_path"}),
    Row("compile-bad-inputs", ["compile", M, "--target", "x86", "-o", "{o}/a", "--inputs", "{d}/wrong_shape.npz"], "wrong_shape.npz: input 'x' expects float32 [1, 8]"),
    # -- run
    Row("run-missing", ["run", "{d}/nope.tvm"], "nope.tvm: not a graphpress artifact"),
    Row("run-not-artifact", ["run", "{d}/notartifact"], "notartifact: not a graphpress artifact"),
    Row("run-corrupt-meta", ["run", "{d}/corrupt_artifact"], "graphpress.json: damaged artifact metadata"),
    Row("run-meta-keys", ["run", "{d}/keyless_artifact"], "graphpress.json: damaged artifact metadata (no target, outputs)"),
    Row("run-repeat-0", ["run", "{d}/corrupt_artifact", "--bench", "--repeat", "0"], "argument --repeat: must be >= 1, got 0"),
    Row("run-threads-0", ["run", "{d}/corrupt_artifact", "--threads", "0"], "argument --threads: must be >= 1, got 0"),
    Row("run-output-dir-missing", ["run", "{d}/corrupt_artifact", "--output", "{o}/missing/out.npz"], "out.npz: cannot write the outputs, directory"),
    # -- pack / unpack
    Row("pack-missing", ["pack", "{d}/nope.onnx", "-o", "{o}/p.gpk"], "nope.onnx: model not found"),
    Row("pack-not-onnx", ["pack", "{d}/text.onnx", "-o", "{o}/p.gpk"], "text.onnx: not an ONNX model"),
    Row("pack-over-input", ["pack", M, "-o", M], "mlp.onnx: is the input model"),
    Row("unpack-not-pack", ["unpack", M, "-o", "{o}/u.onnx"], "mlp.onnx: not a graphpress pack file"),
    Row("unpack-damaged", ["unpack", "{d}/damaged.gpk", "-o", "{o}/u.onnx"], "damaged.gpk: damaged pack file"),
]


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() if p.is_file() else "dir" for p in sorted(root.rglob("*"))}


def _expand(text: str, world: Path, out: Path) -> str:
    return text.replace("{d}", str(world)).replace("{o}", str(out))


@pytest.mark.parametrize("row", CLI_ROWS, ids=[r.id for r in CLI_ROWS])
def test_cli_bad_input(row, world, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(world / "plugins"))
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "plugins"))
    for key, value in row.env.items():
        monkeypatch.setenv(key, _expand(value, world, tmp_path))
    out = tmp_path / "out"
    out.mkdir()
    before = _digests(world)
    try:
        code = main([_expand(a, world, out) for a in row.argv])
    except SystemExit as e:  # argparse's errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("graphpress: error: ") and "Traceback" not in err
    assert _expand(row.message, world, out) in lines[0], lines[0]
    assert _digests(world) == before, "an input file changed"
    assert list(out.iterdir()) == [], "an output or temporary file was left"


# ----------------------------------------------------------------------------- the API


def _api_rows():
    from graphpress.backends.tvm import runtime
    from graphpress.backends.tvm.build import compile_model
    from graphpress.ir import numeric
    from graphpress.passes import DumpInstrument, InvariantInstrument, NumericInstrument, PassManager, build_passes
    from graphpress.passes.registry import get

    def model(d):
        return gp.load(d / "mlp.onnx")

    def verified(feeds):
        return lambda d, o: PassManager(build_passes("cleanup"), [NumericInstrument(feeds)]).run(model(d))

    return [
        ("load-missing", lambda d, o: gp.load(d / "nope.onnx"), "nope.onnx: no such file"),
        ("load-int", lambda d, o: gp.load(123), "cannot load a int"),
        ("load-garbage-bytes", lambda d, o: gp.load(b"\xff\xfe garbage"), "<bytes>: not an ONNX model"),
        ("load-opset-99-proto", lambda d, o: gp.load(onnx.load(str(d / "opset99.onnx"))), "<ModelProto>: declares opset 99"),
        ("load-torch-without-inputs", lambda d, o: gp.load(__import__("torch").nn.Linear(2, 2)), "a torch module needs example_inputs"),
        ("save-not-a-model", lambda d, o: gp.save("mlp.onnx", o / "x.onnx"), "save takes an onnx_ir.Model, got a str"),
        ("save-missing-dir", lambda d, o: gp.save(model(d), o / "missing" / "x.onnx"), "x.onnx: cannot write the output, directory"),
        ("save-over-input", lambda d, o: gp.save(model(d), d / "mlp.onnx"), "mlp.onnx: is the input model"),
        ("save-over-input-data", lambda d, o: gp.save(gp.load(d / "ext.onnx"), d / "ext.onnx.data"), "holds the input model's external data"),
        ("manager-given-a-path", lambda d, o: PassManager(build_passes("cleanup")).run(str(d / "mlp.onnx")), "PassManager.run takes an onnx_ir.Model, got a path"),
        ("manager-cyclic-graph", lambda d, o: PassManager(build_passes("dce"), [InvariantInstrument()]).run(_cyclic()), "input model: the graph has a cycle (n1 -> n2 -> n1)"),
        ("manager-max-iterations", lambda d, o: PassManager([], max_iterations=0), "max_iterations must be >= 1"),
        ("numeric-wrong-shape", verified({"x": np.ones((1, 3), np.float32)}), "input 'x' expects float32 [1, 8], was given float32 [1, 3]"),
        ("numeric-wrong-dtype", verified({"x": np.ones((1, 8), np.float64)}), "input 'x' expects float32 [1, 8], was given float64 [1, 8]"),
        ("numeric-missing-input", verified({"z": np.ones((1, 8), np.float32)}), "no sample given for input(s) x"),
        ("numeric-not-a-dict", lambda d, o: NumericInstrument(np.ones((1, 8))), "sample inputs must be a dict"),
        ("numeric-run-missing-input", lambda d, o: numeric.run(model(d), {}), "no sample given for input(s) x"),
        ("dump-into-a-file", lambda d, o: DumpInstrument(d / "afile"), "afile: is a file"),
        ("build-passes-unknown", lambda d, o: build_passes("cleanup,nosuch"), "unknown pass 'nosuch'"),
        ("pass-option-type", lambda d, o: get("cleanup")(max_iterations="many"), "'many' is not a int"),
        ("pass-option-unknown", lambda d, o: get("dce")(speed=3), "pass 'dce' has no option 'speed'"),
        ("user-pass-raises", lambda d, o: PassManager(build_passes("gp_raising_pass")).run(model(d)), "pass 'test_raising' (gp_raising_pass.Raising) raised RuntimeError"),
        ("verify-broken-ir", lambda d, o: gp.verify(_broken(model(d))), "IR invariant violation"),
        ("load-samples-dtype", lambda d, o: numeric.load_samples(d / "wrong_dtype.npz", model(d)), "wrong_dtype.npz: input 'x' expects float32 [1, 8]"),
        ("compile-unknown-target", lambda d, o: compile_model(model(d), "riscv"), "unknown target 'riscv'"),
        ("compile-bad-int8", lambda d, o: compile_model(model(d), "x86", int8="maybe"), "int8 must be auto, on or off"),
        ("compile-tune-trials", lambda d, o: compile_model(model(d), "x86", tune_trials=-1), "tune trials must be >= 0"),
        ("tvm-load-corrupt", lambda d, o: runtime.load(d / "corrupt_artifact"), "damaged artifact metadata"),
        ("tvm-load-missing", lambda d, o: runtime.load(d / "nope"), "not a graphpress artifact"),
        ("tvm-load-threads", lambda d, o: runtime.load(d / "keyless_artifact", num_threads=0), "damaged artifact metadata"),
    ]


def _cyclic():
    """A graph built in code whose two nodes feed each other."""
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([2]))
    n1 = ir.Node("", "Relu", [x], name="n1")
    n2 = ir.Node("", "Relu", [n1.outputs[0]], name="n2")
    n1.replace_input_with(0, n2.outputs[0])
    graph = ir.Graph([x], [n2.outputs[0]], nodes=[n1, n2], opset_imports={"": 20}, name="g")
    return ir.Model(graph, ir_version=10)


def _broken(model):
    node = next(iter(model.graph))
    model.graph.remove(node)  # its outputs are still used: a dangling use
    return model


API_ROWS = _api_rows()


@pytest.mark.parametrize("name, call, message", API_ROWS, ids=[r[0] for r in API_ROWS])
def test_api_bad_input(name, call: Callable, message, world, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(world / "plugins"))
    before = _digests(world)
    with pytest.raises(GraphpressError) as info:
        call(world, tmp_path)
    text = str(info.value)
    assert message in text, text
    assert "\n" not in text.strip(), text
    assert _digests(world) == before
    assert list(tmp_path.iterdir()) == []


def test_the_table_is_large_enough():
    assert len(CLI_ROWS) + len(API_ROWS) >= 60 and len({r.id for r in CLI_ROWS}) == len(CLI_ROWS)


def test_a_stack_of_samples_for_a_batch_of_one_is_n_samples(world, tmp_path, capsys):
    """The most natural --inputs: N calibration samples stacked, for a model with a static batch of 1."""
    stack = tmp_path / "stack.npz"
    np.savez(stack, x=np.random.default_rng(0).standard_normal((16, 8)))  # float64, as numpy makes them
    out, report = tmp_path / "q.onnx", tmp_path / "r.json"
    argv = ["optimize", str(world / "mlp.onnx"), "-o", str(out), "--passes", "quantize", "--inputs", str(stack), "--verify", "--report", str(report)]
    assert main(argv) == 0, capsys.readouterr().err
    data = json.loads(report.read_text())
    assert data["verification"]["passed"] and data["verification"]["outputs"][0]["shape"] == [16, 1, 4]
