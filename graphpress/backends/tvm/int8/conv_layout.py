"""A convolution as a dense product: its geometry on an ISA, and the data-movement kernels around
the dense kernel -- the padded NHWC copy of the input (from NCHW, or from NHWC where the
convolution's neighbours run in NHWC too), im2col, and, for an NCHW convolution, the correction
term fused with the way back to NCHW."""

from __future__ import annotations

from typing import Any

import numpy as np

from graphpress.backends.tvm.int8 import winograd
from graphpress.backends.tvm.int8.dot import cached, padded_shape
from graphpress.backends.tvm.int8.isa import Isa
from graphpress.passes.int16_sums import row_run

__all__ = ["conv_geometry", "conv_key", "im2col_kernel", "implicit", "kernel_label", "nhwc_pad_kernel", "onnx_conv_key", "padded_shape", "pointwise", "to_nchw_kernel", "unfolded_weight"]

_made = [0]  # layout kernels made in this process: their names stay unique


def unfolded_weight(w_oihw: np.ndarray, cp: int, rp: int = 0) -> np.ndarray:
    """The int8 ``[Kp, O]`` weight of the unfolded convolution: rows ordered ky, kx, channel, the
    channels padded with zeros to ``cp``; with ``rp`` (:func:`conv_geometry`'s row runs) each ky
    a run of ``kw * C`` rows padded with zeros to ``rp``."""
    oc, c, kh, kw = w_oihw.shape
    if rp:
        padded = np.zeros((oc, kh, rp), np.int8)
        padded[..., : kw * c] = w_oihw.transpose(0, 2, 3, 1).reshape(oc, kh, kw * c)
        return np.ascontiguousarray(padded.reshape(oc, kh * rp).T)
    padded = np.zeros((oc, kh, kw, cp), np.int8)
    padded[..., :c] = w_oihw.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(padded.reshape(oc, kh * kw * cp).T)


