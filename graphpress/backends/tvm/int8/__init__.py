"""The int8 path of the TVM backend: quantized layers as integer kernels.

TVM's ONNX importer computes QDQ graphs in float and lowers ``MatMulInteger`` to an int32 x int32
matmul no schedule tensorizes. On the backend's private copy of the model:

1. :mod:`.qdq` rewrites static QDQ dense layers and group-1 convolutions into
   ``MatMulInteger``/``ConvInteger`` form, and max pools between quantizers of one grid into
   pools on the integers (both exact);
2. :mod:`.guard` times each integer layer's kernel against the fp32 kernel it would otherwise
   get and keeps the slower ones in float;
3. the layers without an integer kernel get float weights and lose their activation
   quantize/dequantize pairs (:func:`.qdq.fold_weight_dequantize`, :func:`.qdq.bypass_float_qdq`);
   the quantizers behind the integer layers' rescales have their scale moved into the rescales
   (:func:`.qdq.fold_requantize`);
4. while the model is imported, :func:`.emit.int8_converters` emits the kernels of the ISA
   :func:`.isa.select_isa` chose from the target (:mod:`.kernels_x86`: AMX, AVX-512 VNNI,
   AVX-VNNI, AVX2; :mod:`.kernels_arm`: sdot) for dense layers, and an int8 Relax ``conv2d`` for convolutions,
   which the build moves to NHWC with its neighbours and :func:`.emit.lower_int8_convs` puts on
   the same kernels through :mod:`.conv_layout`;
5. the dot-product kernels (:mod:`.dot`) are fusable: Relax fuses the requantization behind
   them and :func:`.dot.schedule_dot_kernels` computes it on each micro-tile of the product.

:func:`plan` runs steps 1-3 and returns the report; :func:`to_fp32` is the same model with
every layer in float, which the whole-model guard builds to compare.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import onnx_ir as ir

from graphpress.backends.tvm.int8.dot import schedule_dot_kernels
from graphpress.backends.tvm.int8.emit import int8_converters, lower_int8_convs
from graphpress.backends.tvm.int8.guard import all_to_float, plan_int8
from graphpress.backends.tvm.int8.isa import ISAS, Isa, select_isa
from graphpress.backends.tvm.int8.qdq import bypass_float_qdq, fold_requantize, fold_weight_dequantize, integer_max_pools, qdq_to_integer
from graphpress.backends.tvm.runtime import current_remote
from graphpress.backends.tvm.targets import TargetSpec
from graphpress.backends.tvm.tuning import Tuning

__all__ = ["ISAS", "Isa", "int8_converters", "is_quantized", "lower_int8_convs", "plan", "schedule_dot_kernels", "select_isa", "to_fp32"]

#: whether :func:`plan` moves output quantizer scales into the integer layers' rescales
#: (:func:`.qdq.fold_requantize`)
FOLD_REQUANTIZE = True

_FP32_REASON = "no integer kernel for these ops on this target yet: fp32 kernels on the dequantized weights, their activation quantize/dequantize pairs as clips to the calibrated range"


def is_quantized(model: ir.Model) -> bool:
    """True when ``model`` has layers the int8 path may take."""
    return any(n.op_type in ("MatMulInteger", "ConvInteger", "DequantizeLinear") for n in model.graph)


def plan(model: ir.Model, spec: TargetSpec, isa: Isa, tuning: Tuning, *, guard: bool, progress: Callable[[str], None] | None = None,
         only: frozenset[str] | None = None, fallback: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Steps 1-3 on ``model`` (the backend's copy, its input shapes static; changed in place).
    The guard runs where the target's code runs: this host, or the device of the
    :func:`~graphpress.backends.tvm.runtime.running_on` block; ``only``: lower these nodes (by
    name) and no others, untimed (those in ``fallback`` on the tile ISA's fallback). Returns the
    int8 report."""
    start = time.perf_counter()
    pools = integer_max_pools(model)
    rewrite = qdq_to_integer(model)
    remote = current_remote()
    timed = spec.is_host or remote is not None
    report = plan_int8(model, spec, isa, tuning, guard=guard and timed, progress=progress, only=only, fallback=fallback)
    report.update({"isa": isa.name, "amx": isa.name == "amx"})
    if guard and not timed:
        report["guard"] = "not run: a cross-compiled target cannot be timed on this host (give --rpc to time it on the device)"
    elif guard:
        report["measured_on"] = remote.describe() if remote is not None else "this host"
    report["qdq_rewritten"] = len(rewrite["rewritten"])
    report["integer_max_pools"] = pools
    report["fp32_layers"] = fold_weight_dequantize(model)["fp32_layers"]
    report["fp32_bypassed_qdq"] = bypass_float_qdq(model, keep_depthwise=True)
    if FOLD_REQUANTIZE:
        report["requantize_folded"] = fold_requantize(model)
    report["fp32_reason"] = _FP32_REASON
    report["seconds"] = round(time.perf_counter() - start, 2)
    return report


def to_fp32(model: ir.Model) -> None:
    """Every quantized layer of ``model`` to float compute, as the int8 path would leave a layer
    it keeps in fp32 (in place)."""
    all_to_float(model)
    fold_weight_dequantize(model)
    bypass_float_qdq(model)
