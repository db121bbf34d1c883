"""ResNet-18 and all-MiniLM-L6-v2 through graphpress's CUDA target, beside torch eager on the
same GPU: latency and agreement, fp32 and fp16 (issue #16).

Two steps, because the GPU machine need not have the compiler:

``build DIR`` (any machine with the project installed; nvcc, no GPU): the two models as the
speed benchmarks load them (``_models.speed_model``: ResNet-18 seed 0 on one 224x224 image,
MiniLM's real weights on one 128-token sentence), each compiled by ``compile_model`` for
``cuda:ARCH`` in fp32 and after the ``quantize:mode=fp16`` pass (float16 weights and compute,
float32 inputs and outputs), saved as artifacts under DIR with the inputs (``inputs.npz``)
and what torch needs to rebuild the same modules there (ResNet-18: the seed, checked by a
checksum of its parameters; MiniLM: ``config.json`` and its weights, ``minilm.safetensors``).
``--round-weights fp16`` rounds MiniLM's weights to float16 values first (the fp32 model then
computes in fp32 on those values, in both engines): the fp32 artifact and the weights then
compress to about half, for a machine reached through a small transfer.

``run DIR`` (the GPU machine: TVM's runtime alone is enough, ``TVM_USE_RUNTIME_LIB=1``; torch
with CUDA; neither graphpress nor onnx is imported): each artifact loaded by graphpress's own
loader (``backends/tvm/runtime.py``, loaded by path), timed by TVM's time evaluator on inputs
already on the GPU (``device`` rows) and from numpy to numpy (``host`` rows: the copies in
and out included); torch eager on the same GPU in its best configuration (``cudnn.benchmark``;
fp32 with TF32 off, the same arithmetic, and on, torch's default for convolutions; fp16 by
``.half()``, and channels-last for the CNN), timed with CUDA events, the same two ways. Each
engine's output against a float64 reference computed by torch on the CPU from the same
weights: relative L2 error ``|out - ref| / |ref|`` and cosine. Medians of blocks run in
alternation (A B ... then ... B A). A JSON of every figure is written beside the table
(``--json``).

Usage::

    python benchmarks/cuda.py build /tmp/cuda-bench [--target cuda:sm_90] [--models resnet18,minilm] [--round-weights fp16]
    python benchmarks/cuda.py run /tmp/cuda-bench [--json out.json] [--blocks 5]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("resnet18", "minilm")


def _by_path(name: str, relative: str):
    """A module of this repository loaded from its file, without importing ``graphpress`` (the GPU
    machine's packages need not be the project's)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _param_digest(module) -> str:
    """sha256 of the module's parameters and buffers (names, float32 bytes): the same torch
    module rebuilt elsewhere from the same seed has the same digest."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()


# -- build (here) ------------------------------------------------------------------------------


def build(directory: Path, target: str, models: list[str], round_weights: str | None, precisions: list[str]) -> None:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _models import speed_model

    import graphpress as gp
    from graphpress.backends import tvm as gtvm
    from graphpress.models.minilm import load_minilm, minilm_path, tokenize
    from graphpress.models.resnet import resnet18
    from graphpress.passes import PassManager, build_passes

    directory.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"target": target, "models": {}}
    feeds: dict[str, np.ndarray] = {}
    for name in models:
        if name == "resnet18":
            def fresh():
                return speed_model("resnet18")

            model, args = fresh()
            torch.manual_seed(0)
            module = resnet18().eval()
            entry = {"seed": 0, "digest": _param_digest(module)}
        else:
            module = load_minilm().eval()
            if round_weights == "fp16":
                with torch.no_grad():
                    for p in module.parameters():
                        p.copy_(p.half().float())
            args = tuple(tokenize(["graphpress quantizes the matmuls of this sentence transformer"], seq_len=128).values())

            def fresh(module=module, args=args):
                model = gp.load(module, args)
                PassManager(build_passes("cleanup")).run(model)
                return model, args

            model, _ = fresh()
            from safetensors.torch import save_file

            weights = {k: (v.half() if round_weights == "fp16" and v.is_floating_point() else v).contiguous() for k, v in module.bert.state_dict().items()}
            save_file(weights, str(directory / "minilm.safetensors"))
            (directory / "minilm_config.json").write_text((minilm_path() / "config.json").read_text())
            entry = {"weights": "minilm.safetensors", "config": "minilm_config.json", "rounded_to": round_weights, "digest": _param_digest(module)}
        names = [v.name for v in model.graph.inputs]
        for n, a in zip(names, args):
            feeds[f"{name}:{n}"] = a.numpy()
        entry["inputs"] = names
        entry["artifacts"] = {}
        for variant in precisions:
            precision, _, graph = variant.partition("+")
            m, _ = fresh()
            if precision == "fp16":
                PassManager(build_passes("quantize:mode=fp16")).run(m)
            t0 = time.perf_counter()
            import tvm

            # "+graph": TVM captures the VM's kernel launches into CUDA graphs, replayed per call
            with tvm.transform.PassContext(opt_level=3, config={"relax.backend.use_cuda_graph": bool(graph)}):
                compiled = gtvm.compile_model(m, target)
            seconds = time.perf_counter() - t0
            label = precision + (" + CUDA graph" if graph else "")
            art = compiled.save(directory / f"{name}.{variant.replace('+', '.')}")
            np.savez(directory / f"{name}.inputs.npz", **{n: a.numpy() for n, a in zip([v.name for v in model.graph.inputs], args)})
            entry["artifacts"][label] = {"path": art.name, "compile_s": round(seconds, 2), "bytes": (art / "model.so").stat().st_size}
            print(f"{name} {label}: compiled for {target} in {seconds:.1f} s, model.so {(art / 'model.so').stat().st_size / 2**20:.1f} MiB", flush=True)
        manifest["models"][name] = entry
    np.savez(directory / "inputs.npz", **feeds)
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1))


# -- run (on the GPU) --------------------------------------------------------------------------


def _torch_module(name: str, entry: dict, directory: Path):
    import torch

    if name == "resnet18":
        resnet = _by_path("_bench_resnet", "graphpress/models/resnet.py")
        torch.manual_seed(entry["seed"])
        module = resnet.resnet18().eval()
    else:
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModel

        minilm = _by_path("_bench_minilm", "graphpress/models/minilm.py")
        config = AutoConfig.from_pretrained(str(directory / entry["config"]))
        bert = AutoModel.from_config(config, attn_implementation="eager")
        state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(directory / entry["weights"])).items()}
        missing, unexpected = bert.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.endswith("position_ids")]:
            raise SystemExit(f"MiniLM weights do not fit the model: missing {missing}, unexpected {unexpected}")
        module = minilm.MiniLMEncoder(bert).eval()
    digest = _param_digest(module)
    if digest != entry["digest"]:
        raise SystemExit(f"{name}: the torch module rebuilt here differs from the one compiled ({digest[:12]} != {entry['digest'][:12]})")
    return module


def _cpu_model() -> str:
    """The host CPU's model name (it launches every kernel: batch-1 latency depends on it too)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _agreement(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    o, r = out.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    return {"rel_l2": float(np.linalg.norm(o - r) / np.linalg.norm(r)), "cosine": float(o @ r / (np.linalg.norm(o) * np.linalg.norm(r))), "max_abs": float(np.abs(o - r).max()),
            "finite": bool(np.isfinite(o).all())}  # fmt: skip


