"""FedProx (Li et al. 2020): FedAvg whose local objective adds the proximal term
``(fedprox.mu / 2) ||w - w_global||^2`` over the shared model's trainable parameters."""

from __future__ import annotations

import torch

from fedkd_mpi.algorithms.fedavg import FedAvg


class FedProx(FedAvg):
    """FedAvg (``fedavg.model``, ``fedavg.codec``) with a proximal local objective."""

    name = "fedprox"
    #: recorded per client and round (clients/loss_ce, clients/loss_prox): the cross-entropy
    #: and the squared distance ||w - w_global||^2 before the factor mu / 2
    loss_parts = ("ce", "prox")

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self._anchor: list[tuple[torch.nn.Parameter, torch.Tensor]] = []

    def begin_local(self, params, state) -> None:
        self._anchor = [(p, p.detach().clone()) for p in params]

    def loss(self, private, shared, y, proj):
        ce, parts = super().loss(private, shared, y, proj)
        prox = sum(((p - w0) ** 2).sum() for p, w0 in self._anchor)
        total = ce + 0.5 * self.cfg.fedprox.mu * prox
        parts[f"{self.shared_role}_loss"] = float(total.detach())
        parts.update(ce=float(ce.detach()), prox=float(prox.detach()))
        return total, parts
