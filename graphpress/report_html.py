"""The report a person reads: one self-contained HTML page (``--report-html`` on ``optimize``,
``compile`` and ``compress``).

What it shows, per the literature the techniques come from:

* **summary** -- the parameter reduction rate ``r_p = (params before - after) / params before``
  (parameters: the nonzero weights of the layers; a pruned weight is removed or zero), the
  weight-sharing rate ``r_w = weights in shared layers / all weights``, bytes of the layers'
  weights as stored, and the speed-up ``t_orig / t_opt`` against ONNX Runtime on the model
  given;
* **latency** bars of every engine timed side by side (median, 10th-90th percentile);
* **per layer** -- the table of each layer's ``r_p``, sparsity, how it is stored, the error each
  lossy step added, ``eps = mean (x - x_hat)^2`` (``eps_q`` for quantization), and Deep
  Compression's rate ``n b / (n log2 k + k b)`` for a shared layer; and pictures of the largest
  layers: a slice of the weight before and after as heatmaps (a pruned weight is white) and the
  histograms of both, with the quantization grid or the cluster centroids drawn over them;
* **sensitivity** -- the accuracy control's per-layer SQNR bars (quantize), the layers it kept in
  float marked;
* **pass timeline** -- each pass's span, its verification (family, max abs diff, cosine) and,
  when one failed, the first diverging node; for ``compress`` every candidate the recipe tried
  and what became of it.

The pictures are drawn by matplotlib (Agg) as PNGs inside the page: nothing is fetched when
the page is viewed. The page is written whole or not at all (``graphpress.ir.atomic``).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from graphpress.ir.weights import LayerWeight, layer_weights, summary_of
from graphpress.passes.manager import Instrument

__all__ = ["WeightTrace", "layer_metrics", "write_html_report"]

#: layers drawn (the largest that changed); the table lists every layer
MAX_PICTURES = 16
#: the slice of a weight a heatmap shows (rows x columns of its 2-D view)
SLICE = (48, 96)


class WeightTrace(Instrument):
    """Keeps each layer's weight as the passes change it (the report's before/after pictures and
    per-step errors): the model's weights at the start, then, after every pass that modified the
    model, the layers whose weights changed. ``records`` holds every pass started, so a page can be
    written for a run a check stopped."""

    def __init__(self) -> None:
        self.snapshots: list[tuple[str, dict[str, LayerWeight]]] = []
        self.records: list[Any] = []

    def run_start(self, model: ir.Model) -> None:
        if not self.snapshots:
            self.snapshots.append(("the model given", layer_weights(model)))

    def before_pass(self, pass_, model, record) -> None:
        self.records.append(record)

    def after_pass(self, pass_, model, result, record) -> None:
        if record.modified:
            self.add(record.name, model)

    def add(self, label: str, model: ir.Model) -> None:
        """A snapshot of ``model``'s layers that differ from the latest snapshot."""
        latest = current_weights(self.snapshots)
        now = _same_keys(layer_weights(model), latest)
        changed = {k: w for k, w in now.items() if k not in latest or latest[k].values.shape != w.values.shape or latest[k].stored != w.stored
                   or not np.array_equal(latest[k].values, w.values)}  # fmt: skip
        removed = {k: None for k in latest if k not in now}
        if changed or removed:
            self.snapshots.append((label, {**changed, **removed}))


def _node_key(node: str) -> str:
    return node[: -len("_quant")] if node.endswith("_quant") else node  # ONNX Runtime's dynamic quantizer renames the layer node


def _same_keys(now: dict[str, LayerWeight], latest: Mapping[str, LayerWeight]) -> dict[str, LayerWeight]:
    """``now`` keyed like ``latest``: a layer whose weight initializer got a new name (constant
    folding writes a torch export's transposed weight as a new initializer) keeps the key of the
    layer node it belongs to."""
    by_node = {_node_key(w.node): k for k, w in latest.items()}
    out: dict[str, LayerWeight] = {}
    for key, w in now.items():
        old = by_node.get(_node_key(w.node))
        if key not in latest and old is not None and old not in now and old not in out:
            key, w = old, dataclasses.replace(w, key=old)
        out[key] = w
    return out


