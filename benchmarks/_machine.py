"""What every benchmark prints first: the CPU, the cores it may use, the ISA flags it has, and the
code paths graphpress picks for it (the TVM x86 mcpu, the int8 ISA)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

#: the instruction-set flags that decide which code paths run (/proc/cpuinfo names)
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "i8mm", "sve")  # fmt: skip


def banner(target: str = "x86") -> str:
    """One block of text naming the machine and the paths used on it (``target``: the x86
    target the benchmark compiles for, an ``x86:PATH`` where it runs another path than the host's)."""
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

        spec = resolve_target(target)
        isa = select_isa(spec, "auto")
        lines.append(f"graphpress {target} target: mcpu={spec.config.get('mcpu')} num-cores={spec.config.get('num-cores')}; int8 ISA: {isa.name if isa else 'none'}; "
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


_INT8_LOOP = r"""
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
#if defined(ZMM_VNNI)       /* vpdpbusd zmm: 64 u8 x s8 products into 16 int32 */
typedef __m512i V;
#define STEP(acc) acc = _mm512_dpbusd_epi32(acc, a, b);
#define MACS 64
#define SET8 _mm512_set1_epi8
#define SET32 _mm512_set1_epi32
#elif defined(YMM_VNNI)     /* vpdpbusd ymm (AVX-VNNI's VEX form, or AVX-512 VL's) */
typedef __m256i V;
#ifdef __AVXVNNI__
#define STEP(acc) acc = _mm256_dpbusd_avx_epi32(acc, a, b);
#else
#define STEP(acc) acc = _mm256_dpbusd_epi32(acc, a, b);
#endif
#define MACS 32
#define SET8 _mm256_set1_epi8
#define SET32 _mm256_set1_epi32
#elif defined(QUADS)        /* two vpmaddubsw added in int16, one vpmaddwd by ones, one vpaddd */
typedef __m256i V;
#define STEP(acc) acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(a, b), _mm256_maddubs_epi16(a, c)), ones));
#define MACS 64
#define SET8 _mm256_set1_epi8
#define SET32 _mm256_set1_epi32
#else                       /* pairs: vpmaddubsw, vpmaddwd by ones, vpaddd (ONNX Runtime's AVX2 u8s8 mix) */
typedef __m256i V;
#define STEP(acc) acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), ones));
#define MACS 32
#define SET8 _mm256_set1_epi8
#define SET32 _mm256_set1_epi32
#endif
/* each step's activation operand "changes" (an empty asm), so no product is hoisted out of the loop */
#define S(acc) __asm__ volatile("" : "+x"(a)); STEP(acc)
int main(void) {
  V a = SET8(3), b = SET8(2), c = SET8(5), x0 = SET32(0), x1 = x0, x2 = x0, x3 = x0, x4 = x0, x5 = x0, x6 = x0, x7 = x0;
  __m256i ones = _mm256_set1_epi16(1);
  (void)c; (void)ones;
  struct timespec t0, t1;
  long iters = 20000000;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (long k = 0; k < iters; k++) { S(x0) S(x1) S(x2) S(x3) S(x4) S(x5) S(x6) S(x7) }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  int out[16]; V s = x0; s = s + x1 + x2 + x3 + x4 + x5 + x6 + x7; __builtin_memcpy(out, &s, sizeof(int) * 4);
  double t = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
  printf("%f %d\n", iters * 8.0 * MACS * 2 / t / 1e9, out[0]);
  return 0;
}
"""

#: the int8 instruction mixes :func:`measured_int8_peak_gops` measures, by name: (C define, compiler flags)
INT8_MIXES = {
    "zmm_vnni": ("ZMM_VNNI", ["-mavx512f", "-mavx512bw", "-mavx512vnni"]),
    "ymm_vnni": ("YMM_VNNI", ["-mavx2", "-mavx512f", "-mavx512vl", "-mavx512vnni"]),
    "ymm_avx_vnni": ("YMM_VNNI", ["-mavx2", "-mavxvnni"]),
    "avx2_quads": ("QUADS", ["-mavx2"]),
    "avx2_pairs": ("PAIRS", ["-mavx2"]),
}


def measured_int8_peak_gops(mix: str, cores: int, tries: int = 3) -> float | None:
    """The int8 peak of instruction mix ``mix`` (:data:`INT8_MIXES`) on this machine, in GOP/s (two
    per product), measured as :func:`measured_peak_gflops` measures fp32: 8 independent
    accumulator chains of the mix per core, registers only, one process per core at once, summed;
    the best of ``tries`` such runs (on a shared host one run of a mix measured 279 GOP/s, a run
    of the same minutes 460).
    The mixes are the kernels' innermost steps: ``avx2_pairs`` is ``vpmaddubsw`` + ``vpmaddwd``
    by ones + ``vpaddd`` per 32 products (ONNX Runtime's AVX2 u8s8 kernels; graphpress's pairs
    and int16 kernels take as many multiplies per product), ``avx2_quads`` adds two
    ``vpmaddubsw`` in int16 first (3 multiplies per 64 products: graphpress's kernel for weights
    quantized for AVX2), ``zmm_vnni`` / ``ymm_vnni`` one ``vpdpbusd``. None when no C compiler
    is found or the host cannot run the mix."""
    import shutil
    import subprocess
    import tempfile

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    define, flags = INT8_MIXES[mix]
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "int8.c", Path(tmp) / "int8"
        src.write_text(_INT8_LOOP)
        subprocess.run([cc, "-O2", *flags, f"-D{define}", str(src), "-o", str(exe)], check=True, capture_output=True)
        best = 0.0
        for _ in range(tries):
            procs = [subprocess.Popen([str(exe)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(cores)]
            outs = [p.communicate()[0] for p in procs]
            if any(p.returncode != 0 for p in procs):  # SIGILL: the host lacks the instructions
                return None
            best = max(best, sum(float(o.split()[0]) for o in outs))
        return best
