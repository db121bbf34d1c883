"""Docs are tests: every ```python block of README.md runs (in order, one namespace), then every
`$ graphpress ...` line of the ```console blocks, in a temporary directory."""

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
    monkeypatch.setenv("GRAPHPRESS_CACHE", str(tmp_path / "cache"))
    python_blocks = _blocks("python")
    assert len(python_blocks) >= 2
    namespace: dict = {"__name__": "readme"}
    for block in python_blocks:
        exec(compile(block, str(README), "exec"), namespace)
    commands = [line[2:] for block in _blocks("console") for line in block.splitlines() if line.startswith("$ graphpress ")]
    assert len(commands) >= 3
    for command in commands:
        argv = shlex.split(command)[1:]
        assert main(argv) == 0, f"{command}: {capsys.readouterr().err}"
    assert Path("resnet18.clean.onnx").exists() and Path("report.json").exists()
