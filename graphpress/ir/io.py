"""Load models into the one IR (onnx-ir) and save them back out.

Sources :func:`load` accepts:

* an ONNX file path (external data resolved lazily, relative to the file),
* raw ``bytes`` of a serialized ``ModelProto``, or a ``ModelProto``,
* an ``onnx_ir.Model`` (returned as is),
* a ``torch.nn.Module`` with example inputs: ``torch.export`` traces it to an FX graph,
  ``torch.onnx.export(dynamo=True, optimize=False)`` turns that into onnx-ir. Parameter
  names survive (``layer1.0.conv1.weight``) and no optimization is applied by torch:
  the graph mirrors the module, and graphpress's own passes do the optimizing,
* an onnx-graphsurgeon ``Graph``.

Every model is brought to :data:`DEFAULT_OPSET` (ONNX opset 20, the one torch's dynamo
exporter writes and the first with ``Gelu``): older default-domain opsets are converted
with ``onnx.version_converter``; newer ones are kept as they are.

:func:`save` writes atomically (temporary file in the destination folder, then
``os.replace``), never over the model's own source file, and stamps an IR version ONNX
Runtime reads (``onnx`` 1.23 would otherwise write IR 14, which ORT 1.31 rejects).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx
import onnx_ir as ir

from graphpress._heap import frozen_heap
from graphpress.errors import GraphpressError, ModelLoadError

if TYPE_CHECKING:  # pragma: no cover
    import onnx_graphsurgeon as gs
    import torch

#: The default-domain opset every model is brought to on import.
DEFAULT_OPSET = 20
#: The highest ONNX IR version graphpress writes (ORT 1.31 reads at most 13).
MAX_IR_VERSION = 10
#: Metadata key recording where a model was loaded from (never written out).
SOURCE_PATH_KEY = "graphpress.source_path"

__all__ = [
    "DEFAULT_OPSET",
    "MAX_IR_VERSION",
    "from_graphsurgeon",
    "from_torch",
    "load",
    "check_writable",
    "save",
    "to_graphsurgeon",
    "to_proto",
]


def load(
    source: Any,
    example_inputs: Any = None,
    *,
    dynamic_batch: bool = False,
    opset: int = DEFAULT_OPSET,
) -> ir.Model:
    """Load a model from any supported source into an ``onnx_ir.Model``.

    Args:
        source: a path (``str``/``os.PathLike``), ``bytes``, ``onnx.ModelProto``,
            ``onnx_ir.Model``, ``torch.nn.Module`` or ``onnx_graphsurgeon.Graph``.
        example_inputs: for a ``torch.nn.Module`` only: a tensor or a tuple of tensors.
        dynamic_batch: for a ``torch.nn.Module`` only: make dim 0 of every input symbolic.
        opset: default-domain opset older models are converted to.

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
            raise ModelLoadError(f"<bytes>: not an ONNX model ({_first_line(e)})") from e
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


def _load_path(path: Path, opset: int) -> ir.Model:
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file; give the path of an .onnx model")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory; give the path of an .onnx model")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ModelLoadError(
            f"{path}: not an ONNX model or a truncated/corrupted file ({_first_line(e)}); "
            "re-export it or check the download"
        ) from e
    model = _from_proto(proto, str(path), opset, base_dir=str(path.parent))
    model.meta[SOURCE_PATH_KEY] = str(path.resolve())
    return model


def _from_proto(proto: onnx.ModelProto, where: str, opset: int, base_dir: str | None = None) -> ir.Model:
    if not proto.HasField("graph") or (len(proto.graph.output) == 0 and len(proto.graph.node) == 0):
        raise ModelLoadError(f"{where}: not an ONNX model (no graph with outputs); give an exported .onnx file")
    if not proto.opset_import:
        raise ModelLoadError(f"{where}: ONNX model has no opset_import; re-export it with a current exporter")
    current = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if current is not None and current < opset:
        proto = _convert_opset(proto, where, opset, base_dir)
    try:
        with frozen_heap():
            model = ir.serde.deserialize_model(proto)
    except Exception as e:
        raise ModelLoadError(f"{where}: the ONNX model is malformed ({_first_line(e)})") from e
    if base_dir is not None:
        ir.external_data.set_base_dir(model.graph, base_dir)
    return model


