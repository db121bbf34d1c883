"""TVM targets: names (``x86``, ``aarch64``, ``cuda``) or a TVM target dict given as JSON.

* ``x86``: the host CPU, detected from ``/proc/cpuinfo``: ``mcpu`` is the newest LLVM CPU
  whose features the host has (``sapphirerapids`` with AMX+VNNI+AVX-512, ``cascadelake``
  with AVX-512 VNNI, ``skylake-avx512``, ``haswell`` with AVX2/FMA, else ``x86-64``), and
  ``num-cores`` is the number of cores this process may use. Without ``mcpu`` LLVM emits
  no AVX-512 and MetaSchedule adds no VNNI rules. ``x86:MCPU`` names the LLVM CPU, and
  ``x86:PATH`` an ISA path (:data:`X86_PATHS`: ``amx``, ``avx512_vnni``, ``avx512``,
  ``avx2_vnni``, ``avx2``, ``sse``), so that every path can be built and timed on any host
  that runs it (:func:`host_x86_paths`).
* ``aarch64``: ``{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon",
  "+dotprod"]}`` (ARMv8.2-A dot product: ``sdot``/``udot``), linked with Debian's
  ``aarch64-linux-gnu-g++``; ``aarch64:i8mm`` adds ``+i8mm`` (8-bit matrix multiply:
  ``usmmla``), ``aarch64:MCPU`` names the LLVM CPU.
* ``cuda``: ``{"kind": "cuda", "arch": "sm_XX"}``; XX from ``nvidia-smi`` when a GPU is
  present, else ``sm_90`` (Hopper), overridable with ``cuda:sm_80`` style names.
* Anything starting with ``{``: a TVM target dict; TVM's own message comes back in one line
  if it rejects it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from typing import Any

from graphpress.errors import GraphpressError, one_line
from graphpress.passes.context import TargetFacts

__all__ = ["X86_PATHS", "TargetSpec", "VectorFacts", "detect_x86_mcpu", "host_x86_paths", "vector_facts", "has_amx", "has_avx2", "has_avx_vnni", "has_dotprod", "has_i8mm", "has_vnni", "resolve_target"]

#: LLVM x86 CPUs with AVX-512 VNNI (u8 x s8 -> s32 dot products on 512-bit registers)
VNNI_MCPUS = {"cascadelake", "cooperlake", "icelake-client", "icelake-server", "tigerlake", "sapphirerapids",
              "emeraldrapids", "graniterapids", "znver4", "znver5"}  # fmt: skip

#: LLVM x86 CPUs with AVX-VNNI (the VEX-encoded 256-bit ``vpdpbusd``; the only int8 dot product
#: of CPUs with AVX2 and no AVX-512, as Alder Lake and later client parts)
AVX_VNNI_MCPUS = {"alderlake", "raptorlake", "meteorlake", "arrowlake", "arrowlake-s", "lunarlake", "pantherlake", "gracemont",
                  "sierraforest", "grandridge", "clearwaterforest", "sapphirerapids", "emeraldrapids", "graniterapids", "znver5"}  # fmt: skip

#: LLVM x86 CPUs with AMX-INT8 tile matrix multiply (TDPBUSD on 16 x 64-byte tiles)
AMX_MCPUS = {"sapphirerapids", "emeraldrapids", "graniterapids", "graniterapids-d", "diamondrapids"}

#: LLVM x86 CPUs with AVX-512 (32 registers of 16 float32 lanes; Zen 4 runs them as two halves)
AVX512_MCPUS = VNNI_MCPUS | AMX_MCPUS | {"skylake-avx512", "cannonlake", "icelake-client", "knl", "knm", "x86-64-v4"}


#: LLVM x86 CPUs with AVX2 and FMA but not AVX-512 (16 registers of 8 float32 lanes)
AVX2_MCPUS = {"haswell", "broadwell", "skylake", "alderlake", "raptorlake", "meteorlake", "arrowlake", "lunarlake", "gracemont",
              "znver1", "znver2", "znver3", "x86-64-v3"}  # fmt: skip


#: x86 ISA paths by name: the LLVM CPU a build for the path targets, and the host flags it runs on
X86_PATHS: dict[str, tuple[str, frozenset[str]]] = {
    "amx": ("sapphirerapids", frozenset({"amx_tile", "amx_int8", "avx512_vnni", "avx512f"})),
    "avx512_vnni": ("cascadelake", frozenset({"avx512_vnni", "avx512f", "avx512bw"})),
    "avx512": ("skylake-avx512", frozenset({"avx512f", "avx512bw"})),
    "avx2_vnni": ("alderlake", frozenset({"avx_vnni", "avx2", "fma"})),
    "avx2": ("haswell", frozenset({"avx2", "fma"})),
    "sse": ("x86-64", frozenset()),
}


def host_x86_paths(flags: set[str] | None = None) -> list[str]:
    """The :data:`X86_PATHS` this host runs, fastest first."""
    flags = _cpu_flags() if flags is None else flags
    return [name for name, (_, needs) in X86_PATHS.items() if needs <= flags]


@dataclasses.dataclass(frozen=True)
class VectorFacts:
    """What the analytic fp32 schedules need of a CPU target: float32 lanes per vector register
    and the number of vector registers (:func:`vector_facts`)."""

    lanes: int
    registers: int
    name: str


def vector_facts(spec: "TargetSpec") -> VectorFacts:
    """The vector unit a CPU target's code is compiled for, from the target (never the host):
    AVX-512 (x86 ``mcpu`` with it, or ``+avx512f``), AVX2 (:data:`AVX2_MCPUS`, or ``+avx2``),
    SSE (any other x86), NEON (aarch64)."""
    config = spec.config
    mattr = " ".join(config.get("mattr", []))
    mcpu = config.get("mcpu", "")
    if "aarch64" in str(config.get("mtriple", "")) or config.get("mtriple", "").startswith("arm"):
        return VectorFacts(4, 32, "neon")
    if mcpu in AVX512_MCPUS or "+avx512f" in mattr:
        return VectorFacts(16, 32, "avx512")
    if mcpu in AVX2_MCPUS or "+avx2" in mattr:
        return VectorFacts(8, 16, "avx2")
    return VectorFacts(4, 16, "sse")


#: Cross compiler the aarch64 artifacts are linked with.
AARCH64_CXX = "aarch64-linux-gnu-g++"
DEFAULT_CUDA_ARCH = "sm_90"


@dataclasses.dataclass(frozen=True)
class TargetSpec:
    """A resolved target.

    Attributes:
        name: ``x86``, ``aarch64``, ``cuda`` or ``custom``.
        config: the TVM target dict.
        cross_compiler: the C++ compiler that links the shared library (None: host default).
    """

    name: str
    config: dict[str, Any]
    cross_compiler: str | None = None

    @property
    def kind(self) -> str:
        return self.config["kind"]

    @property
    def is_cpu(self) -> bool:
        return self.kind == "llvm"

    @property
    def is_host(self) -> bool:
        """True when the artifact runs on this machine (x86 host or a host-like custom llvm)."""
        return self.is_cpu and ("mtriple" not in self.config or str(self.config["mtriple"]).startswith("x86_64"))

    def tvm_target(self):
        import tvm

        try:
            return tvm.target.Target(self.config)
        except Exception as e:  # TVM rejects the dict: its message in one line
            raise GraphpressError(f"target {json.dumps(self.config)}: TVM rejects it ({one_line(e, 300, last=True)})") from e

    def to_json(self) -> str:
        return json.dumps(self.config, sort_keys=True)


def has_vnni(spec: TargetSpec) -> bool:
    """True when ``spec`` is an x86 CPU target whose code may use AVX-512 VNNI, and this host
    has it too (the int8 kernels are timed here before they are chosen)."""
    if not spec.is_host:
        return False
    mattr = [str(a) for a in spec.config.get("mattr", [])]
    target_ok = spec.config.get("mcpu") in VNNI_MCPUS or "+avx512vnni" in mattr
    return target_ok and {"avx512_vnni", "avx512f"} <= _cpu_flags()


def has_avx_vnni(spec: TargetSpec) -> bool:
    """True when ``spec`` is an x86 CPU target whose code may use AVX-VNNI (256-bit ``vpdpbusd``)
    and this host has it."""
    if not spec.is_host:
        return False
    mattr = [str(a) for a in spec.config.get("mattr", [])]
    target_ok = spec.config.get("mcpu") in AVX_VNNI_MCPUS or "+avxvnni" in mattr
    return target_ok and "avx_vnni" in _cpu_flags()


def has_avx2(spec: TargetSpec) -> bool:
    """True when ``spec`` is an x86 CPU target whose code may use AVX2 (AVX2 or AVX-512 class,
    :func:`vector_facts`) and this host has it."""
    return spec.is_host and vector_facts(spec).name in ("avx2", "avx512") and "avx2" in _cpu_flags()


def has_amx(spec: TargetSpec) -> bool:
    """True when ``spec`` may use AMX-INT8 tiles and this host has them (the kernels request the
    tile state from Linux themselves: ``arch_prctl(ARCH_REQ_XCOMP_PERM)``)."""
    if not has_vnni(spec) or not sys.platform.startswith("linux"):
        return False
    mattr = [str(a) for a in spec.config.get("mattr", [])]
    target_ok = spec.config.get("mcpu") in AMX_MCPUS or "+amx-int8" in mattr
    return target_ok and {"amx_tile", "amx_int8"} <= _cpu_flags()


#: LLVM aarch64 CPUs with the 8-bit matrix multiply extension (FEAT_I8MM: ``smmla``/``usmmla``)
I8MM_MCPUS = {"neoverse-v1", "neoverse-v2", "neoverse-n2", "neoverse-v3", "cortex-a510", "cortex-a710", "cortex-x2", "cortex-a715",
              "cortex-x3", "cortex-a720", "cortex-x4", "apple-m2", "apple-m3", "apple-m4"}  # fmt: skip


def has_i8mm(spec: TargetSpec) -> bool:
    """True when ``spec`` is an aarch64 CPU target with the 8-bit matrix multiply extension
    (``+i8mm``, or an ``mcpu`` of :data:`I8MM_MCPUS`)."""
    mattr = [str(a) for a in spec.config.get("mattr", [])]
    aarch64 = spec.config.get("kind") == "llvm" and str(spec.config.get("mtriple", "")).startswith("aarch64")
    return aarch64 and ("+i8mm" in mattr or spec.config.get("mcpu") in I8MM_MCPUS)


def has_dotprod(spec: TargetSpec) -> bool:
    """True when ``spec`` is an aarch64 CPU target with the dot-product extension (``sdot``)."""
    mattr = [str(a) for a in spec.config.get("mattr", [])]
    return spec.config.get("kind") == "llvm" and str(spec.config.get("mtriple", "")).startswith("aarch64") and "+dotprod" in mattr


def target_facts(spec: TargetSpec) -> TargetFacts:
    """What passes may know about ``spec`` (:class:`~graphpress.passes.context.TargetFacts`),
    from the target's declared CPU and features, never from this host."""
    if not spec.is_cpu:
        return TargetFacts(spec.name, None)
    if str(spec.config.get("mtriple", "")).startswith("aarch64"):
        return TargetFacts(spec.name, has_dotprod(spec))
    mattr = [str(a) for a in spec.config.get("mattr", [])]
    mcpu = spec.config.get("mcpu")
    vnni = mcpu in VNNI_MCPUS or mcpu in AVX_VNNI_MCPUS or "+avx512vnni" in mattr or "+avxvnni" in mattr
    return TargetFacts(spec.name, True if vnni else (False if mcpu else None))


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def detect_x86_mcpu(flags: set[str] | None = None) -> str:
    """The LLVM ``mcpu`` matching the host's x86 features."""
    flags = _cpu_flags() if flags is None else flags
    if {"amx_int8", "avx512_vnni", "avx512f"} <= flags:
        return "sapphirerapids"
    if {"avx512_vnni", "avx512f"} <= flags:
        return "cascadelake"
    if {"avx512f", "avx512bw"} <= flags:
        return "skylake-avx512"
    if {"avx2", "fma"} <= flags:
        return "haswell"
    return "x86-64"


