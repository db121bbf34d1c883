"""Win back what compression cost: fine-tune the compressed model against the model it came
from, then write the trained weights back into the compressed graph (:func:`recover`).

The student is the compressed graph itself as a torch module (:func:`graphpress.ir_torch.to_torch`:
ONNX semantics, every Quantize/Dequantize pair included), so any model graphpress loads can be
trained -- one that came in as ONNX as well as one from torch -- and each compression keeps
its form while it trains:

* **knowledge distillation** (Hinton et al. 2015): the loss is the KL divergence between the
  teacher's and the student's outputs softened at temperature ``T`` (times ``T²``), for
  classifiers; for embeddings (unit-vector outputs: a sentence encoder), ``1 - cosine`` to the
  teacher's output. With ``labels``, a hard-label cross-entropy is mixed in (``alpha``);
  ``features`` adds a mean-squared term per named pair of intermediate values;
* **quantization-aware training**: int8 weights train as floats fake-quantized on the graph's
  scales (straight-through estimator), activations pass through the graph's own
  Quantize/Dequantize pairs; the written-back integers are exactly what the student computed
  with;
* **cluster-aware training** (Deep Compression): a shared weight's codebook trains (each
  centroid receives the summed gradient of its cluster through the ``Gather``), the indices
  and the pruned zeros stay;
* **pruned structure**: the student has the cut shapes; nothing grows back, and the zeros of
  unstructured pruning stay zero.

:func:`recover_blocks` trains block by block first (a transformer layer's pruned FFN alone,
fed the teacher's own input to it and matched to the teacher's output of it): cheap, many
rows (one per token), and no error of earlier layers to chase; :func:`recover` then trains the
whole student end to end.

The teacher is the model before compression: any model graphpress loads (run in ONNX
Runtime) or the ``nn.Module`` (run in torch). The data is the user's inputs, no labels
needed. The result is the compressed graph with new weights (the same nodes, shapes, scales,
codebooks), checked against the trained student in ONNX Runtime and judged on held-out rows
against the teacher before and after.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from graphpress.errors import GraphpressError
from graphpress.ir.external_data import rebase

__all__ = ["BlocksResult", "RecoverResult", "recover", "recover_blocks"]


@dataclasses.dataclass
class RecoverResult:
    """What :func:`recover` trained.

    Attributes:
        model: the compressed graph with the trained weights.
        module: the trained student (the module of :func:`graphpress.to_module`).
        history: one dict per epoch: ``epoch``, ``loss`` (mean training loss), ``held_out``
            (the metric on the held-out rows, against the teacher), ``seconds``.
        metric: ``agreement`` (top-1 agreement with the teacher), ``accuracy`` (with labels)
            or ``cosine`` (mean output cosine to the teacher); higher is better.
        before, after: the metric of the compressed graph before and after, in ONNX Runtime,
            on the held-out rows.
        seconds: training time (the epochs), and ``total_seconds`` with the checks.
        epoch: the epoch whose weights were kept (the best held-out metric; ties go to the later
            epoch); 0 when every epoch was worse than the weights before training, which are then kept.
    """

    model: ir.Model
    module: Any
    history: list[dict[str, float]]
    metric: str
    before: float
    after: float
    seconds: float
    total_seconds: float
    device: str
    epoch: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "before": self.before, "after": self.after, "history": self.history, "epoch": self.epoch,
                "seconds": self.seconds, "total_seconds": self.total_seconds, "device": self.device}  # fmt: skip


def _student_graph(student: Any, who: str) -> ir.Model:
    """The compressed model given as an IR model, an ``.onnx`` path or a ``CompressResult``."""
    from graphpress.ir import load

    if hasattr(student, "model") and isinstance(getattr(student, "model"), ir.Model):
        student = student.model
    graph = load(student) if isinstance(student, (str, os.PathLike)) else student
    if not isinstance(graph, ir.Model):
        raise GraphpressError(f"{who}: give the compressed model (an IR model, an .onnx path or a CompressResult), not {type(student).__name__}")
    return graph


def _rows(data: Any, names: list[str]) -> dict[str, np.ndarray]:
    """The training inputs as one array per model input, rows along the first axis."""
    from graphpress.ir.numeric import read_npz

    if isinstance(data, (str, os.PathLike)):
        data = read_npz(data)
    if isinstance(data, Mapping):
        missing = [n for n in names if n not in data]
        if missing:
            raise GraphpressError(f"recover: the data has no input {missing[0]!r}; give arrays keyed by the model's inputs: {', '.join(names)}")
        arrays = {n: np.asarray(data[n]) for n in names}
    elif isinstance(data, Sequence) and data and all(isinstance(d, Mapping) for d in data):
        arrays = {n: np.concatenate([np.asarray(d[n]) for d in data]) for n in names}
    else:
        raise GraphpressError(f"recover: data must be an .npz path, a dict of input name -> rows, or a list of such dicts; got a {type(data).__name__}")
    counts = {len(a) for a in arrays.values()}
    if len(counts) != 1:
        raise GraphpressError(f"recover: the data's inputs have different row counts ({sorted(counts)}); give the same rows for every input")
    return arrays


def _outputs(out) -> Any:
    import torch

    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        return next(iter(out.values()))
    return out[0]


def _teacher_outputs(teacher, arrays: dict[str, np.ndarray], batch: int, device) -> np.ndarray:
    """The teacher's first output on every row (torch module, or any model in ONNX Runtime)."""
    import torch

    n = len(next(iter(arrays.values())))
    if isinstance(teacher, torch.nn.Module):
        teacher = teacher.to(device).eval()
        outs = []
        with torch.no_grad():
            for i in range(0, n, batch):
                outs.append(_outputs(teacher(*(torch.from_numpy(a[i : i + batch]).to(device) for a in arrays.values()))).float().cpu().numpy())
        return np.concatenate(outs)
    from graphpress.ir import load

    return _graph_outputs(load(teacher), arrays, where="the teacher")


