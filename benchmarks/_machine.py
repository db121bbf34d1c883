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


_FMA_LOOP = r"""
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
#if defined(W16)
typedef __m512 V; 
#define FMA _mm512_fmadd_ps
#define SET _mm512_set1_ps
#define LANES 16
#elif defined(W8)
typedef __m256 V;
#define FMA _mm256_fmadd_ps
#define SET _mm256_set1_ps
#define LANES 8
#else
typedef __m128 V;
#define FMA(a, b, c) _mm_add_ps(_mm_mul_ps(a, b), c)
#define SET _mm_set1_ps
#define LANES 4
#endif
int main(void) {
  V a0 = SET(1), a1 = SET(2), a2 = SET(3), a3 = SET(4), a4 = SET(5), a5 = SET(6), a6 = SET(7), a7 = SET(8),
    a8 = SET(9), a9 = SET(10), a10 = SET(11), a11 = SET(12), b = SET(1.0000001f), c = SET(1e-8f);
  struct timespec t0, t1;
  long iters = 100000000;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (long k = 0; k < iters; k++) {
    a0 = FMA(a0, b, c); a1 = FMA(a1, b, c); a2 = FMA(a2, b, c); a3 = FMA(a3, b, c); a4 = FMA(a4, b, c); a5 = FMA(a5, b, c);
    a6 = FMA(a6, b, c); a7 = FMA(a7, b, c); a8 = FMA(a8, b, c); a9 = FMA(a9, b, c); a10 = FMA(a10, b, c); a11 = FMA(a11, b, c);
    __asm__ volatile("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4), "+x"(a5));
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  V s = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11;
  float out[LANES]; __builtin_memcpy(out, &s, sizeof out);
  double t = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
  printf("%f %g\n", iters * 12.0 * LANES * 2 / t / 1e9, out[0]);
  return 0;
}
"""


def measured_peak_gflops(path: str, cores: int) -> float | None:
    """The fp32 peak of ``path`` (``avx512``, ``avx2``, ``sse``) on this machine, measured: 12
    independent chains of vector FMAs (SSE: mul + add) per core, one process per core at once,
    their GFLOP/s summed. Measured rather than computed from ``/proc/cpuinfo``'s MHz, which is
    not the clock the cores run vector code at (boost), nor says how wide the FMA units are (a
    Zen 4 runs 512-bit FMAs as two halves). None when no C compiler is found."""
    import shutil
    import subprocess
    import tempfile

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    flags = {"avx512": ["-mavx512f", "-mfma", "-DW16"], "avx2": ["-mavx2", "-mfma", "-DW8"], "sse": ["-msse2"]}[path]
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "fma.c", Path(tmp) / "fma"
        src.write_text(_FMA_LOOP)
        subprocess.run([cc, "-O2", *flags, str(src), "-o", str(exe)], check=True, capture_output=True)
        procs = [subprocess.Popen([str(exe)], stdout=subprocess.PIPE, text=True) for _ in range(cores)]
        return sum(float(p.communicate()[0].split()[0]) for p in procs)
