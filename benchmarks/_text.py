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
