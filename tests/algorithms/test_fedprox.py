"""FedProx: FedAvg's cross-entropy plus (mu / 2) ||w - w_global||^2 over the shared params."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from fedkd_mpi.algorithms import build_algorithm
from fedkd_mpi.algorithms.fedavg import FedAvg
from fedkd_mpi.algorithms.fedprox import FedProx
from fedkd_mpi.config import load_config
from fedkd_mpi.models import EncoderOutput
from fedkd_mpi.tensors import TensorSpec

from ..conftest import TINY, run_job


def _setup(algorithm: str, *overrides: str):
    alg = build_algorithm(load_config(None, [f"algorithm={algorithm}", *overrides]))
    torch.manual_seed(0)
    lin = nn.Linear(5, 3)
    alg.bind([TensorSpec(n, tuple(p.shape)) for n, p in lin.named_parameters()], {})
    state = alg.new_state(0)
    alg.begin_local(list(lin.parameters()), state)
    return alg, lin


def _batch(lin: nn.Linear) -> tuple[EncoderOutput, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 5, generator=g)
    y = torch.randint(0, 3, (8,), generator=g)
    return EncoderOutput(lin(x), [], []), y


def test_build_algorithm_gives_fedprox_with_fedavg_defaults():
    alg = build_algorithm(load_config(None, ["algorithm=fedprox", "fedprox.mu=0.5"]))
    assert isinstance(alg, FedProx) and isinstance(alg, FedAvg)
    assert alg.shared_role == "mentee" and alg.codec_field == "fedavg.codec"
    assert alg.cfg.fedprox.mu == 0.5


def test_mu_zero_is_fedavg():
    prox, lin = _setup("fedprox", "fedprox.mu=0")
    avg, _ = _setup("fedavg")
    out, y = _batch(lin)
    with torch.no_grad():  # moved away from the anchor: with mu = 0 it must not matter
        lin.weight.add_(0.3)
    lp, parts_p = prox.loss(None, out, y, None)
    la, parts_a = avg.loss(None, out, y, None)
    assert torch.equal(lp, la)
    assert parts_p["mentee_loss"] == parts_a["mentee_loss"] == float(la.detach())


@pytest.mark.parametrize("mu", [0.1, 2.0])
def test_loss_grows_by_exactly_the_proximal_term(mu):
    alg, lin = _setup("fedprox", f"fedprox.mu={mu}")
    w0 = [p.detach().clone() for p in lin.parameters()]
    out, y = _batch(lin)
    out = EncoderOutput(out.logits.detach(), [], [])  # the same outputs before and after
    at_anchor, _ = alg.loss(None, out, y, None)
    avg, _ = _setup("fedavg")
    ce, _ = avg.loss(None, out, y, None)
    assert torch.equal(at_anchor, ce)  # at the anchor the term is zero
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in lin.parameters():
            p.add_(0.25 * torch.randn(p.shape, generator=g))
    moved, parts = alg.loss(None, out, y, None)
    sq = sum(float(((p.detach().double() - a.double()) ** 2).sum())
             for p, a in zip(lin.parameters(), w0, strict=True))
    assert sq > 0
    assert float((moved - at_anchor).detach()) == pytest.approx(mu / 2 * sq, rel=1e-5, abs=1e-7)
    assert parts["mentee_loss"] == pytest.approx(float(moved.detach()))
    # the term's gradient pulls back to the anchor: d/dw = mu (w - w0)
    moved.backward()
    for p, a in zip(lin.parameters(), w0, strict=True):
        assert torch.allclose(p.grad, mu * (p.detach() - a), atol=1e-6)


def test_the_anchor_is_reset_by_begin_local():
    alg, lin = _setup("fedprox", "fedprox.mu=1.0")
    out, y = _batch(lin)
    out = EncoderOutput(out.logits.detach(), [], [])
    with torch.no_grad():
        lin.weight.add_(1.0)
    ce = _setup("fedavg")[0].loss(None, out, y, None)[0]
    assert float(alg.loss(None, out, y, None)[0].detach()) > float(ce.detach())
    alg.begin_local(list(lin.parameters()), alg.new_state(0))  # next round: new global
    assert torch.equal(alg.loss(None, out, y, None)[0], ce)


def test_loss_parts_reach_the_run_file_per_client_and_round(tmp_path):
    """Declared by FedProx alone (loss_parts): the run file holds both parts per client and
    round, and the recorded objective is exactly their mean combination."""
    out, mu = tmp_path / "prox.h5", 0.5
    res = run_job(3, "run", str(TINY), f"output={out}", "algorithm=fedprox",
                  f"fedprox.mu={mu}", "train.rounds=2")
    assert res.returncode == 0, res.stderr
    with h5py.File(out, "r") as f:
        ce, prox = f["clients/loss_ce"][()], f["clients/loss_prox"][()]
        total = f["clients/mentee_train_loss"][()]
        np.testing.assert_allclose(f["rounds/loss_prox"][()], prox.mean(axis=1))
    assert ce.shape == prox.shape == (2, 3) and (prox > 0).all()
    np.testing.assert_allclose(total, ce + 0.5 * mu * prox, rtol=1e-6)