def conv_geometry(x_shape, w_shape, attrs, isa: Isa, weight: np.ndarray | None = None) -> dict[str, Any]:
    """Shapes of the unfolded convolution on ``isa`` (key ``isa``: the ISA it runs on, for the
    OIHW ``weight`` where given: :meth:`Isa.for_weight`). ``Cp``:
    channels padded to whole 4-byte dot-product groups, or for a tile ISA until a row of the
    unfolded input is whole tiles (the tile ISA is chosen only while that pads K by at most half,
    plus one tile: not for a 7x7 stem of 3 channels; its fallback runs the rest). ``Mp``: output
    pixels padded to the kernel's row block (:attr:`Isa.row_block`; a 1x1 convolution's to 4 where
    that pads none).

    ``rp`` (row runs, :func:`~graphpress.passes.int16_sums.row_run`; 0 where not used): for a
    kernel that reads the unfolded rows in place, where
    the channels would be padded, each window row's ``kw`` taps are ``kw * C`` contiguous bytes of
    the unpadded NHWC input (the taps are adjacent pixels), read as one run padded to ``rp``, a
    multiple of 4; the bytes past ``kw * C`` belong to the next pixels (or to one extra row of
    padding at the bottom of the input) and meet zero weights. ResNet's 7x7 stem of 3 channels:
    K = 7 x 24 = 168 instead of 7 x 7 x 4 = 196, in 7 runs instead of 49."""
    n, c, h, w = (int(d) for d in x_shape)
    oc, _, kh, kw = (int(d) for d in w_shape)
    pads = [int(p) for p in attrs.get("pads", (0, 0, 0, 0))]
    sh, sw = (int(v) for v in attrs.get("strides", (1, 1)))
    dh, dw = (int(v) for v in attrs.get("dilations", (1, 1)))
    oh = (h + pads[0] + pads[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pads[1] + pads[3] - dw * (kw - 1) - 1) // sw + 1
    cp = -(-c // 4) * 4
    if isa.tiles is not None:
        ca = cp
        while (kh * kw * ca) % isa.tiles.depth:
            ca += 4
        if kh * kw * ca <= 1.5 * kh * kw * c + isa.tiles.depth:
            cp = ca
        else:
            isa = isa.fallback or isa
    rp = row_run(c, kw, dw) if isa.tiles is None and isa.implicit_conv else 0
    if rp:
        cp = c  # the input keeps its channels: rows of kw * C bytes
    if weight is not None:
        isa = isa.for_weight(unfolded_weight(weight, cp, rp), run=rp or cp)
    m = n * oh * ow
    # a 1x1 convolution's pixels padded only to 4 where its kernel runs any multiple of 4 rows
    # (not AMX's tiles): with no padding its NHWC input is read in place (:func:`pointwise`)
    unit = 4 if kh == kw == 1 and (sh, sw) == (1, 1) and not any(pads) and isa.tiles is None and m % 4 == 0 else isa.row_block
    return {"n": n, "c": c, "h": h, "w": w, "oc": oc, "kh": kh, "kw": kw, "pads": pads, "strides": (sh, sw), "dilations": (dh, dw),
            "oh": oh, "ow": ow, "m": m, "mp": -(-m // unit) * unit, "k": c * kh * kw, "cp": cp, "kp": kh * rp if rp else cp * kh * kw,
            "hp": h + pads[0] + pads[2], "wp": w + pads[1] + pads[3], "rp": rp, "isa": isa}  # fmt: skip


def conv_key(x_nchw, w_oihw, pads, strides, dilations) -> tuple[int, ...]:
    """A convolution's shapes and attributes as the Relax ``conv2d`` that
    :func:`~.emit.lower_int8_convs` lowers has them (the layer guard's decisions by shape)."""
    pads = [int(p) for p in pads]
    pads = pads * 2 if len(pads) == 2 else pads
    return (*(int(d) for d in x_nchw), *(int(d) for d in w_oihw), *pads, *(int(v) for v in strides), *(int(v) for v in dilations))


def onnx_conv_key(x_nchw, w_oihw, attrs: dict, zero_point: int) -> tuple[int, ...]:
    """:func:`conv_key` of a ``ConvInteger`` (``attrs``: its pads, strides, dilations) as
    :func:`~.emit.emit_conv` writes it: with a zero point, the padding is a ``pad`` op of its own
    in front of an unpadded convolution of the padded input."""
    n, c, h, w = (int(d) for d in x_nchw)
    pads = [int(p) for p in attrs.get("pads", (0, 0, 0, 0))]
    if zero_point and any(pads):
        h, w, pads = h + pads[0] + pads[2], w + pads[1] + pads[3], [0, 0, 0, 0]
    return conv_key((n, c, h, w), w_oihw, pads, attrs.get("strides", (1, 1)), attrs.get("dilations", (1, 1)))


def pointwise(g: dict[str, Any]) -> bool:
    """A 1x1, stride-1, unpadded convolution whose pixel count needs no padding: its padded NHWC
    input already is the unfolded one."""
    return g["kh"] == g["kw"] == 1 and g["strides"] == (1, 1) and not any(g["pads"]) and g["mp"] == g["m"]


def implicit(g: dict[str, Any]) -> bool:
    """Whether the dense kernel reads the unfolded rows in place from the padded input (a
    dot-product ISA, :attr:`Isa.implicit_conv`; a pointwise convolution needs no unfolding)."""
    return g["isa"].implicit_conv and not pointwise(g)


def kernel_label(g: dict[str, Any]) -> str:
    """How the convolution of geometry ``g`` runs, for the report."""
    label = g["isa"].label
    if winograd.applies(g):
        return f"Winograd F(2,3), int16 products on vpmaddwd ({label} layers)"
    if pointwise(g):
        return f"{label} kernel (pointwise)"
    return f"{label} kernel, unfolded in place" if implicit(g) else f"im2col + {label} kernel"


def _key(kind: str, g: dict[str, Any], *extra) -> tuple:
    return (kind, tuple(sorted((k, str(v)) for k, v in g.items() if k != "isa")), *extra)


def _kernel_func(sch, prefix: str):
    _made[0] += 1
    return sch.mod["main"].with_attr({"tirx.is_scheduled": True, "op_pattern": 8, "global_symbol": f"graphpress_{prefix}_{_made[0]}"})


def nhwc_pad_kernel(g: dict[str, Any], zero_point: int, layout: str = "NCHW"):
    """Scheduled TIR: uint8 ``X`` (``layout`` NCHW or NHWC) -> ``XP[N, Hp, Wp, Cp]``, the spatially
    padded NHWC copy (padding and channels ``C..Cp`` hold ``zero_point``). From NCHW it is
    transposed in 16 x 16 (pixel, channel) tiles. For a pointwise convolution it is written as the
    2-D ``[N*H*W, Cp]`` the dense kernel reads; with row runs as :func:`padded_shape`."""
    return cached(_key("nhwc", g, zero_point, layout), lambda: _nhwc_pad(g, zero_point, layout))


def _nhwc_pad(g: dict[str, Any], zero_point: int, layout: str):
    import tvm
    from tvm import te

    nchw = layout == "NCHW"
    x = te.placeholder((g["n"], g["c"], g["h"], g["w"]) if nchw else (g["n"], g["h"], g["w"], g["c"]), "uint8", name="X")
    pt, pl = g["pads"][:2]

    def value(b, y, xx, ci):
        iy, ix = y - pt, xx - pl
        inside = te.all(ci < g["c"], iy >= 0, iy < g["h"], ix >= 0, ix < g["w"])
        return te.if_then_else(inside, x[b, ci, iy, ix] if nchw else x[b, iy, ix, ci], tvm.tirx.const(zero_point, "uint8"))

    rows = g["hp"] + (1 if g["rp"] else 0)  # row runs: one more row of padding
    out = te.compute((g["n"], rows, g["wp"], g["cp"]), value, name="xp")
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, out]))
    block = sch.get_sblock("xp")
    b, y, xx, ci = sch.get_loops(block)
    if nchw:
        xo, xi = sch.split(xx, [None, 16])
        co, cj = sch.split(ci, [None, 16])
        sch.reorder(b, y, xo, co, cj, xi)  # reads along W, the tile stays in L1 for the writes
    elif g["cp"] % 16 == 0:  # channels are contiguous on both sides: vector copies
        sch.vectorize(sch.split(ci, [None, 16])[1])
    sch.parallel(sch.fuse(b, y))
    if pointwise(g):
        hp, wp = g["hp"], g["wp"]
        sch.transform_layout(block, ("write", 0), lambda b, y, xx, c: ((b * hp + y) * wp + xx, c))
    elif g["rp"]:
        cp = g["cp"]
        sch.transform_layout(block, ("write", 0), lambda b, y, xx, c: (b, y, xx * cp + c))
    return _kernel_func(sch, "nhwc_pad")


