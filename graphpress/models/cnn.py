"""The demo's small CNN, trained in seconds on scikit-learn's ``load_digits`` (8x8 images)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn


class DigitsCNN(nn.Module):
    """Conv-BN-ReLU x3 + pooling + two Linear layers; input ``[N, 1, 8, 8]``, 10 classes."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width * 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width * 2)
        self.conv3 = nn.Conv2d(width * 2, width * 2, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 2)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(width * 2 * 4 * 4, 64)
        self.dropout = nn.Dropout(0.1)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.pool(torch.relu(self.bn2(self.conv2(x))))
        x = torch.relu(self.bn3(self.conv3(x))) + x  # residual: a dependency for pruning later
        x = torch.flatten(x, 1)
        return self.fc2(self.dropout(torch.relu(self.fc1(x))))


@dataclasses.dataclass
class DigitsData:
    """Train/test split of ``load_digits``, images scaled to [0, 1], shape ``[N, 1, 8, 8]``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def digits_data(seed: int = 0) -> DigitsData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    return DigitsData(x_train, y_train, x_test, y_test)


def train_digits_cnn(epochs: int = 8, seed: int = 0, width: int = 32) -> tuple[DigitsCNN, DigitsData]:
    """Train :class:`DigitsCNN` with Adam for a few epochs (a few seconds on 2 cores)."""
    torch.manual_seed(seed)
    data = digits_data(seed)
    model = DigitsCNN(width)
    fit(model, data, epochs, lr=3e-3, seed=seed)
    return model, data


def fit(model: nn.Module, data: DigitsData, epochs: int, *, lr: float = 3e-3, seed: int = 0) -> nn.Module:
    """Train (or fine-tune) ``model`` on the digits training split with Adam, batches of 64."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x = torch.from_numpy(data.x_train)
    y = torch.from_numpy(data.y_train)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
    model.eval()
    return model


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(axis=1) == labels).mean())
