"""Communication baselines for the paper's comparison, on the same transport and byte count.

All train one model (``fedavg.model``, the mentor by the paper's comparison) with CE only,
exchange per-round deltas like FedAvg, and differ only in what travels:

* ``fedpaq``   quantised deltas (codecs/quant.py), 8 or 16 bits, both directions;
* ``topk``     top-k values + int32 indices with error feedback (codecs/topk.py), both
               directions (the server's residual lives in ``server_state``);
* ``powersgd`` rank-r power iteration with warm start and error feedback
               (codecs/powersgd.py), both directions;
* ``scaffold`` SCAFFOLD (Karimireddy et al., 2020, option II): dense float32 model delta *and*
               control-variate delta up, dense model delta and server control variate down,
               so twice FedAvg's bytes.

Every algorithm owns both ends of its payload (``client_encode`` / ``server_aggregate`` /
``client_decode``) and keeps its state in ``Client.state`` / ``server_state`` (tensors only).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedkd_mpi.algorithms.base import Algorithm, weighted_mean
from fedkd_mpi.codecs import powersgd, quant, topk
from fedkd_mpi.codecs.svd import Encoded, TensorSpec, decode, encode
from fedkd_mpi.config import Config
from fedkd_mpi.seeding import torch_seed


class _CompressedFedAvg(Algorithm):
    """FedAvg of ``fedavg.model`` with its own payload (subclasses define it)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.shared_role = cfg.fedavg.model

    def threshold(self, rnd: int) -> float | None:
        return None


class _CodecFedAvg(_CompressedFedAvg):
    """A payload made by a ``codec`` module (``body_nbytes``, ``decode``) and ``_encode(ts,
    state)``: the client encodes with its own state, the server re-encodes the weighted mean
    with ``server_state``."""

    codec = None

    def wire_body_nbytes(self):
        return self.codec.body_nbytes(self.specs)

    def _encode(self, ts, state: dict[str, torch.Tensor]) -> Encoded:
        raise NotImplementedError

    def client_encode(self, delta, rnd, state):
        return self._encode(delta, state)

    def server_aggregate(self, updates, weights, rnd):
        mean = weighted_mean(updates, weights, self.specs, self.codec.decode)
        return self._encode(mean, self.server_state)

    def client_decode(self, enc, device="cpu"):
        return self.codec.decode(enc, self.specs, device)


class FedPAQ(_CodecFedAvg):
    """Quantised deltas: ``fedpaq.bits`` per value plus a float32 scale and zero point."""

    name = "fedpaq"
    codec = quant
    wire_dtype = np.dtype(np.uint8)

    def client_encode(self, delta, rnd, state):
        c = self.cfg.fedpaq
        gen = torch.Generator().manual_seed(
            torch_seed(self.cfg.seed, "quant", rnd, int(state["client_id"])))
        return quant.encode(delta, self.specs, c.bits, c.rounding, gen)

    def _encode(self, ts, state: dict[str, torch.Tensor]) -> Encoded:  # server: deterministic
        return quant.encode(ts, self.specs, self.cfg.fedpaq.bits, "nearest")


def _get(state: dict[str, torch.Tensor], prefix: str, n: int) -> list[torch.Tensor] | None:
    if f"{prefix}/0" not in state:
        return None
    return [state[f"{prefix}/{i}"] for i in range(n)]


def _put(state: dict[str, torch.Tensor], prefix: str, ts: Sequence[torch.Tensor]) -> None:
    for i, t in enumerate(ts):
        state[f"{prefix}/{i}"] = t


class TopK(_CodecFedAvg):
    """Top-k sparsified deltas with error feedback on both ends (``topk.ratio``)."""

    name = "topk"
    codec = topk
    wire_dtype = np.dtype(np.uint8)

    def _encode(self, ts, state: dict[str, torch.Tensor]) -> Encoded:
        c = self.cfg.topk
        res = _get(state, "topk_res", len(self.specs)) if c.error_feedback else None
        enc, new_res = topk.encode(ts, self.specs, c.ratio, res)
        if c.error_feedback:
            _put(state, "topk_res", new_res)
        return enc



