"""SCAFFOLD (Karimireddy et al., 2020, option II), with the drift correction applied in
parameter space.

After every local optimizer step, ``theta -= lr * (c - c_i)`` (for plain SGD this is the
paper's corrected gradient step; with Adam it keeps the correction on the scale of the steps
instead of mixing it into Adam's normalised gradient). After K local steps,
``c_i+ = c_i - c + (theta_0 - theta_K) / (K lr)``. Up: ``[delta, c_i+ - c_i]``; down:
``[aggregate(delta), c]`` where ``c += (|S| / N) mean(c_i+ - c_i)``; every client stores the
new ``c``. Both travel with ``fedavg.codec`` (dense: twice FedAvg's bytes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedkd_mpi.aggregators import weighted_mean
from fedkd_mpi.algorithms.base import AlgState
from fedkd_mpi.algorithms.fedavg import FedAvg
from fedkd_mpi.codecs.base import Decoded
from fedkd_mpi.tensors import TensorSpec


@dataclass
class ScaffoldState(AlgState):
    """``c``: the server control variate (a client's copy); ``c_i``: the client's own;
    ``steps``: local steps since the last upload."""

    c: list[torch.Tensor] | None = None
    c_i: list[torch.Tensor] | None = None
    steps: int = 0


class Scaffold(FedAvg):
    """SCAFFOLD of ``fedavg.model`` (see the module docstring)."""

    name = "scaffold"
    State = ScaffoldState

    @property
    def lr(self) -> float:
        t = self.cfg.train
        return t.lr_mentor if self.shared_role == "mentor" else t.lr_mentee

    @property
    def wire_specs(self) -> list[TensorSpec]:
        return self.specs + [TensorSpec(f"control/{s.name}", s.shape) for s in self.specs]

    def _zeros(self, like=None) -> list[torch.Tensor]:
        if like is not None:
            return [torch.zeros_like(t) for t in like]
        return [torch.zeros(s.shape) for s in self.specs]

    def after_step(self, state, params):
        st: ScaffoldState = state.alg  # type: ignore[assignment]
        c = st.c or self._zeros(params)
        ci = st.c_i or self._zeros(params)
        with torch.no_grad():
            for p, cg, cl in zip(params, c, ci, strict=True):
                p.sub_(self.lr * (cg.to(p) - cl.to(p)))
        st.steps += 1

    def client_encode(self, delta, rnd, state):
        st: ScaffoldState = state.alg  # type: ignore[assignment]
        c = st.c or self._zeros(delta)
        ci = st.c_i or self._zeros(delta)
        k = max(1, st.steps)
        new_ci = [a - g - d / (k * self.lr) for a, g, d in zip(ci, c, delta, strict=True)]
        dci = [b - a for a, b in zip(ci, new_ci, strict=True)]
        st.c_i = [t.detach().clone() for t in new_ci]
        st.steps = 0
        return self._codec.encode([*delta, *dci], rnd, state.codec)

    def server_aggregate(self, payloads, aggregator, num_samples, rnd):
        n = len(self.specs)
        decoded = list(Decoded(self._codec, payloads))  # read twice below: decode once
        mean_dy = aggregator.aggregate(decoded, num_samples)[:n]
        mean_dc = weighted_mean(decoded, np.ones(len(payloads)))[n:]
        share = len(payloads) / self.cfg.data.num_clients
        st: ScaffoldState = self.server.alg  # type: ignore[assignment]
        c = st.c or self._zeros()
        st.c = [a + share * d for a, d in zip(c, mean_dc, strict=True)]
        return self._codec.encode([*mean_dy, *st.c], rnd, self.server.codec)

    @torch.no_grad()
    def apply_update(self, params, theta0, decoded, states):
        super().apply_update(params, theta0, decoded, states)
        c = [t.detach().clone() for t in decoded[len(params):]]
        for state in states:
            state.alg.c = [t.clone() for t in c]
