"""ONNX Runtime as it runs on a CPU without AVX-512: the peer a user with an AVX2 laptop has.

ONNX Runtime picks its kernels once, from CPUID and XCR0 (MLAS's platform constructor), and has no
switch to choose them (unlike oneDNN's ``ONEDNN_MAX_CPU_ISA``). On a host with AVX-512 its rows
are therefore its AVX-512 code, and a graphpress AVX2 row beside them compares 256-bit code with
512-bit code. To measure what users without AVX-512 get from each engine, this module makes a
copy of the installed ``onnxruntime`` package in a cache and changes, in the copy's Python
extension, the conditional jumps that pick the kernels into unconditional ones:

* ``avx2_vnni``: the AVX-512 branch ("``cpuid(7).ebx`` has AVX512F and XCR0 enables the ZMM
  state") is never taken. ORT keeps its AVX2/FMA3 float kernels and, where the host has
  AVX-VNNI, its 256-bit VNNI int8 kernels: an Alder Lake or Zen 5 laptop.
* ``avx2``: also the AVX-VNNI branch (``cpuid(7, 1).eax`` bit 4): ``vpmaddubsw`` int8 kernels, a
  Haswell-to-Zen 3 machine.
* ``avx512_vnni``: only the AMX branch (``cpuid(7).edx`` AMX-TILE and AMX-INT8): ORT's AVX-512
  VNNI int8 kernels, a Cascade Lake, Ice Lake or Zen 4 server. Every emulation removes the AMX
  branch (none of those CPUs has AMX).

The copy is found by its byte patterns, each of which must occur exactly once; another build of
ONNX Runtime (another version) gets a :class:`RuntimeError` saying so, never a guess. The
installed package is not touched. What the copy runs was checked with ``perf`` (software clock
samples, the instruction at each sampled address; ``python benchmarks/_ort_isa.py avx2`` repeats
it): ORT 1.32 on a Zen 5, MobileNetV2 fp32: 62 % of the library's samples on ``zmm``
instructions before, 0 % after (72 % on ``ymm``); ResNet-18 U8S8: 41 % on ``vpdpbusds`` (zmm)
before, 41 % on its 256-bit VEX form with ``avx2_vnni``, none with ``avx2`` (22 % on
``vpmaddubsw``). ``tests/test_ort_isa.py`` checks that the copy loads, computes what the
original computes, and (where ``perf`` can sample) runs no ``zmm`` instruction.

Use it before anything imports ``onnxruntime``::

    import _ort_isa
    _ort_isa.install_from_argv()   # honours --ort-isa avx2|avx2_vnni on the command line
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: (what the jump decides, the bytes around it, the offset of the jump's opcode in them): a short
#: ``je`` that skips the kernels when taken, or a near ``jne`` (AMX: "cpuid(7).edx lacks
#: AMX-TILE or AMX-INT8") that skips them
_AVX512 = ("the AVX-512 kernels", bytes.fromhex("41f7c20000010074 0e4c89c048f7d0a8e0".replace(" ", "")), 7)
_AVX_VNNI = ("the AVX-VNNI int8 kernels", bytes.fromhex("b807000000b9010000000fa2a81074 38".replace(" ", "")), 14)
_AMX = ("the AMX int8 kernels", bytes.fromhex("41f7d1 4181e100000003 0f85".replace(" ", "")), 10)

#: the ISA each emulation leaves ORT, and the branches it removes; none of them has AMX (without
#: its removal, ORT's AMX int8 kernels ran under ``avx2`` on a Sapphire Rapids: ``tileloadd``
#: among the hottest sampled instructions of MiniLM)
EMULATIONS = {"avx512_vnni": (_AMX,), "avx2_vnni": (_AVX512, _AMX), "avx2": (_AVX512, _AVX_VNNI, _AMX)}

_EXTENSION_PREFIX = "onnxruntime_pybind11_state"


def cache_dir() -> Path:
    return Path(os.environ.get("GRAPHPRESS_ORT_ISA_CACHE") or Path.home() / ".cache" / "graphpress" / "ort-isa")


def _installed() -> Path:
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("onnxruntime is not installed: pip install onnxruntime")
    return Path(next(iter(spec.submodule_search_locations)))


def _version(package: Path) -> str:
    for line in (package / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    raise RuntimeError(f"{package}: no __version__ in __init__.py; cannot key the patched copy")


def patch_extension(data: bytearray, emulation: str) -> list[tuple[str, int]]:
    """Make every branch of ``emulation`` unconditional in the extension's bytes; returns (what,
    offset) per patch. RuntimeError when a pattern is missing or not unique (another ORT build)."""
    done = []
    for what, pattern, at in EMULATIONS[emulation]:
        first = data.find(pattern)
        if first < 0 or data.find(pattern, first + 1) >= 0:
            found = "not found" if first < 0 else "found more than once"
            raise RuntimeError(f"the branch that picks {what} is {found} in this onnxruntime build; "
                               "the --ort-isa emulation knows ONNX Runtime 1.32's x86-64 Linux wheel only")  # fmt: skip
        if data[first + at] == 0x74:  # je rel8 -> jmp rel8: the kernels are always skipped
            data[first + at] = 0xEB
        elif data[first + at : first + at + 2] == b"\x0f\x85":  # jne rel32 -> nop; jmp rel32 (same end, same target)
            data[first + at : first + at + 2] = b"\x90\xe9"
        else:
            raise RuntimeError(f"the branch that picks {what}: expected a je rel8 or jne rel32, found byte {data[first + at]:#x}")
        done.append((what, first + at))
    return done


def package(emulation: str) -> Path:
    """A folder holding an ``onnxruntime`` package that picks its kernels as on a CPU of
    ``emulation`` (see :data:`EMULATIONS`); made once per ORT version, written whole or not at all."""
    if emulation not in EMULATIONS:
        raise ValueError(f"--ort-isa {emulation!r}: expected one of {', '.join(EMULATIONS)}")
    source = _installed()
    # keyed by the patches too: a copy made before a branch was added would run the kernels it skips
    patches = hashlib.sha1(repr(EMULATIONS[emulation]).encode()).hexdigest()[:8]
    root = cache_dir() / f"onnxruntime-{_version(source)}-{emulation}-{patches}"
    if (root / "onnxruntime").is_dir():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}-"))
    try:
        copy = staging / "onnxruntime"
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns("__pycache__"))
        extensions = sorted((copy / "capi").glob(f"{_EXTENSION_PREFIX}*.so"))
        if len(extensions) != 1:
            raise RuntimeError(f"{copy / 'capi'}: expected one {_EXTENSION_PREFIX}*.so, found {len(extensions)}")
        data = bytearray(extensions[0].read_bytes())
        patches = patch_extension(data, emulation)
        extensions[0].write_bytes(bytes(data))
        (staging / "PATCHES.txt").write_text("".join(f"{extensions[0].name} +{off:#x}: {what} never picked\n" for what, off in patches))
        try:
            os.rename(staging, root)
        except OSError:  # another process made it first
            if not (root / "onnxruntime").is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def install(emulation: str) -> Path:
    """Put the patched copy first on ``sys.path`` (and ``PYTHONPATH``, for child processes); must run
    before ``onnxruntime`` is imported."""
    root = package(emulation)
    loaded = sys.modules.get("onnxruntime")
    if loaded is not None:
        if Path(loaded.__file__).resolve().is_relative_to(root.resolve()):
            return root  # installed already (a second script of the same run)
        raise RuntimeError("--ort-isa must take effect before onnxruntime is imported")
    sys.path.insert(0, str(root))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])])
    return root


def install_from_argv(argv: list[str] | None = None) -> str | None:
    """Honour ``--ort-isa NAME`` (or ``--ort-isa=NAME``) in ``argv`` before anything imports
    onnxruntime; returns the emulation's name or None. The script's argparse declares the option too."""
    argv = sys.argv[1:] if argv is None else argv
    for i, arg in enumerate(argv):
        if arg == "--ort-isa" and i + 1 < len(argv):
            name = argv[i + 1]
        elif arg.startswith("--ort-isa="):
            name = arg.split("=", 1)[1]
        else:
            continue
        if name and name != "host":
            install(name)
            return name
    return None


def describe(emulation: str | None) -> str:
    """One line for a benchmark's banner: which kernels ONNX Runtime may pick in this run."""
    if not emulation:
        return "ONNX Runtime: the host's own kernel choice (CPUID)"
    patches = (package(emulation) / "PATCHES.txt").read_text().strip().replace("\n", "; ")
    cpu = {"avx512_vnni": "without AMX", "avx2_vnni": "without AVX-512 or AMX", "avx2": "without AVX-512, AVX-VNNI or AMX"}[emulation]
    return f"ONNX Runtime: kernels as on a CPU {cpu} (--ort-isa {emulation}; a cached copy: {patches})"


