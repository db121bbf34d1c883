"""Load models into the one IR (onnx-ir) and save them back out.

Sources :func:`load` accepts:

* an ONNX file path (external data checked on load -- present, inside the model's
  directory, long enough -- and read lazily, relative to the file),
* raw ``bytes`` of a serialized ``ModelProto``, or a ``ModelProto``,
* an ``onnx_ir.Model`` (returned as is),
* a ``torch.nn.Module`` with example inputs: ``torch.export`` traces it to an FX graph,
  ``torch.onnx.export(dynamo=True, optimize=False)`` turns that into onnx-ir. Parameter
  names survive (``layer1.0.conv1.weight``) and no optimization is applied by torch:
  the graph mirrors the module, and graphpress's own passes do the optimizing,
* an onnx-graphsurgeon ``Graph``,
* a saved torch program (``torch.export.save``, a ``.pt2`` file): converted the same way, and
  checked on its own example inputs against the program itself (run by torch) before it is
  returned: the model graphpress works on computes what the user gave it.

Loading changes nothing by itself: a model keeps its default-domain opset. A pass that needs
a newer one declares it (``Pass.min_opset``) and the pass manager converts the model with
:func:`upgrade_opset` (``onnx.version_converter``) just before that pass runs, inside the
pass's numeric check; ``load(..., opset=N)`` converts older models on load instead.
:data:`DEFAULT_OPSET` (20, what torch's dynamo exporter writes and the first opset with
``Gelu``) is what the rewriting passes ask for.

:func:`save` writes a self-contained model (one file below 2 GB, ``OUT`` + ``OUT.data``
above it or on request -- never a reference to the input's files), whole or not at all
(:mod:`graphpress.ir.atomic`), never over the model's own source or data files, and stamps
an IR version ONNX Runtime reads (``onnx`` 1.23 would otherwise write IR 14, which ORT
1.31 rejects).

:func:`clone` copies a model through its proto (what passes do before they try something): a
proto names an external tensor's file relative to the model's directory, so the copy's tensors
are pointed back at that directory -- a copy made from another working directory still finds
its weights (:func:`graphpress.ir.external_data.rebase`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx
import onnx_ir as ir

from graphpress._heap import frozen_heap
from graphpress.errors import GraphpressError, ModelLoadError, one_line
from graphpress.ir import atomic
from graphpress.ir import external_data as external_data_mod

if TYPE_CHECKING:  # pragma: no cover
    import onnx_graphsurgeon as gs
    import torch

#: The default-domain opset every model is brought to on import.
DEFAULT_OPSET = 20
#: The highest ONNX IR version graphpress writes (ORT 1.31 reads at most 13).
MAX_IR_VERSION = 10
#: Metadata key recording where a model was loaded from (never written out).
SOURCE_PATH_KEY = "graphpress.source_path"
#: Metadata key: the default-domain opset the model had before it was converted on load.
CONVERTED_FROM_KEY = "graphpress.converted_from_opset"

__all__ = [
    "from_exported_program",
    "DEFAULT_OPSET",
    "MAX_IR_VERSION",
    "from_graphsurgeon",
    "from_torch",
    "load",
    "check_writable",
    "clone",
    "upgrade_opset",
    "save",
    "serialize",
    "to_graphsurgeon",
    "to_proto",
]


def load(
    source: Any,
    example_inputs: Any = None,
    *,
    dynamic_batch: bool = False,
    opset: int | None = None,
) -> ir.Model:
    """Load a model from any supported source into an ``onnx_ir.Model``.

    Args:
        source: a path (``str``/``os.PathLike``), ``bytes``, ``onnx.ModelProto``,
            ``onnx_ir.Model``, ``torch.nn.Module`` or ``onnx_graphsurgeon.Graph``.
        example_inputs: for a ``torch.nn.Module`` only: a tensor or a tuple of tensors.
        dynamic_batch: for a ``torch.nn.Module`` only: make dim 0 of every input symbolic.
        opset: convert models with an older default-domain opset to this one on load
            (default: keep the model's opset; passes that need a newer one convert then).

    Returns:
        The model in onnx-ir form.

    Raises:
        ModelLoadError: the source does not exist or is not a valid model.
    """
    if isinstance(source, ir.Model):
        return source
    if isinstance(source, (str, os.PathLike)):
        return _load_path(Path(source), opset)
    if isinstance(source, (bytes, bytearray)):
        try:
            proto = onnx.load_from_string(bytes(source))
        except Exception as e:  # protobuf DecodeError and friends
            raise ModelLoadError(f"<bytes>: not an ONNX model ({one_line(e)})") from e
        return _from_proto(proto, "<bytes>", opset)
    if isinstance(source, onnx.ModelProto):
        return _from_proto(source, "<ModelProto>", opset)
    if _is_torch_module(source):
        if example_inputs is None:
            raise ModelLoadError(
                f"{type(source).__name__}: a torch module needs example_inputs (a tensor or a tuple of tensors)"
            )
        return from_torch(source, example_inputs, dynamic_batch=dynamic_batch)
    if _is_graphsurgeon_graph(source):
        return from_graphsurgeon(source, opset=opset)
    raise ModelLoadError(
        f"cannot load a {type(source).__name__}: pass a path, bytes, onnx.ModelProto, "
        "onnx_ir.Model, torch.nn.Module or onnx_graphsurgeon.Graph"
    )


def _load_path(path: Path, opset: int | None) -> ir.Model:
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file; give the path of an .onnx model or a .pt2 torch program")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory; give the path of an .onnx model or a .pt2 torch program")
    if path.suffix == ".pt2":
        model = from_exported_program(path)
        model.meta[SOURCE_PATH_KEY] = str(path.resolve())
        return model
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ModelLoadError(
            f"{path}: not an ONNX model or a truncated/corrupted file ({one_line(e)}); "
            "re-export it or check the download"
        ) from e
    model = _from_proto(proto, str(path), opset, base_dir=str(path.absolute().parent))
    model.meta[SOURCE_PATH_KEY] = str(path.resolve())
    return model


def _from_proto(proto: onnx.ModelProto, where: str, opset: int | None, base_dir: str | None = None) -> ir.Model:
    if not proto.HasField("graph") or (len(proto.graph.output) == 0 and len(proto.graph.node) == 0):
        raise ModelLoadError(f"{where}: not an ONNX model (no graph with outputs); give an exported .onnx file")
    if not proto.opset_import:
        raise ModelLoadError(f"{where}: ONNX model has no opset_import; re-export it with a current exporter")
    current = _default_opset(proto)
    newest = onnx.defs.onnx_opset_version()
    if current is not None and not 1 <= current <= newest:
        raise ModelLoadError(
            f"{where}: declares opset {current} of the default ONNX domain; this onnx knows opsets 1 to {newest}: "
            f"re-export the model with an opset between {opset or DEFAULT_OPSET} and {newest}"
        )
    model = _deserialize(_negative_dims_symbolic(proto), where)
    if base_dir is not None:
        ir.external_data.set_base_dir(model.graph, base_dir)
        external_data_mod.check_references(model, where)
    _check_structure(model, where)
    if opset is not None and current is not None and current < opset:
        model = _convert_opset(model, where, opset, base_dir)
        model.meta[CONVERTED_FROM_KEY] = current
    return model


def _negative_dims_symbolic(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``proto`` where negative dims (``-1``: Paddle's and some TF exporters' way to
    say "any", not valid ONNX; ONNX Runtime reads them as symbolic) are symbolic dims named
    ``<value>_dim<i>``; ``proto`` itself when it has none."""
    def infos(p):
        return (*p.graph.input, *p.graph.output, *p.graph.value_info)

    if not any(d.HasField("dim_value") and d.dim_value < 0 for v in infos(proto) for d in v.type.tensor_type.shape.dim):
        return proto
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    for v in infos(copy):
        for i, d in enumerate(v.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value < 0:
                d.dim_param = f"{v.name}_dim{i}"
    return copy


def upgrade_opset(model: ir.Model, opset: int, why: str = "") -> bool:
    """Convert ``model`` in place to default-domain ``opset`` when it imports an older one.

    Returns whether it converted. The model's metadata keeps the opset it had first
    (:data:`CONVERTED_FROM_KEY`). A conversion ``onnx.version_converter`` refuses is a
    :class:`ModelLoadError` naming ``why`` (the pass that needs the opset).
    """
    current = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    if current is None or current >= opset:
        return False
    base_dir = next((v.const_value.base_dir for v in model.graph.initializers.values() if isinstance(v.const_value, ir.ExternalTensor)), None)
    where = why or "model"
    converted = _convert_opset(model, where, opset, base_dir)
    first = model.meta.get(CONVERTED_FROM_KEY, current)
    model.graph = converted.graph
    for key in list(model.functions):
        if key not in converted.functions:
            del model.functions[key]
    model.functions.update(converted.functions)
    model.meta[CONVERTED_FROM_KEY] = first
    return True


def _check_structure(model: ir.Model, where: str) -> None:
    """Sort a graph listed out of order; refuse cycles and broken references with one line."""
    from graphpress.ir.verify import check, find_cycle

    problems = check(model)
    if any("not in topological order" in p for p in problems):
        cycle = find_cycle(model)
        if cycle:
            raise ModelLoadError(
                f"{where}: the graph has a cycle ({' -> '.join(cycle)}); ONNX graphs must be acyclic: re-export the model"
            )
        model.graph.sort()
        problems = check(model)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ModelLoadError(f"{where}: not a valid ONNX graph: {problems[0]}{more}; re-export the model")


def _deserialize(proto: onnx.ModelProto, where: str) -> ir.Model:
    try:
        with frozen_heap():
            return ir.serde.deserialize_model(proto)
    except Exception as e:
        root = e  # onnx-ir wraps the reason in "Error calling _deserialize_graph" errors
        while root.__cause__ is not None:
            root = root.__cause__
        raise ModelLoadError(f"{where}: the ONNX model is malformed ({one_line(root)}); re-export it") from e


def _convert_opset(model: ir.Model, where: str, opset: int, base_dir: str | None) -> ir.Model:
    from onnx import version_converter

    # the converter may read initializers (e.g. a Reshape shape): give it the weights when they fit
    fits = external_data_mod.weight_bytes(model) <= external_data_mod.INLINE_LIMIT_BYTES
    with external_data_mod.inlined(model) if fits else contextlib.nullcontext():
        proto = ir.serde.serialize_model(model)
    try:
        converted = version_converter.convert_version(proto, opset)
    except Exception as e:
        raise ModelLoadError(
            f"{where}: cannot convert opset {_default_opset(proto)} to {opset} ({one_line(e)}); "
            "re-export the model at opset >= 13"
        ) from e
    model = _deserialize(converted, where)
    if base_dir is not None and not fits:
        ir.external_data.set_base_dir(model.graph, base_dir)
    return model


def _default_opset(proto: onnx.ModelProto) -> int | None:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def from_torch(module: torch.nn.Module, example_inputs: Any, *, dynamic_batch: bool = False) -> ir.Model:
    """Trace a torch module (torch.export → FX) and convert it to onnx-ir.

    The module is exported in eval mode (its training flag is restored afterwards) with
    ``optimize=False`` so that the graph mirrors the module and parameter names are kept.

    Args:
        module: the module to export.
        example_inputs: a tensor or a tuple/list of tensors.
        dynamic_batch: make dimension 0 of every input symbolic (``batch``).

    Returns:
        The exported model.
    """
    import torch

    args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic_shapes = tuple({0: batch} for _ in args)
        # torch.export specializes a size-1 dim to the constant 1: trace with batch 2.
        args = tuple(a.expand(2, *a.shape[1:]).contiguous() if isinstance(a, torch.Tensor) and a.shape[0] == 1 else a for a in args)
    was_training = module.training
    module.eval()
    try:
        with _quiet_torch_export():
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                optimize=False,
                opset_version=DEFAULT_OPSET,
                dynamic_shapes=dynamic_shapes,
                verbose=False,
            )
    except Exception as e:
        raise ModelLoadError(f"{type(module).__name__}: torch.onnx.export failed ({one_line(e)})") from e
    finally:
        module.train(was_training)
    return program.model


#: how far the converted program may be from torch's run of it on its example inputs
PT2_ATOL, PT2_RTOL = 1e-4, 1e-3


def from_exported_program(path: str | os.PathLike) -> ir.Model:
    """A ``torch.export.save`` file (``.pt2``) in onnx-ir: ``torch.onnx.export`` of the loaded
    program (no optimization, :data:`DEFAULT_OPSET`), checked with ONNX Runtime on the
    program's example inputs against the program run by torch.

    Raises:
        ModelLoadError: not a torch program, a conversion torch refuses, or a converted model
            that computes something else than the program (the worst output named).
    """
    import numpy as np
    import torch

    where = str(path)
    try:
        with _quiet_torch_export():
            program = torch.export.load(str(path))
    except Exception as e:
        raise ModelLoadError(f"{where}: not a torch.export program ({one_line(e)}); save one with torch.export.save, or give an .onnx model") from e
    try:
        with _quiet_torch_export():
            model = torch.onnx.export(program, (), dynamo=True, optimize=False, opset_version=DEFAULT_OPSET, verbose=False).model
    except Exception as e:
        raise ModelLoadError(f"{where}: torch.onnx.export failed on the saved program ({one_line(e)})") from e
    examples = program.example_inputs
    if examples is not None and not examples[1]:
        import onnxruntime as ort

        args = [a for a in examples[0] if isinstance(a, torch.Tensor)]
        with torch.no_grad():
            want = program.module()(*examples[0])
        want = [t.detach().numpy() for t in (want if isinstance(want, (tuple, list)) else [want]) if isinstance(t, torch.Tensor)]
        session = ort.InferenceSession(to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
        got = session.run(None, {i.name: a.detach().numpy() for i, a in zip(session.get_inputs(), args)})
        for out, w, g in zip(model.graph.outputs, want, got):
            if w.shape != g.shape or not np.allclose(g, w, atol=PT2_ATOL, rtol=PT2_RTOL):
                worst = float(np.abs(g.astype(np.float64) - w).max()) if w.shape == g.shape else float("nan")
                raise ModelLoadError(f"{where}: the ONNX conversion of the program differs from torch on its example inputs at output '{out.name}' "
                                     f"(max |diff| {worst:.3g}); export the module to ONNX yourself and give the .onnx file")  # fmt: skip
    return model


@contextlib.contextmanager
def _quiet_torch_export():
    """Silence torch's export chatter (torchvision notices, guard dumps); errors still raise."""
    import warnings

    loggers = [logging.getLogger(n) for n in ("torch", "torch.onnx", "torch._dynamo", "torch._guards", "torch.export")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def from_graphsurgeon(graph: gs.Graph, *, opset: int | None = None) -> ir.Model:
    """Convert an onnx-graphsurgeon ``Graph`` to onnx-ir."""
    import onnx_graphsurgeon as gs

    proto = gs.export_onnx(graph)
    return _from_proto(proto, f"<graphsurgeon {graph.name or 'graph'}>", opset)


def to_graphsurgeon(model: ir.Model) -> gs.Graph:
    """Convert an onnx-ir model to an onnx-graphsurgeon ``Graph`` (a copy)."""
    import onnx_graphsurgeon as gs

    return gs.import_onnx(_materialize(to_proto(model), model))


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """Serialize to a ``ModelProto`` with an IR version ONNX Runtime reads."""
    proto = ir.serde.serialize_model(model)
    proto.ir_version = _ir_version_for(proto)
    return proto


def _materialize(proto: onnx.ModelProto, model: ir.Model | onnx.ModelProto) -> onnx.ModelProto:
    """Read external data into ``proto`` so ORT can run it from memory."""
    if not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        return proto
    base_dir = ""
    if isinstance(model, ir.Model):
        for value in model.graph.initializers.values():
            if isinstance(value.const_value, ir.ExternalTensor):
                base_dir = value.const_value.base_dir
                break
    onnx.load_external_data_for_model(proto, base_dir)
    return proto


def clone(model: ir.Model) -> ir.Model:
    """An independent copy of ``model`` (through its ``ModelProto``) whose weights that are
    external data of the file ``model`` was loaded from are still read from that file's
    directory, whatever the working directory."""
    return external_data_mod.rebase(ir.serde.deserialize_model(to_proto(model)), model)


def _ir_version_for(proto: onnx.ModelProto) -> int:
    try:
        needed = onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
    except Exception:  # unknown domains/versions: keep what the model says, capped
        needed = 3
    return max(needed, min(proto.ir_version or MAX_IR_VERSION, MAX_IR_VERSION))


def save(
    model: ir.Model,
    path: str | os.PathLike,
    *,
    external_data: bool | None = None,
    size_threshold_bytes: int = 256,
) -> Path:
    """Write ``model`` to ``path`` as a self-contained ONNX model, whole or not at all.

    The output never refers to the files the model was loaded from: weights that were
    external data of the input are copied. Everything appears under its final name complete
    or not at all, whatever interrupts the write (see :mod:`graphpress.ir.atomic`); an
    earlier output at ``path`` stays loadable until the new one replaces it.

    Args:
        model: the model to write. It is not changed.
        path: destination ``.onnx`` path. Must differ from the model's own source file and
            from any file its external data lives in.
        external_data: ``True`` puts every initializer over ``size_threshold_bytes`` into
            ``<path>.data`` beside the file; ``False`` writes one file; ``None`` (default)
            writes one file unless the weights exceed :data:`~graphpress.ir.external_data.INLINE_LIMIT_BYTES`
            (protobuf cannot hold more than 2 GiB).
        size_threshold_bytes: with external data, smaller tensors stay in the ``.onnx``.

    Returns:
        The destination path.

    Raises:
        GraphpressError: the destination cannot be written, is the input, or the model is
            too large for one file and ``external_data=False``.
    """
    if not isinstance(model, ir.Model):
        raise GraphpressError(f"save takes an onnx_ir.Model, got a {type(model).__name__}; bring it into the IR with graphpress.load(...) first")
    source = model.meta.get(SOURCE_PATH_KEY)
    dest = check_writable(path, "output", Path(source) if source else None)
    data_path = dest.with_name(dest.name + ".data")
    inputs = external_data_mod.referenced_files(model)
    for p in (dest, data_path):
        if os.path.realpath(p) in inputs:
            raise GraphpressError(f"{p}: holds the input model's external data; write the output to another path")
    if external_data is None:
        external_data = external_data_mod.weight_bytes(model) > external_data_mod.INLINE_LIMIT_BYTES
    # a write killed while switching names leaves dest referring to a hidden data file: it is
    # kept until dest is replaced
    referenced = _referenced_temps(dest, data_path)
    atomic.remove_stale_temps(dest)
    atomic.remove_stale_temps(data_path, keep=referenced)
    with frozen_heap():
        if external_data:
            _save_with_data(model, dest, data_path, size_threshold_bytes)
        else:
            _save_inline(model, dest, data_path)
    for path in referenced:
        path.unlink(missing_ok=True)
    return dest


def _referenced_temps(dest: Path, data_path: Path) -> list[Path]:
    """Stale temporary data files of ``data_path`` that the existing ``dest`` refers to."""
    stale = atomic.stale_temps(data_path)
    if not stale or not dest.is_file():
        return []
    try:
        proto = onnx.load(str(dest), load_external_data=False)
    except Exception:  # noqa: BLE001 - not a model we can read: it refers to nothing
        return []
    locations = {e.value for t in external_data_mod.tensor_protos(proto.graph) for e in t.external_data if e.key == "location"}
    return [p for p in stale if p.name in locations]


def _serialize(model: ir.Model) -> onnx.ModelProto:
    proto = ir.serde.serialize_model(model)
    proto.ir_version = _ir_version_for(proto)
    return proto


def _to_bytes(proto: onnx.ModelProto, dest: Path) -> bytes:
    try:
        return proto.SerializeToString()
    except ValueError as e:  # protobuf refuses messages over 2 GiB
        raise GraphpressError(
            f"{dest}: the model is too large for one ONNX file ({one_line(e)}); save it with external data "
            "(--external-data, or save(..., external_data=True))"
        ) from None


def serialize(model: ir.Model, where: str | os.PathLike = "model") -> bytes:
    """The model as the bytes of one self-contained ``.onnx`` file (external data read in)."""
    with frozen_heap(), external_data_mod.inlined(model):
        return _to_bytes(_serialize(model), Path(where))


def _save_inline(model: ir.Model, dest: Path, data_path: Path) -> None:
    data = serialize(model, dest)
    with atomic.AtomicFile(dest) as out:
        atomic.write_all(out.fd, data)
        out.commit()
    # an earlier output at this path may have kept its weights there: nothing refers to it now
    with contextlib.suppress(FileNotFoundError):
        data_path.unlink()


def _save_with_data(model: ir.Model, dest: Path, data_path: Path, size_threshold_bytes: int) -> None:
    """Write ``dest`` + ``dest.data``; at every instant ``dest`` refers to a complete data file
    that has exactly one name.

    When an earlier data file exists at ``data_path`` (the earlier ``dest`` refers to it), a
    copy of the new data bridges the switch: ``dest`` first refers to the copy under a hidden
    name, the data file replaces the earlier one, ``dest`` switches to it and the copy goes.
    The copy, not a second hard link, because ONNX's loader refuses an external data file
    with more than one name (a "hardlink attack"), and a ``kill -9`` can land between any two
    system calls. Replacing an output therefore writes its data twice (in the kernel, by
    ``copy_file_range``, which shares the blocks on filesystems that can).
    """
    base_dir = str(dest.parent)
    with (
        atomic.AtomicFile(data_path) as data,
        atomic.AtomicFile(data_path) as bridge,
        atomic.AtomicFile(dest) as final,
        atomic.AtomicFile(dest) as staged,
    ):
        layout = external_data_mod.write_data(model, data.fd, size_threshold_bytes=size_threshold_bytes)
        data.sync()
        with external_data_mod.externalized(layout, data_path.name, base_dir):
            proto = _serialize(model)
        atomic.write_all(final.fd, _to_bytes(proto, dest))
        final.sync()
        replacing = data_path.exists()
        hidden = atomic.temp_path(data_path)
        if replacing:
            atomic.copy_file(data.fd, bridge.fd)
            bridge.sync()
            external_data_mod.relocate(proto, data_path.name, hidden.name)
            atomic.write_all(staged.fd, _to_bytes(proto, dest))
            staged.sync()
        # the earlier data file stays open meanwhile: dropping its name frees no blocks (which
        # takes milliseconds for a large file) until the names are switched
        with _held_open(data_path if replacing else None), atomic.deferred_signals():
            if not replacing:
                data.link(data_path)
                final.link()
            else:
                bridge.link(hidden)
                staged.link()  # dest -> the hidden copy; the earlier data file is unused now
                data.link(data_path)  # replaces the earlier data file in one rename
                final.link()  # dest -> data_path
                hidden.unlink()
            data.committed = final.committed = True
            bridge.committed = staged.committed = replacing


@contextlib.contextmanager
def _held_open(path: Path | None):
    fd = None
    if path is not None:
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


def check_writable(path: str | os.PathLike, what: str = "output", input_path: Path | None = None) -> Path:
    """Fail early, with one line, if ``path`` cannot receive a file.

    Args:
        path: the destination file.
        what: what is being written, for the message ("output", "report").
        input_path: the input model; writing over it is refused.

    Returns:
        ``path`` as a ``Path`` whose parent is ``.`` rather than empty.
    """
    dest = Path(path)
    parent = dest.parent if str(dest.parent) else Path(".")
    if input_path is not None and dest.resolve() == Path(input_path).resolve():
        raise GraphpressError(f"{dest}: is the input model; write the {what} to another path")
    if not parent.is_dir():
        raise GraphpressError(f"{dest}: cannot write the {what}, directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise GraphpressError(f"{dest}: cannot write the {what}, directory {parent} is not writable")
    if dest.is_dir():
        raise GraphpressError(f"{dest}: is a directory; give a file path for the {what}")
    return parent / dest.name


def _is_torch_module(obj: Any) -> bool:
    mod = type(obj).__module__ or ""
    if not (mod.startswith("torch") or hasattr(obj, "forward")):
        return False
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, torch.nn.Module)


def _is_graphsurgeon_graph(obj: Any) -> bool:
    return type(obj).__module__.startswith("onnx_graphsurgeon") and type(obj).__name__ == "Graph"

