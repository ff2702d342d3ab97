"""The ``sign`` codec: 1-bit sign compression with a per-tensor scale and error feedback
(signSGD with a magnitude, Bernstein et al. 2018; error feedback as in Karimireddy et al. 2019,
"EF-SignSGD").

Per tensor, the encoder compresses ``x = update + residual``: it sends the scale
``s = mean |x|`` (float32) and the sign of every entry (1 bit, ``x >= 0`` -> 1); the decoder
returns ``s * sign``, and the residual ``x - s * sign`` is kept in the sender's
:class:`SignState` for the next round (each client has its own; the server's, ``client_id``
None, is used when the default :meth:`Codec.aggregate` re-encodes the aggregate).

Wire (body dtype uint8), per tensor in spec order::

    scale (float32, little-endian, 4 bytes) | signs (np.packbits, ceil(numel / 8) bytes)

``meta`` per tensor is its ``numel``; one tensor costs ``4 + ceil(numel / 8)`` bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from fedkd_mpi.codecs.base import Codec, CodecState, checked_body_bytes
from fedkd_mpi.tensors import Payload

SCALE_BYTES = 4  # float32 scale per tensor


def tensor_nbytes(numel: int) -> int:
    """Wire bytes of one tensor of ``numel`` entries: its scale and its packed sign bits."""
    return SCALE_BYTES + (numel + 7) // 8


@dataclass
class SignState(CodecState):
    """Error feedback: per tensor, what the 1-bit messages have not carried yet."""

    residual: list[torch.Tensor] | None = None


class SignCodec(Codec):
    """``fedkd.codec: sign`` (or ``fedavg.codec: sign``)."""

    name = "sign"
    State = SignState
    wire_dtype = np.dtype(np.uint8)

    class Settings(BaseModel):
        """``plugins.sign``."""

        model_config = ConfigDict(extra="forbid")
        error_feedback: bool = Field(True, description="carry the residual (both ends)")

    def encode(self, tensors, rnd, state: SignState) -> Payload:
        feedback = self.settings is None or self.settings.error_feedback
        meta = np.zeros(len(self.specs), dtype=np.int64)
        chunks: list[np.ndarray] = []
        residual: list[torch.Tensor] = []
        for i, (t, spec) in enumerate(zip(tensors, self.specs, strict=True)):
            x = t.detach().reshape(-1).to(device="cpu", dtype=torch.float32).clone()
            if feedback and state.residual is not None:
                x += state.residual[i].reshape(-1).to(x)
            positive = (x >= 0).numpy()
            scale = np.float32(x.abs().mean().item()) if x.numel() else np.float32(0.0)
            meta[i] = spec.numel
            chunks += [np.asarray([scale], dtype="<f4").view(np.uint8), np.packbits(positive)]
            sent = torch.where(torch.from_numpy(positive), float(scale), -float(scale))
            residual.append((x - sent).reshape(spec.shape))
        if feedback:
            state.residual = residual
        body = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)
        return Payload(meta, body.astype(np.uint8, copy=False))

    def decode(self, payload, device="cpu") -> list[torch.Tensor]:
        body = checked_body_bytes(payload, self.body_nbytes)
        out, pos = [], 0
        for spec in self.specs:
            n = spec.numel
            scale = float(np.frombuffer(body[pos : pos + SCALE_BYTES].tobytes(), dtype="<f4")[0])
            bits = np.unpackbits(body[pos + SCALE_BYTES : pos + tensor_nbytes(n)], count=n)
            pos += tensor_nbytes(n)
            signs = torch.from_numpy(bits.astype(np.float32)) * 2.0 - 1.0
            out.append((scale * signs).reshape(spec.shape).to(device))
        return out

    def body_nbytes(self, meta) -> int:
        total = 0
        for m, spec in zip(np.asarray(meta).tolist(), self.specs, strict=True):
            if m != spec.numel:
                raise ValueError(f"tensor {spec.name}: meta {m}, the sign codec sends all "
                                 f"{spec.numel} entries")
            total += tensor_nbytes(spec.numel)
        return total
