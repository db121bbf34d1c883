"""Real sentences and embedding comparisons for the MiniLM benchmarks."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def sentences(n: int) -> list[str]:
    """Up to ``n`` distinct first lines of docstrings of Python's standard library."""
    from graphpress.models.minilm import docstring_sentences

    return docstring_sentences(n)


def embed(run: Callable[[dict], np.ndarray], names: list[str], texts: list[str], seq_len: int = 64, batch: int = 32) -> np.ndarray:
    """L2-normalized embeddings of ``texts``; ``run(feeds)`` returns the model's first output."""
    from graphpress.models.minilm import tokenize

    chunks = []
    for i in range(0, len(texts), batch):
        t = tokenize(texts[i : i + batch], seq_len=seq_len)
        chunks.append(run(dict(zip(names, [v.numpy() for v in t.values()]))))
    e = np.concatenate(chunks)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def agreement(e: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Mean/min cosine of ``e`` to ``ref`` (row by row) and nearest-neighbour agreement."""

    def neighbours(x):
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        return sim.argmax(1)

    cos = (e * ref).sum(1)
    return {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()), "nn_agreement": float((neighbours(e) == neighbours(ref)).mean())}


#: standard-library modules that do something when imported (a browser, a printout, a window)
_NOISY = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "__main__", "__hello__", "__phello__", "pydoc_data", "lib2to3", "ensurepip", "venv", "idle"}


def corpus(n: int) -> list[str]:
    """Up to ``n`` distinct sentences (25-200 characters) from the docstrings of Python's
    standard library -- modules, classes, functions and methods, every sentence, not only first
    lines: real English text every machine has, in the order found (deterministic)."""
    import importlib
    import inspect
    import re
    import sys
    import warnings

    seen: set[str] = set()
    out: list[str] = []
    for name in sorted(getattr(sys, "stdlib_module_names", ())):
        if name.startswith("_") or name in _NOISY:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mod = importlib.import_module(name)
        except Exception:  # platform-specific or optional modules
            continue
        objs = [mod]
        for _, obj in sorted(vars(mod).items()):
            objs.append(obj)
            if inspect.isclass(obj):
                objs.extend(v for _, v in sorted(vars(obj).items()))
        for obj in objs:
            doc = obj.__doc__ if isinstance(getattr(obj, "__doc__", None), str) else None
            if not doc:
                continue
            text = " ".join(doc.split())
            for sentence in re.split(r"(?<=[.!?])\s+", text):
                if 25 <= len(sentence) <= 200 and sentence not in seen and not sentence.startswith((">>>", "...")):
                    seen.add(sentence)
                    out.append(sentence)
                    if len(out) >= n:
                        return out
    return out