def _convert_opset(proto: onnx.ModelProto, where: str, opset: int, base_dir: str | None) -> onnx.ModelProto:
    from onnx import version_converter

    if base_dir is not None and _has_external_data(proto):
        proto = onnx.ModelProto.FromString(proto.SerializeToString())
        onnx.load_external_data_for_model(proto, base_dir)
    try:
        return version_converter.convert_version(proto, opset)
    except Exception as e:
        raise ModelLoadError(
            f"{where}: cannot convert opset {_default_opset(proto)} to {opset} ({_first_line(e)}); "
            "re-export the model at opset >= 13"
        ) from e


def _has_external_data(proto: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)


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
        raise ModelLoadError(f"{type(module).__name__}: torch.onnx.export failed ({_first_line(e)})") from e
    finally:
        module.train(was_training)
    return program.model


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


def from_graphsurgeon(graph: gs.Graph, *, opset: int = DEFAULT_OPSET) -> ir.Model:
    """Convert an onnx-graphsurgeon ``Graph`` to onnx-ir."""
    import onnx_graphsurgeon as gs

    proto = gs.export_onnx(graph)
    return _from_proto(proto, f"<graphsurgeon {graph.name or 'graph'}>", opset)


def to_graphsurgeon(model: ir.Model) -> gs.Graph:
    """Convert an onnx-ir model to an onnx-graphsurgeon ``Graph`` (a copy)."""
    import onnx_graphsurgeon as gs

    return gs.import_onnx(to_proto(model))


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """Serialize to a ``ModelProto`` with an IR version ONNX Runtime reads."""
    proto = ir.serde.serialize_model(model)
    proto.ir_version = _ir_version_for(proto)
    return proto


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
    external_threshold_bytes: int = 1 << 30,
) -> Path:
    """Write ``model`` to ``path`` as ONNX, atomically.

    Args:
        model: the model to write. It is not changed.
        path: destination ``.onnx`` path. Must differ from the model's own source file.
        external_data: ``True`` puts every initializer over 256 bytes into ``<name>.data`` beside
            the file; ``None`` (default) does so only when the weights exceed
            ``external_threshold_bytes`` (protobuf cannot hold more than 2 GiB).
        external_threshold_bytes: weight size above which ``external_data=None`` switches to
            external data.

    Returns:
        The destination path.

    Raises:
        GraphpressError: the destination cannot be written or is the input file.
    """
    source = model.meta.get(SOURCE_PATH_KEY)
    dest = check_writable(path, "output", Path(source) if source else None)
    parent = dest.parent
    if external_data is None:
        weight_bytes = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
        external_data = weight_bytes > external_threshold_bytes

    with frozen_heap():
        _write_atomic(model, dest, parent, external_data)
    return dest


def _write_atomic(model: ir.Model, dest: Path, parent: Path, external_data: bool) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    data_name = dest.name + ".data"
    try:
        if external_data:
            # onnx-ir writes the data file atomically itself; the .onnx follows by rename.
            ir.save(model, tmp, external_data=data_name, size_threshold_bytes=256)
            proto = onnx.load(tmp, load_external_data=False)
        else:
            proto = ir.serde.serialize_model(model)
        proto.ir_version = _ir_version_for(proto)
        with open(tmp, "wb") as f:
            f.write(proto.SerializeToString())
        os.replace(tmp, dest)
    except Exception:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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


def _first_line(e: BaseException) -> str:
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip() or type(e).__name__
    return text.splitlines()[0][:200]
