"""FedAvg (McMahan et al. 2017): one shared model (``fedavg.model``), cross-entropy only,
its round update sent with ``fedavg.codec`` (dense by default).

``fedpaq``, ``topk`` and ``powersgd`` are FedAvg with that codec (the names of the paper's
communication baselines): ``algorithm=topk`` is ``algorithm=fedavg fedavg.codec=topk``.
"""

from __future__ import annotations

from fedkd_mpi.algorithms.base import Algorithm
from fedkd_mpi.config import ConfigError


class FedAvg(Algorithm):
    """FedAvg of ``fedavg.model`` with ``fedavg.codec``."""

    name = "fedavg"
    codec_field = "fedavg.codec"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.shared_role = cfg.fedavg.model


class _CodecAlias(FedAvg):
    """FedAvg whose codec is fixed by the algorithm's name."""

    @property
    def codec_name(self) -> str:
        chosen = self.cfg.fedavg.codec
        if chosen not in ("dense", self.name):
            raise ConfigError(f"config error: 'fedavg.codec': algorithm '{self.name}' is fedavg "
                              f"with codec {self.name}; for codec {chosen} use "
                              f"algorithm=fedavg fedavg.codec={chosen}")
        return self.name


class FedPAQ(_CodecAlias):
    """FedAvg with quantised updates (codec fedpaq, Reisizadeh et al. 2020)."""

    name = "fedpaq"


class TopK(_CodecAlias):
    """FedAvg with top-k sparsified updates and error feedback (codec topk)."""

    name = "topk"


class PowerSGD(_CodecAlias):
    """FedAvg with PowerSGD low-rank updates (codec powersgd, Vogels et al. 2019)."""

    name = "powersgd"
