"""Torch model factories for the export command's tests (``tests.exportable:NAME``)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.relu1(self.conv1(x)), 1))


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN()


def pruned_cnn() -> nn.Module:
    """60 % L1-unstructured on fc, 50 % of conv1's output channels (L2 structured)."""
    m = small_cnn()
    prune.l1_unstructured(m.fc, "weight", amount=0.6)
    prune.ln_structured(m.conv1, "weight", amount=0.5, n=2, dim=0)
    return m


def broken() -> nn.Module:
    raise RuntimeError("this factory always fails")


class Unexportable(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.fft(x).real  # no ONNX symbolic for aten::fft_fft in TorchScript


def unexportable() -> nn.Module:
    return Unexportable()
