"""A compiled model against ONNX Runtime on a machine that is doing something else too.

A user's CPUs are rarely idle: a browser, a build, a second model server. This benchmark times
graphpress's compiled MobileNetV2 (fp32, and int8 quantized static) and ONNX Runtime running the
very ONNX file graphpress compiled, each in a process of its own with one thread per CPU, while:

- ``quiet``: nothing else runs;
- ``busy``: one busy loop runs, where the OS puts it;
- ``pinned``: one busy loop runs pinned to the last CPU (a process someone pinned, as TVM pins
  its own worker threads);
- ``twin``: a second process runs the same engine on the same model at the same time (two
  model servers on one machine); the row is the slower of the two.

Four engines: graphpress as it ships (its own work-sharing parallel launcher,
``csrc/parallel_launch.cc``), graphpress on TVM's thread pool with its threads left to the OS
(``GRAPHPRESS_THREAD_POOL=tvm``, what graphpress shipped before the launcher), graphpress on TVM's
pool with TVM's own default of one CPU per worker thread (``TVM_BIND_THREADS=1``, what graphpress
shipped before that), and ONNX Runtime (``intra_op_num_threads`` = the CPUs); ``--engines`` picks
some. Each cell is the median latency over ``--seconds`` of back-to-back runs, and the mean (a
call that stalls shows there, not in the median), each the median of ``--rounds`` such runs with
the engines in alternating order; the ratio is graphpress over ONNX Runtime in the same
scenario. Before timing, each compiled model's outputs are checked against ONNX Runtime's on the
same input, and each graphpress engine's loaded artifact against the compile's own build, bit
for bit.

    python benchmarks/contention.py                      # both models, every scenario
    python benchmarks/contention.py --models int8 --scenarios quiet,pinned --seconds 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

SCENARIOS = ("quiet", "busy", "pinned", "twin")
ENGINES = {
    "graphpress": {"TVM_BIND_THREADS": "0", "GRAPHPRESS_THREAD_POOL": "sharing"},
    "graphpress, TVM's pool": {"TVM_BIND_THREADS": "0", "GRAPHPRESS_THREAD_POOL": "tvm"},
    "graphpress, TVM's pinned threads": {"TVM_BIND_THREADS": "1", "GRAPHPRESS_THREAD_POOL": "tvm"},
    "onnxruntime": {},
}
ENGINE_KEYS = {"graphpress": "graphpress", "tvm-pool": "graphpress, TVM's pool", "tvm-pinned": "graphpress, TVM's pinned threads", "onnxruntime": "onnxruntime"}
BUSY_LOOP = "while True: pass"


def _cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


# ----------------------------------------------------------------------------- one timing process


def worker(engine: str, model_dir: Path, go: Path, seconds: float) -> None:
    """Load one engine, wait for ``go`` to exist, run back to back for ``seconds``; print JSON."""
    x = np.load(model_dir / "x.npy")
    if engine == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = len(_cpus())
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(model_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def step():
            return session.run(None, {name: x})
    else:
        from graphpress.backends.tvm import load

        compiled = load(model_dir / "artifact")
        # the engine is what it says: graphpress's launcher, or TVM's pool
        assert (compiled._launcher is not None) == (os.environ.get("GRAPHPRESS_THREAD_POOL") != "tvm"), engine
        # and computes what the compile's own build computed, bit for bit, on either pool
        got, want = compiled(x)[0], np.load(model_dir / "ours.npy")
        assert np.array_equal(got, want), f"{engine}: the loaded artifact differs from the compiled model by {np.abs(got - want).max():.3g}"

        def step():
            return compiled(x)

    for _ in range(10):
        step()
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.005)
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    print(json.dumps({"median_ms": float(np.median(times) * 1e3), "mean_ms": float(np.mean(times) * 1e3), "runs": len(times)}), flush=True)
    # no interpreter teardown: TVM's pool joins its pinned workers at exit, which took minutes with
    # a busy loop on a pinned worker's CPU
    os._exit(0)


def _time(engine: str, model_dir: Path, scenario: str, seconds: float) -> tuple[float, float]:
    """The median and mean latency of ``engine`` under ``scenario`` (the slower copy for ``twin``)."""
    env = {**os.environ, **ENGINES[engine]}
    copies = 2 if scenario == "twin" else 1
    with tempfile.TemporaryDirectory() as tmp:
        go = Path(tmp) / "go"
        procs = [subprocess.Popen([sys.executable, __file__, "--worker", engine, str(model_dir), str(go), str(seconds)], env=env, stdout=subprocess.PIPE, text=True)
                 for _ in range(copies)]  # fmt: skip
        for p in procs:
            assert p.stdout.readline().strip() == "ready", f"{engine} did not start"
        load = None
        if scenario in ("busy", "pinned"):
            pin = ["taskset", "-c", str(_cpus()[-1])] if scenario == "pinned" else []
            load = subprocess.Popen([*pin, sys.executable, "-c", BUSY_LOOP])
            time.sleep(0.3)
        go.touch()
        try:
            results = [json.loads(p.stdout.read().strip().splitlines()[-1]) for p in procs]
            for p in procs:
                p.wait()
        finally:
            if load is not None:
                load.kill()
                load.wait()
    slower = max(results, key=lambda r: r["median_ms"])
    return slower["median_ms"], slower["mean_ms"]


# ----------------------------------------------------------------------------- the models


def _prepare(kind: str, workdir: Path, target: str) -> Path:
    """MobileNetV2 (seed 0) as an ONNX file (``int8``: quantized static by graphpress on 8
    random images), its compiled artifact and one input, in ``workdir/kind``."""
    import onnxruntime as ort

    import graphpress as gp
    from _models import speed_model
    from graphpress.backends.tvm import compile_model
    from graphpress.passes import PassContext, PassManager, build_passes

    out = workdir / kind
    out.mkdir(parents=True, exist_ok=True)
    model, args = speed_model("mobilenetv2")
    name = model.graph.inputs[0].name
    x = args[0].numpy()
    if kind == "int8":
        rng = np.random.default_rng(0)
        samples = [{name: rng.standard_normal(x.shape).astype(np.float32)} for _ in range(8)]
        PassManager(build_passes("quantize:mode=static"), context=PassContext(samples=samples)).run(model)
    gp.save(model, out / "model.onnx")
    np.save(out / "x.npy", x)
    compiled = compile_model(gp.load(out / "model.onnx"), target)
    compiled.save(out / "artifact")
    # the same work: both engines' outputs on this input
    ours = compiled(x)[0]
    np.save(out / "ours.npy", ours)
    theirs = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {name: x})[0]
    cos = float((ours * theirs).sum() / np.linalg.norm(ours) / np.linalg.norm(theirs))
    print(f"{kind}: compiled for {target}; outputs against ONNX Runtime on the same file: max diff {np.abs(ours - theirs).max():.3g}, cosine {cos:.6f}",
          flush=True)  # fmt: skip
    if cos < 0.99:
        raise SystemExit(f"{kind}: the compiled model disagrees with ONNX Runtime (cosine {cos:.4f}); not timing it")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="fp32,int8", help="comma-separated: fp32, int8 (MobileNetV2)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated: {', '.join(SCENARIOS)}")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per engine, scenario and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per scenario, the engines in alternating order; a cell is the median")
    parser.add_argument("--engines", default=",".join(ENGINE_KEYS), help=f"comma-separated: {', '.join(ENGINE_KEYS)}")
    parser.add_argument("--target", default="x86")
    args = parser.parse_args()
    picked = [e for e in args.engines.split(",") if e]
    if bad := [e for e in picked if e not in ENGINE_KEYS]:
        raise SystemExit(f"--engines: unknown {', '.join(bad)}; expected some of {', '.join(ENGINE_KEYS)}")
    engines = [ENGINE_KEYS[e] for e in picked]
    if "onnxruntime" not in engines or len(engines) < 2:
        raise SystemExit(f"--engines: give onnxruntime and at least one other of {', '.join(ENGINE_KEYS)}")
    scenarios = [s for s in args.scenarios.split(",") if s]
    if bad := [s for s in scenarios if s not in SCENARIOS]:
        raise SystemExit(f"--scenarios: unknown {', '.join(bad)}; expected some of {', '.join(SCENARIOS)}")
    from _machine import banner

    print(banner(args.target), flush=True)
    print(f"threads per engine: {len(_cpus())} (the CPUs this process may use); busy loop pinned to CPU {_cpus()[-1]} in 'pinned'", flush=True)
    if len(_cpus()) < 2:
        print("one CPU: every engine shares it with the load whatever it does; the rows say little", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for kind in [m for m in args.models.split(",") if m]:
            model_dir = _prepare(kind, Path(tmp), args.target)
            rows = []
            for scenario in scenarios:
                runs = {engine: [] for engine in engines}
                for r in range(args.rounds):  # the engines in alternating order, so a slow spell of the host is shared
                    for engine in engines[:: 1 if r % 2 == 0 else -1]:
                        runs[engine].append(_time(engine, model_dir, scenario, args.seconds))
                ms = {engine: float(np.median([m for m, _ in v])) for engine, v in runs.items()}
                mean = {engine: float(np.median([a for _, a in v])) for engine, v in runs.items()}
                rows.append((scenario, ms, mean))
                print(f"  {kind} {scenario}: " + ", ".join(f"{e} {ms[e]:.3f} ms (mean {mean[e]:.3f})" for e in ms), flush=True)
            print(f"\nMobileNetV2 {kind}, batch 1, ms a call: the median, then the mean (stalls show in the mean), each the median over "
                  f"{args.rounds} rounds of {args.seconds:g} s; ratio: graphpress / ONNX Runtime in the same scenario\n")  # fmt: skip
            ours = [e for e in engines if e != "onnxruntime"]
            print("| scenario | " + " | ".join(f"{e} ms | ratio" for e in ours) + " | ONNX Runtime ms |")
            print("|---|" + "---:|---:|" * len(ours) + "---:|")
            for scenario, ms, mean in rows:
                cells = [f"{ms[e]:.3f} / {mean[e]:.3f} | {ms[e] / ms['onnxruntime']:.2f}x / {mean[e] / mean['onnxruntime']:.2f}x" for e in ours]
                print(f"| {scenario} | " + " | ".join(cells) + f" | {ms['onnxruntime']:.3f} / {mean['onnxruntime']:.3f} |")
            print(flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), float(sys.argv[5]))
    else:
        main()
