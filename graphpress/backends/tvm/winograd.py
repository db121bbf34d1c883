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

The transforms' loops are written so that, once the schedule unrolls a tile's positions
(``schedules.schedule_transform``), every coefficient is a constant and the zero ones vanish: the
compute selects, by the position, among expressions holding only the nonzero terms.
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

#: the output tiles tried, in order. F(4,3) multiplies 4x less than the direct convolution
#: (F(2,3): 2.25x) and ran ResNet-18 7 % faster than F(2,3) alone (Zen 5, AVX-512: 0.69x against
#: 0.75x ONNX Runtime), but TVM takes about 4 s to lower each of its input transforms (36
#: unrolled positions of a 36-leaf select): ResNet-18 compiled in 94 s instead of 15. Opt in
#: with ``(4, 2)``
TILES = (2,)

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
    ``height x width``, or None to keep it direct: F(4,3), else F(2,3), the first whose
    transformed weights (``alpha^2 / 9`` times the 3x3 weights) stay under
    :data:`MAX_WEIGHT_BYTES` and whose tiles number at least :data:`MIN_TILES` (each transformed
    weight is used once per tile). Tiles that overhang the map's edge (a 14 x 14 map in 4 x 4
    tiles) compute outputs that are dropped: F(4,3) there still multiplies 2.9x less than the
    direct convolution per output kept."""
    for m in TILES:
        alpha = m + 2
        tiles = batch * -(-height // m) * -(-width // m)
        if alpha * alpha * in_channels * out_channels * 4 > MAX_WEIGHT_BYTES or tiles < MIN_TILES:
            continue
        return m
    return None


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


def _weighted_sum(terms):
    import tvm

    expr = None
    for coef, value in terms:
        term = value if coef == 1 else (-value if coef == -1 else value * tvm.tirx.const(float(coef), "float32"))
        expr = term if expr is None else expr + term
    return expr if expr is not None else tvm.tirx.const(0.0, "float32")


def input_transform(x, m: int, pads: tuple[int, int]):
    """TE: ``x`` (n, h, w, c) to ``V`` (alpha^2, n * th * tw, c), the tiles' ``B^T d B``."""
    import tvm
    from tvm import te

    _, b, _ = _matrices(m)
    alpha = m + 2
    n, h, w, c = (int(d) for d in x.shape)
    top, left = pads
    th, tw = -(-(h + 2 * top - 2) // m), -(-(w + 2 * left - 2) // m)  # the last tiles may overhang

    def compute(e, p, ch):
        bn, rest = p // (th * tw), p % (th * tw)
        i, j = rest // tw, rest % tw

        def d(u, v):
            row, col = i * m + u - top, j * m + v - left
            inside = tvm.tirx.all(row >= 0, row < h, col >= 0, col < w)
            return tvm.tirx.if_then_else(inside, x[bn, row, col, ch], tvm.tirx.const(0.0, "float32"))

        # B^T d first along the rows, then along the columns: the row sums are the same
        # expressions in every position that uses them, which LLVM computes once per tile
        rows = [[_weighted_sum([(b[u, e1], d(u, v)) for u in range(alpha) if b[u, e1] != 0]) for v in range(alpha)] for e1 in range(alpha)]
        leaves = [_weighted_sum([(b[v, e2], rows[e1][v]) for v in range(alpha) if b[v, e2] != 0]) for e1 in range(alpha) for e2 in range(alpha)]
        return _select(e, leaves)

    return te.compute(_int64((alpha * alpha, n * th * tw, c)), compute, name="winograd_input", attrs={TILE_ATTR: m})


def output_transform(prod, m: int, shape: tuple[int, int, int, int]):
    """TE: the products ``M`` (alpha^2, tiles, k) to ``Y`` (n, oh, ow, k), the tiles' ``A^T M A``."""
    from tvm import te

    a, _, _ = _matrices(m)
    alpha = m + 2
    n, oh, ow, k = shape
    th, tw = -(-oh // m), -(-ow // m)

    def compute(bn, y, x, ch):
        p = (bn * th + y // m) * tw + x // m
        rows = [[_weighted_sum([(a[e1, r], prod[e1 * alpha + e2, p, ch]) for e1 in range(alpha) if a[e1, r] != 0]) for e2 in range(alpha)] for r in range(m)]
        leaves = [_weighted_sum([(a[e2, s], rows[r][e2]) for e2 in range(alpha) if a[e2, s] != 0]) for r in range(m) for s in range(m)]
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
        v = self.builder_.emit(_call_te(self.builder_, input_transform, call.args[0], xs, (m, (top, left)), "winograd_input", _OPAQUE))
        prod = self.builder_.emit(relax.op.matmul(v, relax.const(weight_transform(weight, m), "float32")))
        alpha = m + 2
        return _call_te(self.builder_, output_transform, prod, [alpha * alpha, ys[0] * -(-ys[1] // m) * -(-ys[2] // m), ys[3]], (m, tuple(ys)), "winograd_output", _OUT_EWISE_FUSABLE)

    return call_rewrite_pass(["relax.nn.conv2d"], rewrite, "WinogradConvs")


def _call_te(bb, compute, arg, shape, params, name: str, pattern: int):
    """A call of ``compute(placeholder, *params)`` as a kernel of its own on ``arg``, with the
    ``op_pattern`` FuseOps is to see (AnnotateTIROpPattern keeps a given one). Not bound: the
    rewrite's result is bound to the convolution's variable itself (FuseOps fuses nothing
    across a variable bound to a variable)."""
    from tvm import relax, te

    placeholder = te.placeholder(_int64(shape), "float32", "x")
    out = compute(placeholder, *params)
    func = te.create_prim_func([placeholder, out]).without_attr("global_symbol").with_attr("op_pattern", pattern)
    return relax.call_tir(bb.add_func(func, name), [arg], relax.TensorType([int(d) for d in out.shape], "float32"))
