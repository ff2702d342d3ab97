"""The identity codec: every tensor as float32 values (FedAvg's payload).

Wire: body float32, the tensors in spec order, row-major; ``meta`` is -1 (dense) for every
tensor. One tensor costs ``4 numel`` bytes.
"""

from __future__ import annotations

import numpy as np
import torch

from fedkd_mpi.codecs.base import Codec
from fedkd_mpi.tensors import DENSE, Payload


class DenseCodec(Codec):
    """No compression: float32 values, meta -1."""

    name = "dense"

    def encode(self, tensors, rnd, state):
        chunks = [t.detach().reshape(-1).to(torch.float32).cpu().numpy() for t in tensors]
        body = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        return Payload(np.full(len(self.specs), DENSE, dtype=np.int64),
                       body.astype(np.float32, copy=False))

    def decode(self, payload, device="cpu"):
        need = self.body_nbytes(payload.meta) // 4
        if payload.body.size != need:
            raise ValueError(f"payload holds {payload.body.size} floats, meta requires {need}")
        body = torch.from_numpy(np.ascontiguousarray(payload.body).astype(np.float32,
                                                                          copy=False)).to(device)
        out, pos = [], 0
        for spec in self.specs:
            out.append(body[pos : pos + spec.numel].view(spec.rows, spec.cols)
                       .reshape(spec.shape).clone())
            pos += spec.numel
        return out

    def body_nbytes(self, meta):
        total = 0
        for k, spec in zip(np.asarray(meta).tolist(), self.specs, strict=True):
            if k != DENSE:
                raise ValueError(f"tensor {spec.name}: meta {k}, the dense codec sends "
                                 f"{DENSE} only")
            total += 4 * spec.numel
        return total