def current_weights(snapshots: Sequence[tuple[str, Mapping[str, LayerWeight | None]]]) -> dict[str, LayerWeight]:
    """Every layer's weight after the last snapshot."""
    out: dict[str, LayerWeight] = {}
    for _, layers in snapshots:
        for k, w in layers.items():
            if w is None:
                out.pop(k, None)
            else:
                out[k] = w
    return out


def layer_metrics(snapshots: Sequence[tuple[str, Mapping[str, LayerWeight | None]]]) -> list[dict[str, Any]]:
    """One row per layer of the first snapshot (and any layer added later): shapes, weights
    before/after, ``r_p``, sparsity, storage, the error each step that changed it added
    (``steps``: ``[label, eps]``; eps = mean (x - x_hat)^2 when the shape was kept), and Deep
    Compression's rate for a shared layer."""
    rows: dict[str, dict[str, Any]] = {}
    latest: dict[str, LayerWeight] = {}
    for label, layers in snapshots:
        for key, w in layers.items():
            prev = latest.get(key)
            if w is None:
                if prev is not None:
                    rows[key]["steps"].append([label, None])
                    latest.pop(key)
                continue
            if key not in rows:
                rows[key] = {"layer": key, "node": w.node, "op": w.op, "shape_before": list(w.values.shape), "weights_before": int(w.values.size),
                             "nonzero_before": int(np.count_nonzero(w.values)), "bytes_before": w.stored_bytes, "steps": []}  # fmt: skip
            elif prev is not None:
                eps = float(np.mean((prev.values.astype(np.float64) - w.values) ** 2)) if prev.values.shape == w.values.shape else None
                rows[key]["steps"].append([label, eps])
            latest[key] = w
    for key, row in rows.items():
        w = latest.get(key)
        if w is None:
            row.update(shape_after=None, weights_after=0, nonzero_after=0, bytes_after=0, stored="removed", r_p=1.0, sparsity=None)
            continue
        nonzero = int(np.count_nonzero(w.values))
        row.update(shape_after=list(w.values.shape), weights_after=int(w.values.size), nonzero_after=nonzero, bytes_after=w.stored_bytes,
                   stored=w.stored, node=w.node, op=w.op,
                   r_p=(row["nonzero_before"] - nonzero) / row["nonzero_before"] if row["nonzero_before"] else 0.0,
                   sparsity=1.0 - nonzero / w.values.size if w.values.size else 0.0)  # fmt: skip
        quant = [eps for label, eps in row["steps"] if eps is not None and "quant" in label]
        row["eps_q"] = quant[-1] if quant else None
        if w.stored == "shared" and w.grid is not None and len(w.grid) > 1:
            n, k, b = w.values.size, len(w.grid), 32
            row["deep_compression_rate"] = n * b / (n * math.log2(k) + k * b)
    return list(rows.values())


# ------------------------------------------------------------------------------ pictures


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _view(values: np.ndarray) -> np.ndarray:
    """A 2-D slice of a weight: output channels by the rest (a Conv's ``C_in*kh*kw``)."""
    a = values.reshape(values.shape[0], -1) if values.ndim >= 2 else values.reshape(1, -1)
    return a[: SLICE[0], : SLICE[1]]


