"""``graphpress pack`` / ``unpack``: an entropy-coded file that unpacks to the exact same ONNX bytes.

The ``.onnx`` file is cut into segments: the raw bytes of every weight tensor (found in the
file by their ``raw_data``) and the protobuf around them. Each segment is compressed with the
codec that makes it smallest among ``lzma`` (range coder), ``bz2`` (BWT + Huffman),
``zlib`` (LZ77 + Huffman) and an order-0 Huffman code (:mod:`graphpress.ir.huffman`, what Deep
Compression used; it wins on k-means indices, whose bytes are nearly independent), floats also
after a byte shuffle (byte planes: sign/exponent bytes compress well, mantissa bytes barely), or
stored. The report says how many bytes each codec ended up holding.

Because the segments are a partition of the original bytes, unpacking is bit-exact by
construction; both commands check the SHA-256 of the whole model and refuse on a mismatch.

File layout: ``b"GPPACK\\x01"``, a little-endian u32 header length, the header (zlib-compressed JSON:
``size``, ``sha256``, ``segments: [{kind, length, codec, shuffle, stored}]``), then the
compressed segments in order.
"""

from __future__ import annotations

import bz2
import dataclasses
import hashlib
import heapq
import json
import lzma
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from graphpress.errors import GraphpressError, one_line
from graphpress.ir import huffman
from graphpress.ir.atomic import write_bytes_atomic
from graphpress.ir.external_data import tensor_protos

__all__ = ["PackReport", "huffman_bytes", "pack", "pack_bytes", "unpack", "unpack_bytes"]

MAGIC = b"GPPACK\x01"
#: tensors smaller than this stay in the protobuf segments
MIN_TENSOR_BYTES = 256

#: raw LZMA2 streams (no xz container: its ~60 bytes per stream add up over many tensors)
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 6}]

_COMPRESS = {
    "lzma": lambda b: lzma.compress(b, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS),
    "bz2": lambda b: bz2.compress(b, 9),
    "zlib": lambda b: zlib.compress(b, 9),
    "huffman": huffman.encode,
    "store": lambda b: b,
}
_DECOMPRESS = {"lzma": lambda b: lzma.decompress(b, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS), "bz2": bz2.decompress, "zlib": zlib.decompress, "huffman": huffman.decode, "store": lambda b: b}


@dataclasses.dataclass
class PackReport:
    """Sizes of one pack: the original, the packed file, and bytes per codec."""

    original_bytes: int
    packed_bytes: int
    tensors: int
    tensor_bytes: int
    by_codec: dict[str, int]
    huffman_bytes: int  # what an order-0 Huffman code of every tensor would take, for comparison

    @property
    def ratio(self) -> float:
        return self.original_bytes / self.packed_bytes if self.packed_bytes else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ratio"] = round(self.ratio, 3)
        return d


def huffman_bytes(data: bytes) -> int:
    """Bytes an order-0 Huffman code of ``data`` takes (code lengths included, 1 byte per symbol)."""
    counts = np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256)
    present = [(int(c), i) for i, c in enumerate(counts) if c]
    if len(present) <= 1:
        return 256 + (len(data) + 7) // 8
    heap = [(c, i, [i]) for c, i in present]
    heapq.heapify(heap)
    length = np.zeros(256, dtype=np.int64)
    tie = 256
    while len(heap) > 1:
        c1, _, s1 = heapq.heappop(heap)
        c2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            length[s] += 1
        heapq.heappush(heap, (c1 + c2, tie, s1 + s2))
        tie += 1
    return 256 + int((counts * length).sum() + 7) // 8


def _has_external_data(data: bytes) -> bool:
    try:
        proto = onnx.load_from_string(data)
    except Exception:  # noqa: BLE001 - reported by _segments with the file name
        return False
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in tensor_protos(proto.graph))


