"""FedKD ablations by config: each switch removes exactly its term (checked on loss values)."""

from __future__ import annotations

import pytest
import torch

from fedkd_mpi.algorithms.fedkd import FedKD
from fedkd_mpi.config import load_config
from fedkd_mpi.models import ModelShape

from ..conftest import TINY
from .test_losses import Y, _hand, _outs


def _alg(*overrides: str) -> FedKD:
    # heads equal in both models, so the attention term is on by default
    cfg = load_config(TINY, ["model.mentee.heads=2", *overrides])
    alg = FedKD(cfg)
    one_layer = ModelShape(2, [2], [1])  # the hand-made outputs: one layer, one head
    alg.bind([], {"mentor": one_layer, "mentee": one_layer})
    assert alg.pairs == [(0, 0)]
    return alg


def _parts(alg: FedKD) -> dict[str, float]:
    return alg.loss(*_outs(), Y, None)[1]


def test_full_fedkd_has_every_term():
    ce_t, ce_s, kl_t, kl_s, hid, att = _hand()
    s = ce_t + ce_s
    p = _parts(_alg())
    assert p["mentee_loss"] == pytest.approx(ce_s + (kl_s + hid + att) / s, rel=1e-6)
    assert p["mentor_loss"] == pytest.approx(ce_t + (kl_t + hid + att) / s, rel=1e-6)


def test_no_mutual_distillation_mentor_learns_locally_mentee_still_distills():
    ce_t, ce_s, _, kl_s, hid, att = _hand()
    s = ce_t + ce_s
    alg = _alg("fedkd.mentor_distill=false")
    p = _parts(alg)
    assert p["mentor_loss"] == pytest.approx(ce_t, rel=1e-6)
    assert p["mentee_loss"] == pytest.approx(ce_s + (kl_s + hid + att) / s, rel=1e-6)
    # the mentor's logits get exactly the CE gradient
    out_t, out_s = _outs()
    total, _ = alg.loss(out_t, out_s, Y, None)
    g = torch.autograd.grad(total, out_t.logits)[0]
    z = out_t.logits.detach().requires_grad_()
    want = torch.autograd.grad(torch.nn.functional.cross_entropy(z, Y), z)[0]
    assert torch.allclose(g, want, atol=1e-7)


def test_no_adaptive_weighting_uses_weight_one():
    ce_t, ce_s, kl_t, kl_s, hid, att = _hand()
    p = _parts(_alg("fedkd.adaptive_weight=false"))
    assert p["weight"] == 1.0
    assert p["mentee_loss"] == pytest.approx(ce_s + kl_s + hid + att, rel=1e-6)
    assert p["mentor_loss"] == pytest.approx(ce_t + kl_t + hid + att, rel=1e-6)


@pytest.mark.parametrize("key, drop", [("fedkd.hidden_loss", "hid"),
                                       ("fedkd.attention_loss", "att")])
def test_no_hidden_or_attention_loss_drops_only_that_term(key, drop):
    ce_t, ce_s, kl_t, kl_s, hid, att = _hand()
    s = ce_t + ce_s
    kept = {"hid": att, "att": hid}[drop]
    p = _parts(_alg(f"{key}=false"))
    assert p["mentee_loss"] == pytest.approx(ce_s + (kl_s + kept) / s, rel=1e-6)
    assert p["mentor_loss"] == pytest.approx(ce_t + (kl_t + kept) / s, rel=1e-6)
    assert p["kl_s"] == pytest.approx(kl_s, rel=1e-6)  # distillation untouched


def test_fixed_threshold_replaces_the_schedule_and_nothing_else():
    sched = _alg("svd.t_start=0.8", "svd.t_end=0.95", "train.rounds=3")
    fixed = _alg("svd.t_start=0.8", "svd.t_end=0.95", "train.rounds=3",
                 "svd.schedule=fixed")
    assert [round(sched.energy_threshold(r), 6) for r in range(3)] == [0.85, 0.9, 0.95]
    assert [fixed.energy_threshold(r) for r in range(3)] == [0.95, 0.95, 0.95]
    assert _parts(fixed) == pytest.approx(_parts(sched))  # the losses are unchanged
