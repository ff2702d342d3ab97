"""FedKD's local losses (FEDKD.md §2-3): task CE, adaptive mutual distillation, hidden/attention.

Two gradient-flow modes:

* ``paper``: stop-gradient reading of Eq. 1-7. ``L_t`` touches only mentor parameters and
  ``L_s`` only mentee parameters and W^h, so one backward of ``L_t + L_s`` gives both.
* ``reference``: the authors' single scalar (nothing detached, KLDivLoss 'mean', hidden term
  counted twice).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedkd_mpi.models import EncoderOutput

EPS = 1e-8


@dataclass(frozen=True)
class LossSwitches:
    """Which terms are on (ablations).

    ``mentor_distill=False``: the mentor learns from its CE only. ``mentor_hidden=False``: the
    hidden/attention terms train the mentee (and W^h) only; with a mentor trained from scratch
    the mutual version collapses both representations (LayerNorm gains and W^h shrink to 0).
    """

    kd: bool = True
    hidden: bool = True
    attention: bool = True
    adaptive: bool = True
    mentor_distill: bool = True
    mentor_hidden: bool = True


def _project(wh: nn.ModuleList | None, k: int, h: torch.Tensor) -> torch.Tensor:
    return h if wh is None else wh[k](h)


def fedkd_loss(
    out_t: EncoderOutput,
    out_s: EncoderOutput,
    y: torch.Tensor,
    pairs: list[tuple[int, int]],
    wh: nn.ModuleList | None,
    mode: str = "paper",
    switches: LossSwitches = LossSwitches(),
) -> tuple[torch.Tensor, dict[str, float]]:
    """Return the scalar to back-propagate and its parts (floats, for logging).

    ``pairs`` are (mentee layer, mentor layer) indices; ``wh[k]`` maps mentee layer k's hidden
    state to the mentor width (``None``: widths equal, no map).
    """
    ce_t = F.cross_entropy(out_t.logits, y)
    ce_s = F.cross_entropy(out_s.logits, y)
    if mode == "paper":
        total, parts = _paper(out_t, out_s, ce_t, ce_s, pairs, wh, switches)
    elif mode == "reference":
        total, parts = _reference(out_t, out_s, ce_t, ce_s, pairs, wh, switches)
    else:
        raise ValueError(f"fedkd.loss_mode must be 'paper' or 'reference', got {mode!r}")
    parts.update(ce_t=_f(ce_t), ce_s=_f(ce_s))
    return total, parts


def _f(x: torch.Tensor) -> float:
    return float(x.detach())


def _paper(out_t, out_s, ce_t, ce_s, pairs, wh, sw):
    zero = ce_t.new_zeros(())
    denom = (ce_t + ce_s).detach() + EPS if sw.adaptive else ce_t.new_ones(())
    lt_t, ls_t = F.log_softmax(out_t.logits, -1), F.log_softmax(out_s.logits, -1)
    kl_t = kl_s = zero
    if sw.kd:  # KL_bm(sg(p_s) || p_t) for the mentor, KL_bm(sg(p_t) || p_s) for the mentee
        kl_t = F.kl_div(lt_t, ls_t.detach(), reduction="batchmean", log_target=True)
        kl_s = F.kl_div(ls_t, lt_t.detach(), reduction="batchmean", log_target=True)
    hid_t = hid_s = att_t = att_s = zero
    has_att = bool(out_t.attentions) and bool(out_s.attentions)  # CNNs have none
    for k, m in pairs:
        if sw.hidden:
            hs = _project(wh, k, out_s.hidden_states[k])
            ht = out_t.hidden_states[m]
            hid_t = hid_t + F.mse_loss(ht, hs.detach())
            hid_s = hid_s + F.mse_loss(hs, ht.detach())
        if sw.attention and has_att:
            at, as_ = out_t.attentions[m], out_s.attentions[k]
            att_t = att_t + F.mse_loss(at, as_.detach())
            att_s = att_s + F.mse_loss(as_, at.detach())
    loss_s = ce_s + (kl_s + hid_s + att_s) / denom
    if not sw.mentor_hidden:
        hid_t = att_t = zero
    loss_t = ce_t + (kl_t + hid_t + att_t) / denom if sw.mentor_distill else ce_t
    parts = dict(loss_t=_f(loss_t), loss_s=_f(loss_s), kl_t=_f(kl_t), kl_s=_f(kl_s),
                 hidden=_f(hid_s), attention=_f(att_s), weight=_f(1.0 / denom))
    return loss_t + loss_s, parts


def _reference(out_t, out_s, ce_t, ce_s, pairs, wh, sw):
    # The official code: one scalar, nothing detached. mentor_distill=False detaches the
    # mentor's side of every distillation term so that it learns from its CE only.
    zt = out_t.logits if sw.mentor_distill else out_t.logits.detach()
    ht_of = (lambda t: t) if sw.mentor_distill and sw.mentor_hidden else (lambda t: t.detach())
    zero = ce_t.new_zeros(())
    kl = zero
    if sw.kd:  # nn.KLDivLoss() default 'mean': element mean over B x C (= batchmean / C)
        c = zt.shape[-1]
        kl = F.kl_div(F.log_softmax(zt, -1), F.softmax(out_s.logits, -1),
                      reduction="batchmean") / c
        kl = kl + F.kl_div(F.log_softmax(out_s.logits, -1), F.softmax(zt, -1),
                           reduction="batchmean") / c
    mse = zero
    for k, m in pairs:
        if sw.hidden:
            mse = mse + F.mse_loss(_project(wh, k, out_s.hidden_states[k]),
                                   ht_of(out_t.hidden_states[m]))
        if sw.attention and out_t.attentions and out_s.attentions:
            mse = mse + F.mse_loss(ht_of(out_t.attentions[m]), out_s.attentions[k])
    s = ce_t + ce_s if sw.mentor_distill else ce_t.detach() + ce_s
    denom = s if sw.adaptive else ce_t.new_ones(())
    total = ce_t + ce_s + (kl + 2.0 * mse) / denom
    parts = dict(loss_t=_f(total), loss_s=_f(total), kl_t=_f(kl), kl_s=_f(kl),
                 hidden=_f(mse), attention=0.0, weight=_f(1.0 / denom))
    return total, parts
