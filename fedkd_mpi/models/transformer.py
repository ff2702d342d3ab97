"""A small BERT-style encoder that exposes per-layer hidden states and attention maps: the
``tiny`` model family (trained from scratch, shapes from ``model.mentor`` / ``model.mentee``)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from fedkd_mpi.models.base import EncoderOutput, ModelFamily, layer_map

if TYPE_CHECKING:
    from fedkd_mpi.config import TransformerSpec

__all__ = ["Block", "EncoderOutput", "TinyEncoder", "TinyFamily", "build_model", "layer_map"]


class Block(nn.Module):
    """Post-LayerNorm transformer block (BERT layout) returning its attention probabilities."""

    def __init__(self, spec: TransformerSpec) -> None:
        super().__init__()
        d = spec.hidden
        self.heads = spec.heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln1 = nn.LayerNorm(d)
        self.ffn_in = nn.Linear(d, spec.ffn)
        self.ffn_out = nn.Linear(spec.ffn, d)
        self.ln2 = nn.LayerNorm(d)
        self.drop = nn.Dropout(spec.dropout)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, d = x.shape
        h = self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, h, d // h).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // h) + key_bias
        probs = scores.softmax(dim=-1)
        ctx = (self.drop(probs) @ v).transpose(1, 2).reshape(b, n, d)
        x = self.ln1(x + self.drop(self.o(ctx)))
        x = self.ln2(x + self.drop(self.ffn_out(torch.nn.functional.gelu(self.ffn_in(x)))))
        return x, probs


class TinyEncoder(nn.Module):
    """Token + position embeddings, ``layers`` blocks, a tanh pooler on the masked token mean,
    a classifier."""

    def __init__(self, spec: TransformerSpec, vocab_size: int, max_len: int, num_classes: int):
        super().__init__()
        d = spec.hidden
        self.embeddings = nn.ModuleDict(
            {"tok": nn.Embedding(vocab_size, d, padding_idx=0), "pos": nn.Embedding(max_len, d),
             "ln": nn.LayerNorm(d)}
        )
        self.layers = nn.ModuleList(Block(spec) for _ in range(spec.layers))
        self.pooler = nn.Linear(d, d)
        self.classifier = nn.Linear(d, num_classes)
        self.drop = nn.Dropout(spec.dropout)

    def forward(self, ids: torch.Tensor) -> EncoderOutput:
        pos = torch.arange(ids.shape[1], device=ids.device)
        emb = self.embeddings
        x = self.drop(emb["ln"](emb["tok"](ids) + emb["pos"](pos)))
        key_bias = (ids == 0)[:, None, None, :].to(x.dtype) * torch.finfo(x.dtype).min
        hidden, attn = [], []
        for block in self.layers:
            x, probs = block(x, key_bias)
            hidden.append(x)
            attn.append(probs)
        keep = (ids != 0).unsqueeze(-1).to(x.dtype)  # masked mean over real tokens
        pooled = torch.tanh(self.pooler((x * keep).sum(1) / keep.sum(1).clamp_min(1.0)))
        return EncoderOutput(self.classifier(self.drop(pooled)), hidden, attn)


def build_model(
    spec: TransformerSpec, vocab_size: int, max_len: int, num_classes: int, seed: int,
    freeze_embeddings: bool,
) -> TinyEncoder:
    """Build a model with a seeded initialisation; frozen embeddings get requires_grad=False."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TinyEncoder(spec, vocab_size, max_len, num_classes)
    if freeze_embeddings:
        for p in model.embeddings.parameters():
            p.requires_grad_(False)
    return model


class TinyFamily(ModelFamily):
    """``tiny``: :class:`TinyEncoder` from scratch, vocabulary ``data.vocab_size``, positions
    ``data.max_len``, shape ``model.<role>``."""

    name = "tiny"
    input_kinds = ("tokens",)

    def build(self, role: str, num_classes: int, seed: int, freeze_embeddings: bool) -> nn.Module:
        d = self.cfg.data
        return build_model(self.spec(role), d.vocab_size, d.max_len, num_classes,
                           seed, freeze_embeddings)
