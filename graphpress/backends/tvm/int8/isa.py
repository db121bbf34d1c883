"""The instruction set the int8 kernels use: one :class:`Isa` record per ISA, and
:func:`select_isa`, which chooses one per build from the :class:`TargetSpec` (the declared target
and, where kernels are timed here, this host), never anywhere else.

Everything that differs between ISAs is a field of the record: the activation dtype the
instruction multiplies int8 weights by, the packed weight block width, the tile shape (AMX) and
the ISA to fall back to where a shape does not fill the tiles, the kernel builder, and the
assembly counters that prove the instructions were emitted. Adding an ISA is a kernel builder in
the ISA's kernel file plus a record in :data:`ISAS` (in order of preference).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from graphpress.backends.tvm.int8 import kernels_arm, kernels_x86
from graphpress.backends.tvm.targets import TargetSpec, has_amx, has_avx2, has_avx_vnni, has_dotprod, has_i8mm, has_vnni
from graphpress.errors import GraphpressError

__all__ = ["AMX", "AVX2", "AVX2_U8S8", "AVX2_U8S8_QUADS", "AVX_VNNI", "I8MM", "ISAS", "SDOT", "VNNI", "Counter", "Isa", "Tiles", "select_isa"]


@dataclasses.dataclass(frozen=True)
class Counter:
    """An instruction counted in a build's assembly: its report key, its name for people, the counter."""

    key: str
    label: str
    count: Callable[[str], int]


@dataclasses.dataclass(frozen=True)
class Tiles:
    """What a tile ISA needs of a dense ``[M, K] x [K, N]``: ``M`` a multiple of ``rows``, ``K`` of
    ``depth`` bytes, ``N`` padded to ``cols``."""

    rows: int
    cols: int
    depth: int


