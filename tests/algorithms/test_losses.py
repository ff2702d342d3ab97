"""FedKD losses against hand-computed values, both gradient modes, each ablation switch."""

from __future__ import annotations

import math

import pytest
import torch

from fedkd_mpi.algorithms.losses import LossSwitches, fedkd_loss
from fedkd_mpi.models import EncoderOutput, layer_map


def _outs(requires_grad: bool = True):
    zt = torch.tensor([[1.0, 0.0]], requires_grad=requires_grad)
    zs = torch.tensor([[0.0, 1.0]], requires_grad=requires_grad)
    ht = torch.tensor([[[1.0, 2.0]]], requires_grad=requires_grad)
    hs = torch.tensor([[[0.0, 0.0]]], requires_grad=requires_grad)
    at = torch.tensor([[[[0.5, 0.5]]]], requires_grad=requires_grad)
    as_ = torch.tensor([[[[1.0, 0.0]]]], requires_grad=requires_grad)
    return EncoderOutput(zt, [ht], [at]), EncoderOutput(zs, [hs], [as_])


def _hand():
    e = math.e
    pt, ps = [e / (1 + e), 1 / (1 + e)], [1 / (1 + e), e / (1 + e)]
    ce_t, ce_s = -math.log(pt[0]), -math.log(ps[0])
    kl_t = sum(a * math.log(a / b) for a, b in zip(ps, pt, strict=True))  # KL(p_s || p_t)
    kl_s = sum(a * math.log(a / b) for a, b in zip(pt, ps, strict=True))
    hid, att = (1 + 4) / 2, (0.25 + 0.25) / 2
    return ce_t, ce_s, kl_t, kl_s, hid, att


Y = torch.tensor([0])
PAIRS = [(0, 0)]


def test_paper_mode_values():
    ce_t, ce_s, kl_t, kl_s, hid, att = _hand()
    s = ce_t + ce_s
    total, parts = fedkd_loss(*_outs(), Y, PAIRS, None, "paper")
    assert parts["loss_t"] == pytest.approx(ce_t + (kl_t + hid + att) / s, rel=1e-6)
    assert parts["loss_s"] == pytest.approx(ce_s + (kl_s + hid + att) / s, rel=1e-6)
    assert total.item() == pytest.approx(parts["loss_t"] + parts["loss_s"], rel=1e-6)


def test_reference_mode_values():
    ce_t, ce_s, kl_t, kl_s, hid, att = _hand()
    s = ce_t + ce_s
    total, _ = fedkd_loss(*_outs(), Y, PAIRS, None, "reference")
    want = ce_t + ce_s + (kl_t / 2 + kl_s / 2 + 2 * (hid + att)) / s  # KLDivLoss 'mean': /C
    assert total.item() == pytest.approx(want, rel=1e-6)


def test_paper_mode_stops_gradients_reference_does_not():
    ce_t, ce_s, *_ = _hand()
    s = ce_t + ce_s
    out_t, out_s = _outs()
    fedkd_loss(out_t, out_s, Y, PAIRS, None, "paper")[0].backward()
    # d/d hs of MSE(hs, sg(ht)) / sg(S): (hs - ht) / S  (mean over 2 elements)
    assert torch.allclose(out_s.hidden_states[0].grad, torch.tensor([[[-1.0, -2.0]]]) / s)
    out_t, out_s = _outs()
    fedkd_loss(out_t, out_s, Y, PAIRS, None, "reference")[0].backward()
    # reference counts the hidden term twice
    assert torch.allclose(out_s.hidden_states[0].grad, 2 * torch.tensor([[[-1.0, -2.0]]]) / s)


def test_paper_mode_mentor_and_mentee_terms_are_disjoint():
    out_t, out_s = _outs()
    total, _ = fedkd_loss(out_t, out_s, Y, PAIRS, None, "paper")
    g_t = torch.autograd.grad(total, out_t.logits, retain_graph=True)[0]
    # only L_t reaches the mentor logits: CE_t + KL(sg p_s || p_t)/sg(S)
    zt = out_t.logits.detach().requires_grad_()
    ce_t, ce_s, *_ = _hand()
    lt = torch.nn.functional.cross_entropy(zt, Y) + torch.nn.functional.kl_div(
        zt.log_softmax(-1), out_s.logits.detach().log_softmax(-1), reduction="batchmean",
        log_target=True) / (ce_t + ce_s)
    assert torch.allclose(g_t, torch.autograd.grad(lt, zt)[0], atol=1e-6)


def test_switches():
    ce_t, ce_s, kl_t, kl_s, hid, att = _hand()
    s = ce_t + ce_s
    _, p = fedkd_loss(*_outs(), Y, PAIRS, None, "paper", LossSwitches(kd=False))
    assert p["kl_t"] == 0 and p["loss_s"] == pytest.approx(ce_s + (hid + att) / s, rel=1e-6)
    _, p = fedkd_loss(*_outs(), Y, PAIRS, None, "paper", LossSwitches(hidden=False))
    assert p["loss_s"] == pytest.approx(ce_s + (kl_s + att) / s, rel=1e-6)
    _, p = fedkd_loss(*_outs(), Y, PAIRS, None, "paper", LossSwitches(attention=False))
    assert p["loss_s"] == pytest.approx(ce_s + (kl_s + hid) / s, rel=1e-6)
    _, p = fedkd_loss(*_outs(), Y, PAIRS, None, "paper", LossSwitches(adaptive=False))
    assert p["loss_s"] == pytest.approx(ce_s + kl_s + hid + att, rel=1e-6)
    _, p = fedkd_loss(*_outs(), Y, PAIRS, None, "paper", LossSwitches(mentor_distill=False))
    assert p["loss_t"] == pytest.approx(ce_t, rel=1e-6)
    _, p = fedkd_loss(*_outs(), Y, PAIRS, None, "paper", LossSwitches(mentor_hidden=False))
    assert p["loss_t"] == pytest.approx(ce_t + kl_t / s, rel=1e-6)
    assert p["loss_s"] == pytest.approx(ce_s + (kl_s + hid + att) / s, rel=1e-6)


def test_projection_is_applied_to_mentee_states():
    out_t, out_s = _outs()
    wh = torch.nn.ModuleList([torch.nn.Linear(2, 2, bias=False)])
    torch.nn.init.zeros_(wh[0].weight)
    with torch.no_grad():
        out_s.hidden_states[0].fill_(5.0)  # projected to 0 by the zero W^h
    _, p = fedkd_loss(out_t, out_s, Y, PAIRS, wh, "paper", LossSwitches(attention=False,
                                                                         kd=False))
    assert p["hidden"] == pytest.approx(2.5)


def test_layer_map_matches_paper():
    assert layer_map(12, 4) == [(0, 2), (1, 5), (2, 8), (3, 11)]  # 1-3, 2-6, 3-9, 4-12
    assert layer_map(12, 2) == [(0, 5), (1, 11)]
    assert layer_map(4, 2) == [(0, 1), (1, 3)]
