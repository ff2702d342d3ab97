"""The algorithm interface and the three built-in algorithms.

An algorithm says which models exist (a *private* model that stays on its client and a
*shared* model that travels), the local loss, and both ends of its payload:
``client_encode`` (client) -> ``server_aggregate`` (rank 0) -> ``client_decode`` (every rank).
It never touches MPI: the runtime moves the bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedkd_mpi.algorithms.losses import LossSwitches, fedkd_loss
from fedkd_mpi.codecs import svd as svd_codec
from fedkd_mpi.codecs.linalg import server_average
from fedkd_mpi.codecs.svd import Encoded, SVDCodecState, TensorSpec, decode, encode
from fedkd_mpi.config import Config, TransformerSpec
from fedkd_mpi.models import EncoderOutput, layer_map

Decoder = Callable[[Encoded, Sequence[TensorSpec]], list[torch.Tensor]]


def weighted_mean(updates: Sequence[Encoded], weights: np.ndarray, specs: Sequence[TensorSpec],
                  dec: Decoder) -> list[torch.Tensor]:
    """Decode every update and average in float64, in client order; float32 result."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    acc: list[torch.Tensor] | None = None
    for wi, upd in zip(w.tolist(), updates, strict=True):
        ts = dec(upd, specs)
        if acc is None:
            acc = [wi * t.to(torch.float64) for t in ts]
        else:
            for a, t in zip(acc, ts, strict=True):
                a.add_(t.to(torch.float64), alpha=wi)
    if acc is None:  # nobody sent an update: an all-zero average
        return [torch.zeros(s.shape) for s in specs]
    return [a.to(torch.float32) for a in acc]


