"""The analytic fp32 schedules (no tuning record): matrix products and NHWC convolutions
register-blocked for the target's vector unit, on every x86 ISA path this host can run,
compared with torch."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from graphpress.backends.tvm import compile_model
from graphpress.backends.tvm.schedules import register_tile
from graphpress.backends.tvm.targets import resolve_target, vector_facts
from graphpress.ir import from_torch
from graphpress.passes import PassManager, build_passes


class _Block(torch.nn.Module):
    """Conv + BN + ReLU, a residual add, a depthwise conv, a strided depthwise conv (its padding
    computed in the tile's loads), a 24-channel conv (half vectors), a ReLU6 (Clip) and a
    Linear: the kernels of ResNet and MobileNet."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(32)
        self.dw = torch.nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.dw2 = torch.nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=32)
        self.narrow = torch.nn.Conv2d(32, 24, 1)
        self.fc = torch.nn.Linear(24, 48)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        y = y + torch.nn.functional.relu6(self.dw(y))
        y = self.narrow(self.dw2(y)).mean(dim=(2, 3))
        return self.fc(y)


def _runnable(target: str) -> bool:
    facts = vector_facts(resolve_target(target))
    flags = open("/proc/cpuinfo").read()
    return {"avx512": " avx512f" in flags, "avx2": " avx2" in flags}.get(facts.name, True)


@pytest.mark.parametrize("target", ["x86", "x86:haswell", "x86:x86-64"])
def test_convolutions_and_matmuls_get_the_analytic_schedule_and_match_torch(target):
    if not _runnable(target):
        pytest.skip(f"this host cannot run the {vector_facts(resolve_target(target)).name} code of {target}")
    torch.manual_seed(0)
    module = _Block().eval()
    with torch.no_grad():
        module.bn.running_mean.uniform_(-0.5, 0.5)
        module.bn.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 16, 14, 14)
    model = from_torch(module, x)
    PassManager(build_passes("cleanup,fuse,cleanup")).run(model)
    compiled = compile_model(model, target, verify=False)
    build = compiled.meta["build"]
    assert build["conv_layout"] == "NHWC"
    assert build["analytic_scheduled_kernels"] >= 4, build  # conv, depthwise, 24-channel conv, linear
    with torch.no_grad():
        want = module(x).numpy()
    np.testing.assert_allclose(compiled(x.numpy())[0], want, rtol=1e-4, atol=1e-4)


def test_register_tiles_fit_the_register_file_and_divide_the_output():
    for lanes, registers in ((16, 32), (8, 16), (4, 32), (4, 16)):
        for m, n in ((56, 64), (28, 128), (7, 512), (128, 1536), (112, 32), (3, 48)):
            for loads in (False, True):
                tile = register_tile(m, n, lanes, registers, loads)
                if n % lanes:
                    assert tile is None
                    continue
                mr, v = tile
                assert m % mr == 0 and n % (v * lanes) == 0 and mr * v + v + 1 <= registers
    assert register_tile(56, 24, 16, 32) is None  # 24 channels: half vectors (8 lanes) instead
    assert register_tile(56, 24, 8, 32) is not None


def test_a_matrix_products_tile_loads_least_per_fma_among_those_that_hide_the_latency():
    # AVX2's 16 registers: the most accumulators is 14 rows x 1 vector, a broadcast per FMA;
    # ranked by loads, 4 x 3 (12 accumulators, 7 loads per 12 FMAs) where the columns allow
    assert register_tile(56, 144, 8, 16) == (14, 1)
    assert register_tile(56, 144, 8, 16, loads=True) == (4, 3)

    def per_fma(tile):
        return sum(tile) / (tile[0] * tile[1])

    for lanes, registers in ((16, 32), (8, 16)):
        for m in (7, 14, 28, 49, 56, 112, 196):
            for n in (32, 96, 144, 576, 1280):
                if n % lanes:
                    continue
                by_loads, by_count = register_tile(m, n, lanes, registers, True), register_tile(m, n, lanes, registers)
                if by_count[0] * by_count[1] >= 8:  # the latency is hidden by both, with no more loads
                    assert by_loads[0] * by_loads[1] >= 8 and per_fma(by_loads) <= per_fma(by_count), (m, n, lanes)


def test_a_partial_tile_leaves_a_short_last_tile_only_where_no_dividing_one_hides_the_latency():
    from graphpress.backends.tvm.schedules import LATENCY_ACCUMULATORS, tile_cycles

    # MobileNetV2's 7x7 maps as one run of 49 pixels, to 1280 channels on AVX2: the dividing
    # tiles are 7 x 1 at best (7 accumulators); 5 x 2 leaves a last tile of 4 x 2, both full
    assert register_tile(49, 1280, 8, 16, True) == (7, 1)
    assert register_tile(49, 1280, 8, 16, True, partial=True) == (5, 2)
    for lanes, registers in ((16, 32), (8, 16), (4, 16)):
        for m in (3, 7, 13, 14, 49, 56, 97, 128, 196):
            for n in (32, 96, 160, 576, 1280):
                if n % lanes:
                    continue
                whole, part = register_tile(m, n, lanes, registers, True), register_tile(m, n, lanes, registers, True, partial=True)
                mr, v = part
                assert n % (v * lanes) == 0 and mr * v + v + 1 <= registers and mr <= m
                assert tile_cycles(m, *part) / v <= tile_cycles(m, *whole) / whole[1], (m, n, lanes)
                if whole[0] * whole[1] >= LATENCY_ACCUMULATORS:  # a dividing tile hides the latency: kept
                    assert part == whole, (m, n, lanes)


class _Pointwise(torch.nn.Module):
    """MobileNetV2's 7x7 and 14x14 stages in small: 1x1 convolutions (an expansion with ReLU6, a
    projection with a residual add, a strided one) whose tiles span the rows of the map."""

    def __init__(self):
        super().__init__()
        self.expand = torch.nn.Conv2d(32, 96, 1)
        self.project = torch.nn.Conv2d(96, 32, 1)
        self.down = torch.nn.Conv2d(32, 40, 1, stride=2)

    def forward(self, x):
        y = self.project(torch.nn.functional.relu6(self.expand(x))) + x
        return self.down(y)


@pytest.mark.parametrize("size", [7, 14])
@pytest.mark.parametrize("target", ["x86", "x86:haswell", "x86:x86-64"])
def test_a_pointwise_convolutions_tiles_span_the_rows_of_its_map_and_match_torch(target, size, monkeypatch):
    from graphpress.backends.tvm import schedules

    if not _runnable(target):
        pytest.skip(f"this host cannot run the {vector_facts(resolve_target(target)).name} code of {target}")
    merged = []

    def spy(sch, blocks, at, columns, rank):
        merged.append(columns)
        return merge(sch, blocks, at, columns, rank)

    merge = schedules._merge_pixels
    monkeypatch.setattr(schedules, "_merge_pixels", spy)
    torch.manual_seed(0)
    module = _Pointwise().eval()
    x = torch.randn(1, 32, size, size)
    compiled = compile_model(from_torch(module, x), target, verify=False)
    with torch.no_grad():
        want = module(x).numpy()
    np.testing.assert_allclose(compiled(x.numpy())[0], want, rtol=1e-4, atol=1e-4)
    if vector_facts(resolve_target(target)).registers == 16:
        # AVX2 and SSE: 7 columns give no tile of 8 accumulators, 14 columns to 96 channels
        # 2 x 4 (8); 196 pixels 4 x 3 (12, fewer loads per FMA)
        assert size in merged, merged