class PowerSGD(_CodecFedAvg):
    """Rank-``powersgd.rank`` deltas: one warm-started power iteration, error feedback."""

    name = "powersgd"
    codec = powersgd

    def _encode(self, ts, state: dict[str, torch.Tensor]) -> Encoded:
        c = self.cfg.powersgd
        gen = torch.Generator().manual_seed(torch_seed(self.cfg.seed, "powersgd"))
        return powersgd.encode(ts, self.specs, c.rank, state, gen, c.error_feedback)



class Scaffold(_CompressedFedAvg):
    """SCAFFOLD, option II, with the drift correction applied in parameter space.

    After every local optimizer step, ``theta -= lr * (c - c_i)`` (for plain SGD this is the
    paper's corrected gradient step; with Adam it keeps the correction on the scale of the
    steps instead of mixing it into Adam's normalised gradient). After K local steps,
    ``c_i+ = c_i - c + (theta_0 - theta_K) / (K lr)``. Up: dense ``[delta, c_i+ - c_i]``;
    down: dense ``[mean delta, c]`` where ``c += (|S| / N) mean(c_i+ - c_i)``; every client
    stores the new ``c`` in its state.
    """

    name = "scaffold"

    @property
    def lr(self) -> float:
        t = self.cfg.train
        return t.lr_mentor if self.shared_role == "mentor" else t.lr_mentee

    @property
    def wire_specs(self) -> list[TensorSpec]:
        return self.specs + [TensorSpec(f"control/{s.name}", s.shape) for s in self.specs]

    def _zeros(self, like: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        if like is not None:
            return [torch.zeros_like(t) for t in like]
        return [torch.zeros(s.shape) for s in self.specs]

    def after_step(self, state, params):
        n = len(params)
        c = _get(state, "c", n) or self._zeros(params)
        ci = _get(state, "c_i", n) or self._zeros(params)
        with torch.no_grad():
            for p, cg, cl in zip(params, c, ci, strict=True):
                p.sub_(self.lr * (cg.to(p) - cl.to(p)))
        state["steps"] = state.get("steps", torch.zeros((), dtype=torch.int64)) + 1

    def client_encode(self, delta, rnd, state):
        n = len(self.specs)
        c = _get(state, "c", n) or self._zeros(delta)
        ci = _get(state, "c_i", n) or self._zeros(delta)
        k = max(1, int(state.get("steps", torch.ones((), dtype=torch.int64))))
        new_ci = [a - g - d / (k * self.lr) for a, g, d in zip(ci, c, delta, strict=True)]
        dci = [b - a for a, b in zip(ci, new_ci, strict=True)]
        _put(state, "c_i", [t.detach().clone() for t in new_ci])
        state["steps"] = torch.zeros((), dtype=torch.int64)
        return encode([*delta, *dci], self.wire_specs, None)

    def server_aggregate(self, updates, weights, rnd):
        n = len(self.specs)
        ws = self.wire_specs
        mean_dy = weighted_mean(updates, weights, ws, decode)[:n]
        mean_dc = weighted_mean(updates, np.ones(len(updates)), ws, decode)[n:]
        share = len(updates) / self.cfg.data.num_clients
        c = _get(self.server_state, "c", n) or self._zeros()
        c = [a + share * d for a, d in zip(c, mean_dc, strict=True)]
        _put(self.server_state, "c", c)
        return encode([*mean_dy, *c], ws, None)

    def client_decode(self, enc, device="cpu"):
        return decode(enc, self.wire_specs, device)

    @torch.no_grad()
    def apply_update(self, params, theta0, decoded, states):
        super().apply_update(params, theta0, decoded, states)
        c = [t.detach().clone() for t in decoded[len(params):]]
        for st in states:
            _put(st, "c", [t.clone() for t in c])


BASELINES: dict[str, type[Algorithm]] = {
    "fedpaq": FedPAQ, "topk": TopK, "powersgd": PowerSGD, "scaffold": Scaffold,
}
