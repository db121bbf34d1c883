"""The speed benchmarks' models: ResNet-18 and MobileNetV2 (seed 0, one 224x224 image) and
MiniLM (one sentence, 128 tokens), loaded into the IR and cleaned as the benchmarks compare them."""

from __future__ import annotations

SPEED_MODELS = ("resnet18", "mobilenetv2", "minilm")


def speed_model(name: str):
    """``(model, args)``: the IR model after ``cleanup,fuse,cleanup`` (MiniLM: ``cleanup``) and
    the torch inputs it was traced with, in graph input order."""
    import torch

    import graphpress as gp
    from graphpress.models import mobilenet_v2, resnet18
    from graphpress.models.minilm import load_minilm, tokenize
    from graphpress.passes import PassManager, build_passes

    if name == "minilm":
        args = tuple(tokenize(["graphpress quantizes the matmuls of this sentence transformer"], seq_len=128).values())
        module = load_minilm().eval()
    else:
        torch.manual_seed(0)
        module = (resnet18 if name == "resnet18" else mobilenet_v2)().eval()
        args = (torch.randn(1, 3, 224, 224),)
    model = gp.load(module, args)
    PassManager(build_passes("cleanup,fuse,cleanup" if name != "minilm" else "cleanup")).run(model)
    return model, args