def test_a_conv_transpose_after_a_conv_keeps_its_layout_and_a_failed_nhwc_build_falls_back(monkeypatch):
    """An upsampling with overlapping windows (Conv then a 3x3 ConvTranspose of stride 2): TVM
    cannot lower a ConvTranspose in NHWC, so it keeps NCHW; and should the NHWC build fail
    anyway, the build is redone in the model's own layout instead of refusing the model."""
    from graphpress.backends.tvm import tuning

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(4, 16, 3, padding=1), torch.nn.ReLU(),
                                 torch.nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1)).eval()  # fmt: skip
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        want = module(x).numpy()
    compiled = compile_model(from_torch(module, x), "x86", verify=False)
    assert compiled.meta["build"]["conv_layout"] == "NHWC"
    np.testing.assert_allclose(compiled(x.numpy())[0], want, rtol=1e-4, atol=1e-4)
    monkeypatch.setattr(tuning, "KEEP_NCHW", {})  # the ConvTranspose follows its input into NHWC: TVM cannot build that
    compiled = compile_model(from_torch(module, x), "x86", verify=False)
    assert compiled.meta["build"]["conv_layout"].startswith("NCHW (the NHWC build failed")
    np.testing.assert_allclose(compiled(x.numpy())[0], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("target", ["x86", "x86:haswell", "x86:x86-64"])
def test_round_after_a_convolution_is_vector_code_and_rounds_half_to_even(target):
    """ONNX Round (``nearbyint``) in a convolution's epilogue: marked vectorizable
    (``schedules.VECTORIZABLE_INTRINSICS``; TVM scalarized it and LLVM rebuilt it with gathers
    and scatters), and still half to even on every ISA path: the weights and inputs are chosen
    so that the accumulators are exact halves."""
    import onnx
    from onnx import TensorProto, helper

    import graphpress as gp
    from tests.conftest import make_model, tensor

    if not _runnable(target):
        pytest.skip(f"this host cannot run the {vector_facts(resolve_target(target)).name} code of {target}")
    rng = np.random.default_rng(3)
    w = rng.integers(-3, 4, (32, 8, 3, 3)).astype(np.float32) * 0.5  # sums of halves: many exact ties
    x = rng.integers(-4, 5, (2, 8, 6, 6)).astype(np.float32)
    proto = make_model(
        [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Round", ["c"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 32, 6, 6])],
        [tensor("W", w)],
    )
    onnx.checker.check_model(proto)
    compiled = compile_model(gp.load(proto), target, verify=False, measure=False)
    with torch.no_grad():
        conv = torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(), padding=1).numpy()
    assert (np.abs(conv - np.trunc(conv)) == 0.5).mean() > 0.2  # the test has ties to round
    np.testing.assert_array_equal(compiled(x)[0], np.round(conv).astype(np.float32))  # numpy: half to even
    if vector_facts(resolve_target(target)).name == "avx512":
        # scalarized, LLVM rebuilt the rounding 8 lanes wide (vroundps on ymm) or with gathers
        asm = compiled._executable.mod.imports[0].inspect_source("asm")
        assert "vrndscaleps" in asm and "vroundps" not in asm and "vgatherdps" not in asm


def test_a_transpose_to_few_channels_last_runs_along_the_width():
    """An image quantized, padded and moved to NHWC (3 channels last): the channels unrolled
    inside a loop along the width, not fused with it (a div/mod per element, scalar code), and
    the same bytes as numpy."""
    import tvm
    from tvm import te, tirx

    from graphpress.backends.tvm.schedules import schedule_injective

    x = te.placeholder((1, 3, 10, 21), "float32", name="x")

    def value(b, y, xx, c):
        inside = tirx.all(y >= 1, y < 11, xx >= 1, xx < 22)
        q = tirx.Cast("uint8", tirx.max(tirx.min(tirx.round(x[b, c, y - 1, xx - 1] * tirx.const(8.0, "float32")) + tirx.const(100.0, "float32"), tirx.const(255.0, "float32")), tirx.const(0.0, "float32")))
        return tirx.if_then_else(inside, q, tirx.const(100, "uint8"))

    out = te.compute((1, 12, 23, 3), value, name="nhwc")
    mod, count = schedule_injective(tvm.IRModule({"k": te.create_prim_func([x, out]).with_attr("global_symbol", "k")}))
    assert count == 1
    script = mod["k"].script()
    assert "T.unroll(3)" in script and "69" not in script, script  # 23 x 3 never fused into one loop
    xs = np.random.default_rng(0).standard_normal((1, 3, 10, 21)).astype(np.float32)
    lib = tvm.compile(mod, target=resolve_target("x86").tvm_target())
    got = tvm.runtime.tensor(np.zeros((1, 12, 23, 3), np.uint8))
    lib["k"](tvm.runtime.tensor(xs), got)
    want = np.full((1, 12, 23, 3), 100, np.uint8)
    want[0, 1:11, 1:22] = np.clip(np.round(xs[0].transpose(1, 2, 0) * 8) + 100, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(got.numpy(), want)


@pytest.mark.parametrize("target", ["x86:avx512", "x86:avx2"])
def test_a_uint8_depthwise_tile_converts_each_input_vector_once_and_keeps_its_stages_local(target, monkeypatch):
    """MobileNetV2 int8's depthwise kernel shape: a 3x3 window over a uint8 NHWC map, converted
    to float in the loads, then bias and ReLU. The analytic tile unrolls the window's last loop
    so that neighbouring outputs share each converted input vector (fewer conversions than
    FMAs), and what it writes between stages stays in local scope (a global intermediate is
    a workspace the runtime allocates and frees per tile); its tile leaves registers for the
    conversion (:data:`CONVERTED_DEPTHWISE_REGISTERS`), where a float input's tile takes the
    whole register file; same values as numpy."""
    import tvm
    from tvm import te, tirx

    from graphpress.backends.tvm import schedules
    from graphpress.backends.tvm.schedules import schedule_gemm

    budgets = []
    real_tile = schedules.register_tile

    tiles = []

    def spy(m, n, lanes, registers, *args, **kwargs):
        budgets.append(registers)
        tiles.append(real_tile(m, n, lanes, registers, *args, **kwargs))
        return tiles[-1]

    monkeypatch.setattr(schedules, "register_tile", spy)

    h, w, c = 6, 28, 64  # 28 wide: 14 x 1 on AVX2 with the whole register file
    x = te.placeholder((1, h, w, c), "uint8", name="x")
    k = te.placeholder((3, 3, c), "float32", name="k")
    bias = te.placeholder((c,), "float32", name="bias")

    def load(b, y, xx, ch):
        inside = tirx.all(y >= 1, y < h + 1, xx >= 1, xx < w + 1)
        yc, xc = tirx.max(tirx.min(y - 1, h - 1), 0), tirx.max(tirx.min(xx - 1, w - 1), 0)
        return tirx.Select(inside, x[b, yc, xc, ch].astype("float32"), tirx.const(0.0, "float32"))

    padded = te.compute((1, h + 2, w + 2, c), load, name="pad")
    ry, rx = te.reduce_axis((0, 3), name="ky"), te.reduce_axis((0, 3), name="kx")
    conv = te.compute((1, h, w, c), lambda b, y, xx, ch: te.sum(padded[b, y + ry, xx + rx, ch] * k[ry, rx, ch], axis=[ry, rx]), name="dw")
    biased = te.compute((1, h, w, c), lambda b, y, xx, ch: conv[b, y, xx, ch] + bias[ch], name="biased")
    out = te.compute((1, h, w, c), lambda b, y, xx, ch: tirx.max(biased[b, y, xx, ch], tirx.const(0.0, "float32")), name="relu")
    func = te.create_prim_func([x, k, bias, out]).with_attr("global_symbol", "dw")
    facts = vector_facts(resolve_target(target))
    mod, count = schedule_gemm(tvm.IRModule({"dw": func}), facts.lanes, facts.registers)
    assert count == 1
    assert budgets and set(budgets) == {facts.registers - schedules.CONVERTED_DEPTHWISE_REGISTERS}, budgets
    mr, v = tiles[-1]  # accumulators, weight vectors and a broadcast, two registers to spare
    assert mr * v + v + 1 <= facts.registers - 2, tiles
    script = mod["dw"].script()
    allocs = [line for line in script.splitlines() if "alloc_buffer" in line]
    assert allocs and all('scope="local"' in line for line in allocs), allocs
    lib = tvm.compile(mod, target=resolve_target(target).tvm_target())
    asm = lib.mod.inspect_source("asm")
    converts, fmas = asm.count("vcvtdq2ps"), asm.count("vfmadd")
    assert 0 < converts < fmas, (converts, fmas)
    # the same window over a float map: its tile takes the whole register file
    budgets.clear()
    xf = te.placeholder((1, h + 2, w + 2, c), "float32", name="xf")
    convf = te.compute((1, h, w, c), lambda b, y, xx, ch: te.sum(xf[b, y + ry, xx + rx, ch] * k[ry, rx, ch], axis=[ry, rx]), name="dwf")
    _, count = schedule_gemm(tvm.IRModule({"dwf": te.create_prim_func([xf, k, convf]).with_attr("global_symbol", "dwf")}), facts.lanes, facts.registers)
    assert count == 1 and set(budgets) == {facts.registers}, budgets
    if _runnable(target):
        rng = np.random.default_rng(0)
        xs = rng.integers(0, 256, (1, h, w, c)).astype(np.uint8)
        ks, bs = rng.standard_normal((3, 3, c)).astype(np.float32), rng.standard_normal(c).astype(np.float32)
        got = tvm.runtime.tensor(np.zeros((1, h, w, c), np.float32))
        lib["dw"](tvm.runtime.tensor(xs), tvm.runtime.tensor(ks), tvm.runtime.tensor(bs), got)
        xp = np.pad(xs.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
        want = sum(xp[:, i : i + h, j : j + w, :] * ks[i, j] for i in range(3) for j in range(3)) + bs
        np.testing.assert_allclose(got.numpy(), np.maximum(want, 0), rtol=1e-5, atol=1e-3)


def test_a_wide_narrow_stage_reduces_block_by_block_of_input_channels_for_all_rows_and_matches_torch():
    """ResNet-18's last stage: 7 pixels wide, 512 channels, a 3x3 window. The register file
    leaves a 7 x 2-vector tile, and the 4608 x 32 weight panel (590 KB, more than a core's share
    of L2) is read one block of 8 input channels at a time, every window position of it, for all
    rows of the panel: one parallel task per panel (16), not per row of tiles; the padded copy
    of its input is written in the same blocks of 8 channels (a block's window one contiguous
    piece). Compiled from torch, the weight is packed with each block of a panel contiguous;
    same values as torch where the host runs AVX-512."""
    import tvm
    from tvm import te, topi

    from graphpress.backends.tvm import schedules

    facts = vector_facts(resolve_target("x86"))
    assert schedules.register_tile(7, 512, facts.lanes, facts.registers) == (7, 2)
    x = te.placeholder((1, 7, 7, 512), "float32", name="x")
    w = te.placeholder((3, 3, 512, 512), "float32", name="w")
    out = topi.nn.relu(topi.nn.conv2d_nhwc(x, w, 1, 1, 1))
    mod, count = schedules.schedule_gemm(tvm.IRModule({"c": te.create_prim_func([x, w, out]).with_attr("global_symbol", "c")}), facts.lanes, facts.registers)
    assert count == 1
    script = mod["c"].script()
    assert "T.parallel(16)" in script and "T.unroll(7)" in script, script  # 16 panels of 2 vectors; 7-pixel rows
    # the input channels' blocks outermost, then the rows, the window and the block's channels
    assert "for rc_0, yy, xx_0, ry, rx, rc_1 in T.grid(64, 7, 1, 3, 3, 8)" in script and "rc_0 * 8 + rc_1" in script, script
    assert "pad_temp = T.sblock_alloc_buffer((1, 64, 9, 9, 8))" in script, script  # (n, c / 8, h, w, 8)
    if not _runnable("x86"):
        pytest.skip("this host cannot run the x86 target's AVX-512 code")
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(512, 512, 3, padding=1), torch.nn.ReLU()).eval()
    xs = torch.randn(1, 512, 7, 7)
    compiled = compile_model(from_torch(module, xs), "x86", verify=False, measure=False)
    assert compiled.meta["build"]["packed_weights"] == 1  # the 9.4 MB weight, read panel-major, block by block
    with torch.no_grad():
        want = module(xs).numpy()
    np.testing.assert_allclose(compiled(xs.numpy())[0], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("target", ["x86", "x86:haswell"])
def test_large_constant_weights_are_packed_panel_major_and_activations_keep_their_layout(target):
    """A weight over :data:`PANEL_BYTES` that every call passes as a constant is packed at
    compile time, one contiguous block per column panel (numpy's reshape/moveaxis is the
    reference for the layout); a right operand that is an activation (attention's
    ``q @ k``) keeps its layout; values against torch on every x86 path this host runs."""
    from graphpress.backends.tvm import schedules

    w = np.arange(3 * 3 * 4 * 128, dtype=np.float32).reshape(3, 3, 4, 128)
    packed = schedules.panel_major(w, 64)
    assert packed.shape == (2, 3, 3, 4, 64) and packed.flags["C_CONTIGUOUS"]
    assert packed[1, 2, 0, 3, 5] == w[2, 0, 3, 64 + 5]
    blocked = schedules.panel_major(w, 64, block=2)  # (panel, block of input channels, ky, kx, channel in block, column)
    assert blocked.shape == (2, 2, 3, 3, 2, 64) and blocked.flags["C_CONTIGUOUS"]
    assert blocked[1, 1, 2, 0, 1, 5] == w[2, 0, 1 * 2 + 1, 64 + 5]

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(128, 256, 3, padding=1)  # 3x3x128x256 floats: 1.2 MB
            self.fc = torch.nn.Linear(256, 1024)  # 1 MB

        def forward(self, x):
            y = torch.relu(self.conv(x)).flatten(2).transpose(1, 2)  # 1 x 256 x 256
            y = self.fc(y)  # 1 x 256 x 1024
            return y.transpose(1, 2) @ y  # activation x activation: its right operand 256 x 1024 (1 MB)

    torch.manual_seed(0)
    module = Net().eval()
    xs = torch.randn(1, 128, 16, 16)
    compiled = compile_model(from_torch(module, xs), target, verify=False, measure=False, winograd=False)  # the direct convolution's weights
    build = compiled.meta["build"]
    assert build["packed_weights"] == 2, build  # the conv's and the linear's weights; not the activation
    if not _runnable(target):
        pytest.skip(f"this host cannot run the code of {target}")
    with torch.no_grad():
        want = module(xs).numpy()
    np.testing.assert_allclose(compiled(xs.numpy())[0], want, rtol=1e-4, atol=1e-2 * np.abs(want).max() / 1e3)


@pytest.mark.parametrize("target", ["x86", "x86:haswell"])
def test_a_classifier_at_batch_one_reads_its_weight_rows_split_among_tasks_and_matches_torch(target):
    """A 1280 x 1000 classifier at batch 1 (MobileNetV2's): split-K, each of 8 tasks reading its
    own contiguous block of weight rows into a partial row of outputs, then the partial rows
    summed with the bias; every x86 path's values against torch."""
    import tvm
    from tvm import te, topi

    from graphpress.backends.tvm import schedules

    facts = vector_facts(resolve_target(target))
    x = te.placeholder((1, 1280), "float32", name="x")
    w = te.placeholder((1280, 1000), "float32", name="w")
    b = te.placeholder((1000,), "float32", name="b")
    out = topi.add(topi.matmul(x, w), b)
    mod, count = schedules.schedule_gemm(tvm.IRModule({"c": te.create_prim_func([x, w, b, out]).with_attr("global_symbol", "c")}), facts.lanes, facts.registers)
    script = mod["c"].script()
    assert count == 1 and "rf" in script and f"T.parallel({schedules.GEMV_TASKS})" in script, script
    if not _runnable(target):
        pytest.skip(f"this host cannot run the code of {target}")
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1280, 1000)).eval()
    xs = torch.randn(1, 1280, 1, 1)
    compiled = compile_model(from_torch(module, xs), target, verify=False, measure=False)
    assert compiled.meta["build"]["analytic_scheduled_kernels"] >= 1
    with torch.no_grad():
        want = module(xs).numpy()
    np.testing.assert_allclose(compiled(xs.numpy())[0], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("target", ["x86", "x86:haswell"])
def test_a_1d_convolution_and_output_channels_no_multiple_of_four_get_the_analytic_schedule(target):
    """An STFT-like front end (openWakeWord's mel spectrogram: a 1-D convolution of 257
    filters, stride 160): the 1-D convolution becomes a 2-D one of height 1 in NHWC, and its 37
    output channels, like the 19 of the Linear after it, are padded to whole vectors with zero
    filters and sliced off after, so both take the register-blocked schedule; values against
    torch on every x86 path this host runs."""

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stft = torch.nn.Conv1d(1, 37, 64, stride=16, bias=False)
            self.fc = torch.nn.Linear(37, 19)

        def forward(self, x):
            y = self.stft(x.unsqueeze(1))  # 1 x 37 x frames
            return self.fc((y * y).transpose(1, 2))

    torch.manual_seed(0)
    module = Net().eval()
    xs = torch.randn(1, 1024)
    compiled = compile_model(from_torch(module, xs), target, verify=False, measure=False)
    build = compiled.meta["build"]
    assert build["conv_layout"] == "NHWC", build
    assert build["analytic_scheduled_kernels"] >= 2, build  # the convolution and the Linear
    assert not [k for k in build["unscheduled_kernels"] if "conv" in k or "matmul" in k], build
    if not _runnable(target):
        pytest.skip(f"this host cannot run the code of {target}")
    with torch.no_grad():
        want = module(xs).numpy()
    np.testing.assert_allclose(compiled(xs.numpy())[0], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("target", ["x86", "x86:haswell"])
def test_a_conv_transpose_whose_windows_do_not_overlap_is_a_1x1_convolution_and_matches_torch(target):
    """DBNet's head (PP-OCRv4 det): two 2x2 ConvTransposes of stride 2 after a convolution. Each
    becomes a 1x1 convolution to ``out * 4`` channels and a depth-to-space rearrangement, so no
    ``conv2d_transpose`` kernel is left (TVM's runs NCHW, a zero-dilated convolution) and the
    1x1 convolutions take the analytic schedule; values against torch on every x86 path."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                                 torch.nn.ConvTranspose2d(16, 16, 2, stride=2), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                                 torch.nn.ConvTranspose2d(16, 1, 2, stride=2), torch.nn.Sigmoid()).eval()  # fmt: skip
    with torch.no_grad():
        for bn in (module[1], module[4]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 1.5)
    x = torch.randn(1, 8, 12, 10)
    compiled = compile_model(from_torch(module, x), target, verify=False, measure=False)
    build = compiled.meta["build"]
    assert build["conv_layout"] == "NHWC", build
    assert not [k for k in build["kernel_names"] if "conv2d_transpose" in k], build
    assert build["analytic_scheduled_kernels"] >= 3, build
    if not _runnable(target):
        pytest.skip(f"this host cannot run the code of {target}")
    with torch.no_grad():
        want = module(x).numpy()
    np.testing.assert_allclose(compiled(x.numpy())[0], want, rtol=1e-4, atol=1e-5)


def test_variadic_max_min_sum_after_convolutions_keep_the_whole_model_nhwc_and_match_onnxruntime():
    """tf2onnx's ``LeakyRelu`` then ``Max(x, 0)`` after each convolution (openWakeWord's
    embedding model), a 3-input ``Min`` and a ``Sum``: TVM's importer stacks the inputs on a
    fifth axis, which ``ConvertLayout`` cannot move, so the whole model fell back to a transpose
    around every convolution; folded pairwise, the model moves to NHWC as a whole. Values
    against ONNX Runtime."""
    from onnx import TensorProto, helper, numpy_helper

    import graphpress as gp
    from graphpress.ir import numeric

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 4, 3, 3)).astype(np.float32), "W1"),
             numpy_helper.from_array(rng.standard_normal((16, 16, 1, 3)).astype(np.float32), "W2"),
             numpy_helper.from_array(np.zeros((1,), np.float32), "zero"),
             numpy_helper.from_array(rng.standard_normal((16, 1, 1)).astype(np.float32), "cap")]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("LeakyRelu", ["c1"], ["l1"], alpha=0.2),
        helper.make_node("Max", ["l1", "zero"], ["m1"]),
        helper.make_node("Conv", ["m1", "W2"], ["c2"], pads=[0, 1, 0, 1]),
        helper.make_node("Min", ["c2", "cap", "m1"], ["m2"]),
        helper.make_node("Sum", ["m2", "c2", "m1"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 12, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 12, 16])], inits)  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    model = gp.load(proto)
    compiled = compile_model(model, "x86", verify=False, measure=False)
    assert compiled.meta["build"]["conv_layout"] == "NHWC", compiled.meta["build"]
    x = rng.standard_normal((1, 4, 12, 16)).astype(np.float32)
    want = numeric.run(model, {"x": x})["y"]
    np.testing.assert_allclose(compiled(x)[0], want, rtol=1e-4, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("target", ["x86", "x86:haswell"])
def test_a_width_one_convolution_is_turned_on_its_side_and_matches_torch(target):
    """A 1-D convolution written as a 2-D one of width 1 (tf2onnx's, Magika's), strided,
    padded and dilated along its length: turned on its side (height and width swapped in and
    out), its length is the width in NHWC, the axis the register tile runs along; values against
    torch on every x86 path."""
    import tvm

    from graphpress.backends.tvm.layout import unit_width_convs_along_width
    from graphpress.backends.tvm.lower import bind_input_shapes, to_relax

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(8, 32, (5, 1), stride=(2, 1), padding=(4, 0), dilation=(2, 1)), torch.nn.ReLU()).eval()
    x = torch.randn(1, 8, 64, 1)
    model = from_torch(module, x)
    mod = unit_width_convs_along_width()(to_relax(model, bind_input_shapes(model)))
    convs = []

    @tvm.relax.expr_functor.visitor
    class Convs(tvm.relax.expr_functor.PyExprVisitor):
        def visit_call_(self, call):
            if call.op.same_as(tvm.ir.Op.get("relax.nn.conv2d")):
                convs.append(([int(d) for d in call.args[0].ty.shape], [int(v) for v in call.attrs.strides], [int(v) for v in call.attrs.padding],
                              [int(v) for v in call.attrs.dilation]))  # fmt: skip
            super().visit_call_(call)

    Convs().visit_expr(mod["main"])
    assert convs == [([1, 8, 1, 64], [1, 2], [0, 4, 0, 4], [1, 2])]
    compiled = compile_model(model, target, verify=False, measure=False)
    assert compiled.meta["build"]["conv_layout"] == "NHWC" and compiled.meta["build"]["analytic_scheduled_kernels"] >= 1
    if not _runnable(target):
        pytest.skip(f"this host cannot run the code of {target}")
    with torch.no_grad():
        want = module(x).numpy()
    np.testing.assert_allclose(compiled(x.numpy())[0], want, rtol=1e-4, atol=1e-4)


def test_a_softmax_over_a_middle_axis_runs_along_the_last_and_matches_torch():
    """YOLOv8's box-edge distribution (nudenet): a softmax over axis 1 of a 4-D tensor is
    computed with that axis moved last (contiguous, independent rows) and moved back; values
    against torch."""
    import tvm

    from graphpress.backends.tvm.layout import softmax_on_last_axis
    from graphpress.backends.tvm.lower import bind_input_shapes, to_relax

    class Net(torch.nn.Module):
        def forward(self, x):
            return torch.softmax(x, dim=1) * 2.0

    x = torch.randn(1, 16, 4, 50) * 4
    model = from_torch(Net().eval(), x)
    mod = softmax_on_last_axis()(to_relax(model, bind_input_shapes(model)))
    axes = []

    @tvm.relax.expr_functor.visitor
    class Softmaxes(tvm.relax.expr_functor.PyExprVisitor):
        def visit_call_(self, call):
            if call.op.same_as(tvm.ir.Op.get("relax.nn.softmax")):
                axes.append((int(call.attrs.axis), [int(d) for d in call.args[0].ty.shape]))
            super().visit_call_(call)

    Softmaxes().visit_expr(mod["main"])
    assert axes == [(-1, [1, 4, 50, 16])]
    compiled = compile_model(model, "x86", verify=False, measure=False)
    np.testing.assert_allclose(compiled(x.numpy())[0], Net()(x).numpy(), rtol=1e-5, atol=1e-6)


def test_whole_tensor_reductions_run_in_independent_vector_lanes_and_match_numpy():
    """A dynamically quantized activation's range: a max, min (or sum) of the whole tensor to one
    value, in REDUCTION_LANES partial results side by side (8 ymm registers, independent chains)
    split off the last axis where it is a multiple of them (contiguous loads, no division per
    index), else over the fused loops. Values against numpy, built and run for the host."""
    import tvm
    from tvm import te, topi

    from graphpress.backends.tvm.schedules import PARALLEL_WORK, REDUCTION_LANES, schedule_injective
    from graphpress.backends.tvm.tir_pipeline import cpu_tir_pipeline

    rng = np.random.default_rng(3)
    cases = [((1, 128, 384), topi.max, np.max, REDUCTION_LANES), ((1, 128, 1536), topi.min, np.min, REDUCTION_LANES),
             ((1, 10, 48), topi.sum, np.sum, 16), ((4, 100), topi.max, np.max, 16)]  # fmt: skip
    for shape, reduce_, want, lanes in cases:
        x = te.placeholder(shape, "float32", name="x")
        mod, count = schedule_injective(tvm.IRModule({"main": te.create_prim_func([x, reduce_(x)])}))
        assert count == 1, shape
        found = re.findall(r'for \w+ in T\.vectorized\((\d+)\):\n\s+with T\.sblock\("\w+_rf"\)', mod["main"].script())
        assert found == [str(lanes)], (shape, mod["main"].script())
        assert "//" not in mod["main"].script() or lanes == 16, shape
        # a large one: chunks of the outer loop over the cores, each chunk in lanes
        assert ("T.parallel(" in mod["main"].script()) == (np.prod(shape) >= PARALLEL_WORK), shape
        data = (rng.standard_normal(shape) * 5).astype(np.float32)
        lib = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}), tir_pipeline=cpu_tir_pipeline())
        out = tvm.runtime.tensor(np.zeros((), np.float32))
        (lib.mod if hasattr(lib, "mod") else lib)["main"](tvm.runtime.tensor(data), out)
        np.testing.assert_allclose(out.numpy(), want(data), rtol=1e-5, atol=1e-4)


def test_row_reductions_run_in_vector_lanes_and_match_numpy():
    """Softmax's max and sum and layer norm's mean and variance along a row of 128 / 384: each a
    reduction into 16 partial sums side by side in a vector (an ``rfactor`` block, vectorized),
    then one reduce of those 16, instead of one chain of dependent scalar adds per row (MiniLM's
    softmax 0.16 -> 0.08 ms, its layer norm 0.050 -> 0.007 ms on 2 Zen 4 cores). A reduction
    over a middle axis keeps its scalar loop (its lanes would be a gather). Values against numpy,
    built and run for the host."""
    import tvm
    from tvm import te, topi

    from graphpress.backends.tvm.schedules import ROW_REDUCTION_LANES, schedule_injective
    from graphpress.backends.tvm.tir_pipeline import cpu_tir_pipeline

    def scheduled(shape, make, params=()):
        x = te.placeholder(shape, "float32", name="x")
        mod, count = schedule_injective(tvm.IRModule({"main": te.create_prim_func([x, *params, make(x)])}))
        assert count == 1
        return mod

    def lane_blocks(mod) -> list[tuple[str, int]]:
        """(name, lanes) of each rfactor block (``*_rf_update``) right under a vectorized loop."""
        found = re.findall(r'for \w+ in T\.vectorized\((\d+)\):\n\s+with T\.sblock\("(\w+_rf_update)"\)', mod["main"].script())
        return sorted({(name, int(lanes)) for lanes, name in found})

    def run(mod, x, *params):
        lib = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}), tir_pipeline=cpu_tir_pipeline())
        out = tvm.runtime.tensor(np.zeros_like(x))
        (lib.mod if hasattr(lib, "mod") else lib)["main"](*(tvm.runtime.tensor(a) for a in (x, *params)), out)
        return out.numpy()

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((1, 12, 128, 128)) * 4).astype(np.float32)
    softmax = scheduled(x.shape, lambda t: topi.nn.fast_softmax(t, -1))
    assert [name for name, lanes in lane_blocks(softmax) if lanes == ROW_REDUCTION_LANES] == ["T_softmax_expsum_rf_update", "T_softmax_maxelem_rf_update"]
    want = np.exp(x - x.max(-1, keepdims=True))
    np.testing.assert_allclose(run(softmax, x), want / want.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)

    y = (rng.standard_normal((1, 128, 384)) * 3 + 1).astype(np.float32)
    gamma, beta = te.placeholder((384,), "float32", name="gamma"), te.placeholder((384,), "float32", name="beta")
    norm = scheduled(y.shape, lambda t: topi.nn.layer_norm(t, gamma, beta, [-1], 1e-5), (gamma, beta))
    assert [name for name, _ in lane_blocks(norm)] == ["x_sum_rf_update", "x_var_sum_rf_update"]
    g, b = rng.standard_normal(384).astype(np.float32), rng.standard_normal(384).astype(np.float32)
    mean = y.mean(-1, keepdims=True)
    want = (y - mean) / np.sqrt(((y - mean) ** 2).mean(-1, keepdims=True) + 1e-5) * g + b
    np.testing.assert_allclose(run(norm, y, g, b), want, rtol=1e-4, atol=1e-4)

    middle = scheduled((4, 64, 32), lambda t: topi.sum(t, axis=1))  # summed over axis 1: strided reads
    assert lane_blocks(middle) == []


@pytest.mark.parametrize("rows", [128, 6])
def test_rows_of_a_softmax_interleave_their_dependent_chains_and_give_the_same_bits(rows, monkeypatch):
    """Rows of a kernel whose reductions went into lanes (softmax, layer norm) computed
    ROW_GROUP at a time: each block's loop over the group's rows inside its reduction loops,
    unrolled, just outside the vector lanes (innermost under the lanes reduced to one), so the
    rows' chains of dependent maxes and adds interleave. Each row's arithmetic is unchanged:
    the same bits as the schedule one row at a time, and the values against numpy. A row count
    no multiple of the group keeps one row at a time."""
    import tvm
    from tvm import te, topi

    from graphpress.backends.tvm import schedules
    from graphpress.backends.tvm.tir_pipeline import cpu_tir_pipeline

    x = (np.random.default_rng(4).standard_normal((1, 2, rows, 128)) * 4).astype(np.float32)

    def build(group):
        monkeypatch.setattr(schedules, "ROW_GROUP", group)
        t = te.placeholder(x.shape, "float32", name="x")
        mod, count = schedules.schedule_injective(tvm.IRModule({"main": te.create_prim_func([t, topi.nn.fast_softmax(t, -1)])}))
        assert count == 1
        lib = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}), tir_pipeline=cpu_tir_pipeline())
        out = tvm.runtime.tensor(np.zeros_like(x))
        (lib.mod if hasattr(lib, "mod") else lib)["main"](tvm.runtime.tensor(x), out)
        return mod["main"].script(), out.numpy()

    script, grouped = build(4)
    interleaved = {
        "lanes": r'for \w+ in range\(8\):\n\s+for \w+ in T\.unroll\(4\):\n\s+for \w+ in T\.vectorized\(16\):\n\s+with T\.sblock\("T_softmax_maxelem_rf_update"\)',
        "to one": r'for \w+ in range\(16\):\n\s+for \w+ in T\.unroll\(4\):\n\s+with T\.sblock\("T_softmax_expsum_update"\)',
    }
    for what, pattern in interleaved.items():
        assert bool(re.search(pattern, script)) == (rows % 4 == 0), (what, script)
    _, single = build(0)
    np.testing.assert_array_equal(grouped, single)
    want = np.exp(x - x.max(-1, keepdims=True))
    np.testing.assert_allclose(grouped, want / want.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)


def test_one_element_constants_become_scalars_so_a_hardswish_stays_nhwc_and_matches_onnxruntime():
    """Paddle's HardSwish after a convolution, ``x * clip(x + [3], 0, 6) / [6]`` with
    one-element rank-1 constants (PicoDet, PP-OCR): ``ConvertLayout`` has no layout for those,
    so each such op went back to NCHW between two transposes; as scalars the whole chain stays
    NHWC and fuses into the convolutions' epilogues (no transpose but the model's input and
    output). Values against ONNX Runtime."""
    from onnx import TensorProto, helper, numpy_helper

    import graphpress as gp
    from graphpress.ir import numeric

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "W1"),
             numpy_helper.from_array(rng.standard_normal((16, 16, 3, 3)).astype(np.float32), "W2"),
             numpy_helper.from_array(np.array([3.0], np.float32), "three"),
             numpy_helper.from_array(np.array([6.0], np.float32), "six"),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo")]  # fmt: skip
    nodes = []
    for i, (x, w) in enumerate((("x", "W1"), ("h0", "W2"))):
        nodes += [helper.make_node("Conv", [x, w], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Add", [f"c{i}", "three"], [f"a{i}"]),
                  helper.make_node("Clip", [f"a{i}", "lo", "six"], [f"r{i}"]),
                  helper.make_node("Mul", [f"c{i}", f"r{i}"], [f"m{i}"]),
                  helper.make_node("Div", [f"m{i}", "six"], [f"h{i}"])]  # fmt: skip
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("h1", TensorProto.FLOAT, [1, 16, 16, 16])], inits)  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    model = gp.load(proto)
    compiled = compile_model(model, "x86", verify=False, measure=False)
    build = compiled.meta["build"]
    assert build["conv_layout"] == "NHWC", build
    assert sum("transpose" in k for k in build["kernel_names"]) <= 2, build["kernel_names"]
    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    want = numeric.run(model, {"x": x})["h1"]
    np.testing.assert_allclose(compiled(x)[0], want, rtol=1e-4, atol=1e-6 * np.abs(want).max())


def test_a_squeeze_of_a_negative_axis_leaves_the_model_in_nhwc():
    """``Squeeze(axes=[-1])`` after a convolution and a mean over the width: TVM's
    ``ConvertLayout`` stopped on the negative axis (std::bad_alloc), so the whole model kept
    NCHW and each convolution ran between two transposes; with the axis as a number the model
    moves to NHWC as a whole. Values against ONNX Runtime."""
    from onnx import TensorProto, helper, numpy_helper

    import graphpress as gp
    from graphpress.ir import numeric

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(np.array([3], np.int64), "width"), numpy_helper.from_array(np.array([-1], np.int64), "last")]  # fmt: skip
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("ReduceMean", ["r", "width"], ["m"], keepdims=1), helper.make_node("Squeeze", ["m", "last"], ["y"])]  # fmt: skip
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 6])], inits)  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    proto.ir_version = 8
    model = gp.load(proto)
    compiled = compile_model(model, "x86", verify=False, measure=False)
    assert compiled.meta["build"]["conv_layout"] == "NHWC", compiled.meta["build"]["conv_layout"]
    x = rng.standard_normal((1, 8, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(compiled(x)[0], numeric.run(model, {"x": x})["y"], rtol=1e-4, atol=1e-5)


def test_a_kernel_under_the_parallel_work_threshold_runs_on_one_core():
    """Waking the second core costs more than a small kernel's work (a wake-word classifier's
    16 x 96 elementwise ops): under :data:`PARALLEL_WORK` elements (or multiply-adds) a kernel
    gets no parallel loop; at and above it, it does. Elementwise and GEMM kernels alike."""
    import tvm
    from tvm import te, topi

    from graphpress.backends.tvm import schedules

    def scripts(n: int) -> tuple[str, str]:
        x = te.placeholder((n, 96), "float32", name="x")
        y = topi.sigmoid(topi.add(x, topi.full((96,), "float32", 1.0)))
        w = te.placeholder((96, 64), "float32", name="w")
        mm = topi.matmul(x, w)
        elementwise, _ = schedules.schedule_injective(tvm.IRModule({"e": te.create_prim_func([x, y]).with_attr("global_symbol", "e")}))
        gemm, count = schedules.schedule_gemm(tvm.IRModule({"g": te.create_prim_func([x, w, mm]).with_attr("global_symbol", "g")}), 16, 32)
        assert count == 1
        return elementwise["e"].script(), gemm["g"].script()

    small = scripts(16)  # 1,536 elements; 98,304 multiply-adds
    assert "T.parallel" not in small[0] and "T.parallel" in small[1]
    tiny = scripts(2)  # 12,288 multiply-adds
    assert "T.parallel" not in tiny[1]
    big = scripts(256)  # 24,576 elements
    assert "T.parallel" in big[0] and "T.parallel" in big[1]
    assert 2 * 96 * 64 < schedules.PARALLEL_WORK <= 256 * 96


def test_the_transpose_after_a_width_one_convolution_sinks_to_the_reduction_that_ends_its_chain():
    """Magika's pattern (tf2onnx): a width-1 convolution, a slice of everything, the width
    squeezed away, a bias of lower rank, a tanh GELU, a global max pool and a squeeze. The
    NHWC convolution's output is not transposed back to NCHW: the permute moves past the
    slice, squeezes, elementwise ops and the max, and vanishes at the vector they end in.
    Values against ONNX Runtime."""
    from onnx import TensorProto, helper, numpy_helper

    import graphpress as gp
    from graphpress.ir import numeric

    rng = np.random.default_rng(0)
    c, k, length = 8, 32, 40
    inits = [numpy_helper.from_array((rng.standard_normal((k, c, 5, 1)) * 0.3).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal((k, 1)).astype(np.float32), "bias"),
             numpy_helper.from_array(np.array([0, 0, 0, 0], np.int64), "begin"),
             numpy_helper.from_array(np.full(4, np.iinfo(np.int64).max, np.int64), "end"),
             numpy_helper.from_array(np.array([3], np.int64), "three"),
             numpy_helper.from_array(np.array([2], np.int64), "two"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half"),
             numpy_helper.from_array(np.array(0.044715, np.float32), "cube"),
             numpy_helper.from_array(np.array(0.7978846, np.float32), "scale"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one")]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["conv"]),
        helper.make_node("Slice", ["conv", "begin", "end"], ["sliced"]),
        helper.make_node("Squeeze", ["sliced", "three"], ["seq"]),
        helper.make_node("Add", ["seq", "bias"], ["h"]),
        helper.make_node("Mul", ["h", "h"], ["h2"]),
        helper.make_node("Mul", ["h2", "h"], ["h3"]),
        helper.make_node("Mul", ["h3", "cube"], ["c3"]),
        helper.make_node("Add", ["h", "c3"], ["inner"]),
        helper.make_node("Mul", ["inner", "scale"], ["arg"]),
        helper.make_node("Tanh", ["arg"], ["t"]),
        helper.make_node("Add", ["t", "one"], ["t1"]),
        helper.make_node("Mul", ["h", "t1"], ["ht"]),
        helper.make_node("Mul", ["ht", "half"], ["gelu"]),
        helper.make_node("GlobalMaxPool", ["gelu"], ["pooled"]),
        helper.make_node("Squeeze", ["pooled", "two"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, length, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, k])], inits)  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    model = gp.load(proto)
    compiled = compile_model(model, "x86", verify=False, measure=False)
    build = compiled.meta["build"]
    assert build["conv_layout"] == "NHWC" and build["analytic_scheduled_kernels"] >= 1, build
    # one transpose: the input's, to NHWC and on its side; none after the convolution
    assert len([name for name in build["kernel_names"] if "transpose" in name]) == 1, build["kernel_names"]
    x = rng.standard_normal((1, c, length, 1)).astype(np.float32)
    want = numeric.run(model, {"x": x})["y"]
    np.testing.assert_allclose(compiled(x)[0], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_a_prime_output_width_is_padded_to_a_full_register_tile():
    """A width whose only divisors are 1 and itself (the mel spectrogram's 97 frames) gave the
    register tile one row: an eighth of the FMA peak. The width is computed a little wider (the
    convolution's right padding grows) with rows enough for a full tile, and sliced back."""
    from graphpress.backends.tvm.layout import padded_width, tile_efficiency

    assert tile_efficiency(1, 1) == 0.125 and tile_efficiency(14, 2) == 1.0
    assert padded_width(97, 272, 16, 32) == 98  # 14 rows x 1 vector instead of 1 x 1
    assert padded_width(56, 64, 16, 32) is None and padded_width(7, 512, 16, 32) is None  # ResNet's widths keep theirs
    for m in (17, 61, 97, 149):
        for lanes, registers in ((16, 32), (8, 16)):
            width = padded_width(m, 64, lanes, registers)
            assert width is not None and m < width <= m * 1.125 + 1
            mr, v = register_tile(width, 64, lanes, registers)
            assert width % mr == 0 and tile_efficiency(mr, v) >= 0.75 > tile_efficiency(*register_tile(m, 64, lanes, registers))


@pytest.mark.parametrize("target", ["x86", "x86:haswell"])
def test_a_strided_1d_convolution_of_prime_width_is_computed_wider_and_matches_torch(target):
    """61 frames of a stride-16 window over 1,036 samples: the widened columns read the input's
    last 12 samples and zeros, and are sliced off; the kernel has the analytic schedule and the
    values match torch on every x86 path this host runs."""
    import tvm
    from tvm import relax

    from graphpress.backends.tvm.layout import pad_output_width, padded_width

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 1, 1036, 1), "float32"))
    with bb.function("main", [x]):
        w = relax.const(np.ones((1, 64, 1, 32), np.float32))
        y = bb.emit(relax.op.nn.conv2d(x, w, strides=[1, 16], data_layout="NHWC", kernel_layout="HWIO"))
        bb.emit_func_output(y)
    mod = pad_output_width(16, 32)(bb.get())
    convs = []

    @tvm.relax.expr_functor.visitor
    class Convs(tvm.relax.expr_functor.PyExprVisitor):
        def visit_call_(self, call):
            if call.op.same_as(tvm.ir.Op.get("relax.nn.conv2d")):
                convs.append(([int(d) for d in call.ty.shape], [int(v) for v in call.attrs.padding]))
            super().visit_call_(call)

    Convs().visit_expr(mod["main"])
    width = padded_width(61, 32, 16, 32)
    assert convs == [([1, 1, width, 32], [0, 0, 0, (width - 61) * 16])]
    assert [int(d) for d in mod["main"].ret_ty.shape] == [1, 1, 61, 32]

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv1d(1, 32, 64, stride=16), torch.nn.ReLU()).eval()
    xs = torch.randn(1, 1, 1036)
    compiled = compile_model(from_torch(module, xs), target, verify=False, measure=False)
    build = compiled.meta["build"]
    assert build["conv_layout"] == "NHWC" and not [k for k in build["unscheduled_kernels"] if "conv" in k], build
    if not _runnable(target):
        pytest.skip(f"this host cannot run the code of {target}")
    with torch.no_grad():
        want = module(xs).numpy()
    got = compiled(xs.numpy())[0]
    assert got.shape == want.shape == (1, 32, 61)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("target", ["x86", "x86:haswell"])
