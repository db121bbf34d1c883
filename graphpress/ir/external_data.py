"""External data: what a loaded model refers to, and writing weights beside a saved one.

ONNX keeps large tensors outside the ``.onnx`` file: a ``TensorProto`` names a file
(``location``, relative to the model's directory), an ``offset`` and a ``length``.
``torch.onnx.export`` in torch 2.13 writes every model this way (``model.onnx`` +
``model.onnx.data``), and protobuf cannot hold a model over 2 GB any other way.

* :func:`check_references` runs on load: every external tensor's file must exist inside
  the model's directory and hold the bytes its dtype and shape need. onnx-ir maps the
  files lazily, so without this a missing file surfaces later as a ``FileNotFoundError``
  or as wrong sizes.
* :func:`inlined` swaps external tensors for in-memory views of their (memory-mapped)
  bytes while a self-contained proto is serialized, so an output never refers to the
  input's files.
* :func:`write_data` streams every large initializer into one open data file (external
  tensors are copied file to file by the kernel, ``copy_file_range``, never loaded), and
  :func:`externalized` points the initializers at that file while the ``.onnx`` is
  serialized. Peak memory stays at about the largest in-memory tensor.

The model itself is never changed: swapped tensors are restored when the block ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
import numpy as np
import onnx
import onnx_ir as ir

from graphpress.errors import ModelLoadError
from graphpress.ir.atomic import write_all

__all__ = [
    "INLINE_LIMIT_BYTES",
    "DataLayout",
    "check_references",
    "externalized",
    "inlined",
    "rebase",
    "relocate",
    "tensor_protos",
    "weight_bytes",
    "write_data",
]

#: Weights above this many bytes are written to a data file by default (protobuf holds 2 GiB).
INLINE_LIMIT_BYTES = 2_000_000_000
#: Tensors larger than this start at a page boundary in the data file (runtimes map them).
_ALIGN_ABOVE_BYTES = 1 << 20
_PAGE = 4096
_COPY_CHUNK = 64 << 20


def _initializer_values(model: ir.Model) -> Iterator[ir.Value]:
    for graph in model.graphs():
        yield from graph.initializers.values()


def weight_bytes(model: ir.Model) -> int:
    """Bytes of every initializer (main graph and subgraphs), as stored."""
    return sum(v.const_value.nbytes for v in _initializer_values(model) if v.const_value is not None)


def _attribute_tensors(model: ir.Model) -> Iterator[tuple[str, ir.TensorProtocol]]:
    for graph in model.graphs():
        for node in graph:
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.TENSOR:
                    yield f"node '{node.name}' attribute '{attr.name}'", attr.as_tensor()
                elif attr.type == ir.AttributeType.TENSORS:
                    for t in attr.as_tensors():
                        yield f"node '{node.name}' attribute '{attr.name}'", t


def _external(model: ir.Model) -> Iterator[tuple[str, ir.ExternalTensor]]:
    for value in _initializer_values(model):
        if isinstance(value.const_value, ir.ExternalTensor):
            yield f"initializer '{value.name}'", value.const_value
    for label, tensor in _attribute_tensors(model):
        if isinstance(tensor, ir.ExternalTensor):
            yield label, tensor


def referenced_files(model: ir.Model) -> set[str]:
    """Real paths of every file the model's external tensors refer to."""
    return {os.path.realpath(t.path) for _, t in _external(model)}


def rebase(copy: ir.Model, source: ir.Model) -> ir.Model:
    """Point ``copy``'s external tensors at the directories ``source``'s were read from.

    A copy made through a ``ModelProto`` (``ir.serde.deserialize_model(to_proto(model))``)
    keeps each external tensor's file name, which is relative to the model's directory, but
    not the directory: its weights would be looked up in the working directory. Tensors are
    matched by file name; a copy's tensor whose name ``source`` does not use takes the
    directory of ``source``'s first. Returns ``copy``.
    """
    dirs: dict[str, str] = {}
    for _, t in _external(source):
        dirs.setdefault(os.fspath(t.location), t.base_dir)
    if dirs:
        first = next(iter(dirs.values()))
        for _, t in _external(copy):
            if not t.base_dir:
                t.base_dir = dirs.get(os.fspath(t.location), first)
    return copy


def check_references(model: ir.Model, where: str) -> None:
    """Refuse, with one line, a model whose external data is missing, outside its directory or short.

    Args:
        model: a model whose external tensors have their ``base_dir`` set.
        where: the model's path, for the message.

    Raises:
        ModelLoadError: naming the tensor, the file and what to do.
    """
    sizes: dict[str, int] = {}
    for label, t in _external(model):
        location = os.fspath(t.location)
        base = os.path.realpath(t.base_dir or ".")
        if os.path.isabs(location):
            raise ModelLoadError(
                f"{where}: {label} keeps its data at the absolute path '{location}'; ONNX external data "
                "must be a path relative to the model file: re-save the model with its data beside it"
            )
        real = os.path.realpath(os.path.join(base, location))
        if os.path.commonpath([base, real]) != base:
            raise ModelLoadError(
                f"{where}: {label} refers to external data '{location}' outside the model's directory; "
                "refusing to read it: move the data file next to the model and re-save it"
            )
        if real not in sizes:
            try:
                sizes[real] = os.stat(real).st_size if os.path.isfile(real) else -1
            except OSError:
                sizes[real] = -1
        if sizes[real] < 0:
            raise ModelLoadError(
                f"{where}: {label} keeps its weights in '{location}', which is missing from {base}; "
                "copy the data file next to the model (external data is found relative to the .onnx file)"
            )
        need = t.nbytes
        if t.length is not None and t.length != need:
            raise ModelLoadError(
                f"{where}: {label} declares {t.length} bytes of external data but its dtype and shape need "
                f"{need}; the model and '{location}' do not belong together: re-export the model"
            )
        if (t.offset or 0) + need > sizes[real]:
            raise ModelLoadError(
                f"{where}: {label} needs bytes {t.offset or 0}..{(t.offset or 0) + need} of '{location}', "
                f"which holds {sizes[real]}; the data file is truncated or from another export: copy it again"
            )