def _num_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def _cuda_arch() -> str:
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
            cap = out.stdout.strip().splitlines()[0].strip()
            if out.returncode == 0 and cap:
                return "sm_" + cap.replace(".", "")
        except (OSError, IndexError, subprocess.TimeoutExpired):
            pass
    return DEFAULT_CUDA_ARCH


def resolve_target(target: str | dict[str, Any]) -> TargetSpec:
    """Resolve a target name or JSON dict into a :class:`TargetSpec`.

    Raises:
        GraphpressError: unknown name, malformed JSON, or a dict TVM rejects.
    """
    if isinstance(target, dict):
        spec = TargetSpec("custom", dict(target), _cross_for(target))
        spec.tvm_target()
        return spec
    text = target.strip()
    if text.startswith("{"):
        try:
            config = json.loads(text)
        except json.JSONDecodeError as e:
            raise GraphpressError(f"target: not valid JSON ({e.msg} at column {e.colno}); give x86, aarch64, cuda or a TVM target dict") from e
        if not isinstance(config, dict) or "kind" not in config:
            raise GraphpressError("target: a TVM target dict needs a 'kind', e.g. {\"kind\": \"llvm\", \"mcpu\": \"skylake-avx512\"}")
        return resolve_target(config)
    name, _, arg = text.partition(":")
    if name == "x86":
        mcpu = X86_PATHS[arg][0] if arg in X86_PATHS else arg
        if mcpu and mcpu not in _llvm_cpus("x86_64-linux-gnu"):
            raise GraphpressError(f"target '{target}': '{arg}' is neither an x86 ISA path ({', '.join(X86_PATHS)}) nor an LLVM x86 CPU (e.g. haswell, znver4)")
        return TargetSpec("x86", {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu or detect_x86_mcpu(), "num-cores": _num_cores()})
    if name == "aarch64":
        mattr = ["+neon", "+dotprod", *(["+i8mm"] if arg == "i8mm" else [])]
        return TargetSpec(
            "aarch64", {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": mattr, **({"mcpu": arg} if arg and arg != "i8mm" else {})}, AARCH64_CXX
        )
    if name == "cuda":
        return TargetSpec("cuda", {"kind": "cuda", "arch": arg or _cuda_arch()})
    raise GraphpressError(
        f"target: unknown target '{target}'; give x86 (or x86:PATH, PATH one of {', '.join(X86_PATHS)}; or x86:MCPU), aarch64, cuda (or cuda:sm_80) or a TVM target JSON dict"
    )


def _llvm_cpus(triple: str) -> set[str]:
    """The CPU names LLVM knows for ``triple``."""
    import tvm
    from tvm.target import codegen

    return set(codegen.llvm_get_cpu_archlist(tvm.target.Target({"kind": "llvm", "mtriple": triple})))


def _cross_for(config: dict[str, Any]) -> str | None:
    triple = str(config.get("mtriple", ""))
    return AARCH64_CXX if triple.startswith("aarch64") else None