def im2col_kernel(g: dict[str, Any]):
    """Scheduled TIR: the padded NHWC input ``XP`` -> the unfolded input ``col[Mp, KH*KW*Cp]``
    (columns ordered ky, kx, channel): every (pixel, ky, kx) is one contiguous run of ``Cp`` bytes,
    copied with vector moves. Rows past the last pixel (``Mp``: padded to the kernel's row block)
    repeat it; their results are dropped."""
    return cached(_key("im2col", g), lambda: _im2col(g))


def _im2col(g: dict[str, Any]):
    import tvm
    from tvm import te

    xp = te.placeholder((g["n"], g["hp"], g["wp"], g["cp"]), "uint8", name="XP")
    (sh, sw), (dh, dw) = g["strides"], g["dilations"]
    oh, ow, last = g["oh"], g["ow"], g["m"] - 1

    def col(p, ky, kx, ci):
        q = te.min(p, last)
        return xp[q // (oh * ow), (q // ow) % oh * sh + ky * dh, q % ow * sw + kx * dw, ci]

    out = te.compute((g["mp"], g["kh"], g["kw"], g["cp"]), col, name="col")
    sch = tvm.s_tir.Schedule(te.create_prim_func([xp, out]))
    block = sch.get_sblock("col")
    p, _, _, ci = sch.get_loops(block)
    sch.parallel(p)
    if g["cp"] % 16 == 0:
        _, lanes = sch.split(ci, [None, 16])
        sch.vectorize(lanes)
    kw, cp = g["kw"], g["cp"]
    # the same bytes seen as the 2-D matrix the dense kernel reads (a Relax reshape would copy)
    sch.transform_layout(block, ("write", 0), lambda p, ky, kx, c: (p, (ky * kw + kx) * cp + c))
    return _kernel_func(sch, "im2col")


def to_nchw_kernel(g: dict[str, Any], npad: int):
    """Scheduled TIR: the dense result ``acc[Mp, Npad]`` minus a per-channel term ``corr[Npad]``
    -> ``out[N, OC, OH, OW]``, in 16 x 16 tiles (a plain elementwise schedule reads one int32 per
    cache line here: 4.5 ms for the ResNet-18 stem)."""
    return cached(("nchw", g["n"], g["oh"], g["ow"], g["oc"], g["mp"], npad), lambda: _to_nchw(g, npad))


def _to_nchw(g: dict[str, Any], npad: int):
    import tvm
    from tvm import te

    acc = te.placeholder((g["mp"], npad), "int32", name="acc")
    corr = te.placeholder((npad,), "int32", name="corr")
    oh, ow = g["oh"], g["ow"]
    out = te.compute((g["n"], g["oc"], oh * ow), lambda b, c, p: acc[b * oh * ow + p, c] - corr[c], name="nchw")
    sch = tvm.s_tir.Schedule(te.create_prim_func([acc, corr, out]))
    block = sch.get_sblock("nchw")
    b, c, p = sch.get_loops(block)
    co, ci = sch.split(c, [None, 16])
    po, pi = sch.split(p, [None, 16])
    sch.reorder(b, po, co, ci, pi)
    sch.parallel(sch.fuse(b, po))
    sch.vectorize(pi)
    sch.transform_layout(block, ("write", 0), lambda b, c, p: (b, c, p // ow, p % ow))  # NCHW, no copy
    return _kernel_func(sch, "to_nchw")
