"""Top-k sparsification with error feedback: pure encode/decode + the residual as state.

Per tensor, keep the ``k = max(1, ceil(ratio * numel))`` entries of largest magnitude (ties:
lower flat index first, so the choice is deterministic). With error feedback the encoder
compresses ``delta + residual`` and the new residual is what was left out; the caller keeps the
residual in its per-client (or server) state dict between rounds (Stich et al. 2018; Karimireddy
et al. 2019, the family FetchSGD belongs to).

Wire (body dtype uint8, raw little-endian bytes), per tensor in spec order::

    values (k float32) | flat indices (k int32, ascending)

The header's per-tensor ``meta`` is ``k``: one tensor costs ``8 k`` bytes (:func:`body_nbytes`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedkd_mpi.codecs.base import Codec, CodecState, checked_body_bytes
from fedkd_mpi.tensors import Payload, TensorSpec

ENTRY_BYTES = 8  # float32 value + int32 index


def k_of(spec: TensorSpec, ratio: float) -> int:
    """Entries kept for one tensor at density ``ratio``."""
    return min(spec.numel, max(1, math.ceil(ratio * spec.numel)))


def body_nbytes(specs: Sequence[TensorSpec]):
    """The wire's size rule for this codec: ``fn(meta) -> bytes`` (ValueError on bad meta)."""

    def size(meta: np.ndarray) -> int:
        total = 0
        for k, spec in zip(np.asarray(meta).tolist(), specs, strict=True):
            if not 0 <= k <= spec.numel:
                raise ValueError(f"tensor {spec.name}: k = {k} outside [0, {spec.numel}]")
            total += ENTRY_BYTES * k
        return total

    return size


def encode(tensors: Sequence[torch.Tensor], specs: Sequence[TensorSpec], ratio: float,
           residual: list[torch.Tensor] | None = None) -> tuple[Payload, list[torch.Tensor]]:
    """Top-k of ``tensors + residual`` per tensor; returns the message and the new residual.

    ``residual=None`` means no error feedback from earlier rounds (a zero residual).
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    meta = np.zeros(len(specs), dtype=np.int64)
    chunks: list[np.ndarray] = []
    new_residual: list[torch.Tensor] = []
    for i, (t, spec) in enumerate(zip(tensors, specs, strict=True)):
        if spec.numel >= 2**31:
            raise ValueError(f"tensor {spec.name}: {spec.numel} entries exceed int32 indices")
        acc = t.detach().reshape(-1).to(torch.float32).cpu().clone()
        if residual is not None:
            acc += residual[i].reshape(-1).to(acc)
        k = k_of(spec, ratio)
        # stable sort on -|x|: largest magnitudes first, ties broken by index
        order = torch.sort(-acc.abs(), stable=True).indices[:k]
        idx = torch.sort(order).values
        vals = acc[idx]
        meta[i] = k
        chunks += [vals.numpy().astype("<f4").view(np.uint8),
                   idx.numpy().astype("<i4").view(np.uint8)]
        acc[idx] = 0.0
        new_residual.append(acc.reshape(spec.shape))
    body = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)
    return Payload(meta, body), new_residual


def decode(enc: Payload, specs: Sequence[TensorSpec],
           device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """Scatter the values into zero tensors (float32, original shapes)."""
    body = checked_body_bytes(enc, body_nbytes(specs))
    out, pos = [], 0
    for k, spec in zip(enc.meta.tolist(), specs, strict=True):
        vals = np.frombuffer(body[pos : pos + 4 * k].tobytes(), dtype="<f4")
        idx = np.frombuffer(body[pos + 4 * k : pos + 8 * k].tobytes(), dtype="<i4")
        pos += 8 * k
        if idx.size and (idx.min() < 0 or idx.max() >= spec.numel):
            raise ValueError(f"tensor {spec.name}: index outside [0, {spec.numel})")
        x = torch.zeros(spec.numel, dtype=torch.float32)
        x[torch.from_numpy(idx.astype(np.int64))] = torch.from_numpy(vals.copy())
        out.append(x.reshape(spec.shape).to(device))
    return out


@dataclass
class TopKState(CodecState):
    """Error feedback: per tensor, the entries left out so far."""

    residual: list[torch.Tensor] | None = None


class TopKCodec(Codec):
    """``topk.ratio`` of the entries per tensor, with error feedback on both ends."""

    name = "topk"
    State = TopKState
    wire_dtype = np.dtype(np.uint8)

    section = "topk"

    def encode(self, tensors, rnd, state: TopKState):
        s = self.settings
        enc, residual = encode(tensors, self.specs, s.ratio,
                               state.residual if s.error_feedback else None)
        if s.error_feedback:
            state.residual = residual
        return enc

    def decode(self, payload, device="cpu"):
        return decode(payload, self.specs, device)

    def body_nbytes(self, meta):
        return body_nbytes(self.specs)(meta)