def _layer_picture(row: Mapping[str, Any], before: LayerWeight, after: LayerWeight | None) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12.5, 3.0), gridspec_kw={"width_ratios": [1, 1.2, 1.25]}, layout="constrained")
    b = _view(before.values)
    vmax = float(np.max(np.abs(b))) or 1.0
    if after is not None and float(np.max(np.abs(after.values))) > 2 * vmax:  # a folded BatchNorm rescaled it: its own scale
        axes[0].set_xlabel("")
        fig.colorbar(axes[0].imshow(b, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest"), ax=axes[0], fraction=0.046)
        vmax = float(np.max(np.abs(_view(after.values)))) or 1.0
    else:
        axes[0].imshow(b, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
    axes[0].set_title(f"before {tuple(before.values.shape)}", fontsize=9)
    if after is not None:
        a = _view(after.values)
        image = axes[1].imshow(a, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
        axes[1].set_title(f"after {tuple(after.values.shape)}: {after.stored}, {row['sparsity']:.0%} zero", fontsize=9)
        fig.colorbar(image, ax=axes[1], fraction=0.046)
    for ax in axes[:2]:
        ax.set_xlabel("input (x kernel)", fontsize=8)
        ax.set_ylabel("output channel", fontsize=8)
        ax.tick_params(labelsize=7)
    ax = axes[2]
    flat_b = before.values.reshape(-1)
    low, high = float(flat_b.min()), float(flat_b.max())
    if low == high:
        low, high = low - 1, high + 1
    bins = np.linspace(low, high, 121)
    ax.hist(flat_b, bins=bins, color="0.6", alpha=0.75, label="before", log=True)
    if after is not None:
        ax.hist(np.clip(after.values.reshape(-1), low, high), bins=bins, color="tab:blue", alpha=0.55, label="after", log=True)
        if after.grid is not None:
            grid = after.grid[(after.grid >= low) & (after.grid <= high)]
            what = "cluster centroids" if after.stored == "shared" else f"{after.stored} grid (channel 0)"
            if len(grid):  # few levels: lines across; a fine grid: a rug along the axis
                ax.vlines(grid, 0, 1 if len(grid) <= 32 else 0.08, transform=ax.get_xaxis_transform(), colors="tab:red",
                          linewidth=1.0 if len(grid) <= 32 else 0.6, alpha=0.85, label=what)  # fmt: skip
    ax.set_title("weight histogram", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"{row['layer']} ({row['op']})", fontsize=10)
    return _png(fig)


def _latency_picture(rows: Sequence[Mapping[str, Any]]) -> str | None:
    timed = [r for r in rows if r.get("median_ms")]
    if not timed:
        return None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.55 * len(timed) + 0.9))
    labels = [r["label"] for r in timed][::-1]
    med = np.array([r["median_ms"] for r in timed][::-1])
    lo = np.array([r.get("p10_ms", r["median_ms"]) for r in timed][::-1])
    hi = np.array([r.get("p90_ms", r["median_ms"]) for r in timed][::-1])
    colors = ["tab:blue" if r.get("ours") else "0.55" for r in timed][::-1]
    ax.barh(labels, med, xerr=[np.maximum(med - lo, 0), np.maximum(hi - med, 0)], color=colors, capsize=3)
    base = timed[0]["median_ms"]
    for y, m in enumerate(med):
        ax.text(m, y, f"  {m:.3g} ms ({base / m:.2f}x)", va="center", fontsize=8)
    ax.set_xlabel("latency, ms (median; bars: 10th-90th percentile)", fontsize=8)
    ax.set_xlim(0, float(max(hi.max(), med.max())) * 1.45)
    ax.tick_params(labelsize=8)
    return _png(fig)


def _sensitivity_picture(layers: Mapping[str, Mapping[str, Any]]) -> str | None:
    scored = [(name, d.get("sqnr_db", d.get("own_sqnr_db")), d.get("decision")) for name, d in layers.items()]
    scored = [(n, float(s), d) for n, s, d in scored if s is not None and math.isfinite(float(s))]
    if not scored:
        return None
    import matplotlib.pyplot as plt

    scored.sort(key=lambda t: t[1])
    scored = scored[:40]
    fig, ax = plt.subplots(figsize=(9, 0.22 * len(scored) + 1.0))
    ax.barh([n[-48:] for n, _, _ in scored][::-1], [s for _, s, _ in scored][::-1],
            color=["tab:orange" if d == "fp32" else "tab:blue" for _, _, d in scored][::-1])  # fmt: skip
    ax.set_xlabel("output SQNR of the quantized layer, dB (lower: more sensitive; orange: kept in fp32)", fontsize=8)
    ax.tick_params(labelsize=7)
    return _png(fig)


def _timeline_picture(passes: Sequence[Mapping[str, Any]]) -> str | None:
    if not passes:
        return None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.32 * len(passes) + 1.0))
    start = 0.0
    for i, p in enumerate(passes):
        v = p.get("verification")
        color = "0.6" if not v else ("tab:green" if v.get("passed") else "tab:red")
        width = max(float(p.get("seconds") or 0.0), 1e-3)
        ax.barh(len(passes) - 1 - i, width, left=start, color=color)
        ax.text(start + width, len(passes) - 1 - i, f" {p['name']} {p.get('seconds', 0):.2f} s", va="center", fontsize=7)
        start += width
    ax.set_yticks([])
    ax.set_xlabel("seconds from the first pass (green: verified, red: failed, gray: not checked)", fontsize=8)
    ax.set_xlim(0, start * 1.35)
    ax.tick_params(labelsize=7)
    return _png(fig)


