"""Tune the benchmark models with MetaSchedule and store the records where graphpress ships them.

The tuning databases in ``graphpress/backends/tvm/databases/<target key>/`` are build
artifacts: ``graphpress compile`` applies them without tuning, so ``make demo``, CI and the
benchmarks never tune. Records only apply to the same target (mcpu, num-cores) and the same
kernels (shapes, dtypes, fused op pattern); re-run this after a change that alters the
lowered kernels (e.g. a new fusion).

Usage::

    python benchmarks/tune.py --trials-per-task 16 [--models resnet18,mobilenetv2,minilm]
"""

from __future__ import annotations

from _machine import banner
import argparse
import json
import time

import torch

import graphpress as gp
from graphpress.backends.tvm.build import compile_model
from graphpress.backends.tvm.tuning import SHIPPED_DATABASES, target_key
from graphpress.backends.tvm.targets import resolve_target


def benchmark_models() -> dict:
    """name -> (model factory returning an ir.Model)."""
    from graphpress.models import load_minilm, mobilenet_v2, resnet18
    from graphpress.models.minilm import tokenize

    def minilm():
        toks = tokenize(["graphpress tunes once and ships the database"], seq_len=128)
        return gp.load(load_minilm(), (toks["input_ids"], toks["attention_mask"]))

    return {
        "resnet18": lambda: gp.load(resnet18().eval(), torch.randn(1, 3, 224, 224)),
        "mobilenetv2": lambda: gp.load(mobilenet_v2().eval(), torch.randn(1, 3, 224, 224)),
        "minilm": minilm,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials-per-task", type=int, default=16)
    parser.add_argument("--models", default="resnet18,mobilenetv2,minilm")
    parser.add_argument("--target", default="x86")
    args = parser.parse_args()
    print(banner(), flush=True)
    spec = resolve_target(args.target)
    db = SHIPPED_DATABASES / target_key(spec)
    factories = benchmark_models()
    summary = {}
    for name in args.models.split(","):
        model = factories[name]()
        start = time.perf_counter()
        # count kernels first so every task gets the same budget
        probe = compile_model(model, spec, database=db)
        kernels = probe.meta["build"]["kernels"]
        compiled = compile_model(
            model, spec, tune_trials=kernels * args.trials_per_task, max_trials_per_task=args.trials_per_task, database=db
        )
        summary[name] = {"kernels": kernels, "seconds": round(time.perf_counter() - start, 1), **compiled.meta["build"]}
        print(json.dumps({name: summary[name]}, default=str))
    prune(db)
    print(json.dumps(summary, indent=2, default=str))


def prune(directory) -> None:
    """Keep only the best record per workload (what ApplyDatabase uses): a smaller shipped file."""
    import shutil
    import tempfile
    from pathlib import Path

    from tvm.s_tir import meta_schedule as ms

    directory = Path(directory)
    full = ms.database.JSONDatabase(
        path_workload=str(directory / "database_workload.json"),
        path_tuning_record=str(directory / "database_tuning_record.json"),
    )
    with tempfile.TemporaryDirectory() as tmp:
        pruned = ms.database.JSONDatabase(
            path_workload=f"{tmp}/database_workload.json", path_tuning_record=f"{tmp}/database_tuning_record.json"
        )
        full.dump_pruned(pruned)
        for name in ("database_workload.json", "database_tuning_record.json"):
            shutil.copyfile(f"{tmp}/{name}", directory / name)
    shutil.rmtree(directory / "logs", ignore_errors=True)


if __name__ == "__main__":
    main()
