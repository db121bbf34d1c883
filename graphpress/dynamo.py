"""``torch.compile(model, backend="graphpress")``: a TorchDynamo backend.

Registered through the ``torch_dynamo_backends`` entry point (``pyproject.toml``), so that the
name works once graphpress is installed. Each FX graph Dynamo hands over is exported to the IR
(``torch.onnx.export`` of the graph, :func:`graphpress.ir.io.from_torch`), cleaned and fused
(``cleanup,fuse,cleanup``, each pass checked against the graph it received), optionally compressed
with a recipe under a budget (:func:`graphpress.compress`), compiled with TVM for the host
(:func:`graphpress.backends.tvm.compile_model`, checked against ONNX Runtime there), and checked
once more against the graph run eagerly by torch on Dynamo's example inputs. The callable it
returns runs the compiled code.

A graph it cannot take -- an op the exporter or TVM refuses, inputs that are not CPU tensors,
outputs that differ from eager beyond the tolerance -- runs eagerly instead, and the reason is
logged once per graph (``logging`` logger ``graphpress.dynamo``): never an exception in the
user's program. A new shape or dtype is Dynamo's business: its guards fail and it calls the
backend again, which compiles for the new shapes (or, with ``dynamic=True`` tracing, the graph
runs eagerly: the integer kernels are built per static shape).

The module's parameters and buffers, which Dynamo passes as graph inputs, are frozen into the
compiled code as constants (as inference compilers do): change the weights, and compile again.

Options (``torch.compile(..., options={...})``):

* ``target``: ``x86`` (default; any ``x86:PATH``) or another host target TVM runs here;
* ``recipe``: ``None`` (default: the graph as it is, integer kernels where it is quantized) or
  one of :data:`graphpress.pipelines.RECIPES` (``int8``, ``prune-int8``, ...);
* ``samples``: inputs for the recipe's calibration and its held-out check, a list of tuples of
  tensors (one per call of the graph) or one tuple; default: Dynamo's example inputs;
* ``budget``: the recipe's budget (``"cos:0.99"``, ``"1%"``; default as :func:`graphpress.compress`);
* ``atol``/``rtol``: how far from eager the compiled graph may be on the example inputs
  (default 1e-3 / 1e-3 without a recipe; with one the recipe's budget judged it already).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["OPTIONS", "graphpress_backend"]

log = logging.getLogger("graphpress.dynamo")

#: the options :func:`graphpress_backend` takes
OPTIONS = ("target", "recipe", "samples", "budget", "atol", "rtol")


def graphpress_backend(gm, example_inputs: Sequence[Any], options: Mapping[str, Any] | None = None, **_: Any) -> Callable[..., Any]:
    """Compile one FX graph (the TorchDynamo backend protocol: ``gm`` and its example inputs in,
    a callable with ``gm``'s signature out). Falls back to ``gm.forward`` with one logged line
    when the graph cannot be compiled or its result differs from eager."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:  # a typo must not silently compile something else: this one is the user's error
        from graphpress.errors import GraphpressError

        raise GraphpressError(f"torch.compile(backend='graphpress'): unknown option(s) {', '.join(unknown)}; the options are {', '.join(OPTIONS)}")
    try:
        return _compile_graph(gm, list(example_inputs), options)
    except Exception as e:  # noqa: BLE001 - any failure: this graph runs eagerly
        from graphpress.errors import one_line

        log.warning("graphpress: a graph of %d ops runs eagerly: %s", _ops(gm), one_line(e, 300))
        gm._graphpress_fallback = one_line(e, 300)
        return gm.forward


def _ops(gm) -> int:
    return sum(1 for n in gm.graph.nodes if n.op in ("call_function", "call_method", "call_module"))


def _is_state(name: str) -> bool:
    """A placeholder Dynamo made of the module's own parameters or buffers."""
    return "_parameters_" in name or "_buffers_" in name


def _frozen(gm, example_inputs: list, state: list[int]):
    """``gm`` with its module state as constants: an ``nn.Module`` of the graph's real inputs."""
    import torch

    class Frozen(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.graph_module = gm
            for i in state:
                self.register_buffer(f"state_{i}", example_inputs[i].detach().clone())

        def forward(self, *xs):
            it = iter(xs)
            return tuple(gm(*(getattr(self, f"state_{i}") if i in state else next(it) for i in range(len(example_inputs)))))

    return Frozen().eval()


def _compile_graph(gm, example_inputs: list, options: dict[str, Any]) -> Callable[..., Any]:
    import torch

    from graphpress.backends.tvm import compile_model
    from graphpress.ir.io import from_torch
    from graphpress.passes import PassManager, build_passes

    placeholders = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(example_inputs):
        raise ValueError(f"{len(placeholders)} graph inputs for {len(example_inputs)} example inputs")
    for name, t in zip(placeholders, example_inputs):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"input '{name}' is a {type(t).__name__}, not a tensor (symbolic shapes: compile with dynamic=False)")
        if t.device.type != "cpu":
            raise ValueError(f"input '{name}' is on {t.device}: the graphpress backend runs CPU tensors")
    state = [i for i, name in enumerate(placeholders) if _is_state(name)]
    inputs = [i for i in range(len(example_inputs)) if i not in state]
    if not inputs:
        raise ValueError("the graph has no inputs but the module's state")
    frozen = _frozen(gm, example_inputs, state)
    args = tuple(example_inputs[i].detach() for i in inputs)
    with torch.no_grad():
        eager = gm(*example_inputs)
    want = [t.detach().numpy() for t in eager]
    model = from_torch(frozen, args)
    # what `graphpress optimize` does first (each pass checked against the model it received)
    PassManager(build_passes("cleanup,fuse,cleanup")).run(model)
    names = [v.name for v in model.graph.inputs]
    target = options.get("target", "x86")
    recipe = options.get("recipe")
    if recipe is None:
        compiled = compile_model(model, target, samples=[dict(zip(names, (a.numpy() for a in args)))], measure=False)
        atol, rtol = options.get("atol", 1e-3), options.get("rtol", 1e-3)
    else:
        import graphpress

        result = graphpress.compress(model, target, samples=_samples(options.get("samples"), args, inputs, names), recipe=recipe,
                                     budget=options.get("budget"), measure=False)  # fmt: skip
        compiled = result.compiled
        atol, rtol = options.get("atol"), options.get("rtol")  # the budget judged it, unless these are given
    got = compiled(*(a.numpy() for a in args))
    for i, (g, w) in enumerate(zip(got, want)):
        if g.shape != w.shape or (atol is not None and not np.allclose(g, w, atol=atol, rtol=rtol if rtol is not None else 0.0)):
            worst = float(np.abs(g.astype(np.float64) - w).max()) if g.shape == w.shape else float("nan")
            raise ValueError(f"output {i} differs from eager on the example inputs (max |diff| {worst:.3g}, atol {atol}, rtol {rtol})")
    log.info("graphpress: a graph of %d ops compiled for %s%s", _ops(gm), target, f" ({recipe})" if recipe else "")
    return _Runner(compiled, inputs, [t.dtype for t in eager])


def _samples(samples, args: tuple, inputs: list[int], names: list[str]) -> list[dict[str, np.ndarray]]:
    """The recipe's samples as the IR's input dicts: the user's calls (tuples of the graph's
    real inputs, or of every graph input), else the example inputs."""
    if samples is None:
        return [dict(zip(names, (a.numpy() for a in args)))]
    calls = [samples] if isinstance(samples, tuple) else list(samples)
    out = []
    for call in calls:
        call = call if isinstance(call, (tuple, list)) else (call,)
        if len(call) != len(names):
            call = [call[i] for i in inputs] if len(call) > max(inputs) else call
        if len(call) != len(names):
            raise ValueError(f"a sample has {len(call)} tensors; the graph takes {len(names)}")
        out.append({n: (c.detach().numpy() if hasattr(c, "detach") else np.asarray(c)) for n, c in zip(names, call)})
    return out


class _Runner:
    """The compiled graph with the graph module's calling convention: every graph input in
    (the module's state ignored: frozen into the code), a tuple of tensors out."""

    def __init__(self, compiled, inputs: list[int], dtypes: list):
        self.compiled = compiled
        self.inputs = inputs
        self.dtypes = dtypes
        # the direct path: the VM's ``main`` reads the tensors' own memory (DLPack) and its outputs
        # come back the same way, without the checks and the numpy copies of ``compiled(...)``
        # (Dynamo's guards already hold shapes and dtypes to the example inputs'). Not where an
        # input was frozen into the code: the artifact then takes other inputs than the graph.
        self._main = None if compiled.meta.get("frozen_inputs") or compiled.remote is not None else compiled.vm["main"]

    def __call__(self, *args):
        import torch

        if self._main is None:
            outs = self.compiled(*(args[i].detach().numpy() for i in self.inputs))
            return tuple(torch.from_numpy(np.ascontiguousarray(o)).to(d) for o, d in zip(outs, self.dtypes))
        import tvm

        feeds = []
        for i in self.inputs:
            t = args[i].detach()
            if not t.is_contiguous() or t.data_ptr() % 64:  # TVM's kernels assume 64-byte aligned, dense buffers
                t = t.contiguous().clone()
            feeds.append(tvm.runtime.from_dlpack(t))
        outs = _tensors(self._main(*feeds))
        # a copy: an output may be a constant of the code or alias an input; eager returns fresh tensors
        return tuple(torch.from_dlpack(o).to(d, copy=True) for o, d in zip(outs, self.dtypes))


def _tensors(out) -> list:
    """The VM's result as a flat list of its tensors, in graph output order."""
    if hasattr(out, "shape"):
        return [out]
    return [t for item in out for t in _tensors(item)]
