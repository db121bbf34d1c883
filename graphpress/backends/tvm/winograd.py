"""Winograd convolutions: a 3x3 stride-1 NHWC convolution as three kernels, so that it
multiplies less (Lavin & Gray, *Fast Algorithms for Convolutional Neural Networks*, 2016).

Each ``m x m`` tile of the output is computed from the ``(m + 2) x (m + 2)`` tile of the input
around it:

1. the *input transform* ``V = B^T d B`` of every input tile, written ``(alpha^2, tiles,
   channels)`` (``alpha = m + 2``);
2. ``alpha^2`` independent matrix products ``M[e] = V[e] @ U[e]`` with the transformed weights
   ``U = G g G^T`` (constants, computed here) -- a batched ``relax.matmul``, which the analytic
   GEMM schedule register-blocks like any other;
3. the *output transform* ``Y = A^T M A`` of every tile, into which FuseOps folds the
   convolution's epilogue (bias, residual, activation).

With ``m = 4`` a tile of 16 outputs takes 36 products per input/output channel pair instead of
144 (4x fewer); ``m = 2``: 16 instead of 36. The transforms are additions and a few constant
multiplications, one pass over the input and the output each. The matrices are TVM's
(:func:`tvm.topi.nn.winograd_util`, Cook-Toom with its interpolation points); results differ
from a direct convolution by rounding (the transforms scale and cancel terms): about 1e-6 of
the output's magnitude at ``m = 2`` and 1e-5 at ``m = 4``, which the build's check against ONNX
Runtime measures like any other difference.

The input transform writes every position of a tile from one block, each position an expression
of the nonzero terms only (:func:`input_transform`). The output transform, into which the
epilogue must fuse, is a TE compute that selects, by the position, among such expressions; once
the schedule unrolls a tile's positions (``schedules.schedule_transform``) every selection is a
constant.
"""

from __future__ import annotations

import numpy as np

from graphpress.backends.tvm.schedules import WINOGRAD_TILE_ATTR as TILE_ATTR

__all__ = ["TILE_ATTR", "WINOGRAD", "winograd_convs", "winograd_tile"]

#: the Relax rewrite is applied (a switch for A/B measurements)
WINOGRAD = True

#: the transformed weights of one convolution, at most (bytes). ResNet-18's 7-pixel stage
#: (512 x 512 channels, F(2,3)) has 16 MB of them and was still faster than direct on a Zen 5
#: (32 MB of L3 per 8 cores), on AVX-512 and AVX2
MAX_WEIGHT_BYTES = 16 * 1024 * 1024

#: input and output channels a convolution must have at least: the matmul's reduction and
#: width (an image's 3 channels: the transforms would cost more than they save)
MIN_CHANNELS = 16

#: the output tiles tried, in order. F(4,3) multiplies 4x less than the direct convolution
#: (F(2,3): 2.25x) and ran ResNet-18 4-9 % faster than F(2,3) alone (Zen 5, A/B runs: 0.54x
#: against 0.56x ONNX Runtime on AVX-512, 1.28x against 1.40x on AVX2); F(2,3) takes the maps
#: too small for 16 tiles of 4 x 4 and the weights too big at 36 positions (ResNet-18's
#: 7-pixel stage). F(6,3) was slower than F(4,3) (0.74x against 0.69x ONNX Runtime in one A/B
#: run): its transforms cost more than the matmul saves at these channel counts
TILES = (4, 2)

#: tiles a map must have at least: each transformed weight is used once per tile
MIN_TILES = 16


#: op patterns (``tvm.relax`` ``OpPatternKind``): the output transform takes elementwise
#: epilogues like a convolution; the input transform fuses with nothing (an injective producer
#: fused into it would be recomputed for each of the ``alpha^2`` positions that read it)
_OUT_EWISE_FUSABLE, _OPAQUE = 4, 8


def _matrices(m: int):
    from tvm.topi.nn.winograd_util import _cook_toom_convolution, _interpolation_points

    a, b, g = _cook_toom_convolution(_interpolation_points(m + 2), m, 3)
    return np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(g, np.float64)


def winograd_tile(height: int, width: int, in_channels: int, out_channels: int, batch: int = 1) -> int | None:
    """The output tile ``m`` for a 3x3 stride-1 convolution producing ``batch`` maps of
    ``height x width``, or None to keep it direct: the first of :data:`TILES` whose
    transformed weights (``alpha^2 / 9`` times the 3x3 weights) stay under
    :data:`MAX_WEIGHT_BYTES` and whose tiles number at least :data:`MIN_TILES` (each transformed
    weight is used once per tile), with at least :data:`MIN_CHANNELS` channels in and out. Tiles that overhang the map's edge (a 14 x 14 map in 4 x 4
    tiles) compute outputs that are dropped: F(4,3) there still multiplies 2.9x less than the
    direct convolution per output kept."""
    for m in TILES:
        alpha = m + 2
        tiles = _tile_count(batch, height, width, m)
        if alpha * alpha * in_channels * out_channels * 4 > MAX_WEIGHT_BYTES or tiles < MIN_TILES or min(in_channels, out_channels) < MIN_CHANNELS:
            continue
        return m
    return None