def test_a_matmul_of_prime_row_count_gets_zero_rows_and_matches_torch(target):
    """101 frames (NeMo's STFT, decomposed into a framing and a DFT by MatMul) times a constant
    weight: the left operand gets zero rows up to a full register tile's multiple, the product
    is sliced back; values against torch on every x86 path this host runs."""
    from graphpress.backends.tvm.layout import pad_output_width, padded_width
    from graphpress.backends.tvm.lower import bind_input_shapes, to_relax

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU()).eval()
    x = torch.randn(1, 101, 64)
    model = from_torch(module, x)
    mod = pad_output_width(16, 32)(to_relax(model, bind_input_shapes(model)))
    assert "R.nn.pad" in mod.script() and padded_width(101, 48, 16, 32) > 101
    assert [int(d) for d in mod["main"].ret_ty.shape] == [1, 101, 48]
    compiled = compile_model(model, target, verify=False, measure=False)
    assert not [k for k in compiled.meta["build"]["unscheduled_kernels"] if "matmul" in k], compiled.meta["build"]
    if not _runnable(target):
        pytest.skip(f"this host cannot run the code of {target}")
    with torch.no_grad():
        want = module(x).numpy()
    np.testing.assert_allclose(compiled(x.numpy())[0], want, rtol=1e-4, atol=1e-4)