def _cuda_ms(fn, calls: int) -> float:
    """ms per call of ``fn`` over ``calls`` calls, between CUDA events."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / calls


def _host_ms(fn, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) * 1e3 / calls


def run(directory: Path, blocks: int, json_path: Path | None) -> None:
    import torch

    runtime = _by_path("_bench_tvm_runtime", "graphpress/backends/tvm/runtime.py")
    import tvm

    manifest = json.loads((directory / "manifest.json").read_text())
    feeds = np.load(directory / "inputs.npz")
    on_gpu = manifest["target"].startswith("cuda")
    props = torch.cuda.get_device_properties(0) if on_gpu else None
    machine = {"gpu": props.name if on_gpu else "none (a CPU dry run)", "sms": props.multi_processor_count if on_gpu else 0, "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
               "tvm": tvm.__version__, "tvm_runtime_only": bool(getattr(tvm, "_RUNTIME_ONLY", False)), "cpu": _cpu_model(), "python": platform.python_version()}  # fmt: skip
    print("machine:", json.dumps(machine), flush=True)
    torch.backends.cudnn.benchmark = True
    results: dict = {"machine": machine, "models": {}}
    for name, entry in manifest["models"].items():
        inputs = [feeds[f"{name}:{n}"] for n in entry["inputs"]]
        module = _torch_module(name, entry, directory)
        with torch.no_grad():
            ref = module.double()(*[torch.from_numpy(a).double() if a.dtype.kind == "f" else torch.from_numpy(a) for a in inputs]).numpy()
        module.float()
        dev = torch.device("cuda" if on_gpu else "cpu")
        gpu_inputs = [torch.from_numpy(a).to(dev) for a in inputs]
        engines: dict[str, dict] = {}

        def torch_engine(label, mod, cast, tf32, channels_last=False):
            m = mod.to(dev)
            xs = [x.to(cast) if x.is_floating_point() else x for x in gpu_inputs]
            if channels_last:
                m = m.to(memory_format=torch.channels_last)
                xs = [x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x for x in xs]

            def device_call():
                torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
                with torch.no_grad():
                    return m(*xs)

            def host_call():
                torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
                with torch.no_grad():
                    ys = [torch.from_numpy(a).to(dev) for a in inputs]
                    ys = [y.to(cast) if y.is_floating_point() else y for y in ys]
                    if channels_last:
                        ys = [y.contiguous(memory_format=torch.channels_last) if y.dim() == 4 else y for y in ys]
                    return m(*ys).float().cpu().numpy()

            engines[label] = {"device": device_call, "host": host_call, "out": lambda: host_call()}

        # torch copies first (each its own module), the fp32 ones TF32 off and on
        import copy

        torch_engine("torch eager fp32 (TF32 off)", copy.deepcopy(module), torch.float32, False)
        torch_engine("torch eager fp32 (TF32 on)", copy.deepcopy(module), torch.float32, True)
        torch_engine("torch eager fp16", copy.deepcopy(module).half(), torch.float16, False)
        if name == "resnet18":
            torch_engine("torch eager fp16 channels-last", copy.deepcopy(module).half(), torch.float16, False, channels_last=True)
        for precision, art in entry["artifacts"].items():
            compiled = runtime.load(directory / art["path"])
            tensors = [tvm.runtime.tensor(a, compiled.device) for a in inputs]
            vm = compiled.vm
            main = vm["main"]
            evaluator = vm.time_evaluator("main", compiled.device, number=20 if on_gpu else 5, repeat=1)
            engines[f"graphpress-tvm {precision}"] = {
                "device": lambda main=main, tensors=tensors: main(*tensors),
                "device_evaluator": lambda evaluator=evaluator, tensors=tensors: evaluator(*tensors).results[0] * 1e3,
                "host": lambda compiled=compiled: compiled(*inputs)[0],
                "out": lambda compiled=compiled: compiled(*inputs)[0],
                "compile_s": art["compile_s"],
            }
        rows = {}
        for label, e in engines.items():
            first = _agreement(np.asarray(e["out"](), dtype=np.float64), ref)
            rows[label] = first
            for _ in range(20 if on_gpu else 2):  # warm-up: cudnn's autotuning, module load, allocations
                e["device"]()
                e["host"]()
            if on_gpu:
                torch.cuda.synchronize()
        samples: dict[str, dict[str, list[float]]] = {label: {"device": [], "host": []} for label in engines}
        order = list(engines)
        for b in range(2 * blocks):
            for label in order if b % 2 == 0 else order[::-1]:
                e = engines[label]
                if "device_evaluator" in e:
                    samples[label]["device"].append(e["device_evaluator"]())
                else:
                    samples[label]["device"].append(_cuda_ms(e["device"], 20) if on_gpu else _host_ms(e["device"], 5))
                samples[label]["host"].append(_host_ms(e["host"], 10 if on_gpu else 2))
        for label, e in engines.items():  # again after the timing: a replayed CUDA graph on new input buffers too
            after = _agreement(np.asarray(e["out"](), dtype=np.float64), ref)
            rows[label] = {k: max(v, after[k]) if k in ("rel_l2", "max_abs") else min(v, after[k]) for k, v in rows[label].items()}
        table = {}
        for label in engines:
            table[label] = {"device_ms": statistics.median(samples[label]["device"]), "host_ms": statistics.median(samples[label]["host"]), **rows[label]}
            if "compile_s" in engines[label]:
                table[label]["compile_s"] = engines[label]["compile_s"]
        best_torch = {p: min((v["device_ms"], k) for k, v in table.items() if k.startswith("torch") and p in k) for p in ("fp32", "fp16")}
        print(f"\n{name} ({', '.join(entry['inputs'])}; batch 1) on {machine['gpu']}; reference: torch float64 on the CPU, same weights")
        print(f"{'engine':40s} {'GPU ms':>8s} {'numpy ms':>9s} {'vs torch best':>14s} {'rel L2':>9s} {'cosine':>9s}")
        for label, v in table.items():
            precision = "fp16" if "fp16" in label else "fp32"
            ratio = best_torch[precision][0] / v["device_ms"]
            v["speedup_vs_best_torch_same_precision"] = ratio
            print(f"{label:40s} {v['device_ms']:8.3f} {v['host_ms']:9.3f} {ratio:13.2f}x {v['rel_l2']:9.2e} {v['cosine']:9.6f}")
        results["models"][name] = {"rows": table, "best_torch": {p: b[1] for p, b in best_torch.items()}, "rounded_to": entry.get("rounded_to")}
    if json_path is not None:
        json_path.write_text(json.dumps(results, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="step", required=True)
    b = sub.add_parser("build", help="compile the artifacts (no GPU needed)")
    b.add_argument("directory", type=Path)
    b.add_argument("--target", default="cuda:sm_90", help="cuda:ARCH for the GPU (sm_90: H100/H200); x86 makes a CPU dry run of both steps")
    b.add_argument("--models", default=",".join(MODELS))
    b.add_argument("--precisions", default="fp32,fp16", help="fp32, fp16, each with +graph for TVM's CUDA graphs (fp32+graph)")
    b.add_argument("--round-weights", choices=["fp16"], default=None, help="round MiniLM's weights to float16 values (a smaller transfer; both engines use them)")
    r = sub.add_parser("run", help="time and check them on the GPU beside torch eager")
    r.add_argument("directory", type=Path)
    r.add_argument("--blocks", type=int, default=5)
    r.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    if a.step == "build":
        build(a.directory, a.target, [m for m in a.models.split(",") if m], a.round_weights, a.precisions.split(","))
    else:
        run(a.directory, a.blocks, a.json)


if __name__ == "__main__":
    main()
