"""Docs are tests: every ```python block of README.md runs (in order, one namespace), then every
`$ graphpress ...` line of the ```console blocks, in a temporary directory. A python block whose
first line is ``# file: PATH`` is written to PATH (the directory is on ``sys.path``) instead."""

import re
import shlex
from pathlib import Path

import pytest

from graphpress.cli import main

README = Path(__file__).parent.parent / "README.md"

pytestmark = pytest.mark.slow


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_examples_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("GRAPHPRESS_CACHE", str(tmp_path / "cache"))
    python_blocks = _blocks("python")
    files = [b for b in python_blocks if b.startswith("# file: ")]
    assert len(python_blocks) - len(files) >= 2 and len(files) >= 2
    for block in files:
        path = tmp_path / block.splitlines()[0].removeprefix("# file: ").strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block)
    commands = [line[2:] for block in _blocks("console") for line in block.splitlines() if line.startswith("$ graphpress ")]
    assert len(commands) >= 3
    namespace: dict = {"__name__": "readme"}
    # python blocks and console lines run in README order
    text = README.read_text()
    steps = sorted(
        [(text.index(b), "python", b) for b in python_blocks if b not in files]
        + [(text.index(c), "console", c) for c in commands],
        key=lambda s: s[0],
    )
    for _, kind, body in steps:
        if kind == "python":
            exec(compile(body, str(README), "exec"), namespace)
        else:
            assert main(shlex.split(body)[1:]) == 0, f"{body}: {capsys.readouterr().err}"
    assert Path("resnet18.clean.onnx").exists() and Path("report.json").exists() and Path("gap.json").exists()