def test_a_transpose_to_channels_last_of_a_16_wide_image_runs_along_the_width():
    """NCHW to NHWC of a 3-channel image whose width is a multiple of 16 (ResNet-18's 224): the
    channels unrolled inside a loop along the width, not fused with it into rows of 16 lanes that
    each gathered 16 scalars; an elementwise kernel on the same NHWC shape keeps its fused,
    contiguous vector rows. Both the same bytes as numpy."""
    import tvm
    from tvm import te

    from graphpress.backends.tvm.schedules import schedule_injective

    x = te.placeholder((1, 3, 8, 32), "float32", name="x")
    moved = te.compute((1, 8, 32, 3), lambda b, y, xx, c: x[b, c, y, xx], name="nhwc")
    y = te.placeholder((1, 8, 32, 3), "float32", name="y")
    scaled = te.compute((1, 8, 32, 3), lambda b, h, w, c: y[b, h, w, c] * 2.0, name="scaled")
    mod = tvm.IRModule({"t": te.create_prim_func([x, moved]).with_attr("global_symbol", "t"), "e": te.create_prim_func([y, scaled]).with_attr("global_symbol", "e")})
    mod, count = schedule_injective(mod)
    assert count == 2
    assert "T.unroll(3)" in mod["t"].script() and "96" not in mod["t"].script(), mod["t"].script()  # 32 x 3 never fused
    assert "T.unroll(3)" not in mod["e"].script() and "T.vectorized(16)" in mod["e"].script(), mod["e"].script()
    lib = tvm.compile(mod, target=resolve_target("x86").tvm_target())
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((1, 3, 8, 32)).astype(np.float32)
    got = tvm.runtime.tensor(np.zeros((1, 8, 32, 3), np.float32))
    lib["t"](tvm.runtime.tensor(xs), got)
    np.testing.assert_array_equal(got.numpy(), xs.transpose(0, 2, 3, 1))
    ys = rng.standard_normal((1, 8, 32, 3)).astype(np.float32)
    lib["e"](tvm.runtime.tensor(ys), got)
    np.testing.assert_array_equal(got.numpy(), ys * 2)