def _metric_name(kind: str, labels) -> str:
    """What judges the held-out rows: accuracy with labels, top-1 agreement for a classifier
    (``kl``), the output cosine for embeddings and regressions (``cosine``, ``mse``)."""
    return "accuracy" if labels is not None else ("agreement" if kind == "kl" else "cosine")


def _score(metric: str, got: np.ndarray, teacher: np.ndarray, labels) -> float:
    got, teacher = got.reshape(len(got), -1), teacher.reshape(len(teacher), -1)
    if metric == "accuracy":
        return float((got.argmax(1) == labels).mean())
    if metric == "agreement":
        return float((got.argmax(1) == teacher.argmax(1)).mean())
    num = (got * teacher).sum(1)
    return float((num / np.maximum(np.linalg.norm(got, axis=1) * np.linalg.norm(teacher, axis=1), 1e-12)).mean())


def _feed_rows(model: ir.Model, arrays: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """One feed per row, keyed by ``model``'s own input names (in the order of ``arrays``)."""
    inputs = [v.name for v in model.graph.inputs if v.name not in model.graph.initializers]
    n = len(next(iter(arrays.values())))
    return [{name: a[i : i + 1] for name, a in zip(inputs, arrays.values())} for i in range(n)]


def _graph_outputs(model: ir.Model, arrays: dict[str, np.ndarray], where: str = "the compressed model") -> np.ndarray:
    """``model``'s first output on every row (ONNX Runtime, row by row), one row per line."""
    from graphpress.ir.numeric import run_samples

    rows = _feed_rows(model, arrays)
    return np.asarray(run_samples(model, rows, where=where)[model.graph.outputs[0].name]).reshape(len(rows), -1)


def recover(
    student: Any,
    teacher: Any,
    data: Any,
    *,
    epochs: int = 3,
    lr: float = 1e-3,
    batch_size: int = 32,
    temperature: float = 2.0,
    loss: str = "auto",
    labels: np.ndarray | None = None,
    alpha: float = 0.5,
    features: Mapping[str, str] | None = None,
    feature_weight: float = 1.0,
    feature_mask: str | None = None,
    freeze: Sequence[str] = (),
    schedule: str = "constant",
    held_out: float = 0.25,
    seed: int = 0,
    device: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> RecoverResult:
    """Fine-tune the compressed ``student`` on ``data`` against ``teacher`` and write the trained
    weights back into it.

    Args:
        student: the compressed model: an IR model, an ``.onnx`` path or a ``CompressResult``.
        teacher: the model before compression: the ``torch.nn.Module``, or a model
            :func:`graphpress.load` reads (run in ONNX Runtime).
        data: training inputs: an ``.npz`` path or a dict of input name -> rows (first axis),
            or a list of feed dicts. The last ``held_out`` share of rows only judges.
        epochs, lr, batch_size: Adam over the student's parameters.
        temperature: the softening of distillation (``loss="kl"``).
        loss: ``kl`` (classifier outputs), ``cosine`` (embeddings), ``mse``, or ``auto``:
            ``cosine`` when the outputs are unit vectors, else ``kl``.
        labels: one class per row: a cross-entropy term weighted ``alpha`` (and the metric
            becomes accuracy).
        features: ``{student value: teacher value}`` pairs of intermediate values matched by
            mean squared error (weighted ``feature_weight``): value names of the graphs (a
            teacher ``nn.Module`` names submodules instead); the shapes must agree (a pruned
            layer's output has fewer channels than its teacher's).
        feature_mask: an input of the model (``attention_mask``) whose rows weight the
            positions of every feature pair (a feature's first two axes are rows and positions):
            positions it zeroes (padding) are not matched.
        freeze: substrings of initializer names whose weights are not trained (``embeddings``:
            a word-embedding table that a few thousand rows would only overfit).
        schedule: ``constant`` learning rate, or ``cosine``: decayed from ``lr`` to 0 over
            the training steps (SGDR without restarts).
        seed: seeds torch and the shuffling: the same call gives the same weights.
        device: ``cpu`` or ``cuda`` (default: cuda when torch sees one).
        progress: called with one line per epoch (loss, held-out metric).

    Raises:
        GraphpressError: a bad option or data, an op of the student without a torch form, or
            a write-back that does not compute what the trained student computes.
    """
    import torch

    from graphpress.ir_torch import to_torch

    start = time.perf_counter()
    graph = _student_graph(student, "recover")
    if loss not in ("auto", "kl", "cosine", "mse"):
        raise GraphpressError(f"recover: loss '{loss}': choose auto, kl, cosine or mse")
    if schedule not in ("constant", "cosine"):
        raise GraphpressError(f"recover: schedule '{schedule}': choose constant or cosine")
    if epochs < 0 or lr <= 0 or batch_size < 1 or temperature <= 0 or not 0 <= alpha <= 1 or not 0 < held_out < 1:
        raise GraphpressError("recover: epochs >= 0, lr > 0, batch_size >= 1, temperature > 0, 0 <= alpha <= 1 and 0 < held_out < 1")
    say = progress or (lambda line: None)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    names = [v.name for v in graph.graph.inputs if v.name not in graph.graph.initializers]
    arrays = _rows(data, names)
    n = len(next(iter(arrays.values())))
    if labels is not None and len(labels) != n:
        raise GraphpressError(f"recover: {len(labels)} labels for {n} rows; give one label per row")
    cut = n - max(1, int(round(n * held_out)))
    if cut < 1:
        raise GraphpressError(f"recover: {n} rows of data; give at least 2 (the last {held_out:.0%} judge)")
    train = {k: a[:cut] for k, a in arrays.items()}
    judge = {k: a[cut:] for k, a in arrays.items()}
    torch.manual_seed(seed)
    net = to_torch(graph, samples=[{k: a[cut : cut + 1] for k, a in arrays.items()}])
    if feature_mask is not None and (not features or feature_mask not in arrays):
        raise GraphpressError(f"recover: feature_mask {feature_mask!r}: name an input of the model ({', '.join(names)}) and give features to match")
    feats = _Features(net, teacher, features, arrays, batch_size, device, arrays.get(feature_mask)) if features else None
    if isinstance(freeze, str):
        freeze = [freeze]
    frozen = [name for name in net.param_names() if any(s in name for s in freeze)]
    for s in freeze:
        if not any(s in name for name in frozen):
            raise GraphpressError(f"recover: freeze {s!r} names no trained weight of the student; give substrings of its initializer names")
    net.freeze(frozen)
    targets = _teacher_outputs(teacher, arrays, batch_size, device)
    norms = np.linalg.norm(targets.reshape(n, -1), axis=1)
    kind = loss if loss != "auto" else ("cosine" if np.allclose(norms, 1.0, atol=1e-3) else "kl")
    metric = _metric_name(kind, labels)
    judge_labels = None if labels is None else np.asarray(labels)[cut:]
    before = _score(metric, _graph_outputs(graph, judge), targets[cut:], judge_labels)
    say(f"held-out {metric} of the compressed model before: {before:.4f} ({n - cut} rows; training on {cut})")

    net.to(device)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr)
    steps = max(1, epochs * -(-cut // batch_size))
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if schedule == "cosine" else None
    generator = torch.Generator().manual_seed(seed)
    runner = _Batches(net, device)
    history = []
    # the weights the held-out rows judge best are the ones kept: training that makes the
    # held-out metric worse (too little data, too high a rate) never costs the model anything
    initial = _snapshot(net)
    best: tuple[float, int, dict | None] = (-np.inf, 0, None)
    train_start = time.perf_counter()
    # subnormal floats (weights and gradients trained toward zero) make CPU arithmetic ~100x
    # slower: a 3-epoch recovery of the digits CNN took 7 s with them flushed and > 11 min without
    with _flush_denormals():
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            net.train()
            order = torch.randperm(cut, generator=generator).numpy()
            total, batches = 0.0, 0
            for i in range(0, cut, batch_size):
                idx = order[i : i + batch_size]

                def objective(out, rows, idx=idx):
                    want = torch.from_numpy(targets[idx][rows]).to(device).float()
                    value = _distill(kind, out.float(), want, temperature)
                    if labels is not None:
                        hard = torch.from_numpy(np.asarray(labels)[idx][rows]).to(device)
                        value = (1 - alpha) * value + alpha * torch.nn.functional.cross_entropy(out.reshape(len(rows), -1).float(), hard)
                    if feats is not None:
                        value = value + feature_weight * feats.loss(idx[rows])
                    return value

                opt.zero_grad()
                value = runner.step({k: a[idx] for k, a in train.items()}, objective)
                opt.step()
                if decay is not None:
                    decay.step()
                total, batches = total + value, batches + 1
            net.eval()
            score = _score(metric, runner.outputs(judge, batch_size), targets[cut:], judge_labels)
            row = {"epoch": epoch, "loss": round(total / max(batches, 1), 6), "held_out": round(score, 6), "seconds": round(time.perf_counter() - t0, 2)}
            history.append(row)
            say(f"epoch {epoch}/{epochs}: loss {row['loss']:.5f}, held-out {metric} {score:.4f} ({row['seconds']:.1f} s)")
            if score >= best[0]:
                best = (score, epoch, _snapshot(net) if epoch < epochs else None)
    seconds = time.perf_counter() - train_start
    kept = best[1] if best[0] >= before else 0
    if kept != epochs:
        net.load_state_dict(initial if kept == 0 else best[2])
        say(f"kept the weights {'before training' if kept == 0 else f'of epoch {kept}'}: held-out {metric} {max(best[0], before):.4f}")
    net.eval().to("cpu")
    result = net.write_back()
    _check_written(result, net, judge)
    after = _score(metric, _graph_outputs(result, judge), targets[cut:], judge_labels)
    say(f"held-out {metric} of the compressed model: {before:.4f} before, {after:.4f} after")
    return RecoverResult(result, net, history, metric, round(before, 6), round(after, 6), round(seconds, 2), round(time.perf_counter() - start, 2), str(device), kept)


@contextlib.contextmanager
def _flush_denormals():
    """Subnormal floats flushed to zero while training (torch's CPU switch), then back to IEEE."""
    import torch

    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def _snapshot(net) -> dict:
    """A copy of the student's parameters and buffers (on the CPU: device memory is kept for training)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


@contextlib.contextmanager
def _one_thread(device):
    """One intra-op thread on CPU while ``with``: one row's ops are too small to share, and each
    shared op waits at an OpenMP barrier for the other thread. On a busy machine that wait cost
    the digits CNN's row-by-row int8 recovery 500 s an epoch with 2 threads, against 2.5 s with
    one (the README's ``compress --recover`` line, in CI beside the other test worker)."""
    import torch

    threads = torch.get_num_threads()
    if str(device) != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _Batches:
    """Runs the student on a batch of rows at once, or row by row (gradients accumulated) when
    the graph's shapes are fixed to one row (a model exported with batch 1)."""

    def __init__(self, net, device):
        self.net, self.device, self.batched = net, device, True

    def _args(self, rows: dict[str, np.ndarray]) -> tuple:
        import torch

        return tuple(torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in rows.values())

    def step(self, rows: dict[str, np.ndarray], objective) -> float:
        n = len(next(iter(rows.values())))
        if self.batched and n > 1:
            try:
                value = objective(_outputs(self.net(*self._args(rows))), np.arange(n))
            except RuntimeError:
                self.batched = False
            else:
                value.backward()
                return float(value.detach())
        total = 0.0
        with _one_thread(self.device):
            for i in range(n):
                value = objective(_outputs(self.net(*self._args({k: a[i : i + 1] for k, a in rows.items()}))), np.array([i])) / n
                value.backward()
                total += float(value.detach())
        return total

    def outputs(self, rows: dict[str, np.ndarray], batch: int) -> np.ndarray:
        import torch

        n = len(next(iter(rows.values())))
        step = batch if self.batched else 1
        outs = []
        with torch.no_grad(), _one_thread(self.device) if step == 1 else contextlib.nullcontext():
            for i in range(0, n, step):
                try:
                    out = _outputs(self.net(*self._args({k: a[i : i + step] for k, a in rows.items()})))
                except RuntimeError:
                    if step == 1:
                        raise
                    self.batched = False
                    return self.outputs(rows, 1)
                outs.append(out.float().cpu().numpy().reshape(len(out) if step > 1 else 1, -1))
        return np.concatenate(outs).reshape(n, -1)


def _check_written(model: ir.Model, net, rows: dict[str, np.ndarray]) -> None:
    """The written-back graph in ONNX Runtime against the trained student, on two held-out rows
    (cosine 0.9999; 0.99 for a quantized graph, where a last-bit difference flips a rounding:
    :func:`graphpress.ir_torch.to_torch`)."""
    import torch

    first = {k: a[:2] for k, a in rows.items()}
    want = _Batches(net, torch.device("cpu")).outputs(first, 1)
    got = _graph_outputs(model, first)
    cos = float((got * want).sum() / max(np.linalg.norm(got) * np.linalg.norm(want), 1e-30))
    quantized = any(n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear") for n in model.graph)
    if cos < (0.99 if quantized else 0.9999):
        raise GraphpressError(f"recover: the written-back model has cosine {cos:.5f} to the trained student in ONNX Runtime; report it with the model")


def _distill(kind: str, out, want, temperature: float):
    import torch

    f = torch.nn.functional
    out, want = out.reshape(len(out), -1), want.reshape(len(want), -1)
    if kind == "kl":
        t = temperature
        return f.kl_div(f.log_softmax(out / t, dim=1), f.log_softmax(want / t, dim=1), reduction="batchmean", log_target=True) * t * t
    if kind == "cosine":
        return (1 - f.cosine_similarity(out, want, dim=1)).mean()
    return f.mse_loss(out, want)


class _Features:
    """Feature matching: the student's named values (captured by the :class:`GraphModule`)
    against the teacher's, computed once for every row (ONNX Runtime for a graph teacher,
    forward hooks on named submodules for an ``nn.Module``)."""

    def __init__(self, net, teacher, pairs: Mapping[str, str], arrays: dict[str, np.ndarray], batch: int, device, mask: np.ndarray | None = None):
        import torch

        self.net, self.pairs, self.device = net, dict(pairs), device
        self.mask = None if mask is None else np.asarray(mask, dtype=np.float32)
        missing = [s for s in self.pairs if s not in net.values]
        if missing:
            raise GraphpressError(f"recover: features: the student has no value {missing[0]!r}; name values of the compressed graph")
        self.want: dict[str, np.ndarray] = {}
        if isinstance(teacher, torch.nn.Module):
            got: dict[str, list] = {t: [] for t in self.pairs.values()}
            handles = []
            for t in got:
                try:
                    sub = teacher.get_submodule(t)
                except AttributeError:
                    raise GraphpressError(f"recover: features: the teacher has no submodule {t!r}; name submodules as named_modules() does") from None
                handles.append(sub.register_forward_hook(lambda _m, _a, out, t=t: got[t].append(_outputs(out).detach().float().cpu().numpy())))
            try:
                _teacher_outputs(teacher, arrays, batch, device)
            finally:
                for h in handles:
                    h.remove()
            self.want = {t: np.concatenate(v) for t, v in got.items()}
        else:
            from graphpress.ir import load
            from graphpress.ir.numeric import _Session

            model = load(teacher)
            session = _Session(model, list(self.pairs.values()), "the teacher")
            outs = [session.run(r) for r in _feed_rows(model, arrays)]
            self.want = {t: np.concatenate([np.asarray(o[t]) for o in outs]) for t in self.pairs.values()}
        net.capture = set(self.pairs)

    def loss(self, idx: np.ndarray):
        import torch

        total = 0.0
        for s, t in self.pairs.items():
            a = self.net.captured[s]
            b = torch.from_numpy(self.want[t][idx]).to(a.device).reshape(a.shape) if self.want[t][idx].size == a.numel() else None
            if b is None:
                raise GraphpressError(f"recover: feature pair {s!r} -> {t!r}: shapes {list(a.shape)} and {list(self.want[t][idx].shape)} differ (a pruned layer?); match values whose shapes agree")
            if self.mask is None:
                total = total + torch.nn.functional.mse_loss(a.float(), b.float())
                continue
            m = self.mask[idx]
            if a.dim() < 2 or tuple(a.shape[:2]) != m.shape[:2] or m.ndim != 2:
                raise GraphpressError(f"recover: feature_mask of shape {list(m.shape)} does not weight the positions of {s!r} (shape {list(a.shape)}); match values shaped [rows, positions, ...]")
            w = torch.from_numpy(m).to(a.device).reshape(*m.shape, *([1] * (a.dim() - 2)))
            per = a[0, 0].numel()
            total = total + (((a.float() - b.float()) ** 2) * w).sum() / (w.sum().clamp(min=1.0) * per)
        return total / len(self.pairs)


@dataclasses.dataclass
class BlocksResult:
    """What :func:`recover_blocks` trained.

    Attributes:
        model: the student (a copy) with every block's trained weights.
        blocks: per block (``"input -> output"``): its :meth:`RecoverResult.to_dict` (held-out
            cosine of the block's output to the teacher's before/after, epochs) and ``rows``,
            the rows (positions, with ``mask``) it trained on.
        seconds: the training time of all blocks; ``total_seconds`` with the teacher's runs and checks.
    """

    model: ir.Model
    blocks: dict[str, dict[str, Any]]
    seconds: float
    total_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"blocks": self.blocks, "seconds": self.seconds, "total_seconds": self.total_seconds}


def recover_blocks(
    student: Any,
    teacher: Any,
    data: Any,
    blocks: Mapping[str, str] | str,
    *,
    mask: str | None = None,
    inputs: str = "student",
    epochs: int = 5,
    lr: float = 1e-3,
    batch_size: int = 256,
    schedule: str = "cosine",
    held_out: float = 0.05,
    seed: int = 0,
    device: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> BlocksResult:
    """Block-wise distillation: each block of the student (the nodes between an ``input`` and an
    ``output`` value, ``blocks={input: output}``) is trained alone, matched (mean squared error)
    to the teacher's ``output`` -- the pruned feed-forward network of a transformer layer learns
    to compute what the whole one did, at the cost of that block alone. Blocks train in the
    order given, each fed ``input`` as the student computes it with the blocks before it trained
    (``inputs="student"``: each block also makes up for the error the student still has before
    it), or as the teacher computes it (``"teacher"``: one run of the teacher for all blocks).
    The trained weights are written back into a copy of the student; :func:`recover` then
    trains the whole student end to end.

    Args:
        student: the compressed model (IR model, ``.onnx`` path or ``CompressResult``).
        teacher: the model before compression, as a graph (IR model or ``.onnx`` path): the
            values are named as in the student (the passes keep value names).
        data: the whole model's inputs, as for :func:`recover`.
        blocks: ``{input value: output value}``; the block must read nothing else of the graph
            but constants. ``"auto"``: every span from one ``LayerNormalization`` to the next
            that is such a block and whose weights the compression changed (a transformer's
            feed-forward networks: the attention between them also reads the mask).
        inputs: ``student`` or ``teacher``: whose value of ``input`` feeds each block.
        mask: an input of the model (``attention_mask``) shaped ``[rows, positions]``: the block
            then trains on positions, one row per position the mask keeps (padding is not
            trained on), which needs a block that computes each position alone (checked on
            the teacher's own block).
        epochs, lr, batch_size, schedule, held_out, seed, device, progress: as :func:`recover`,
            per block (rows are positions with ``mask``).

    Raises:
        GraphpressError: a value missing from either graph, a block that reads another input,
            a block that does not compute its output from its input alone (position by position
            with ``mask``), or any error of :func:`recover`.
    """
    from graphpress.ir import load
    from graphpress.ir.io import to_proto
    from graphpress.pipelines import copy_model

    start = time.perf_counter()
    student = _student_graph(student, "recover_blocks")
    try:
        teacher = load(teacher)
    except (GraphpressError, TypeError, ValueError) as e:
        raise GraphpressError(f"recover_blocks: give the teacher as a graph (graphpress.load(module, example) for a torch module): {e}") from None
    if blocks == "auto":
        blocks = _auto_blocks(student, teacher)
    if not blocks or isinstance(blocks, str):
        raise GraphpressError(f"recover_blocks: blocks={blocks!r}: give {{input value: output value}} or 'auto'")
    say = progress or (lambda line: None)
    names = [v.name for v in teacher.graph.inputs if v.name not in teacher.graph.initializers]
    arrays = _rows(data, names)
    if inputs not in ("student", "teacher"):
        raise GraphpressError(f"recover_blocks: inputs '{inputs}': choose student or teacher")
    if mask is not None and (mask not in arrays or arrays[mask].ndim != 2):
        raise GraphpressError(f"recover_blocks: mask {mask!r}: name an input of the model shaped [rows, positions] ({', '.join(names)})")
    out = copy_model(student)
    items = list(blocks.items())
    t_proto, s_proto = to_proto(teacher), to_proto(out)  # the teacher's never changes
    for first, last in items:  # the names and the blocks' bounds, before the teacher runs
        for source, proto, where in ((out, s_proto, "student"), (teacher, t_proto, "teacher")):
            _block(source, proto, first, last, where)
    done: dict[str, dict[str, Any]] = {}
    seconds = 0.0
    for group in _groups(teacher, arrays, items, mask):
        # one run of the teacher gives the values of as many blocks as BLOCK_VALUES_BYTES holds
        values = _teacher_values(teacher, arrays, list(dict.fromkeys(v for pair in group for v in pair)), mask)
        for first, last in group:
            label = f"{first} -> {last}"
            x, y = values[first], values[last]
            # the student as trained so far (a weight two blocks share keeps the first one's training)
            s_block = _block(out, to_proto(out), first, last, "student", x.shape[1:], y.shape[1:])
            t_block = _block(teacher, t_proto, first, last, "teacher", x.shape[1:], y.shape[1:])
            _check_block(t_block, x, y, label, mask)
            if inputs == "student":  # the student as trained so far
                x = _teacher_values(out, arrays, [first], mask, "the student")[first]
            say(f"block {label}: {len(x)} rows ({inputs} inputs)")
            result = recover(s_block, t_block, {first: x}, epochs=epochs, lr=lr, batch_size=batch_size, loss="mse", schedule=schedule, held_out=held_out, seed=seed, device=device, progress=progress)  # fmt: skip
            for name, value in result.model.graph.initializers.items():
                if name in out.graph.initializers:
                    out.graph.initializers[name].const_value = value.const_value
            done[label] = {**result.to_dict(), "rows": len(x)}
            seconds += result.seconds
        del values
    return BlocksResult(out, done, round(seconds, 2), round(time.perf_counter() - start, 2))


def _auto_blocks(student: ir.Model, teacher: ir.Model) -> dict[str, str]:
    """The spans between consecutive ``LayerNormalization`` outputs that are blocks of their own
    in both graphs and whose weights differ between them (see :func:`recover_blocks`)."""
    from graphpress.ir.io import to_proto

    norms = [n.outputs[0].name for n in teacher.graph if n.op_type == "LayerNormalization" and n.domain in ("", "ai.onnx")]
    s_proto, t_proto = to_proto(student), to_proto(teacher)
    found = {}
    for first, last in zip(norms, norms[1:]):
        try:
            s_block, t_block = _block(student, s_proto, first, last, "student"), _block(teacher, t_proto, first, last, "teacher")
        except GraphpressError:
            continue
        s_w, t_w = s_block.graph.initializers, t_block.graph.initializers
        if s_w.keys() != t_w.keys() or any(s_w[k].const_value.shape != t_w[k].const_value.shape or not np.array_equal(s_w[k].const_value.numpy(), t_w[k].const_value.numpy()) for k in s_w):
            found[first] = last
    if not found:
        raise GraphpressError("recover_blocks: blocks='auto' found no compressed span between two LayerNormalization outputs that reads only its input; name the blocks")
    return found


#: the teacher's block values held at once (the blocks' inputs and outputs on every row): more
#: blocks than that take more runs of the teacher
BLOCK_VALUES_BYTES = 2 << 30


def _groups(teacher: ir.Model, arrays: dict[str, np.ndarray], items: list[tuple[str, str]], mask: str | None) -> list[list[tuple[str, str]]]:
    """``items`` in consecutive groups whose values on every row fit :data:`BLOCK_VALUES_BYTES`
    (sized on the first 4 rows)."""
    names = list(dict.fromkeys(v for pair in items for v in pair))
    probe_rows = min(4, len(next(iter(arrays.values()))))
    probe = _teacher_values(teacher, {k: a[:probe_rows] for k, a in arrays.items()}, names, mask)
    kept = max(1, int(np.asarray(arrays[mask][:probe_rows]).astype(bool).sum())) if mask is not None else probe_rows
    total = int(np.asarray(arrays[mask]).astype(bool).sum()) if mask is not None else len(next(iter(arrays.values())))
    per = {k: v.nbytes / kept * total for k, v in probe.items()}
    groups: list[list[tuple[str, str]]] = []
    size = 0.0
    for pair in items:
        need = per[pair[0]] + per[pair[1]]
        if groups and size + need <= BLOCK_VALUES_BYTES:
            groups[-1].append(pair)
            size += need
        else:
            groups.append([pair])
            size = need
    return groups


def _block(source: ir.Model, proto, first: str, last: str, where: str, x_shape: tuple[int, ...] = (), y_shape: tuple[int, ...] = ()) -> ir.Model:
    """The nodes of ``proto`` (``source`` serialized once by the caller) that compute ``last`` from
    ``first`` and constants, as a model of their own: input ``first`` shaped ``[rows, *x_shape]``,
    output ``last`` ``[rows, *y_shape]``; weights kept in ``source``'s data file are read from there."""
    import onnx

    graph = proto.graph
    producer = {o: n for n in graph.node for o in n.output if o}
    consts = {t.name for t in graph.initializer}
    inputs = {v.name for v in graph.input}
    if first not in producer and first not in inputs:
        raise GraphpressError(f"recover_blocks: the {where} has no value {first!r}; name values of the graphs (both keep the same names)")
    if last not in producer:
        raise GraphpressError(f"recover_blocks: the {where} has no value {last!r} computed by a node; name values of the graphs")
    keep, stack, seen = [], [last], set()
    while stack:
        name = stack.pop()
        if name in seen or name == first or name in consts or not name:
            continue
        seen.add(name)
        node = producer.get(name)
        if node is None:
            raise GraphpressError(f"recover_blocks: block {first} -> {last} of the {where} also reads {name!r}; give blocks that read only their input and constants")
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise GraphpressError(f"recover_blocks: block {first} -> {last} holds control flow ({node.op_type} '{node.name}'); give blocks without If/Loop/Scan")
        if id(node) not in {id(n) for n in keep}:
            keep.append(node)
        stack.extend(node.input)
    if first not in seen and not any(first in n.input for n in keep):
        raise GraphpressError(f"recover_blocks: {last!r} does not depend on {first!r} in the {where}; give an input value the block reads")
    order = {id(n): i for i, n in enumerate(graph.node)}
    keep.sort(key=lambda n: order[id(n)])
    used = {i for n in keep for i in n.input}
    elem = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info, *graph.output]}
    x = onnx.helper.make_tensor_value_info(first, elem.get(first, onnx.TensorProto.FLOAT), ["rows", *x_shape])
    y = onnx.helper.make_tensor_value_info(last, elem.get(last, onnx.TensorProto.FLOAT), ["rows", *y_shape])
    sub = onnx.helper.make_graph(keep, f"block_{first}_{last}", [x], [y], [t for t in graph.initializer if t.name in used])
    block = onnx.helper.make_model(sub, opset_imports=proto.opset_import, ir_version=proto.ir_version)
    return rebase(ir.serde.deserialize_model(block), source)


def _teacher_values(teacher: ir.Model, arrays: dict[str, np.ndarray], names: list[str], mask: str | None, where: str = "the teacher") -> dict[str, np.ndarray]:
    """The teacher's (or another model's) values ``names`` on every row (ONNX Runtime with its
    graph optimizations, batches of 32 rows when the graph takes them, else row by row); with
    ``mask``, one row per position it keeps."""
    from graphpress.ir.numeric import _Session

    session = _Session(_up_to(teacher, names), names, where, best=True)
    n = len(next(iter(arrays.values())))
    got: dict[str, list[np.ndarray]] = {k: [] for k in names}
    step = 32
    i = 0
    while i < n:
        feeds = {k: a[i : i + step] for k, a in arrays.items()}
        try:
            values = session.run(feeds)
        except GraphpressError:
            if step == 1:
                raise
            step = 1  # shapes fixed to one row
            continue
        keep = np.asarray(arrays[mask][i : i + step]).astype(bool) if mask is not None else None
        for k in names:
            v = np.asarray(values[k])
            if keep is not None:
                if v.shape[:2] != keep.shape:
                    raise GraphpressError(f"recover_blocks: mask {mask!r} of shape {list(keep.shape)} does not weight the positions of {k!r} (shape {list(v.shape)})")
                v = v[keep]
            got[k].append(v)
        i += step
    return {k: np.concatenate(got[k]) for k in names}


def _up_to(model: ir.Model, names: list[str]):
    """``model`` as an ONNX proto with only the nodes ``names`` depend on, and ``names`` as its
    outputs: ONNX Runtime runs every node of a graph whatever outputs a run asks for, so the
    values of a model's first layers cost a whole run of it (12 whole runs of MiniLM on 14,500
    sentences were most of a block-wise distillation's time). A graph with subgraphs (which read
    outer values without naming them as inputs) is kept whole."""
    import onnx

    from graphpress.ir.io import _materialize, to_proto

    proto = _materialize(to_proto(model), model)
    graph = proto.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for node in graph.node for a in node.attribute):
        return proto
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output}
    keep: set[int] = set()
    stack = list(names)
    while stack:
        i = producer.get(stack.pop())
        if i is not None and i not in keep:
            keep.add(i)
            stack.extend(v for v in graph.node[i].input if v)
    nodes = [node for i, node in enumerate(graph.node) if i in keep]
    read = {v for node in nodes for v in node.input}
    del graph.node[:]
    graph.node.extend(nodes)
    weights = {t.name for t in graph.initializer}
    initializers = [t for t in graph.initializer if t.name in read]
    inputs = [v for v in graph.input if v.name not in weights or v.name in read]  # (IR < 4 lists weights as inputs too)
    del graph.initializer[:], graph.input[:]
    graph.initializer.extend(initializers)
    graph.input.extend(inputs)
    del graph.output[:]
    graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
    return proto


def _check_block(block: ir.Model, x: np.ndarray, y: np.ndarray, label: str, mask: str | None) -> None:
    """The teacher's own block, fed the teacher's input values, must give its output values
    (cosine 0.9999 on the first 256 rows): else the block reads more than its input."""
    from graphpress.ir.numeric import _Session

    rows = slice(0, 256)
    try:
        got = np.asarray(_Session(block, [block.graph.outputs[0].name], "the block").run({block.graph.inputs[0].name: x[rows]})[block.graph.outputs[0].name])
    except GraphpressError as e:
        got, why = None, str(e)
    if got is not None and got.shape == y[rows].shape:
        g, w = got.reshape(-1).astype(np.float64), y[rows].reshape(-1).astype(np.float64)
        cos = float(g @ w / max(np.linalg.norm(g) * np.linalg.norm(w), 1e-30))
        if cos >= 0.9999:
            return
        why = f"cosine {cos:.5f} to the teacher's own values"
    elif got is not None:
        why = f"shape {list(got.shape)} instead of {list(y[rows].shape)}"
    per = " position by position (mask)" if mask is not None else ""
    raise GraphpressError(f"recover_blocks: block {label} does not compute its output from its input alone{per}: {why}; give values that bound a block{' or no mask' if mask else ''}")