# ------------------------------------------------------------------------------ the page


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;font-size:13px} .cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:10px 14px;min-width:150px} .card b{display:block;font-size:20px}
.card span{color:#666;font-size:12px} table{border-collapse:collapse;font-size:12.5px;margin:8px 0;width:100%}
th,td{border-bottom:1px solid #eee;padding:4px 8px;text-align:right;vertical-align:top} th:first-child,td:first-child{text-align:left}
td.l,th.l{text-align:left} .ok{color:#137333} .bad{color:#b3261e} img{max-width:100%;display:block;margin:8px 0}
figure{margin:0 0 18px 0} figcaption{font-size:12px;color:#555} code{font-size:12px}
"""


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _num(x: Any, fmt: str = "{:,}") -> str:
    if x is None:
        return "-"
    try:
        return fmt.format(x)
    except (TypeError, ValueError):
        return _esc(x)


def _img(b64: str | None, alt: str) -> str:
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{b64}">' if b64 else ""


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    out = ["<table><tr>" + "".join(f'<th class="{"l" if i < left else ""}">{_esc(h)}</th>' for i, h in enumerate(head)) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(r)) + "</tr>")
    return "".join(out) + "</table>"


def _verification_cell(v: Mapping[str, Any] | None) -> str:
    if not v:
        return "not checked"
    mark = '<span class="ok">pass</span>' if v.get("passed") else '<span class="bad">FAIL</span>'
    text = f"{mark} ({_esc(v.get('family', ''))}; max |diff| {_num(v.get('max_abs_diff'), '{:.3g}')}, cosine {_num(v.get('cosine'), '{:.6f}')})"
    fd = v.get("first_divergence")
    if fd:
        text += f"<br>first diverging node <code>{_esc(fd.get('node'))}</code> ({_esc(fd.get('op_type'))}), output <code>{_esc(fd.get('value'))}</code>"
    return text


def write_html_report(
    path: str | os.PathLike,
    *,
    title: str,
    subtitle: str = "",
    snapshots: Sequence[tuple[str, Mapping[str, LayerWeight | None]]],
    passes: Sequence[Mapping[str, Any]] = (),
    steps: Sequence[Mapping[str, Any]] | None = None,
    latency: Sequence[Mapping[str, Any]] = (),
    verdict: Sequence[tuple[str, str]] = (),
    table: tuple[Sequence[str], Sequence[Sequence[Any]]] | None = None,
    notes: Sequence[str] = (),
    failure: str | None = None,
    machine: Mapping[str, Any] | None = None,
    tables: Sequence[tuple[str, Sequence[str], Sequence[Sequence[Any]]]] = (),
) -> Path:
    """Write the page (see the module's doc) to ``path`` whole; returns the path.

    Args:
        snapshots: ``[(label, {layer: LayerWeight or None (removed)})]``: the first holds every
            layer as given, each later one the layers a step changed (:class:`WeightTrace`).
        passes: pass records (``PassRecord.to_dict``), in the order they ran.
        steps: a recipe's steps (``compress``), with every candidate tried.
        latency: ``{"label", "median_ms", "p10_ms", "p90_ms", "ours"}`` per engine; the first is
            the baseline of the ratios.
        verdict: ``(what, result)`` lines of the final check against the model given.
        table: a before/after table (header, rows) shown as given.
        failure: the error that stopped the run, when one did.
        tables: more ``(title, header, rows)`` tables, shown after the latency.
    """
    from graphpress.ir.atomic import write_bytes_atomic

    metrics = layer_metrics(snapshots)
    first = dict(snapshots[0][1]) if snapshots else {}
    last = current_weights(snapshots)
    before, after = summary_of({k: w for k, w in first.items() if w is not None}), summary_of(last)
    r_p = (before["nonzero"] - after["nonzero"]) / before["nonzero"] if before["nonzero"] else 0.0
    r_w = after["shared"] / after["weights"] if after["weights"] else 0.0
    bytes_before = sum(w.stored_bytes for w in first.values() if w is not None)
    bytes_after = sum(w.stored_bytes for w in last.values())
    parts = [f"<h1>{_esc(title)}</h1>", f'<div class="sub">{_esc(subtitle)}</div>']
    if failure:
        parts.append(f'<p class="bad"><b>Stopped:</b> {_esc(failure)}</p>')
    cards = [
        (f"{before['nonzero']:,} &rarr; {after['nonzero']:,}", "nonzero layer weights"),
        (f"{r_p:.1%}", "r<sub>p</sub> = (params before &minus; after) / before"),
        (f"{r_w:.1%}", "r<sub>w</sub> = shared weights / all weights"),
        (f"{bytes_before / 1024:,.1f} &rarr; {bytes_after / 1024:,.1f} KiB", "layer weights as stored"),
    ]
    timed = [r for r in latency if r.get("median_ms")]
    ours = [r for r in timed if r.get("ours")]
    if timed and ours:
        fastest = min(ours, key=lambda r: r["median_ms"])
        cards.append((f"{timed[0]['median_ms'] / fastest['median_ms']:.2f}x", f"speed-up t<sub>orig</sub> / t<sub>opt</sub> ({_esc(timed[0]['label'])} / {_esc(fastest['label'])})"))
    parts.append('<div class="cards">' + "".join(f'<div class="card"><b>{v}</b><span>{k}</span></div>' for v, k in cards) + "</div>")
    if verdict:
        parts.append("<h2>Verdict against the model given</h2>" + _table(["check", "result"], [[_esc(a), _esc(b)] for a, b in verdict], left=2))
    if notes:
        parts.append("<ul>" + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>")
    if table is not None:
        parts.append("<h2>Before and after</h2>" + _table(table[0], [[_esc(c) for c in r] for r in table[1]]))
    if timed:
        parts.append("<h2>Latency, side by side in one run</h2>" + _img(_latency_picture(timed), "latency"))
        if machine:
            parts.append(f'<div class="sub">{_esc(machine.get("cpu", ""))}, {_esc(machine.get("threads", ""))} thread(s)</div>')
    for caption, head, rows in tables:
        parts.append(f"<h2>{_esc(caption)}</h2>" + _table(head, [[_esc(c) for c in r] for r in rows]))
    parts.append(_layers_section(metrics, snapshots, last))
    sensitivity = _sensitivity(passes, steps)
    if sensitivity:
        parts.append("<h2>Per-layer sensitivity (quantization accuracy control)</h2>" + _img(_sensitivity_picture(sensitivity), "sensitivity"))
    parts.append(_timeline_section(passes, steps))
    page = f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title><style>{_CSS}</style></head><body>{"".join(parts)}</body></html>'
    out = Path(path)
    write_bytes_atomic(out, page.encode("utf-8"))
    return out


def _layers_section(metrics: list[dict[str, Any]], snapshots, last: Mapping[str, LayerWeight]) -> str:
    first = {k: w for k, w in (snapshots[0][1] if snapshots else {}).items() if w is not None}
    rows = []
    for m in metrics:
        steps = "; ".join(f"{_esc(label)}: {_num(eps, '{:.3g}') if eps is not None else 'removed' if m['stored'] == 'removed' else 'shape changed'}"
                          for label, eps in m["steps"]) or "unchanged"  # fmt: skip
        rows.append([
            f"<code>{_esc(m['layer'])}</code>", _esc(m["op"]), _esc("x".join(map(str, m["shape_before"]))),
            _esc("x".join(map(str, m["shape_after"])) if m["shape_after"] else "removed"), _num(m["r_p"], "{:.1%}"),
            _num(m.get("sparsity"), "{:.1%}"), _esc(m["stored"]), _num(m.get("eps_q"), "{:.3g}"), _num(m.get("deep_compression_rate"), "{:.1f}x"), steps,
        ])  # fmt: skip
    head = ["layer", "op", "shape before", "after", "r_p", "zeros", "stored as", "eps_q", "Deep Compression rate", "eps = mean (x - x_hat)^2 per step"]
    out = ["<h2>Per layer</h2>", _table(head, rows, left=1)]
    changed = [m for m in metrics if m["steps"] and m["layer"] in first]
    changed.sort(key=lambda m: -m["weights_before"])
    if changed:
        out.append(f'<div class="sub">the {min(len(changed), MAX_PICTURES)} largest layers that changed (of {len(changed)}): a {SLICE[0]}x{SLICE[1]} '
                   "slice of the weight before and after (one color scale unless a step rescaled the weight; white is zero) and both histograms, with the quantization grid or "
                   "the cluster centroids the weight now takes</div>")  # fmt: skip
    for m in changed[:MAX_PICTURES]:
        caption = f"{m['layer']}: r_p {m['r_p']:.1%}" + (f", eps_q {m['eps_q']:.3g}" if m.get("eps_q") is not None else "")
        out.append(f"<figure>{_img(_layer_picture(m, first[m['layer']], last.get(m['layer'])), m['layer'])}<figcaption>{_esc(caption)}</figcaption></figure>")
    return "".join(out)


def _sensitivity(passes, steps) -> dict[str, Any]:
    records = list(passes) + [p for s in steps or () for p in s.get("passes") or []]
    out: dict[str, Any] = {}
    for p in records:
        if p.get("name") == "quantize":
            out.update((p.get("stats") or {}).get("layers") or {})
    return out


def _timeline_section(passes, steps) -> str:
    records = list(passes) if passes else [p for s in steps or () for p in s.get("passes") or []]
    out = ["<h2>Pass timeline and verification</h2>"]
    if not records and not steps:
        return out[0] + "<p>no pass ran</p>"
    out.append(_img(_timeline_picture(records), "pass timeline"))
    rows = [[_esc(p["name"]), _num(p.get("seconds"), "{:.3f}"), "yes" if p.get("modified") else "no", _num(p.get("weight_bytes")), _verification_cell(p.get("verification"))]
            for p in records]  # fmt: skip
    out.append(_table(["pass", "seconds", "modified", "weight bytes after", "verification against the model it received"], rows))
    if steps:
        srows = []
        for s in steps:
            tried = "<br>".join(f"<code>{_esc(spec)}</code>: {_esc(outcome)}" for spec, outcome in s.get("tried") or [])
            chosen = f"<code>{_esc(s['chosen'])}</code>" if s.get("chosen") else _esc(s.get("skipped", "skipped"))
            srows.append([_esc(s["stage"]), chosen, tried + (f"<br><i>{_esc(s['held_out'])}</i>" if s.get("held_out") else "")])
        out.append("<h2>Recipe steps: every candidate tried</h2>" + _table(["step", "chosen", "candidates, strongest first"], srows, left=3))
    return "".join(out)


# ------------------------------------------------------------------------------ the commands' pages


def _bytes(n: int | None) -> str:
    if not n:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1024
    return str(n)


def optimize_page(path, *, trace: WeightTrace, records: Sequence[Mapping[str, Any]], model: str, spec: str, final=None, failure: str | None = None) -> Path:
    """``graphpress optimize --report-html``: the passes' pictures, timeline and the final check
    against the model given (``final``: a :class:`~graphpress.ir.numeric.NumericReport`)."""
    verdict = []
    if final is not None:
        verdict.append(("ONNX Runtime: the optimized model against the model given",
                        f"{'PASS' if final.passed else 'FAIL'}: max |diff| {final.max_abs_diff:.3g}, min cosine {final.min_cosine:.6f}"))  # fmt: skip
    return write_html_report(path, title=f"graphpress optimize: {Path(model).name}", subtitle=f"passes: {spec}", snapshots=trace.snapshots,
                             passes=records, verdict=verdict, failure=failure)  # fmt: skip


def compile_page(path, *, trace: WeightTrace, records: Sequence[Mapping[str, Any]], model: str, compiled, failure: str | None = None) -> Path:
    """``graphpress compile --report-html``: the passes run before the build, the build's check
    against ONNX Runtime, and the artifact's latency against ONNX Runtime on the model given."""
    build = compiled.meta["build"] if compiled is not None else {}
    verdict, latency = [], []
    check = build.get("check_vs_onnxruntime")
    if check:
        verdict.append(("the compiled code against ONNX Runtime", f"PASS: max |diff| {check['max_abs_diff']:.3g}, cosine {check['cosine']:.8f} "
                        f"(against {check.get('against', 'the model given')})"))  # fmt: skip
    speed = build.get("vs_onnxruntime")
    if speed:
        latency.append({"label": f"ONNX Runtime, the model as given ({speed['model_as_given']})", "median_ms": speed["onnxruntime_ms"]})
        if speed.get("onnxruntime_fp32_ms"):
            latency.append({"label": "ONNX Runtime, its fp32 counterpart", "median_ms": speed["onnxruntime_fp32_ms"]})
        latency.append({"label": "graphpress artifact", "median_ms": speed["artifact_ms"], "ours": True})
        verdict.append(("speed", speed["verdict"]))
    if "int8" in build:
        i8 = build["int8"]
        verdict.append(("int8 kernels", f"{i8.get('isa')}: {i8.get('lowered')} layer(s) on integer kernels, {i8.get('kept_fp32')} kept fp32 by the speed guard"))
    target = compiled.meta.get("target_name", "") if compiled is not None else ""
    return write_html_report(path, title=f"graphpress compile: {Path(model).name} for {target}", subtitle="passes: " + (", ".join(r["name"] for r in records) or "none"),
                             snapshots=trace.snapshots, passes=records, latency=latency, verdict=verdict, failure=failure,
                             machine={"cpu": _cpu(), "threads": speed.get("threads")} if speed else None, tables=_int8_tables(build))  # fmt: skip


def _int8_tables(build: Mapping[str, Any]) -> list:
    """The int8 guard's per-layer measurements (integer kernel against fp32, speed-up) and the
    whole-model verdict, when the build has integer layers."""
    i8 = build.get("int8") or {}
    nodes = i8.get("nodes") or []
    if not nodes:
        return []
    rows = [[n["node"], "x".join(map(str, n.get("shape") or [])), _num(n.get("int8_ms"), "{:.4f}"), _num(n.get("fp32_ms"), "{:.4f}"),
             f"{n['fp32_ms'] / n['int8_ms']:.2f}x" if n.get("int8_ms") and n.get("fp32_ms") else "-", n.get("kernel") or "fp32", n.get("reason", "")]
            for n in nodes]  # fmt: skip
    guard = i8.get("model_guard")
    if guard:
        rows.append(["whole model", "", _num(guard.get("int8_ms"), "{:.4f}"), _num(guard.get("fp32_ms"), "{:.4f}"),
                     f"{guard['fp32_ms'] / guard['int8_ms']:.2f}x" if guard.get("int8_ms") and guard.get("fp32_ms") else "-", guard.get("chosen", ""), guard.get("reason", "")])  # fmt: skip
    head = ["layer", "M x N x K", "int8 ms", "fp32 ms", "speed-up", "ships", "why"]
    return [(f"Integer kernels ({i8.get('isa', '?')}): each layer timed both ways", head, rows)]


def _cpu() -> str:
    from graphpress.compression import cpu_model

    return cpu_model()


def compress_page(path, result, model: str) -> Path:
    """``graphpress compress --report-html``: everything above for a
    :class:`~graphpress.compression.CompressResult` -- the model given and each kept step's
    weights, the before/after table, the latency of every variant side by side, the recipe's
    candidates and the held-out verdict."""
    trace = WeightTrace()
    trace.snapshots.append(("the model given", layer_weights(result.original)))
    for stage, m in result.path:
        trace.add(stage, m)
    d = result.to_dict()
    v = d["verification"]
    verdict = [("held-out samples: the compressed model against the model given", f"{'PASS' if v['passed'] else 'FAIL'}: {v['held_out']} (budget {v['budget']})")]
    latency = [{"label": r["variant"], "median_ms": r["median_ms"], "p10_ms": r.get("p10_ms"), "p90_ms": r.get("p90_ms"), "ours": r["variant"].startswith("graphpress")}
               for r in result.rows if r.get("median_ms")]  # fmt: skip
    head = ["variant", "size on disk", "packed", "params", "MACs", "latency ms", "vs ORT fp32", "held-out"]
    rows = [[r["variant"], _bytes(r.get("onnx_bytes")), _bytes(r.get("packed_bytes")), _num(r.get("params")), _num(r.get("macs")),
             _num(r.get("median_ms"), "{:.3f}"), _num(r.get("speedup"), "{:.2f}x"), r.get("held_out", r.get("note", "-"))] for r in result.rows]  # fmt: skip
    recipe = result.recipe if result.recipe == result.chosen_recipe else f"{result.recipe} (chose {result.chosen_recipe})"
    return write_html_report(path, title=f"graphpress compress: {Path(model).name}", subtitle=f"recipe {recipe} for {result.target}, budget {result.budget_text()}",
                             snapshots=trace.snapshots, steps=result.steps, latency=latency, verdict=verdict, table=(head, rows), notes=result.notes,
                             machine=result.machine, tables=_int8_tables(result.compiled.meta["build"]) if result.compiled is not None else [])  # fmt: skip