def _segments(data: bytes, where: str) -> list[tuple[int, int, int]]:
    """(offset, length, itemsize) of every large weight's raw bytes inside ``data``, sorted."""
    try:
        proto = onnx.load_from_string(data)
    except Exception as e:  # noqa: BLE001 - protobuf raises several types
        raise GraphpressError(f"{where}: not an ONNX model ({one_line(e)})") from None
    found: list[tuple[int, int, int]] = []
    claimed: list[tuple[int, int]] = []
    blobs = []
    for t in tensor_protos(proto.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise GraphpressError(f"{where}: weights are stored in external data files; save the model as one .onnx file first")
        if len(t.raw_data) >= MIN_TENSOR_BYTES:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize if t.data_type != onnx.TensorProto.STRING else 1
            blobs.append((t.raw_data, itemsize))
    # largest first; a blob found at a place already claimed is searched again further on
    for blob, itemsize in sorted(blobs, key=lambda b: -len(b[0])):
        start = 0
        while (pos := data.find(blob, start)) >= 0:
            end = pos + len(blob)
            if all(end <= a or pos >= b for a, b in claimed):
                claimed.append((pos, end))
                found.append((pos, len(blob), itemsize))
                break
            start = pos + 1
    return sorted(found)


def _shuffle(b: bytes, itemsize: int) -> bytes:
    return np.frombuffer(b, dtype=np.uint8).reshape(-1, itemsize).T.tobytes()


def _unshuffle(b: bytes, itemsize: int) -> bytes:
    return np.frombuffer(b, dtype=np.uint8).reshape(itemsize, -1).T.tobytes()


#: files up to this size also try the whole file as one stream
WHOLE_FILE_MAX = 16 << 20
#: tensors larger than this choose their codec on a sample of :data:`SAMPLE_BYTES`, then compress once
SAMPLE_OVER = 1 << 20
SAMPLE_BYTES = 256 << 10


def _candidates(chunk: bytes, itemsize: int) -> list[tuple[str, int]]:
    """(codec, shuffle) pairs worth trying on ``chunk``."""
    out = [(codec, 0) for codec in ("lzma", "bz2", "zlib", "huffman")]
    if itemsize > 1 and len(chunk) % itemsize == 0:
        out += [(codec, itemsize) for codec in ("lzma", "bz2", "zlib", "huffman")]
    return out


def _encode(chunk: bytes, codec: str, shuffle: int) -> bytes:
    return _COMPRESS[codec](_shuffle(chunk, shuffle) if shuffle else chunk)


def _best(chunk: bytes, itemsize: int) -> tuple[str, int, bytes]:
    """The smallest (codec, shuffle, encoded bytes) for ``chunk``; "store" when nothing helps.

    Large chunks pick their codec on a sample from the middle, then are compressed once.
    """
    pairs = _candidates(chunk, itemsize)
    if len(chunk) > SAMPLE_OVER:
        step = max(itemsize, 1)
        mid = (len(chunk) // 2 - SAMPLE_BYTES // 2) // step * step
        sample = chunk[mid : mid + SAMPLE_BYTES]
        codec, shuffle = min(pairs, key=lambda p: len(_encode(sample, *p)) if p[0] != "huffman" else huffman_bytes(_shuffle(sample, p[1]) if p[1] else sample))
        pairs = [(codec, shuffle)]
    options = []
    for codec, shuffle in pairs:
        if codec == "huffman":
            raw = _shuffle(chunk, shuffle) if shuffle else chunk
            # Huffman only where its size (computed without coding) can win
            if options and huffman_bytes(raw) + 12 + len(raw) // huffman.BLOCK * 8 >= min(len(o[2]) for o in options):
                continue
        options.append((codec, shuffle, _encode(chunk, codec, shuffle)))
    options.append(("store", 0, chunk))
    return min(options, key=lambda o: len(o[2]))


def pack_bytes(data: bytes, where: str = "model") -> tuple[bytes, PackReport]:
    """Pack the bytes of an ``.onnx`` file; returns the packed bytes and the sizes.

    Two layouts are built and the smaller is kept: per-segment codecs, and (files up to
    :data:`WHOLE_FILE_MAX`) the whole file as one stream, for small models where per-stream
    overheads outweigh per-tensor codecs."""
    split = _pack(data, where, _segments(data, where))
    layouts = [split, _pack(data, where, [])] if len(data) <= WHOLE_FILE_MAX else [split]
    packed, report = min(layouts, key=lambda r: len(r[0]))
    report.huffman_bytes = split[1].huffman_bytes  # the per-tensor comparison, whichever layout won
    if unpack_bytes(packed, where) != data:  # pragma: no cover - a partition cannot lose bytes
        raise GraphpressError(f"{where}: packing did not round-trip; please report this model")
    return packed, report


def _pack(data: bytes, where: str, tensors: list[tuple[int, int, int]]) -> tuple[bytes, PackReport]:
    parts: list[tuple[str, bytes, int]] = []  # (kind, bytes, itemsize)
    cursor = 0
    for pos, length, itemsize in tensors:
        if pos > cursor:
            parts.append(("proto", data[cursor:pos], 1))
        parts.append(("tensor", data[pos : pos + length], itemsize))
        cursor = pos + length
    if cursor < len(data):
        parts.append(("proto", data[cursor:], 1))
    # protobuf pieces compress better as one stream: glue them, remember the lengths
    proto_stream = b"".join(p[1] for p in parts if p[0] == "proto")
    segments, blobs = [], []
    by_codec: dict[str, int] = {}
    huff = 0
    codec, shuffle, blob = _best(proto_stream, 1)
    header_proto = {"codec": codec, "stored": len(blob)}
    blobs.append(blob)
    by_codec[codec] = by_codec.get(codec, 0) + len(blob)
    tensor_bytes = 0
    for kind, chunk, itemsize in parts:
        if kind == "proto":
            segments.append({"kind": "proto", "length": len(chunk)})
            continue
        codec, shuffle, blob = _best(chunk, itemsize)
        segments.append({"kind": "tensor", "length": len(chunk), "codec": codec, "shuffle": shuffle, "stored": len(blob)})
        blobs.append(blob)
        by_codec[codec] = by_codec.get(codec, 0) + len(blob)
        tensor_bytes += len(chunk)
        huff += huffman_bytes(chunk)
    header = zlib.compress(
        json.dumps(
            {"format": 1, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "proto": header_proto, "segments": segments},
            separators=(",", ":"),
        ).encode(),
        9,
    )
    packed = MAGIC + struct.pack("<I", len(header)) + header + b"".join(blobs)
    report = PackReport(len(data), len(packed), sum(1 for p in parts if p[0] == "tensor"), tensor_bytes, by_codec, huff)
    return packed, report


def unpack_bytes(packed: bytes, where: str = "packed file") -> bytes:
    """The original ``.onnx`` bytes of a packed file (SHA-256 checked)."""
    if not packed.startswith(MAGIC) or len(packed) < len(MAGIC) + 4:
        raise GraphpressError(f"{where}: not a graphpress pack file (missing the GPPACK header); make one with 'graphpress pack'")
    (hlen,) = struct.unpack_from("<I", packed, len(MAGIC))
    start = len(MAGIC) + 4
    try:
        header = json.loads(zlib.decompress(packed[start : start + hlen]))
        cursor = start + hlen
        proto_info = header["proto"]
        proto_stream = _DECOMPRESS[proto_info["codec"]](packed[cursor : cursor + proto_info["stored"]])
        cursor += proto_info["stored"]
        out, proto_at = [], 0
        for seg in header["segments"]:
            if seg["kind"] == "proto":
                out.append(proto_stream[proto_at : proto_at + seg["length"]])
                proto_at += seg["length"]
                continue
            raw = _DECOMPRESS[seg["codec"]](packed[cursor : cursor + seg["stored"]])
            cursor += seg["stored"]
            out.append(_unshuffle(raw, seg["shuffle"]) if seg["shuffle"] else raw)
        data = b"".join(out)
    except (KeyError, ValueError, TypeError, lzma.LZMAError, OSError, zlib.error) as e:
        raise GraphpressError(f"{where}: damaged pack file ({type(e).__name__}: {e})") from None
    if len(data) != header["size"] or hashlib.sha256(data).hexdigest() != header["sha256"]:
        raise GraphpressError(f"{where}: damaged pack file (SHA-256 of the unpacked model does not match)")
    return data


def _read(path: str | Path, what: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise GraphpressError(f"{p}: {what} not found")
    return p.read_bytes()


def pack(src: str | Path, dest: str | Path) -> PackReport:
    """Pack the ``.onnx`` file ``src`` into ``dest`` (written whole or not at all)."""
    from graphpress.ir.io import check_writable

    out = check_writable(dest, "output", Path(src))
    data = _read(src, "model")
    if _has_external_data(data):  # pack the self-contained form (unpack gives one .onnx)
        from graphpress.ir.io import load, serialize

        data = serialize(load(src, opset=1), src)  # opset=1: keep the model's own opset
    packed, report = pack_bytes(data, str(src))
    write_bytes_atomic(out, packed)
    return report


def unpack(src: str | Path, dest: str | Path) -> int:
    """Unpack ``src`` into the ``.onnx`` file ``dest``; returns its size in bytes."""
    from graphpress.ir.io import check_writable

    out = check_writable(dest, "output", Path(src))
    data = unpack_bytes(_read(src, "pack file"), str(src))
    write_bytes_atomic(out, data)
    return len(data)
