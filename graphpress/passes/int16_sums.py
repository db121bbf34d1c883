"""The int16 sums of x86 CPUs without an int8 dot product (AVX2's ``vpmaddubsw``), and the weights
that keep them exact.

``vpmaddubsw`` multiplies uint8 activations by int8 weights and adds adjacent pairs of products
into int16, saturating. 7-bit weights (ONNX Runtime's ``reduce_range``) keep every pair exact:
255 x (64 + 64) fits int16. The fastest AVX2 kernel (:mod:`graphpress.backends.tvm.int8`) adds
two such pair sums in int16 before widening them, so four products share one int16 sum: the
weights at K offsets ``{0, 1, 4, 5}`` and ``{2, 3, 6, 7}`` of every block of 8 rows of a ``[K, N]``
weight (two consecutive 4-row blocks of its packed layout, in 16-bit words). Four 7-bit weights
can reach 255 x 256; quantizers' weights almost never do (0.02-2 % of the groups of ResNet-18's
layers), and :func:`fit_int16_quads` moves those few groups within range: the quantizer does it
for targets without an int8 dot product, so that the model it writes is the model that runs,
on that kernel or on ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["QUAD_LIMIT", "QUAD_NOISE", "conv_kernel_order", "fit_int16_quads", "fits_int16_quads", "quad_sums", "row_run"]

#: a weight is fitted only where that adds at most this fraction of the noise power its rounding
#: to integers already added (size / 12 in squared integer steps): ResNet-18's 3x3 convolutions
#: need 0.02-0.45 of it, its 1x1 downsampling convolutions 1.0-5.0, a classifier of uniformly
#: drawn weights 106 -- those stay on the kernel that adds pairs only
QUAD_NOISE = 0.5

#: the largest sum of a group's positive weights (and of its negative ones, negated) whose
#: products with any uint8 activations fit int16: 255 x 128 <= 32767, 255 x -128 >= -32768
QUAD_LIMIT = 128


def row_run(channels: int, kw: int, dilation: int = 1) -> int:
    """The bytes of one window row that a dot-product kernel reading a convolution's unfolded rows
    in place takes as one run of the unpadded NHWC input -- ``kw * channels`` padded to a multiple
    of 4 -- or 0 where each tap's channels are a run of their own: where the taps are not adjacent
    pixels (dilation), or where padding each tap's channels to 4 pads no more (channels a multiple
    of 4). ResNet's 7x7 stem of 3 channels: 24 bytes per row (K 168) instead of 7 x 4 (K 196)."""
    rp = -(-kw * channels // 4) * 4
    return rp if dilation == 1 and kw > 1 and rp < kw * (-(-channels // 4) * 4) else 0


def conv_kernel_order(w_oihw: np.ndarray, dilation: int = 1) -> tuple[np.ndarray, int, Callable[[np.ndarray], np.ndarray]] | None:
    """An OIHW convolution weight (one group) as the ``[K, N]`` the integer kernels read with K in
    steps of 8: K ordered ky, kx, channel for channels a multiple of 8; with row runs
    (:func:`row_run`, a multiple of 8 bytes) each ky's ``kw * C`` weights then zeros to the run's
    length. Returns (``[K, N]``, its real weights, the way back to OIHW), or None where no kernel
    groups the weight's K by 8."""
    o, c, kh, kw = w_oihw.shape
    if c % 8 == 0:
        return w_oihw.transpose(2, 3, 1, 0).reshape(kh * kw * c, o), w_oihw.size, lambda kn: kn.reshape(kh, kw, c, o).transpose(3, 2, 0, 1)
    rp = row_run(c, kw, dilation)
    if not rp or rp % 8:
        return None
    rows = np.zeros((kh, rp, o), w_oihw.dtype)
    rows[:, : kw * c] = w_oihw.transpose(2, 3, 1, 0).reshape(kh, kw * c, o)
    return rows.reshape(kh * rp, o), w_oihw.size, lambda kn: kn.reshape(kh, rp, o)[:, : kw * c].reshape(kh, kw, c, o).transpose(3, 2, 0, 1)


def _groups(w_kn: np.ndarray) -> np.ndarray:
    """``[K, N]`` (K a multiple of 8) -> ``[K/8, 2, N, 4]``: the four weights of each int16 sum."""
    k, n = w_kn.shape
    # K = (block of 8, half: offsets 0-3 / 4-7, word: offsets 0-1 / 2-3 of a half, pair)
    return np.asarray(w_kn, np.int32).reshape(k // 8, 2, 2, 2, n).transpose(0, 2, 4, 1, 3).reshape(k // 8, 2, n, 4)


def quad_sums(w_kn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positive, negative) part sums of every four-weight int16 group of an int8 ``[K, N]``
    weight, K a multiple of 8."""
    g = _groups(w_kn)
    return np.maximum(g, 0).sum(-1), np.minimum(g, 0).sum(-1)


def fits_int16_quads(w_kn: np.ndarray) -> bool:
    """True when ``[K, N]`` int8 ``w_kn`` has K a multiple of 8 and no four-weight group whose
    int16 sum can saturate for any uint8 activations."""
    if w_kn.ndim != 2 or w_kn.shape[0] % 8:
        return False
    pos, neg = quad_sums(w_kn)
    return bool(pos.max(initial=0) <= QUAD_LIMIT and neg.min(initial=0) >= -QUAD_LIMIT)


def fit_int16_quads(w_kn: np.ndarray, noise: float | None = QUAD_NOISE, weights: int | None = None) -> tuple[np.ndarray, int]:
    """(``w_kn`` with every four-weight group within :data:`QUAD_LIMIT`, how many groups changed).

    A group over the limit loses the same amount from each of its weights of that sign (the
    smallest change in L2 norm that brings the sum down; a weight stops at 0), in integers,
    so the sum ends at most 3 under the limit. ``w_kn`` itself is returned (0 groups) where none
    is over the limit, where K
    is not a multiple of 8 (no kernel groups its weights then), or where the change would add
    more than ``noise`` times the weight's rounding noise power (:data:`QUAD_NOISE`; None: any;
    ``weights``: how many of ``w_kn``'s entries are weights, not padding, all by default)."""
    if w_kn.ndim != 2 or w_kn.shape[0] % 8:
        return w_kn, 0
    k, n = w_kn.shape
    g = _groups(w_kn).copy()
    changed = np.zeros(g.shape[:-1], bool)
    for sign in (1, -1):
        part = np.maximum(sign * g, 0)  # this sign's magnitudes
        while True:
            excess = part.sum(-1) - QUAD_LIMIT
            over = excess > 0
            if not over.any():
                break
            changed |= over
            count = (part > 0).sum(-1)
            step = np.where(over, -(-excess // np.maximum(count, 1)), 0)
            part = np.maximum(part - step[..., None] * (part > 0), 0)
        g = np.where(sign * g > 0, sign * part, g)
    if not changed.any():
        return w_kn, 0
    fitted = g.reshape(k // 8, 2, n, 2, 2).transpose(0, 3, 1, 4, 2).reshape(k, n)
    if noise is not None and float(((fitted - np.asarray(w_kn, np.int32)) ** 2).sum()) > noise * (w_kn.size if weights is None else weights) / 12:
        return w_kn, 0
    return fitted.astype(w_kn.dtype), int(changed.sum())
