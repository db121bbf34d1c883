"""``torch.compile(model, backend="graphpress")`` (``graphpress/dynamo.py``), through the
``torch_dynamo_backends`` entry point: outputs against the module run eagerly on the model
zoo, a graph break (two graphs, both compiled), a graph that cannot be taken running eagerly
with its reason logged, an int8 recipe under its budget, and an unknown option refused."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from graphpress.models import mobilenet_v2, resnet18


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _compiled_graphs(caplog) -> int:
    return sum("compiled for" in r.getMessage() for r in caplog.records if r.name == "graphpress.dynamo")


def _against_eager(module, args, caplog, graphs: int, tol: float) -> None:
    """``module`` compiled by the backend equals eager within ``tol``, in ``graphs`` compiled graphs."""
    caplog.set_level(logging.INFO, logger="graphpress.dynamo")
    with torch.no_grad():
        got, want = torch.compile(module, backend="graphpress")(*args), module(*args)
    assert _compiled_graphs(caplog) == graphs, caplog.text
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=tol, rtol=tol)


def test_the_backend_is_registered_by_its_entry_point():
    from importlib.metadata import entry_points

    assert [e.value for e in entry_points(group="torch_dynamo_backends") if e.name == "graphpress"] == ["graphpress.dynamo:graphpress_backend"]
    assert "graphpress" in torch._dynamo.list_backends()


@pytest.mark.parametrize("make", [resnet18, mobilenet_v2], ids=["resnet18", "mobilenetv2"])
def test_zoo_cnns_match_eager(make, caplog):
    torch.manual_seed(0)
    _against_eager(make(num_classes=10).eval(), (torch.randn(1, 3, 64, 64),), caplog, graphs=1, tol=1e-4)


def test_minilm_matches_eager(caplog):
    from graphpress.models.minilm import load_minilm, tokenize

    args = tuple(tokenize(["a sentence for the compiled encoder"], seq_len=16).values())
    _against_eager(load_minilm().eval(), args, caplog, graphs=1, tol=1e-4)


class _Break(torch.nn.Module):
    """A data-dependent branch in Python: Dynamo breaks the graph there."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.a(x))
        if h.sum().item() > 0:  # graph break
            h = h * 2
        return self.b(h)


def test_a_graph_break_compiles_both_graphs(caplog):
    torch.manual_seed(0)
    _against_eager(_Break().eval(), (torch.randn(3, 8),), caplog, graphs=2, tol=1e-5)


def test_a_graph_it_cannot_take_runs_eagerly_with_the_reason_logged(caplog):
    """Zero tolerance against eager: the compiled float result differs in its last bits, so the
    graph falls back -- the user's program gets eager's output and one warning."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3)).eval()
    x = torch.randn(1, 3, 16, 16)
    caplog.set_level(logging.INFO, logger="graphpress.dynamo")
    with torch.no_grad():
        got = torch.compile(module, backend="graphpress", options={"atol": 0.0, "rtol": 0.0})(x)
        want = module(x)
    warnings = [r.getMessage() for r in caplog.records if r.name == "graphpress.dynamo" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "runs eagerly" in warnings[0] and "differs from eager" in warnings[0], warnings
    assert torch.equal(got, want)


def test_an_int8_recipe_stays_within_its_budget(caplog):
    """``recipe: int8`` with the caller's samples: the graph is quantized, compiled on the
    integer kernels and within the cosine budget of eager on an input it was not calibrated on."""
    torch.manual_seed(0)
    module = resnet18(num_classes=10).eval()
    samples = [(torch.randn(1, 3, 64, 64),) for _ in range(6)]
    x = torch.randn(1, 3, 64, 64)
    caplog.set_level(logging.INFO, logger="graphpress.dynamo")
    compiled = torch.compile(module, backend="graphpress", options={"recipe": "int8", "samples": samples, "budget": "cos:0.99"})
    with torch.no_grad():
        got, want = compiled(x), module(x)
    assert any("compiled for x86 (int8)" in r.getMessage() for r in caplog.records), caplog.text
    cosine = float(torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0))
    assert cosine >= 0.99, cosine
    assert not torch.equal(got, want)  # quantized: not the float result


def test_an_unknown_option_is_refused():
    module = torch.nn.Linear(4, 4).eval()
    with pytest.raises(Exception, match="unknown option.*recipes"):
        torch.compile(module, backend="graphpress", options={"recipes": "int8"})(torch.randn(2, 4))


class _Passthrough(torch.nn.Module):
    """Outputs that alias the code's memory: a constant, the input itself, a computed value."""

    def __init__(self):
        super().__init__()
        self.register_buffer("table", torch.arange(4, dtype=torch.float32))

    def forward(self, x):
        return self.table + 0, x * 1, x * 2


def test_outputs_are_fresh_tensors_and_inputs_are_untouched():
    """The direct path hands the input tensors' memory to the code and takes its outputs back by
    DLPack: the outputs are the caller's to change (as eager's are), and changing them changes
    neither the input nor the next call's result; an input that is a strided view (not dense)
    gives the same result as its dense copy."""
    fn = torch.compile(_Passthrough().eval(), backend="graphpress")
    x = torch.arange(8, dtype=torch.float32).reshape(2, 4)
    with torch.no_grad():
        first = fn(x)
        for out in first:
            out.add_(100)
        again = fn(x)
        np.testing.assert_array_equal(x.numpy(), np.arange(8, dtype=np.float32).reshape(2, 4))
        for got, want in zip(again, (torch.arange(4.0), x, x * 2)):
            np.testing.assert_array_equal(got.numpy(), want.numpy())
        wide = torch.arange(16, dtype=torch.float32).reshape(2, 8)[:, ::2]  # strided: not contiguous
        torch._dynamo.reset()
        strided = torch.compile(_Passthrough().eval(), backend="graphpress")(wide)
        np.testing.assert_array_equal(strided[2].numpy(), (wide * 2).numpy())