def sampled_instructions(command: list[str], library: Path, env: dict | None = None) -> dict[str, float] | None:
    """Run ``command`` under ``perf record`` (software clock samples) and return, of the samples in
    ``library``, the share on instructions using ``zmm`` and ``ymm`` registers and on each int8 dot
    product instruction; None where perf cannot sample here."""
    if shutil.which("perf") is None or shutil.which("objdump") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "perf.data"
        run = subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", "2000", "-o", str(data), "--", *command],
                             capture_output=True, text=True, env=env)  # fmt: skip
        if run.returncode != 0 or not data.exists():
            return None
        report = subprocess.run(["perf", "report", "-i", str(data), "--sort", "sym", "--stdio", "--dsos", library.name], capture_output=True, text=True).stdout
    samples = []
    for line in report.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+\[\.\]\s+0x([0-9a-f]+)", line)
        if m:
            samples.append((int(m.group(2), 16), float(m.group(1))))
    # the sampled addresses, in ranges of neighbouring ones (the hot kernels), disassembled
    ranges: list[list[int]] = []
    for address in sorted(a for a, _ in samples):
        if ranges and address - ranges[-1][1] < 4096:
            ranges[-1][1] = address
        else:
            ranges.append([address, address])
    at = {}
    for first, last in ranges:
        text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", f"--start-address={first:#x}", f"--stop-address={last + 16:#x}", str(library)],
                              capture_output=True, text=True).stdout  # fmt: skip
        for line in text.splitlines():
            m = re.match(r"\s*([0-9a-f]+):\s+(.*)", line)
            if m:
                at[int(m.group(1), 16)] = m.group(2)
    total, shares = 0.0, {"zmm": 0.0, "ymm": 0.0, "vpdpbusd": 0.0, "vpmaddubsw": 0.0, "tmm": 0.0}  # tmm: AMX's tiles
    for address, share in samples:
        instruction = at.get(address, "")
        total += share
        for key in shares:
            if key in instruction:
                shares[key] += share
    return {k: v / total for k, v in shares.items()} if total else None


def _main() -> int:
    """``python benchmarks/_ort_isa.py [host|avx2_vnni|avx2] [MODEL]``: what ONNX Runtime runs on a
    benchmark model (ResNet-18 U8S8 by default, ``fp32`` for its float model) under an emulation."""
    emulation = sys.argv[1] if len(sys.argv) > 1 else "avx2"
    root = None if emulation == "host" else package(emulation)
    probe = Path(__file__).resolve().parent / "_ort_isa_probe.py"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root) if root else "", os.environ.get("PYTHONPATH")])))
    library = next(((root / "onnxruntime" if root else _installed()) / "capi").glob(f"{_EXTENSION_PREFIX}*.so"))
    shares = sampled_instructions([sys.executable, str(probe), *sys.argv[2:3]], library, env)
    print(describe(None if emulation == "host" else emulation))
    print("perf cannot sample here" if shares is None else ", ".join(f"{k} {v:.1%}" for k, v in shares.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
