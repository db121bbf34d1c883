"""An order-0 canonical Huffman codec over bytes, as Deep Compression coded its weights.

Code lengths are limited to :data:`MAX_LEN` bits (counts are halved until they fit, as zlib
does). The symbols are coded in blocks of :data:`BLOCK`; each block's starting bit is stored,
so decoding advances every block one symbol per numpy step (a table lookup on a
``MAX_LEN``-bit window) instead of walking the bit stream in Python.

Stream: 256 code lengths (u8), symbol count (u64), block count (u32), block start bits
(u64 each), then the code bits (most significant bit first).
"""

from __future__ import annotations

import heapq
import struct

import numpy as np

__all__ = ["code_lengths", "decode", "encode"]

MAX_LEN = 15
BLOCK = 4096


def code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code length of each of the 256 byte values (0: absent), at most :data:`MAX_LEN`."""
    counts = counts.astype(np.int64).copy()
    while True:
        present = [(int(c), i) for i, c in enumerate(counts) if c]
        length = np.zeros(256, dtype=np.int64)
        if len(present) <= 1:
            for _, i in present:
                length[i] = 1
            return length
        heap = [(c, i, [i]) for c, i in present]
        heapq.heapify(heap)
        tie = 256
        while len(heap) > 1:
            c1, _, s1 = heapq.heappop(heap)
            c2, _, s2 = heapq.heappop(heap)
            length[s1 + s2] += 1
            heapq.heappush(heap, (c1 + c2, tie, s1 + s2))
            tie += 1
        if length.max() <= MAX_LEN:
            return length
        counts = np.where(counts > 0, (counts + 1) // 2, 0)


def _canonical(length: np.ndarray) -> np.ndarray:
    codes = np.zeros(256, dtype=np.int64)
    order = sorted((int(n), s) for s, n in enumerate(length) if n)
    code, prev = 0, order[0][0] if order else 0
    for i, (n, s) in enumerate(order):
        if i:
            code = (code + 1) << (n - prev)
        codes[s] = code
        prev = n
    return codes


def encode(data: bytes) -> bytes:
    """Huffman-code ``data``."""
    sym = np.frombuffer(data, dtype=np.uint8)
    length = code_lengths(np.bincount(sym, minlength=256))
    codes = _canonical(length)
    lens, vals = length[sym], codes[sym]
    ends = np.cumsum(lens)
    starts = ends - lens
    total = int(ends[-1]) if sym.size else 0
    bits = np.zeros(total, dtype=np.uint8)
    for j in range(MAX_LEN):
        m = lens > j
        bits[starts[m] + j] = (vals[m] >> (lens[m] - 1 - j)) & 1
    block_starts = starts[::BLOCK].astype("<u8")
    head = length.astype(np.uint8).tobytes() + struct.pack("<QI", sym.size, block_starts.size)
    return head + block_starts.tobytes() + np.packbits(bits).tobytes()


def decode(stream: bytes) -> bytes:
    """The bytes :func:`encode` coded."""
    length = np.frombuffer(stream, dtype=np.uint8, count=256).astype(np.int64)
    n, nblocks = struct.unpack_from("<QI", stream, 256)
    at = 256 + 12
    pos = np.frombuffer(stream, dtype="<u8", count=nblocks, offset=at).astype(np.int64)
    at += 8 * nblocks
    if n == 0:
        return b""
    codes = _canonical(length)
    table_sym = np.zeros(1 << MAX_LEN, dtype=np.uint8)
    table_len = np.zeros(1 << MAX_LEN, dtype=np.int64)
    for s in np.nonzero(length)[0]:
        lo, hi = codes[s] << (MAX_LEN - length[s]), (codes[s] + 1) << (MAX_LEN - length[s])
        table_sym[lo:hi] = s
        table_len[lo:hi] = length[s]
    buf = np.concatenate([np.frombuffer(stream, dtype=np.uint8, offset=at), np.zeros(4, np.uint8)]).astype(np.int64)
    out = np.zeros((nblocks, BLOCK), dtype=np.uint8)
    last = n - BLOCK * (nblocks - 1)  # symbols in the last block
    mask = (1 << MAX_LEN) - 1
    for step in range(BLOCK):
        rows = slice(None) if step < last else slice(0, nblocks - 1)
        p = pos[rows]
        byte = p >> 3
        word = (buf[byte] << 16) | (buf[byte + 1] << 8) | buf[byte + 2]
        window = (word >> (24 - MAX_LEN - (p & 7))) & mask
        out[rows, step] = table_sym[window]
        pos[rows] += table_len[window]
    return out.ravel()[:n].tobytes()
