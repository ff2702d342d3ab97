"""FedAvgM: server momentum (Hsu, Qi and Brown 2019, "Measuring the effects of non-identical
data distribution for federated visual classification"). With the participants' weighted mean
update d_t: v_t = momentum * v_{t-1} + d_t (v_0 = 0), and the server sends server_lr * v_t.
The velocity v lives on rank 0 and is checkpointed with the server, so a resumed run goes on
bit for bit. Settings: ``plugins.fedavgm.{momentum, server_lr, weighted}``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from fedkd_mpi.aggregators.base import Aggregator, weighted_mean


class FedAvgM(Aggregator):
    """The weighted (or uniform) mean of the updates, accumulated with server momentum."""

    name = "fedavgm"

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid")
        momentum: float = Field(0.9, ge=0.0, lt=1.0, description="beta: the velocity's decay")
        server_lr: float = Field(1.0, gt=0.0, le=10.0, description="eta: the server's step")
        weighted: bool = Field(True, description="weight clients by their training examples")

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.velocity: list[torch.Tensor] | None = None  # float64, one per tensor

    def weights(self, num_samples: np.ndarray) -> np.ndarray:
        n = np.asarray(num_samples, dtype=np.float64)
        return n if self.settings.weighted else np.ones_like(n)

    def aggregate(self, updates, num_samples):
        mean = [m.to(torch.float64) for m in weighted_mean(updates, self.weights(num_samples))]
        if self.velocity is None:
            self.velocity = mean
        else:
            beta = self.settings.momentum
            self.velocity = [beta * v + m for v, m in zip(self.velocity, mean, strict=True)]
        return [(self.settings.server_lr * v).to(torch.float32) for v in self.velocity]

    def state_dict(self) -> dict[str, Any]:
        return {"velocity": list(self.velocity or [])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        velocity = state.get("velocity") or []
        self.velocity = [torch.as_tensor(v, dtype=torch.float64) for v in velocity] or None