def _tile_count(batch: int, height: int, width: int, m: int) -> int:
    """The ``m x m`` output tiles covering ``batch`` maps of ``height x width``, overhanging tiles included."""
    return batch * -(-height // m) * -(-width // m)


def _int64(shape):
    """Shapes as Relax's legalized kernels write them: FuseTIR fails on a fused group whose
    kernels disagree ("Inconsistent buffers ... mapped to the same relax var")."""
    import tvm

    return [tvm.tirx.IntImm("int64", int(d)) for d in shape]


def _select(index, leaves):
    """``leaves[index]`` as a chain of selects on a loop variable: a constant once unrolled."""
    import tvm

    expr = leaves[-1]
    for i in range(len(leaves) - 2, -1, -1):
        expr = tvm.tirx.Select(index == i, leaves[i], expr)
    return expr


def _weighted_sum(terms, dtype: str = "float32"):
    """``sum(coef * value)``; an integer ``dtype`` takes coefficients of +-1 only (F(2,3)'s)."""
    import tvm

    expr = None
    for coef, value in terms:
        if "float" not in str(dtype) and coef not in (1, -1):
            raise ValueError(f"an integer transform with the coefficient {coef}")
        term = value if coef == 1 else (-value if coef == -1 else value * tvm.tirx.const(float(coef), dtype))
        expr = term if expr is None else expr + term
    return expr if expr is not None else tvm.tirx.const(0, dtype)


def input_transform(shape: tuple[int, int, int, int], m: int, pads: tuple[int, int], dtypes: tuple[str, str] = ("float32", "float32"),
                    out_hw: tuple[int, int] | None = None, tile_multiple: int = 1):  # fmt: skip
    """The kernel from ``x`` (n, h, w, c) to ``V`` (alpha^2, n * th * tw, c), the tiles'
    ``B^T d B`` (``dtypes``: of ``x`` and of ``V``, which each value of ``x`` is cast to first;
    ``out_hw``: the convolution's output size, when its padding is not the same on both sides;
    ``tile_multiple``: the tiles padded to a multiple of it, the padding tiles zero): one block
    per tile and channel that writes all ``alpha^2`` positions, each an expression of its own. Not a loop over the positions selecting among their expressions, as
    the output transform is: TVM lowered F(4,3)'s select among 36 expressions, unrolled 36 times,
    in 58 s. The ``B^T d`` row sums recur in every position that uses them; LLVM computes each
    once. Built with TVM's IR builder: TE cannot write several elements of one tensor from one
    block."""
    import tvm
    from tvm.script.ir_builder import IRBuilder
    from tvm.tirx.script import builder as T

    _, b, _ = _matrices(m)
    alpha = m + 2
    n, h, w, c = shape
    top, left = pads
    oh, ow = out_hw if out_hw is not None else (h + 2 * top - 2, w + 2 * left - 2)
    th, tw = -(-oh // m), -(-ow // m)  # the last tiles may overhang
    tiles = n * th * tw
    padded = -(-tiles // tile_multiple) * tile_multiple
    in_dtype, dtype = dtypes
    zero = tvm.tirx.const(0, dtype)
    with IRBuilder() as builder:
        with T.prim_func(private=True, s_tir=True):
            T.func_name("winograd_input")
            x = T.arg("x", T.buffer((n, h, w, c), in_dtype))
            v = T.arg("v", T.buffer((alpha * alpha, padded, c), dtype))
            T.func_attr({"tirx.noalias": True})
            with T.grid(padded, c) as (tile, channel):
                with T.sblock("winograd_input"):
                    p, ch = T.axis.remap("SS", [tile, channel])
                    T.reads(x[0:n, 0:h, 0:w, ch])
                    T.writes(v[0 : alpha * alpha, p, ch])
                    T.sblock_attr({TILE_ATTR: m})
                    bn, y0, x0 = p // (th * tw), p % (th * tw) // tw * m - top, p % tw * m - left

                    def d(u, col):
                        inside = tvm.tirx.all(y0 + u >= 0, y0 + u < h, x0 + col >= 0, x0 + col < w, *([p < tiles] if padded != tiles else []))
                        value = x[bn, y0 + u, x0 + col, ch]
                        return tvm.tirx.if_then_else(inside, value if in_dtype == dtype else value.astype(dtype), zero)

                    rows = [[_weighted_sum([(b[u, e1], d(u, col)) for u in range(alpha) if b[u, e1] != 0], dtype) for col in range(alpha)] for e1 in range(alpha)]
                    for e1 in range(alpha):
                        for e2 in range(alpha):
                            T.buffer_store(v, _weighted_sum([(b[col, e2], rows[e1][col]) for col in range(alpha) if b[col, e2] != 0], dtype), [e1 * alpha + e2, p, ch])
    return builder.get()


def output_transform(prod, m: int, shape: tuple[int, int, int, int], shift: int = 0):
    """TE: the products ``M`` (alpha^2, tiles, k) to ``Y`` (n, oh, ow, k), the tiles' ``A^T M A``
    (of ``prod``'s dtype; ``shift``: an integer ``Y`` shifted right by that many bits, exact
    where the weights were scaled by ``2^shift``)."""
    import tvm
    from tvm import te

    a, _, _ = _matrices(m)
    alpha = m + 2
    n, oh, ow, k = shape
    th, tw = -(-oh // m), -(-ow // m)

    def compute(bn, y, x, ch):
        p = (bn * th + y // m) * tw + x // m
        dtype = str(prod.dtype)
        rows = [[_weighted_sum([(a[e1, r], prod[e1 * alpha + e2, p, ch]) for e1 in range(alpha) if a[e1, r] != 0], dtype) for e2 in range(alpha)] for r in range(m)]
        leaves = [_weighted_sum([(a[e2, s], rows[r][e2]) for e2 in range(alpha) if a[e2, s] != 0], dtype) for r in range(m) for s in range(m)]
        if shift:
            leaves = [tvm.tirx.shift_right(leaf, tvm.tirx.const(shift, dtype)) for leaf in leaves]
        return _select((y % m) * m + x % m, leaves)

    return te.compute(_int64((n, oh, ow, k)), compute, name="winograd_output", attrs={TILE_ATTR: m})


def weight_transform(weight: np.ndarray, m: int) -> np.ndarray:
    """HWIO 3x3 weights (3, 3, c, k) to ``U`` (alpha^2, c, k), ``G g G^T`` per channel pair."""
    _, _, g = _matrices(m)
    alpha = m + 2
    u = np.einsum("ea,abck,fb->efck", g, weight.astype(np.float64), g)
    return np.ascontiguousarray(u.reshape(alpha * alpha, *weight.shape[2:]).astype(np.float32))


def winograd_convs(record: list | None = None):
    """A Relax pass rewriting each float32 NHWC/HWIO 3x3 stride-1 ``conv2d`` with constant
    weights that :func:`winograd_tile` accepts into input transform, batched matmul and output
    transform (see the module's doc). Each rewrite is appended to ``record`` as
    ``"HxW CIN->COUT F(m,3)"``."""
    from tvm import relax

    from .layout import _constant, call_rewrite_pass

    def rewrite(self, call):
        if not WINOGRAD:
            return None
        attrs = call.attrs
        if (str(attrs.data_layout) != "NHWC" or str(attrs.kernel_layout) != "HWIO" or str(attrs.out_layout) != "NHWC" or int(attrs.groups) != 1
                or [int(s) for s in attrs.strides] != [1, 1] or [int(d) for d in attrs.dilation] != [1, 1]):  # fmt: skip
            return None
        constant = _constant(self, call.args[1])
        x_ty = call.args[0].ty
        if constant is None or x_ty.dtype != "float32" or str(call.ty.dtype) != "float32":
            return None
        weight = constant.value.numpy()
        if weight.dtype != np.float32 or weight.shape[:2] != (3, 3):
            return None
        try:
            xs = [int(d) for d in x_ty.shape]
            ys = [int(d) for d in call.ty.shape]
        except (TypeError, AttributeError):  # a dynamic shape
            return None
        top, left, bottom, right = (int(p) for p in attrs.padding)
        if top != bottom or left != right:
            return None
        m = winograd_tile(ys[1], ys[2], xs[3], ys[3], ys[0])
        if m is None:
            return None
        if record is not None:
            record.append(f"{ys[1]}x{ys[2]} {xs[3]}->{ys[3]} F({m},3)")
        positions, tiles = (m + 2) ** 2, _tile_count(ys[0], ys[1], ys[2], m)
        kernel = input_transform(tuple(xs), m, (top, left)).with_attr("op_pattern", _OPAQUE)
        v = self.builder_.emit(relax.call_tir(self.builder_.add_func(kernel, "winograd_input"), [call.args[0]], relax.TensorType([positions, tiles, xs[3]], "float32")))
        prod = self.builder_.emit(relax.op.matmul(v, relax.const(weight_transform(weight, m), "float32")))
        return _call_te(self.builder_, output_transform, prod, [positions, tiles, ys[3]], (m, tuple(ys)), "winograd_output", _OUT_EWISE_FUSABLE)

    return call_rewrite_pass(["relax.nn.conv2d"], rewrite, "WinogradConvs")


def _call_te(bb, compute, arg, shape, params, name: str, pattern: int, dtype: str = "float32"):
    """A call of ``compute(placeholder, *params)`` as a kernel of its own on ``arg``, with the
    ``op_pattern`` FuseOps is to see (AnnotateTIROpPattern keeps a given one). Not bound: the
    rewrite's result is bound to the convolution's variable itself (FuseOps fuses nothing
    across a variable bound to a variable)."""
    from tvm import relax, te

    placeholder = te.placeholder(_int64(shape), dtype, "x")
    out = compute(placeholder, *params)
    func = te.create_prim_func([placeholder, out]).without_attr("global_symbol").with_attr("op_pattern", pattern)
    return relax.call_tir(bb.add_func(func, name), [arg], relax.TensorType([int(d) for d in out.shape], dtype))
