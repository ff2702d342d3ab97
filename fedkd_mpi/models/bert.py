"""A native BERT encoder (no ``transformers`` import): the first ``layers`` layers of a Hugging
Face ``model_type: bert`` checkpoint (``config.json`` + ``model.safetensors``), no pooler.

Parameter names and order, forward ops and dropout calls are those of transformers'
``BertModel(add_pooling_layer=False)`` with eager attention, so state dicts, outputs and
gradients are bitwise equal (``tests/models/test_bert_native.py``). Building it consumes no
global RNG (the skeleton is made on the meta device, then the checkpoint tensors are assigned),
like ``from_pretrained``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

#: ``hidden_act`` -> function, bitwise the same as transformers' ACT2FN entry ("gelu": exact erf)
ACTS = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu, "swish": F.silu, "tanh": torch.tanh}
WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class BertSpec:
    """The ``config.json`` fields the encoder uses (transformers' BertConfig defaults)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    @classmethod
    def from_config(cls, conf: dict[str, Any]) -> BertSpec:
        """From a parsed ``config.json``; unknown keys are ignored."""
        return cls(**{k: conf[k] for k in cls.__dataclass_fields__ if conf.get(k) is not None})


def supports(conf: dict[str, Any]) -> bool:
    """True if a parsed ``config.json`` describes an encoder this module builds exactly."""
    return (conf.get("model_type") == "bert" and conf.get("hidden_act", "gelu") in ACTS
            and not conf.get("is_decoder") and not conf.get("add_cross_attention"))


class BertOutput(NamedTuple):
    last_hidden_state: torch.Tensor  # (B, L, d)
    hidden_states: tuple[torch.Tensor, ...]  # embeddings output, then each layer's; or ()
    attentions: tuple[torch.Tensor, ...]  # per layer (B, h, L, L), after dropout; or ()


class _Block(nn.Module):
    """``dense`` -> dropout -> ``LayerNorm(. + residual)`` (BertSelfOutput / BertOutput)."""

    def __init__(self, n_in: int, s: BertSpec) -> None:
        super().__init__()
        self.dense = nn.Linear(n_in, s.hidden_size)
        self.LayerNorm = nn.LayerNorm(s.hidden_size, eps=s.layer_norm_eps)
        self.dropout = nn.Dropout(s.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class _SelfAttention(nn.Module):
    def __init__(self, s: BertSpec) -> None:
        super().__init__()
        if s.hidden_size % s.num_attention_heads:
            raise ValueError(f"The hidden size ({s.hidden_size}) is not a multiple of the number "
                             f"of attention heads ({s.num_attention_heads})")
        self.head_size = s.hidden_size // s.num_attention_heads
        self.scaling = self.head_size ** -0.5
        self.query = nn.Linear(s.hidden_size, s.hidden_size)
        self.key = nn.Linear(s.hidden_size, s.hidden_size)
        self.value = nn.Linear(s.hidden_size, s.hidden_size)
        self.dropout = nn.Dropout(s.attention_probs_dropout_prob)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (*h.shape[:-1], -1, self.head_size)
        q, k, v = (f(h).view(*shape).transpose(1, 2) for f in (self.query, self.key, self.value))
        w = torch.matmul(q, k.transpose(2, 3)) * self.scaling
        if mask is not None:
            w = w + mask
        w = F.dropout(F.softmax(w, dim=-1), p=self.dropout.p if self.training else 0.0,
                      training=self.training)
        out = torch.matmul(w, v).transpose(1, 2).contiguous()
        return out.reshape(*h.shape[:-1], -1).contiguous(), w


class _Attention(nn.Module):
    def __init__(self, s: BertSpec) -> None:
        super().__init__()
        self.self = _SelfAttention(s)
        self.output = _Block(s.hidden_size, s)


class _Intermediate(nn.Module):
    def __init__(self, s: BertSpec) -> None:
        super().__init__()
        self.dense = nn.Linear(s.hidden_size, s.intermediate_size)
        self.act = ACTS[s.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class _Layer(nn.Module):
    def __init__(self, s: BertSpec) -> None:
        super().__init__()
        self.attention = _Attention(s)
        self.intermediate = _Intermediate(s)
        self.output = _Block(s.intermediate_size, s)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        a, probs = self.attention.self(h, mask)
        a = self.attention.output(a, h)
        return self.output(self.intermediate(a), a), probs


def _embedding(n: int, d: int, pad: int | None = None) -> nn.Embedding:
    """An uninitialised nn.Embedding (its normal_ init on the meta device would import
    torch._dynamo: ~2 s of CPU)."""
    return nn.Embedding(n, d, padding_idx=pad, _weight=torch.empty(n, d))


class _Embeddings(nn.Module):
    def __init__(self, s: BertSpec) -> None:
        super().__init__()
        self.word_embeddings = _embedding(s.vocab_size, s.hidden_size, s.pad_token_id)
        self.position_embeddings = _embedding(s.max_position_embeddings, s.hidden_size)
        self.token_type_embeddings = _embedding(s.type_vocab_size, s.hidden_size)
        self.LayerNorm = nn.LayerNorm(s.hidden_size, eps=s.layer_norm_eps)
        self.dropout = nn.Dropout(s.hidden_dropout_prob)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        b, n = ids.shape
        pos = torch.arange(n, device=ids.device).unsqueeze(0)  # (1, L), as transformers
        types = torch.zeros_like(pos).expand(b, n)
        x = self.word_embeddings(ids) + self.token_type_embeddings(types)
        x = x + self.position_embeddings(pos)
        return self.dropout(self.LayerNorm(x))


class _Encoder(nn.Module):
    def __init__(self, s: BertSpec, layers: int) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(s) for _ in range(layers))


class NativeBert(nn.Module):
    """Embeddings + ``layers`` BERT layers; state-dict keys as transformers' BertModel."""

    def __init__(self, spec: BertSpec, layers: int) -> None:
        super().__init__()
        self.spec = spec
        self.embeddings = _Embeddings(spec)
        self.encoder = _Encoder(spec, layers)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                features: bool = True) -> BertOutput:
        """``attention_mask``: (B, L), nonzero = real token; ``features``: also collect the
        hidden states and attention probabilities."""
        h = self.embeddings(input_ids)
        mask = None
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            zero = torch.zeros((), dtype=h.dtype, device=h.device)  # eager mask: 0 / dtype min
            mask = torch.where(attention_mask.bool()[:, None, None, :], zero,
                               torch.finfo(h.dtype).min)
        states, probs = [h], []
        for layer in self.encoder.layer:
            h, p = layer(h, mask)
            if features:
                states.append(h)
                probs.append(p)
        return BertOutput(h, tuple(states) if features else (), tuple(probs))


def skeleton(conf: dict[str, Any], layers: int) -> NativeBert:
    """The model of ``conf`` on the meta device (no memory, no RNG use)."""
    with torch.device("meta"):
        return NativeBert(BertSpec.from_config(conf), layers)


def load(path: str | Path, layers: int) -> NativeBert:
    """The first ``layers`` layers of the checkpoint folder ``path``, in eval mode (as
    ``from_pretrained``); float tensors as float32. ValueError if a tensor is missing or its
    shape disagrees with config.json."""
    from safetensors import safe_open

    path = Path(path)
    model = skeleton(json.loads((path / "config.json").read_text()), layers)
    want = model.state_dict()
    state = {}
    with safe_open(str(path / WEIGHTS), "pt") as fh:
        names = {_rename(k): k for k in fh.keys()}
        for key, ref in want.items():
            if key not in names:
                raise ValueError(f"{key} is missing from {WEIGHTS}")
            got = list(fh.get_slice(names[key]).get_shape())
            if got != list(ref.shape):
                raise ValueError(f"{names[key]} is {got} in {WEIGHTS}, config.json gives "
                                 f"{list(ref.shape)}")
            t = fh.get_tensor(names[key])
            state[key] = t.float() if t.is_floating_point() else t
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def _rename(key: str) -> str:
    """Checkpoint key -> BertModel key: drop the ``bert.`` prefix, old LayerNorm names."""
    key = key.removeprefix("bert.")
    return key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta",
                                                                      "LayerNorm.bias")
