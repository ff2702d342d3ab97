"""FedKD (Wu et al. 2022): a private mentor, a shared mentee, adaptive mutual distillation
(losses.py); the mentee's update travels with ``fedkd.codec`` (the paper: ``svd``)."""

from __future__ import annotations

import torch
from torch import nn

from fedkd_mpi.algorithms.base import Algorithm
from fedkd_mpi.algorithms.losses import LossSwitches, fedkd_loss
from fedkd_mpi.config import ConfigError
from fedkd_mpi.models import layer_map


class FedKD(Algorithm):
    """FedKD: private mentor, shared mentee, mutual distillation, ``fedkd.codec`` payload."""

    name = "fedkd"
    private_role = "mentor"
    shared_role = "mentee"
    codec_field = "fedkd.codec"
    #: losses.py's parts: each model's cross-entropy and distillation KL (before the adaptive
    #: weight), the mentee's hidden and attention MSE, and the adaptive weight 1/(CE_t+CE_s)
    loss_parts = ("ce_t", "ce_s", "kl_t", "kl_s", "hidden", "attention", "weight")

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.pairs: list[tuple[int, int]] = []
        self.widths: list[tuple[int, int]] = []  # (mentee, mentor) hidden width per pair
        self.switches = LossSwitches()

    def check_models(self, shapes) -> None:
        f = self.cfg.fedkd
        for role in ("mentor", "mentee"):
            if f.hidden_loss and not shapes[role].hidden_widths:
                raise ConfigError(f"config error: 'fedkd.hidden_loss': the {role} of "
                                  f"model.kind '{self.cfg.model.kind}' returns no hidden "
                                  "states; return them or set fedkd.hidden_loss=false")

    def bind(self, specs, shapes) -> None:
        super().bind(specs, shapes)
        if "mentor" not in shapes or "mentee" not in shapes:
            return  # rank 0: no local training
        t, s = shapes["mentor"], shapes["mentee"]
        f = self.cfg.fedkd
        self.pairs = layer_map(len(t.hidden_widths), len(s.hidden_widths)) \
            if s.hidden_widths and t.hidden_widths else []
        self.widths = [(s.hidden_widths[k], t.hidden_widths[m]) for k, m in self.pairs]
        same_heads = all(t.attention_heads[m] == s.attention_heads[k] for k, m in self.pairs
                         if m < len(t.attention_heads) and k < len(s.attention_heads))
        self.switches = LossSwitches(
            kd=f.kd_loss, hidden=f.hidden_loss, attention=f.attention_loss and same_heads,
            adaptive=f.adaptive_weight, mentor_distill=f.mentor_distill,
            mentor_hidden=f.mentor_hidden_loss,
        )

    def make_projection(self, seed: int) -> nn.ModuleList | None:
        """W^h per layer pair: identity when widths match (paper mode), seeded otherwise."""
        same = all(ds == dt for ds, dt in self.widths)
        if same and self.cfg.fedkd.loss_mode == "reference":
            return None  # the official code has no W^h
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            wh = nn.ModuleList(nn.Linear(ds, dt, bias=False) for ds, dt in self.widths)
        for lin, (ds, dt) in zip(wh, self.widths, strict=True):
            if ds == dt:
                nn.init.eye_(lin.weight)
        return wh

    def loss(self, private, shared, y, proj):
        total, parts = fedkd_loss(private, shared, y, self.pairs, proj,
                                  self.cfg.fedkd.loss_mode, self.switches)
        parts.update(mentor_loss=parts["loss_t"], mentee_loss=parts["loss_s"])
        return total, parts