@pytest.mark.parametrize("kernel", [1, 3])
def test_a_1x1_convolution_reads_its_input_in_place(kernel):
    """A 1x1 convolution (no padding: topi's pad is a plain copy of the input) reads its input in
    place instead of copying it first; a padded 3x3 one keeps its padded copy (inlined, the
    bounds tests per element doubled ResNet-18's time). Same values as numpy."""
    import tvm
    from tvm import te, topi

    from graphpress.backends.tvm import schedules

    facts = vector_facts(resolve_target("x86:haswell"))
    x = te.placeholder((1, 8, 8, 16), "float32", name="x")
    w = te.placeholder((kernel, kernel, 16, 32), "float32", name="w")
    out = topi.nn.relu(topi.nn.conv2d_nhwc(x, w, 1, kernel // 2, 1))
    mod, count = schedules.schedule_gemm(tvm.IRModule({"c": te.create_prim_func([x, w, out]).with_attr("global_symbol", "c")}), facts.lanes, facts.registers)
    assert count == 1
    assert ('sblock("pad_temp")' in mod["c"].script()) == (kernel == 3), mod["c"].script()
    if not _runnable("x86:haswell"):
        pytest.skip("this host cannot run AVX2 code")
    lib = tvm.compile(mod, target=resolve_target("x86:haswell").tvm_target())
    rng = np.random.default_rng(0)
    xs, ws = rng.standard_normal((1, 8, 8, 16)).astype(np.float32), rng.standard_normal((kernel, kernel, 16, 32)).astype(np.float32)
    got = tvm.runtime.tensor(np.zeros((1, 8, 8, 32), np.float32))
    lib["c"](tvm.runtime.tensor(xs), tvm.runtime.tensor(ws), got)
    xp = np.pad(xs.astype(np.float64), ((0, 0), (kernel // 2,) * 2, (kernel // 2,) * 2, (0, 0)))
    want = sum(xp[:, i : i + 8, j : j + 8, :] @ ws[i, j].astype(np.float64) for i in range(kernel) for j in range(kernel))
    np.testing.assert_allclose(got.numpy(), np.maximum(want, 0), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("width", [14, 28, 56])
def test_a_float_depthwise_convolution_takes_the_register_tile_on_every_map(width):
    """A float 3x3 depthwise convolution (padding 1, ReLU6) takes the analytic register tile on
    small and wide maps alike (the wide ones once took the generic per-pixel schedule), and
    computes the same values as numpy."""
    import tvm
    from tvm import te, topi

    from graphpress.backends.tvm import schedules

    c = 48
    x = te.placeholder((1, width, width, c), "float32", name="x")
    w = te.placeholder((3, 3, 1, c), "float32", name="w")
    out = topi.clip(topi.nn.group_conv2d_nhwc(x, w, 1, 1, 1, c, "float32"), 0.0, 6.0)
    mod = tvm.IRModule({"dw": te.create_prim_func([x, w, out]).with_attr("global_symbol", "dw")})
    facts = vector_facts(resolve_target("x86:haswell"))
    mod, analytic = schedules.schedule_gemm(mod, facts.lanes, facts.registers)
    assert analytic == 1
    if not _runnable("x86:haswell"):
        pytest.skip("this host cannot run AVX2 code")
    lib = tvm.compile(mod, target=resolve_target("x86:haswell").tvm_target())
    rng = np.random.default_rng(0)
    xs, ws = rng.standard_normal((1, width, width, c)).astype(np.float32), rng.standard_normal((3, 3, 1, c)).astype(np.float32)
    got = tvm.runtime.tensor(np.zeros((1, width, width, c), np.float32))
    lib["dw"](tvm.runtime.tensor(xs), tvm.runtime.tensor(ws), got)
    xp = np.pad(xs.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = sum(xp[:, i : i + width, j : j + width, :] * ws[i, j, 0] for i in range(3) for j in range(3))
    np.testing.assert_allclose(got.numpy(), np.clip(want, 0, 6), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("target", ["x86", "x86:haswell"])
def test_a_register_tile_is_a_stack_buffer_not_a_workspace_per_tile(target, monkeypatch):
    """The accumulators of a 14 x 2-vector tile (1,792 bytes with AVX-512) are over TVM's 1 KB
    stack limit: its own pipeline asks the runtime's workspace pool for them once per tile. The
    CPU builds' pipeline keeps buffers up to ``STACK_BYTES`` on the stack (no workspace call
    left in the module), larger ones stay workspaces, and both compute numpy's product."""
    import tvm
    from tvm import te

    from graphpress.backends.tvm import tir_pipeline
    from graphpress.backends.tvm.schedules import schedule_gemm

    m, k, n = 56, 64, 64
    a = te.placeholder((m, k), "float32", name="a")
    b = te.placeholder((k, n), "float32", name="b")
    r = te.reduce_axis((0, k), name="r")
    prod = te.compute((m, n), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="prod")
    out = te.compute((m, n), lambda i, j: tvm.tirx.max(prod[i, j], tvm.tirx.const(0.0, "float32")), name="relu")
    spec = resolve_target(target)
    facts = vector_facts(spec)
    mod, count = schedule_gemm(tvm.IRModule({"mm": te.create_prim_func([a, b, out]).with_attr("global_symbol", "mm")}), facts.lanes, facts.registers)
    assert count == 1
    tile = [line for line in mod["mm"].script().splitlines() if "alloc_buffer" in line and 'scope="local"' in line]
    assert tile, mod["mm"].script()

    def workspace_calls(pipeline) -> int:
        return tvm.compile(mod, target=spec.tvm_target(), tir_pipeline=pipeline).mod.inspect_source("ll").count("load ptr, ptr @__TVMBackendAllocWorkspace")

    assert workspace_calls("default") > 0  # TVM's own pipeline: the tile is a workspace
    assert workspace_calls(tir_pipeline.cpu_tir_pipeline()) == 0
    monkeypatch.setattr(tir_pipeline, "STACK_BYTES", 64)  # a limit under the tile: a workspace again
    assert workspace_calls(tir_pipeline.cpu_tir_pipeline()) > 0
    monkeypatch.undo()
    if _runnable(target):
        lib = tvm.compile(mod, target=spec.tvm_target(), tir_pipeline=tir_pipeline.cpu_tir_pipeline())
        rng = np.random.default_rng(0)
        xa, xb = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)
        got = tvm.runtime.tensor(np.zeros((m, n), np.float32))
        lib["mm"](tvm.runtime.tensor(xa), tvm.runtime.tensor(xb), got)
        np.testing.assert_allclose(got.numpy(), np.maximum(xa.astype(np.float64) @ xb, 0), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("target", ["x86", "x86:haswell"])
def test_a_max_pool_accumulates_each_pixel_in_registers_and_matches_torch(target):
    """ResNet's 3x3/2 max pool in NHWC: each output pixel's 64 channels accumulate in a local
    buffer, its 4 vectors unrolled (registers over the window, one store per vector), not read
    and written back in the output at every tap; values (with the padding's -inf borders)
    against torch on every x86 path this host runs."""
    import tvm
    from tvm import te, topi

    from graphpress.backends.tvm import schedules

    x = te.placeholder((1, 16, 16, 64), "float32", name="x")
    out = topi.nn.pool2d(x, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1), "max", layout="NHWC")
    mod, count = schedules.schedule_injective(tvm.IRModule({"p": te.create_prim_func([x, out]).with_attr("global_symbol", "p")}))
    script = mod["p"].script()
    assert count == 1 and 'scope="local"' in script and "T.unroll(4)" in script, script
    without = schedules.POOL_ACCUMULATORS
    try:  # the reference schedule: accumulated in the output itself
        schedules.POOL_ACCUMULATORS = 0
        plain, _ = schedules.schedule_injective(tvm.IRModule({"p": te.create_prim_func([x, out]).with_attr("global_symbol", "p")}))
    finally:
        schedules.POOL_ACCUMULATORS = without
    assert 'scope="local"' not in plain["p"].script()
    if not _runnable(target):
        pytest.skip(f"this host cannot run the code of {target}")
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.MaxPool2d(3, 2, 1)).eval()
    with torch.no_grad():
        module[0].bias.fill_(-4.0)  # negative maxima: a padding of 0 instead of -inf would show
    xs = torch.randn(1, 3, 30, 30)
    compiled = compile_model(from_torch(module, xs), target, verify=False, measure=False)
    with torch.no_grad():
        want = module(xs).numpy()
    np.testing.assert_allclose(compiled(xs.numpy())[0], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target", ["x86", "x86:haswell"])
@pytest.mark.parametrize(
    ("kernel", "stride", "pad", "dilation", "skips"),
    [
        ((3, 3), 1, (1, 1, 1, 1), 1, True),  # ResNet's 3x3: the first and last rows read a row of zeros
        ((3, 3), 2, (1, 1, 1, 1), 1, True),  # strided: only the first row does
        ((1, 3), 1, (1, 1, 1, 1), 1, True),  # one window row: the output's first and last rows read only zeros
        ((3, 3), 1, (0, 1, 2, 1), 1, True),  # asymmetric: two rows of zeros at the bottom, none on top
        ((3, 3), 1, (2, 2, 2, 2), 2, False),  # dilated: the window steps by 2, left whole
    ],
)
def test_window_rows_that_read_only_padding_are_skipped_and_convolutions_match_numpy(target, kernel, stride, pad, dilation, skips):
    """A padded convolution's register tile skips the window rows that fall in the zero padding
    (as ONNX Runtime's NCHWc kernels do): the scheduled kernel marks its window-row loop with the
    rows that hold input, the CPU pipeline clips the loop to them once the tile's buffers are
    allocated (a 1 x 3 window over padded rows: whole output rows of zero sums, the epilogue still
    applied; not a dilated window). A tile as wide as the output (7 pixels: AVX-512's tiles; the
    strided 4-pixel output takes tiles of 2 with AVX2) also drops the products of its edge pixels
    with the window columns of zeros. Same values as numpy, with and without."""
    import tvm
    from tvm import te, topi

    from graphpress.backends.tvm import schedules, tir_pipeline

    h, w, c, n = 7, 7, 32, 64
    facts = vector_facts(resolve_target(target))
    x = te.placeholder((1, h, w, c), "float32", name="x")
    wt = te.placeholder((*kernel, c, n), "float32", name="w")
    out = topi.nn.relu(topi.nn.conv2d_nhwc(x, wt, stride, list(pad), dilation))

    def scheduled():
        mod, count = schedules.schedule_gemm(tvm.IRModule({"c": te.create_prim_func([x, wt, out]).with_attr("global_symbol", "c")}), facts.lanes, facts.registers)
        assert count == 1
        return mod

    mod = scheduled()
    script = mod["c"].script()
    assert (schedules.WINDOW_ROWS_ATTR in script) == skips, script
    # the tile spans the width (7 pixels): the columns of zeros are dropped by a predicate that is
    # a constant once the pixels and the window's columns are unrolled
    def column_predicates(text: str) -> int:
        return sum("T.where(" in line and "rx" in line for line in text.splitlines())

    top, left, bottom, right = pad
    oh = (h + top + bottom - dilation * (kernel[0] - 1) - 1) // stride + 1
    ow = (w + left + right - dilation * (kernel[1] - 1) - 1) // stride + 1
    full_width = register_tile(ow, n, facts.lanes, facts.registers)[0] == ow  # else tiles of a row's part: no column skip
    assert column_predicates(script) == full_width and (f"for rx in T.unroll({kernel[1]})" in script) == full_width, script
    saved = schedules.SKIP_PADDED_ROWS, schedules.SKIP_PADDED_COLUMNS
    try:
        schedules.SKIP_PADDED_ROWS = schedules.SKIP_PADDED_COLUMNS = False
        plain = scheduled()
    finally:
        schedules.SKIP_PADDED_ROWS, schedules.SKIP_PADDED_COLUMNS = saved
    assert schedules.WINDOW_ROWS_ATTR not in plain["c"].script() and column_predicates(plain["c"].script()) == 0
    clipped = tir_pipeline._clip_loops(mod["c"]).script()  # what the pipeline does once buffers are placed
    assert schedules.WINDOW_ROWS_ATTR not in clipped and ("for ry in range(T.max(" in clipped) == skips, clipped
    if not _runnable(target):
        pytest.skip(f"this host cannot run the code of {target}")
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((1, h, w, c)).astype(np.float32)
    ws = rng.standard_normal((*kernel, c, n)).astype(np.float32)
    xp = np.pad(xs.astype(np.float64), ((0, 0), (top, bottom), (left, right), (0, 0)))
    want = sum(
        xp[:, i * dilation : i * dilation + stride * (oh - 1) + 1 : stride, j * dilation : j * dilation + stride * (ow - 1) + 1 : stride, :] @ ws[i, j].astype(np.float64)
        for i in range(kernel[0])
        for j in range(kernel[1])
    )
    for module in (mod, plain):
        lib = tvm.compile(module, target=resolve_target(target).tvm_target(), tir_pipeline=tir_pipeline.cpu_tir_pipeline())
        got = tvm.runtime.tensor(np.zeros((1, oh, ow, n), np.float32))
        lib["c"](tvm.runtime.tensor(xs), tvm.runtime.tensor(ws), got)
        np.testing.assert_allclose(got.numpy(), np.maximum(want, 0), rtol=1e-5, atol=1e-4)


class _Winograd(torch.nn.Module):
    """3x3 stride-1 convolutions of the kinds Winograd's transforms take -- a 16 x 16 map in 4 x 4
    tiles, a 14 x 14 one (unpadded) in 4 x 4 tiles that overhang its edge, a 7 x 7 one in 2 x 2
    tiles -- with a bias, a residual add and a ReLU after them, and two it must leave direct:
    stride 2, and a 4 x 4 map (too few tiles)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.b = torch.nn.Conv2d(32, 32, 3, padding=1)
        self.c = torch.nn.Conv2d(32, 32, 3)
        self.d = torch.nn.Conv2d(32, 32, 3, stride=2, padding=1)
        self.e = torch.nn.Conv2d(32, 32, 3, padding=1)
        self.f = torch.nn.Conv2d(32, 32, 3, stride=2, padding=1)
        self.g = torch.nn.Conv2d(32, 32, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        y = torch.relu(self.b(y) + y)
        y = torch.nn.functional.silu(self.c(y))
        y = torch.relu(self.e(self.d(y)))
        return self.g(self.f(y))


@pytest.mark.parametrize("target, tiles", [("x86", (4, 2)), ("x86:haswell", (4, 2)), ("x86", (2,))])
def test_winograd_convolutions_are_chosen_where_tiles_cover_the_map_and_match_torch_in_float64(target, tiles, monkeypatch):
    """A 3x3 stride-1 convolution becomes input transform, batched matmul (the analytic GEMM)
    and output transform (the bias, residual and ReLU fused into it): F(4,3) (the default; or
    F(2,3) alone) where the map has enough tiles, even overhanging its edge, F(2,3) where only
    its tiles are enough, else direct. Its
    results differ from the exact ones by rounding only: within 1e-5 of the output's magnitude,
    against torch in float64, and within 30x the direct convolution's own rounding."""
    from graphpress.backends.tvm import winograd

    monkeypatch.setattr(winograd, "TILES", tiles)
    torch.manual_seed(0)
    module = _Winograd().eval()
    x = torch.randn(2, 16, 16, 16)
    compiled = compile_model(from_torch(module, x), target, verify=False, measure=False)
    build = compiled.meta["build"]
    big = "F(4,3)" if 4 in tiles else "F(2,3)"
    assert build["winograd_convolutions"] == [f"16x16 16->32 {big}", f"16x16 32->32 {big}", f"14x14 32->32 {big}", "7x7 32->32 F(2,3)"], build
    assert {"winograd_input", "matmul"} <= {name.rstrip("0123456789") for name in build["kernel_names"]}, build
    # the epilogues ride on the output transforms: no kernel of their own
    assert not [name for name in build["kernel_names"] if name.startswith(("fused_add", "relu", "sigmoid", "multiply", "fused_sigmoid"))], build
    if not _runnable(target):
        pytest.skip(f"this host cannot run the code of {target}")
    with torch.no_grad():
        want = module.double()(x.double()).numpy()
    got = compiled(x.numpy())[0]
    err = float(np.abs(got - want).max()) / float(np.abs(want).max())
    assert err < 1e-5, err
    direct = compile_model(from_torch(module.float(), x), target, verify=False, measure=False, winograd=False)
    assert "winograd_convolutions" not in direct.meta["build"]
    exact = float(np.abs(direct(x.numpy())[0] - want).max()) / float(np.abs(want).max())
    assert exact < 1e-5 and err < 30 * max(exact, 1e-7), (err, exact)


def test_a_row_padded_at_its_end_vectorizes_its_whole_vectors():
    """A row padded at its end (an activation's K of 257 padded to 264 for an integer product),
    with the index arithmetic a reshape leaves (``(j // 257 + i) % 97``, ``j % 257``): its 16
    whole vectors a loop of their own, vectorized (the padding's test and the divisions simplify
    away there), the rest scalar; the values numpy's."""
    import tvm
    from tvm import te, tirx

    from graphpress.backends.tvm.schedules import schedule_injective
    from graphpress.backends.tvm.tir_pipeline import cpu_tir_pipeline

    x = te.placeholder((97, 257), "float32", name="x")
    y = te.compute((97, 264), lambda i, j: tirx.if_then_else(j < 257, x[(j // 257 + i) % 97, j % 257] * tirx.const(2.0, "float32"), tirx.const(0.0, "float32")), name="PadInput")
    mod, count = schedule_injective(tvm.IRModule({"main": te.create_prim_func([x, y])}))
    assert count == 1 and "T.vectorized(16)" in mod["main"].script(), mod["main"].script()
    lib = tvm.compile(mod, target=tvm.target.Target(resolve_target("x86").config), tir_pipeline=cpu_tir_pipeline())
    data = np.random.default_rng(4).standard_normal((97, 257)).astype(np.float32)
    out = tvm.runtime.tensor(np.full((97, 264), np.nan, np.float32))
    (lib.mod if hasattr(lib, "mod") else lib)["main"](tvm.runtime.tensor(data), out)
    np.testing.assert_array_equal(out.numpy(), np.pad(data * 2, ((0, 0), (0, 7))))
