"""Small definitions of the other architectures pruning must handle: VGG (plain conv stacks
into Flatten + Linear), a DenseNet-style net (every layer concatenates onto its input), and a
UNet-style net (ConvTranspose upsampling + skip Concat)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TinyDenseNet", "TinyUNet", "vgg11"]


def vgg11(num_classes: int = 10, width: int = 16, image: int = 32) -> nn.Module:
    """VGG-11 (configuration A) with BatchNorm, channel widths scaled by ``width / 64``."""
    cfg = [1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M"]
    layers: list[nn.Module] = []
    c = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, v * width, 3, padding=1), nn.BatchNorm2d(v * width), nn.ReLU(inplace=True)]
            c = v * width
    spatial = image // 32
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * spatial * spatial, 4 * width), nn.ReLU(), nn.Dropout(), nn.Linear(4 * width, num_classes))


class _DenseLayer(nn.Module):
    def __init__(self, c_in: int, growth: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, 4 * growth, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(4 * growth), nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(torch.relu(self.bn1(x)))
        y = self.conv2(torch.relu(self.bn2(y)))
        return torch.cat([x, y], 1)


class TinyDenseNet(nn.Module):
    """Two dense blocks (4 layers each, growth 12) with a transition; DenseNet-BC layout."""

    def __init__(self, num_classes: int = 10, growth: int = 12) -> None:
        super().__init__()
        c = 2 * growth
        self.stem = nn.Conv2d(3, c, 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        for b in range(2):
            for _ in range(4):
                blocks.append(_DenseLayer(c, growth))
                c += growth
            if b == 0:
                blocks += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2)]
                c //= 2
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm(self.blocks(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()
    )


class TinyUNet(nn.Module):
    """A three-level UNet: max-pool down, ConvTranspose up, skip connections concatenated."""

    def __init__(self, classes: int = 2, width: int = 16) -> None:
        super().__init__()
        w = width
        self.d1, self.d2, self.bottom = _double_conv(3, w), _double_conv(w, 2 * w), _double_conv(2 * w, 4 * w)
        self.up2, self.u2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2), _double_conv(4 * w, 2 * w)
        self.up1, self.u1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2), _double_conv(2 * w, w)
        self.head = nn.Conv2d(w, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.d1(x)
        s2 = self.d2(nn.functional.max_pool2d(s1, 2))
        b = self.bottom(nn.functional.max_pool2d(s2, 2))
        y = self.u2(torch.cat([self.up2(b), s2], 1))
        y = self.u1(torch.cat([self.up1(y), s1], 1))
        return self.head(y)


class TinyGPT(nn.Module):
    """A small GPT-style decoder whose LM head is tied to the token embedding (``lm_head.weight is
    wte.weight``). Input: token ids ``[N, T]`` (int64); output: logits ``[N, T, vocab]``.

    The legacy ONNX exporter writes the tied matrix twice (once for the Gather, once transposed
    for the MatMul): the case ``dedup``'s layout-equivalent merging exists for.
    """

    def __init__(self, vocab: int = 512, dim: int = 64, layers: int = 2, heads: int = 4, context: int = 32):
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.wpe = nn.Embedding(context, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 4, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        for param in self.blocks.parameters():  # the layers start as copies of one: make them differ
            if param.dim() > 1:
                nn.init.normal_(param, std=0.05)
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.wte.weight
        self.register_buffer("causal", torch.triu(torch.full((context, context), float("-inf")), 1), persistent=False)

    def forward(self, ids):
        t = ids.shape[1]
        pos = torch.arange(t, device=ids.device)
        x = self.wte(ids) + self.wpe(pos)
        x = self.blocks(x, mask=self.causal[:t, :t])
        return self.lm_head(self.ln_f(x))