@dataclasses.dataclass(frozen=True)
class Isa:
    """One instruction set for the int8 kernels.

    Attributes:
        name: the report's name (``vnni``, ``amx``, ``sdot``).
        label: its name in kernel descriptions (``VNNI kernel``).
        activation: the dtype the instruction multiplies the int8 weight by; activations of the
            other 8-bit dtype move by 128 (and their zero point with them).
        lanes: int32 sums per instruction: the width of a packed weight block ``[N/lanes, K/depth, lanes, depth]``.
        dense: builds the scheduled TIR ``C[m, n] (int32) = A[m, k] · B^T`` (``B`` packed); with
            ``implicit_conv``, also ``dense(m, n, k, conv=geometry)``: A read in place from a
            convolution's padded NHWC input, no im2col copy.
        counters: the instructions counted in the build's assembly, the ISA's own first.
        available: whether a build for the target may use it (and, where the kernels are timed
            before they are chosen, whether this host runs it).
        timed: the per-layer guard can time its kernels on this host (``int8=auto`` picks only those).
        tiles: the tile shapes of a tile ISA (None: any ``M``, ``K`` a multiple of 4).
        fallback: the ISA used for shapes that do not fill the tiles.
        depth: products per int32 sum of one instruction (4 bytes; 2 for ``vpmaddwd``'s int16).
        weight: the dtype the kernel multiplies the weight in (int8; int16 for ``vpmaddwd``), and
            stores it in unless ``stored``.
        stored: the dtype the packed weight of an ``m``-row product is stored in, by ``m``
            (:meth:`stored_weight`; AVX2: int8 for a few rows, widened as it is loaded).
        narrow: the ISA that runs the layers whose ``[K, N]`` int8 weight ``narrow_fits`` accepts
            (AVX2: ``vpmaddubsw`` where no pair of weights can saturate its int16 sums; and its
            own narrow one, where no group of four can), and whose contiguous runs of K (a
            convolution's padded channels) are whole steps of its ``depth``.
        halves: the packed weight's ``depth`` bytes per lane are this many consecutive blocks of
            ``[lanes, depth / halves]`` (``[N/lanes, K/depth, halves, lanes, depth/halves]``).
        implicit_conv: ``dense`` takes ``conv=`` and ``out_shape=`` (the dot-product kernels of
            :mod:`.dot`; not the tile ISAs, whose tile loads want whole rows of the unfolded
            input): convolutions without im2col, the write-back fused with the requantization.
        rows: a convolution's output pixels are padded to a multiple of this (its kernel's
            micro-tile rows; AVX-VNNI's 6).
        winograd: 3x3 stride-1 convolutions take the integer Winograd F(2,3) on ``vpmaddwd``
            (:mod:`.winograd`; the AVX2 ISAs, whose products are their bound).
    """

    name: str
    label: str
    activation: str
    lanes: int
    dense: Callable[[int, int, int], Any]
    counters: tuple[Counter, ...]
    available: Callable[[TargetSpec], bool]
    timed: bool
    tiles: Tiles | None = None
    fallback: Isa | None = None
    depth: int = 4
    weight: str = "int8"
    stored: Callable[[int], str] | None = None
    narrow: Isa | None = None
    narrow_fits: Callable[[Any], bool] | None = None
    implicit_conv: bool = False
    rows: int = 4
    halves: int = 1
    winograd: bool = False

    def __repr__(self) -> str:
        return f"Isa({self.name})"

    def stored_weight(self, m: int) -> str:
        """The dtype of the packed weight of an ``m``-row product on this ISA's kernel."""
        return self.weight if self.stored is None else self.stored(m)

    def fits(self, m: int, k: int) -> bool:
        """True when a dense of ``M = m`` rows and depth ``k`` runs on this ISA's own kernel."""
        return self.tiles is None or (m % self.tiles.rows == 0 and k % self.tiles.depth == 0)

    def for_shape(self, m: int, k: int) -> Isa:
        """This ISA, or its fallback where the shape does not fill the tiles."""
        return self if self.fits(m, k) or self.fallback is None else self.fallback

    def for_weight(self, w_kn, run: int | None = None) -> Isa:
        """This ISA, or the narrowest of its narrow ones the int8 ``[K, N]`` weight fits (K, and
        ``run``, the length of its contiguous runs where K is read in runs, whole steps of it)."""
        narrow = self.narrow
        if narrow is None or w_kn.shape[0] % narrow.depth or (run is not None and run % narrow.depth) or not self.narrow_fits(w_kn):
            return self
        return narrow.for_weight(w_kn, run)

    def narrowing(self, isa: Isa) -> int:
        """How many steps down the chain of narrow ISAs ``isa`` is from this one (0: itself)."""
        steps, at = 0, self
        while at is not isa and at.narrow is not None:
            steps, at = steps + 1, at.narrow
        return steps if at is isa else 0

    @property
    def n_multiple(self) -> int:
        """Output columns are padded to a multiple of this."""
        return self.tiles.cols if self.tiles else self.lanes

    @property
    def row_block(self) -> int:
        """Rows (output pixels of a convolution) are padded to a multiple of this."""
        return self.tiles.rows if self.tiles else self.rows

    def count(self, asm: str) -> dict[str, int]:
        """Each counted instruction's occurrences in an assembly listing, by report key."""
        return {c.key: c.count(asm) for c in self.counters}


_ZMM_VPDPBUSD = Counter("zmm_vpdpbusd", "zmm vpdpbusd", kernels_x86.zmm_vpdpbusd_count)
_TDPBUSD = Counter("amx_tile_products", "AMX tile products", kernels_x86.amx_dot_product_count)

_YMM_VPDPBUSD = Counter("ymm_vpdpbusd", "ymm vpdpbusd", kernels_x86.ymm_vpdpbusd_count)
_YMM_VPMADDWD = Counter("ymm_vpmaddwd", "ymm vpmaddwd", kernels_x86.ymm_vpmaddwd_count)
_YMM_VPMADDUBSW = Counter("ymm_vpmaddubsw", "ymm vpmaddubsw", kernels_x86.ymm_vpmaddubsw_count)

