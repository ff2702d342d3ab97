"""A small CNN mentor/mentee for image tasks (Fashion-MNIST), exposing per-block features.

Stem (the "embeddings": two 3x3 convs with 2x2 max-pooling, 28x28 -> 7x7, ``hidden`` channels),
then ``layers`` residual 3x3 conv blocks at 7x7, global average pooling, a linear classifier.
Each block's output is returned as a hidden state of shape (B, 49, hidden), so FedKD's hidden
loss (with W^h mapping mentee to mentor channels) applies unchanged; there are no attentions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from fedkd_mpi.models.base import EncoderOutput, ModelFamily

if TYPE_CHECKING:
    from fedkd_mpi.config import TransformerSpec

MEAN, STD = 0.286, 0.353  # Fashion-MNIST pixel statistics (training set)


class ConvBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.norm = nn.GroupNorm(1, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.norm(self.conv(x)))


class CNNEncoder(nn.Module):
    def __init__(self, spec: TransformerSpec, num_classes: int, in_channels: int = 1) -> None:
        super().__init__()
        c = spec.hidden
        self.embeddings = nn.Sequential(
            nn.Conv2d(in_channels, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.layers = nn.ModuleList(ConvBlock(c) for _ in range(spec.layers))
        self.drop = nn.Dropout(spec.dropout)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        x = (images.float() / 255.0 - MEAN) / STD if images.dtype == torch.uint8 else images
        x = self.embeddings(x)
        hidden = []
        for block in self.layers:
            x = block(x)
            hidden.append(x.flatten(2).transpose(1, 2))  # (B, H*W, C)
        return EncoderOutput(self.classifier(self.drop(x.mean((2, 3)))), hidden, [])


def build_cnn(spec: TransformerSpec, num_classes: int, seed: int,
              freeze_embeddings: bool) -> CNNEncoder:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CNNEncoder(spec, num_classes)
    if freeze_embeddings:
        for p in model.embeddings.parameters():
            p.requires_grad_(False)
    return model


class CNNFamily(ModelFamily):
    """``cnn``: :class:`CNNEncoder` (1-channel 28x28 images), ``model.<role>.layers`` blocks of
    ``hidden`` channels; ``heads`` and ``ffn`` are unused."""

    name = "cnn"
    input_kinds = ("images",)

    def build(self, role: str, num_classes: int, seed: int, freeze_embeddings: bool) -> nn.Module:
        return build_cnn(self.spec(role), num_classes, seed, freeze_embeddings)
