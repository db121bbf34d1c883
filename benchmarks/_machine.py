"""What every benchmark prints first: the CPU, the cores it may use, the ISA flags it has, and the
code paths graphpress picks for it (the TVM x86 mcpu, the int8 ISA)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

#: the instruction-set flags that decide which code paths run (/proc/cpuinfo names)
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "i8mm", "sve")  # fmt: skip


def banner() -> str:
    """One block of text naming the machine and the paths used on it."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model name") and model in (platform.processor(), platform.machine()):
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [f"machine: {model}, {cores} cores usable, {platform.machine()}",
             f"ISA flags: {' '.join(f for f in ISA_FLAGS if f in flags) or 'none of ' + ', '.join(ISA_FLAGS)}"]  # fmt: skip
    try:
        from graphpress.backends.tvm.int8 import select_isa
        from graphpress.backends.tvm.targets import resolve_target

        spec = resolve_target("x86")
        isa = select_isa(spec, "auto")
        lines.append(f"graphpress x86 target: mcpu={spec.config.get('mcpu')} num-cores={spec.config.get('num-cores')}; int8 ISA: {isa.name if isa else 'none'}; "
                     f"TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS', 'unset')}")  # fmt: skip
    except Exception as e:  # a benchmark without the TVM backend still runs
        lines.append(f"graphpress x86 target: unavailable ({type(e).__name__})")
    return "\n".join(lines)