# x86 builds count the others too: a VNNI build with tile products, or an AMX one without, is a finding
VNNI = Isa("vnni", "VNNI", "uint8", 16, kernels_x86.vnni_dense_kernel, (_ZMM_VPDPBUSD, _TDPBUSD), has_vnni, timed=True, implicit_conv=True)
AMX = Isa("amx", "AMX", "uint8", 16, kernels_x86.amx_dense_kernel, (_TDPBUSD, _ZMM_VPDPBUSD), has_amx, timed=True, tiles=Tiles(32, 32, 64), fallback=VNNI)
AVX_VNNI = Isa("avx_vnni", "AVX-VNNI", "uint8", 8, kernels_x86.avx_vnni_dense_kernel, (_YMM_VPDPBUSD, _ZMM_VPDPBUSD), has_avx_vnni, timed=True,
               implicit_conv=True, rows=6)  # fmt: skip
_AVX2_COUNTERS = (_YMM_VPMADDWD, _YMM_VPMADDUBSW, _ZMM_VPDPBUSD)
AVX2_U8S8_QUADS = Isa("avx2_u8s8_quads", "AVX2 u8s8 quads", "uint8", 8, kernels_x86.avx2_u8s8_quad_dense_kernel, _AVX2_COUNTERS, has_avx2, timed=True,
                      depth=8, implicit_conv=True, halves=2, winograd=True)  # fmt: skip
AVX2_U8S8 = Isa("avx2_u8s8", "AVX2 u8s8", "uint8", 8, kernels_x86.avx2_u8s8_dense_kernel, _AVX2_COUNTERS, has_avx2, timed=True, implicit_conv=True,
                narrow=AVX2_U8S8_QUADS, narrow_fits=kernels_x86.fits_u8s8_quads, winograd=True)  # fmt: skip
AVX2 = Isa("avx2", "AVX2", "uint8", 8, kernels_x86.avx2_dense_kernel, _AVX2_COUNTERS, has_avx2, timed=True, depth=2, weight="int16",
           stored=kernels_x86.avx2_weight_dtype,
           narrow=AVX2_U8S8, narrow_fits=kernels_x86.fits_u8s8_pairs, implicit_conv=True, winograd=True)  # fmt: skip
_SDOT = Counter("sdot", "sdot", kernels_arm.sdot_count)
SDOT = Isa("sdot", "SDOT", "int8", 4, kernels_arm.sdot_dense_kernel, (_SDOT,), has_dotprod, timed=False, implicit_conv=True)
I8MM = Isa("i8mm", "I8MM", "uint8", 2, kernels_arm.i8mm_dense_kernel, (Counter("usmmla", "usmmla", kernels_arm.usmmla_count), _SDOT), has_i8mm,
           timed=False, tiles=Tiles(2, 2, 8), fallback=SDOT, depth=8)  # fmt: skip

#: every ISA, in order of preference
ISAS: tuple[Isa, ...] = (AMX, VNNI, AVX_VNNI, AVX2, I8MM, SDOT)


def select_isa(spec: TargetSpec, mode: str = "auto", *, timed_remotely: bool = False) -> Isa | None:
    """The ISA of the int8 kernels in a build for ``spec``: ``auto`` takes the first available one
    whose kernels can be timed here (a cross-compiled target cannot, unless ``timed_remotely``:
    the guard times them on a device over TVM's RPC), ``on`` any available one, ``off`` none.

    Raises:
        GraphpressError: ``on`` for a target no ISA serves.
    """
    if mode == "off":
        return None
    available = [isa for isa in ISAS if isa.available(spec)]
    if mode == "on" and not available:
        raise GraphpressError(
            f"target {spec.name}: int8=on needs an x86 target with AVX2 (or AVX-VNNI, AVX-512 VNNI, AMX) on a host that has it, or an aarch64 target with +dotprod; use int8=off"
        )
    return next((isa for isa in available if mode == "on" or isa.timed or timed_remotely), None)