class Algorithm:
    """Base: FedAvg-style dense payload; subclasses change models, loss or codec."""

    name = "base"
    #: which metric column ("mentor"/"mentee") the private and shared models report to
    private_role: str | None = None
    shared_role: str | None = None

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.specs: list[TensorSpec] = []
        #: the server's algorithm state kept across rounds (rank 0; tensors only, checkpointed)
        self.server_state: dict[str, torch.Tensor] = {}

    # -- models ---------------------------------------------------------------------------
    def spec_of(self, role: str | None) -> TransformerSpec | None:
        return None if role is None else getattr(self.cfg.model, role)

    @property
    def communicates(self) -> bool:
        return self.shared_role is not None

    def make_projection(self, seed: int) -> nn.ModuleList | None:
        """Client-local extra modules trained with the shared model (W^h for FedKD)."""
        return None

    # -- local objective ------------------------------------------------------------------
    def loss(
        self, private: EncoderOutput | None, shared: EncoderOutput | None, y: torch.Tensor,
        proj: nn.ModuleList | None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        out, role = (shared, self.shared_role) if shared is not None else (private,
                                                                            self.private_role)
        ce = F.cross_entropy(out.logits, y)
        return ce, {f"{role}_loss": float(ce.detach())}

    # -- payload, both ends ---------------------------------------------------------------
    def threshold(self, rnd: int) -> float | None:
        """Energy threshold of round ``rnd`` (None: send dense)."""
        return None

    @property
    def wire_specs(self) -> list[TensorSpec]:
        """Tensors a message carries (default: the shared model's communicated tensors)."""
        return self.specs

    #: numpy dtype of every message body (comm/wire.py v2)
    wire_dtype: np.dtype = np.dtype(np.float32)

    def wire_body_nbytes(self):
        """The wire's body-size rule ``fn(meta) -> bytes`` for ``wire_specs`` (None: SVD rule)."""
        return None

    def after_step(self, state: dict[str, torch.Tensor], params: Sequence[torch.Tensor]) -> None:
        """Called after every local optimizer step with the client's state and shared params."""

    def client_encode(self, delta: Sequence[torch.Tensor], rnd: int,
                      state: dict[str, torch.Tensor]) -> Encoded:
        """One client's upload; ``state`` (Client.state) persists across rounds."""
        return encode(delta, self.specs, self.threshold(rnd), method=self.cfg.fedkd.svd_method)

    def server_aggregate(self, updates: Sequence[Encoded], weights: np.ndarray,
                         rnd: int) -> Encoded:
        """Decode every client's update, average them in float64 in client order, re-encode."""
        w = np.asarray(weights, dtype=np.float64)
        w = w / w.sum()
        thr, fk = self.threshold(rnd), self.cfg.fedkd
        if thr is not None and fk.server_path != "dense":  # factored average (codecs/linalg.py)
            dense, facts = server_average(updates, w, self.specs, thr, fk.server_path)
            return encode(dense, self.specs, thr, method=fk.svd_method, factors=facts)
        return encode(weighted_mean(updates, weights, self.specs, decode), self.specs, thr,
                      method=fk.svd_method)

    def client_decode(self, enc: Encoded, device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """The broadcast message as ``wire_specs`` tensors (identical on every rank)."""
        return decode(enc, self.specs, device)

    @torch.no_grad()
    def apply_update(self, params: Sequence[torch.Tensor], theta0: Sequence[torch.Tensor],
                     decoded: Sequence[torch.Tensor],
                     states: Sequence[dict[str, torch.Tensor]]) -> None:
        """Set the shared params to ``theta0 + update`` (every rank, same float ops).

        ``states``: Client.state of every client hosted on this rank (empty on rank 0), for
        algorithms whose download carries more than the model update (SCAFFOLD).
        """
        for p, t0, d in zip(params, theta0, decoded[: len(params)], strict=True):
            p.copy_(t0 + d)


class FedAvg(Algorithm):
    """FedAvg of one model (``fedavg.model``), dense float32 deltas, CE only."""

    name = "fedavg"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.shared_role = cfg.fedavg.model


class Local(Algorithm):
    """Each client trains its own model on its own data; nothing is communicated."""

    name = "local"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.private_role = cfg.local.model


class FedKD(Algorithm):
    """FedKD: private mentor, shared mentee, adaptive mutual distillation, SVD payload."""

    name = "fedkd"
    private_role = "mentor"
    shared_role = "mentee"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        f, m = cfg.fedkd, cfg.model
        self.pairs = layer_map(m.mentor.layers, m.mentee.layers)
        self.switches = LossSwitches(
            kd=f.kd_loss, hidden=f.hidden_loss,
            attention=f.attention_loss and m.mentor.heads == m.mentee.heads,
            adaptive=f.adaptive_weight, mentor_distill=f.mentor_distill,
            mentor_hidden=f.mentor_hidden_loss,
        )
        self.codec = SVDCodecState(f.t_start, f.t_end, cfg.train.rounds, f.schedule)

    def make_projection(self, seed: int) -> nn.ModuleList | None:
        """W^h per layer pair: identity when widths match (paper mode), seeded otherwise."""
        ds, dt = self.cfg.model.mentee.hidden, self.cfg.model.mentor.hidden
        if ds == dt and self.cfg.fedkd.loss_mode == "reference":
            return None  # the official code has no W^h
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            wh = nn.ModuleList(nn.Linear(ds, dt, bias=False) for _ in self.pairs)
        if ds == dt:
            for lin in wh:
                nn.init.eye_(lin.weight)
        return wh

    def loss(self, private, shared, y, proj):
        total, parts = fedkd_loss(private, shared, y, self.pairs, proj,
                                  self.cfg.fedkd.loss_mode, self.switches)
        parts.update(mentor_loss=parts["loss_t"], mentee_loss=parts["loss_s"])
        return total, parts

    def threshold(self, rnd: int) -> float:
        return self.codec.threshold(rnd)

    # -- extensions beyond the paper (fedkd.error_feedback / factor_dtype / max_rank) ------
    @property
    def extended(self) -> bool:
        f = self.cfg.fedkd
        return f.error_feedback or f.factor_dtype != "float32" or f.max_rank is not None

    @property
    def wire_dtype(self) -> np.dtype:  # type: ignore[override]
        return np.dtype(self.cfg.fedkd.factor_dtype)

    def wire_body_nbytes(self):
        if self.cfg.fedkd.factor_dtype == "float32":
            return None  # the wire's default SVD rule
        specs, item = self.specs, self.wire_dtype.itemsize

        def size(meta: np.ndarray) -> int:
            total = 0
            for k, spec in zip(np.asarray(meta).tolist(), specs, strict=True):
                if k != svd_codec.DENSE and not 1 <= k <= min(spec.rows, spec.cols):
                    raise ValueError(f"tensor {spec.name}: rank {k} outside "
                                     f"[1, {min(spec.rows, spec.cols)}] and not -1 (dense)")
                total += item * spec.floats(k)
            return total

        return size

    def _ext_encode(self, tensors: list[torch.Tensor], rnd: int,
                    state: dict[str, torch.Tensor]) -> Encoded:
        """SVD encode with the extensions; with error feedback, ``state`` carries the residual
        ``svd_err/i`` = (update + old residual) - what the message decodes to."""
        f = self.cfg.fedkd
        if f.error_feedback:
            tensors = [t + state[f"svd_err/{i}"].to(t) if f"svd_err/{i}" in state else t
                       for i, t in enumerate(tensors)]
        enc = encode(tensors, self.specs, self.threshold(rnd), method=f.svd_method,
                     max_rank=f.max_rank, dtype=self.wire_dtype)
        if f.error_feedback:
            sent = decode(enc, self.specs, tensors[0].device if tensors else "cpu")
            for i, (t, d) in enumerate(zip(tensors, sent, strict=True)):
                state[f"svd_err/{i}"] = (t.detach().to(torch.float32) - d).clone()
        return enc

    def client_encode(self, delta, rnd, state):
        if not self.extended:
            return super().client_encode(delta, rnd, state)
        return self._ext_encode(list(delta), rnd, state)

    def server_aggregate(self, updates, weights, rnd):
        if not self.extended:
            return super().server_aggregate(updates, weights, rnd)
        mean = weighted_mean(updates, weights, self.specs, decode)
        return self._ext_encode(mean, rnd, self.server_state)


def build_algorithm(cfg: Config) -> Algorithm:
    from fedkd_mpi.algorithms.baselines import BASELINES

    return {"fedkd": FedKD, "fedavg": FedAvg, "local": Local, **BASELINES}[cfg.algorithm](cfg)