def _memory_tensor(t: ir.ExternalTensor) -> ir.Tensor:
    """An in-memory tensor over the mapped bytes of ``t`` (no copy until serialized)."""
    return ir.Tensor(t.numpy(), dtype=t.dtype, name=t.name, doc_string=t.doc_string)


@contextlib.contextmanager
def _swapped(values: list[tuple[ir.Value, ir.TensorProtocol]]) -> Iterator[None]:
    originals = [(v, v.const_value) for v, _ in values]
    try:
        for value, tensor in values:
            value.const_value = tensor
        yield
    finally:
        for value, tensor in originals:
            value.const_value = tensor


@contextlib.contextmanager
def inlined(model: ir.Model) -> Iterator[None]:
    """Within the block, external initializers are in-memory tensors (so they serialize inline)."""
    swaps = [(v, _memory_tensor(v.const_value)) for v in _initializer_values(model) if isinstance(v.const_value, ir.ExternalTensor)]
    with _swapped(swaps):
        yield


@dataclasses.dataclass(frozen=True)
class DataLayout:
    """Where each written initializer sits in the data file."""

    #: (value, offset, length) in file order
    entries: tuple[tuple[ir.Value, int, int], ...]
    size: int


def _aligned(offset: int, nbytes: int) -> int:
    if nbytes > _ALIGN_ABOVE_BYTES and offset % _PAGE:
        return offset + _PAGE - offset % _PAGE
    return offset


def _copy_range(src_path: str, offset: int, length: int, fd: int) -> None:
    """Append ``length`` bytes of ``src_path`` from ``offset`` to ``fd`` (in the kernel where it can)."""
    with open(src_path, "rb", buffering=0) as src:
        done = 0
        use_kernel = hasattr(os, "copy_file_range")
        while done < length:
            n = min(_COPY_CHUNK, length - done)
            copied = 0
            if use_kernel:
                try:
                    copied = os.copy_file_range(src.fileno(), fd, n, offset + done)
                except OSError:
                    use_kernel = False
            if not copied:
                chunk = os.pread(src.fileno(), n, offset + done)
                if len(chunk) != n:
                    raise OSError(f"{src_path}: ended before byte {offset + length}")
                write_all(fd, chunk)
                copied = n
            done += copied


def _write_tensor(t: ir.TensorProtocol, fd: int) -> None:
    if isinstance(t, ir.ExternalTensor) and t.dtype.bitwidth >= 8:
        _copy_range(t.path, t.offset or 0, t.nbytes, fd)
        return
    if isinstance(t, ir.Tensor) and t.dtype.bitwidth >= 8:
        array = t.numpy()
        if isinstance(array, np.ndarray) and array.dtype.byteorder in "=|<" and array.flags.c_contiguous:
            write_all(fd, array.reshape(-1).view(np.uint8))
            return
    write_all(fd, t.tobytes())


def write_data(model: ir.Model, fd: int, *, size_threshold_bytes: int = 256) -> DataLayout:
    """Write every initializer over ``size_threshold_bytes`` into the empty file open as ``fd``.

    Returns:
        The layout, for :func:`externalized`.
    """
    entries = []
    offset = 0
    for value in _initializer_values(model):
        t = value.const_value
        if t is None or t.nbytes <= size_threshold_bytes:
            continue
        start = _aligned(offset, t.nbytes)
        if start > offset:
            write_all(fd, b"\0" * (start - offset))
        _write_tensor(t, fd)
        offset = start + t.nbytes
        entries.append((value, start, t.nbytes))
    actual = os.fstat(fd).st_size
    if actual != offset:  # pragma: no cover - a short write would corrupt the model
        raise OSError(f"wrote {actual} bytes of external data, expected {offset}")
    return DataLayout(tuple(entries), offset)


@contextlib.contextmanager
def externalized(layout: DataLayout, location: str, base_dir: str) -> Iterator[None]:
    """Within the block, the laid-out initializers refer to ``location`` (relative to ``base_dir``)."""
    swaps = []
    for value, offset, length in layout.entries:
        t = value.const_value
        ext = ir.ExternalTensor(
            location, offset, length, t.dtype, shape=ir.Shape(list(t.shape)), name=value.name,
            doc_string=t.doc_string, base_dir=base_dir,
        )  # fmt: skip
        swaps.append((value, ext))
    with _swapped(swaps):
        yield


def tensor_protos(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of ``graph``: initializers and attribute tensors, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from tensor_protos(attr.g)
            for g in attr.graphs:
                yield from tensor_protos(g)


def relocate(proto: onnx.ModelProto, old: str, new: str) -> None:
    """Point every external tensor of ``proto`` stored at ``old`` to ``new`` instead."""
    for t in tensor_protos(proto.graph):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        for entry in t.external_data:
            if entry.key == "location" and entry.value == old:
                entry.value = new
