"""FedPAQ-style quantisation of dense updates (Reisizadeh et al., 2020): codec ``fedpaq``.

Each tensor is quantised on its own with an affine grid of ``2**bits`` levels over
``[lo, hi]`` (its min and max): ``scale = (hi - lo) / (2**bits - 1)``, ``code =
round((x - lo) / scale)``, decoded as ``lo + code * scale``. ``bits`` is 8 or 16.

Wire (body dtype uint8, raw little-endian bytes), per tensor in spec order::

    scale (float32, 4 bytes) | zero point = lo (float32, 4 bytes) | codes (numel * bits/8 bytes)

with codes as uint8 (8-bit) or uint16 (16-bit). The header's per-tensor ``meta`` is ``bits``.
So one tensor costs ``8 + numel * bits / 8`` bytes: :func:`body_nbytes`.

Rounding: ``nearest`` (error <= scale/2 per element) or ``stochastic`` (unbiased, error <
scale; FedPAQ's quantiser), the latter driven by a caller-supplied, seeded ``torch.Generator``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedkd_mpi.codecs.base import Codec, CodecState, checked_body_bytes
from fedkd_mpi.seeding import torch_seed
from fedkd_mpi.tensors import Payload, TensorSpec

BITS = (8, 16)
PARAM_BYTES = 8  # scale + zero point, float32 each


def _code_dtype(bits: int) -> np.dtype:
    return np.dtype("<u1") if bits == 8 else np.dtype("<u2")


def tensor_nbytes(spec: TensorSpec, bits: int) -> int:
    """Bytes one tensor occupies in the body at ``bits``."""
    return PARAM_BYTES + spec.numel * bits // 8


def body_nbytes(specs: Sequence[TensorSpec]):
    """The wire's size rule for this codec: ``fn(meta) -> bytes`` (ValueError on bad meta)."""

    def size(meta: np.ndarray) -> int:
        total = 0
        for b, spec in zip(np.asarray(meta).tolist(), specs, strict=True):
            if b not in BITS:
                raise ValueError(f"tensor {spec.name}: {b} bits (valid: 8, 16)")
            total += tensor_nbytes(spec, b)
        return total

    return size


def encode(tensors: Sequence[torch.Tensor], specs: Sequence[TensorSpec], bits: int,
           rounding: str = "nearest", generator: torch.Generator | None = None) -> Payload:
    """Quantise every tensor to ``bits``; ``stochastic`` rounding draws from ``generator``."""
    if bits not in BITS:
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    if rounding not in ("nearest", "stochastic"):
        raise ValueError(f"rounding must be 'nearest' or 'stochastic', got {rounding!r}")
    levels = 2**bits - 1
    chunks: list[np.ndarray] = []
    for t, _spec in zip(tensors, specs, strict=True):
        x = t.detach().reshape(-1).to(torch.float64).cpu()
        lo = float(x.min()) if x.numel() else 0.0
        hi = float(x.max()) if x.numel() else 0.0
        scale = np.float32((hi - lo) / levels)
        lo32 = np.float32(lo)
        if scale > 0:
            # positions on the grid as the decoder will rebuild it (float32 lo and scale)
            pos = ((x - float(lo32)) / float(scale)).clamp_(0, levels)
            if rounding == "stochastic":
                u = torch.rand(pos.shape, generator=generator, dtype=torch.float64)
                code = torch.floor(pos + u)
            else:
                code = torch.round(pos)
            code = code.clamp_(0, levels).numpy().astype(_code_dtype(bits))
        else:
            code = np.zeros(x.numel(), dtype=_code_dtype(bits))
        chunks += [np.array([scale, lo32], dtype="<f4").view(np.uint8), code.view(np.uint8)]
    body = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)
    return Payload(np.full(len(specs), bits, dtype=np.int64), body)


def decode(enc: Payload, specs: Sequence[TensorSpec],
           device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """Rebuild float32 tensors ``lo + code * scale``."""
    body = checked_body_bytes(enc, body_nbytes(specs))
    out, pos = [], 0
    for bits, spec in zip(enc.meta.tolist(), specs, strict=True):
        scale, lo = np.frombuffer(body[pos : pos + PARAM_BYTES].tobytes(), dtype="<f4")
        pos += PARAM_BYTES
        n = spec.numel * bits // 8
        code = np.frombuffer(body[pos : pos + n].tobytes(), dtype=_code_dtype(bits))
        pos += n
        x = torch.from_numpy(code.astype(np.float32)) * torch.tensor(scale) + torch.tensor(lo)
        out.append(x.reshape(spec.shape).to(device))
    return out


class FedPAQCodec(Codec):
    """``fedpaq.bits`` per value; clients round as ``fedpaq.rounding`` (stochastic: seeded by
    (seed, round, client)), the server's re-encoded average rounds to nearest."""

    name = "fedpaq"
    wire_dtype = np.dtype(np.uint8)

    section = "fedpaq"

    def encode(self, tensors, rnd, state: CodecState):
        s = self.settings
        if state.client_id is None:  # server: deterministic
            return encode(tensors, self.specs, s.bits, "nearest")
        gen = torch.Generator().manual_seed(torch_seed(self.seed, "quant", rnd, state.client_id))
        return encode(tensors, self.specs, s.bits, s.rounding, gen)

    def decode(self, payload, device="cpu"):
        return decode(payload, self.specs, device)

    def body_nbytes(self, meta):
        return body_nbytes(self.specs)(meta)
