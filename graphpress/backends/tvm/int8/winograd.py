"""Integer Winograd F(2x2, 3x3) for the AVX2 int8 kernels: a 3x3 stride-1 integer convolution
as the input transform, 16 int16 matrix products on ``vpmaddwd`` and the output transform, with
2.25x fewer multiplies than the direct convolution, exactly.

On an AVX2 CPU without VNNI every int8 product costs ``vpmaddubsw`` (u8 x s8 pairs summed in
int16, which 8-bit weights can saturate) or ``vpmaddwd`` (int16 pairs, exact): the direct
kernels are bound by those multiplies (:mod:`.kernels_x86`). F(2,3) computes each 2 x 2 output
tile from the 4 x 4 input tile around it with 16 products per input/output channel pair instead
of 36, and stays exact in integers:

* the input transform ``V = B^T d B`` of the uint8 input (TVM's Cook-Toom matrices,
  :mod:`graphpress.backends.tvm.winograd`: ``B``'s columns hold two entries of +-1) sums four
  values of 0..255 with signs: within +-1020, an int16;
* the weight transform ``G g G^T`` has entries of 1/2: with ``2G`` it is four times the
  transform, an integer of at most 9 x 128 = 1152, an int16 (computed here, at compile time);
* the 16 products ``M[e] = V[e] · U[e]`` over ``C`` channels are int32 sums of at most
  ``1020 x 1152 x C`` (``C`` <= :data:`MAX_CHANNELS` keeps every partial sum of the output
  transform under 2^31 as well);
* the output transform ``A^T M A`` (``A``: 0 and +-1) is four times the convolution's exact
  int32 sum: shifted right by 2, it is the direct kernel's value bit for bit.

The zero point and the padding are the direct path's (:func:`.emit.emit_conv`): the transform
reads the padded input as the convolution does, zeros outside it. Relax fuses the
requantization behind the output transform like any elementwise epilogue
(:func:`~graphpress.backends.tvm.schedules.schedule_transform` computes it per tile).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from graphpress.backends.tvm.int8.kernels_x86 import avx2_int16_batched_kernel
from graphpress.backends.tvm.winograd import _OPAQUE, _OUT_EWISE_FUSABLE, _call_te, _matrices, input_transform, output_transform

__all__ = ["MAX_CHANNELS", "MIN_CHANNELS", "WINOGRAD", "applies", "emit_winograd", "weight_transform"]

#: the rewrite is applied (a switch for A/B measurements)
WINOGRAD = True

#: output tile (F(2,3)); its input tile is 4 x 4, 16 products
M = 2
_POSITIONS = (M + 2) ** 2

#: the weights are transformed by 2G, four times G's transform: the output transform's result
#: is shifted right by 2
SHIFT = 2

#: channels a convolution must have at least, in and out (an image's 3: the transforms would
#: cost more than they save)
MIN_CHANNELS = 16

#: input channels at most: the products' sums (1020 x 1152 per channel) and the output
#: transform's partial sums of three of them stay under 2^31
MAX_CHANNELS = 512

#: the transformed weights of one convolution, at most (bytes), where the direct kernel is a
#: ``vpmaddubsw`` one: 16 int16 per 3x3 int8 weights (3.6x the bytes), read from memory once
#: per call. ResNet-18's 7-pixel stage (512 x 512 channels, 8 MB) took 620 us a convolution
#: against the quads kernel's 490-576 inside the model (2 Zen 4 cores), its 14-pixel one (2 MB)
#: 380 against 455. Weights on the int16 kernel (8-bit ones) take F(2,3) whatever its size:
#: their direct kernel multiplies int16 pairs too, 2.25x as many
MAX_WEIGHT_BYTES = 2 * 1024 * 1024

#: output tiles a map must have at least (each transformed weight is used once per tile)
MIN_TILES = 16

#: the products' rows (tiles) are padded to a multiple of this: the kernel's micro-tile rows
_ROWS = 4

#: the products' columns (output channels) are padded to a multiple of this: ``vpmaddwd``'s 8 lanes
_LANES = 8


def applies(g: dict[str, Any]) -> bool:
    """Whether the convolution of geometry ``g`` (:func:`~.conv_layout.conv_geometry`) runs as
    F(2,3) here: an ISA whose kernels take the Winograd path (``Isa.winograd``: AVX2's), 3x3,
    stride and dilation 1, an even number of channels from :data:`MIN_CHANNELS` to
    :data:`MAX_CHANNELS` in, at least :data:`MIN_CHANNELS` out, :data:`MIN_TILES` tiles, and,
    where the direct kernel would be a ``vpmaddubsw`` one, transformed weights of at most
    :data:`MAX_WEIGHT_BYTES`."""
    return (
        WINOGRAD and g["isa"].winograd and g["kh"] == g["kw"] == 3 and g["strides"] == (1, 1) and g["dilations"] == (1, 1)
        and g["c"] % 2 == 0 and MIN_CHANNELS <= g["c"] <= MAX_CHANNELS and g["oc"] >= MIN_CHANNELS and _tiles(g) >= MIN_TILES
        and (g["isa"].weight == "int16" or _POSITIONS * g["c"] * g["oc"] * 2 <= MAX_WEIGHT_BYTES)
    )  # fmt: skip


def _tiles(g: dict[str, Any]) -> int:
    return g["n"] * -(-g["oh"] // M) * -(-g["ow"] // M)


def weight_transform(w_oihw: np.ndarray) -> np.ndarray:
    """int8 OIHW 3x3 weights ``[K, C, 3, 3]`` to int16 ``U[16, C, K] = 2G g (2G)^T`` (four times
    the Winograd transform, exact in integers)."""
    _, _, g = _matrices(M)
    g2 = np.rint(2 * g).astype(np.int64)
    if not np.array_equal(g2, 2 * g):
        raise ValueError("F(2,3)'s weight transform is not in halves")
    u = np.einsum("ea,kcab,fb->efck", g2, w_oihw.astype(np.int64), g2).reshape(_POSITIONS, w_oihw.shape[1], w_oihw.shape[0])
    if np.abs(u).max(initial=0) > np.iinfo(np.int16).max:
        raise ValueError("transformed weights out of int16")
    return u.astype(np.int16)


def _pack(u: np.ndarray, kp: int) -> np.ndarray:
    """``U[16, C, K]`` -> ``[16, Kp/8, C/2, 8, 2]``, the batched ``vpmaddwd`` kernel's layout."""
    e, c, k = u.shape
    padded = np.zeros((e, c, kp), np.int16)
    padded[..., :k] = u
    return np.ascontiguousarray(padded.reshape(e, c // 2, 2, kp // _LANES, _LANES).transpose(0, 3, 1, 4, 2))


def emit_winograd(bb, x, w_oihw: np.ndarray, g: dict[str, Any]):
    """Relax for the int32 convolution of the uint8 NHWC ``x`` by ``w_oihw`` (geometry ``g``,
    :func:`applies`): the input transform, the 16 products, and the output transform (fusable:
    the requantization behind it joins its kernel)."""
    from tvm import relax

    n, h, w, c, oc = g["n"], g["h"], g["w"], g["c"], g["oc"]
    tiles = -(-_tiles(g) // _ROWS) * _ROWS
    kp = -(-oc // _LANES) * _LANES
    kernel = input_transform((n, h, w, c), M, tuple(g["pads"][:2]), ("uint8", "int16"), (g["oh"], g["ow"]), _ROWS).with_attr("op_pattern", _OPAQUE)
    v = bb.emit(relax.call_tir(bb.add_func(kernel, "winograd_int_input"), [x], relax.TensorType([_POSITIONS, tiles, c], "int16")))
    gemm = avx2_int16_batched_kernel(_POSITIONS, tiles, kp, c)
    packed = relax.const(_pack(weight_transform(w_oihw), kp))
    prod = bb.emit(relax.call_tir(bb.add_func(gemm, str(gemm.attrs["global_symbol"])), [v, packed], relax.TensorType([_POSITIONS, tiles, kp], "int32")))
    out_shape = (n, g["oh"], g["ow"], oc)
    return _call_te(bb, output_transform, prod, [_POSITIONS, tiles, kp], (M, out_shape, SHIFT), "winograd_int_output", _OUT_EWISE_FUSABLE, "int32")
