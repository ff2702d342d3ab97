"""The two value types every axis shares: a communicated tensor's spec and an encoded payload.

They sit below every axis (codecs produce payloads, comm/wire.py carries them, algorithms and
the runtime pass them on), so none of those packages imports another to reach them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DENSE = -1  # per-tensor meta of a tensor sent dense (codecs that factor or sparsify)


@dataclass(frozen=True)
class TensorSpec:
    """Name and shape of one communicated tensor, and its 2-D view (P x Q).

    Vectors are (n, 1), conv kernels (O, I*kh*kw).
    """

    name: str
    shape: tuple[int, ...]

    @property
    def rows(self) -> int:
        return int(self.shape[0]) if len(self.shape) >= 2 else int(math.prod(self.shape))

    @property
    def cols(self) -> int:
        return int(math.prod(self.shape[1:])) if len(self.shape) >= 2 else 1

    @property
    def numel(self) -> int:
        return self.rows * self.cols

    def floats(self, rank: int) -> int:
        """Values this tensor occupies as SVD factors at ``rank`` (DENSE = -1: ``numel``)."""
        return self.numel if rank == DENSE else rank * (self.rows + self.cols + 1)


@dataclass
class Payload:
    """One encoded list of tensors: a codec-specific int64 ``meta`` per tensor (SVD: the rank
    K or DENSE; top-k: k; FedPAQ: bits) and a flat ``body`` of one numpy dtype."""

    meta: np.ndarray  # int64[L]
    body: np.ndarray  # 1-D, the codec's wire dtype
