"""FedAvgM (server momentum): its arithmetic, its state through a real SIGTERM and
``--resume`` (bit for bit), and that FedKD's SVD codec calls it (a stateful aggregator is
never folded into the codec's factored mean)."""

from __future__ import annotations

import os
import signal

import h5py
import numpy as np
import pytest
import torch

from fedkd_mpi.aggregators import aggregator_of
from fedkd_mpi.config import Config

from ..conftest import TINY, run_job
from ..runtime.test_reliability import Job
from ..runtime.test_resume import assert_same_science

ARGS = ("train.rounds=8", "train.aggregation=fedavgm", "plugins.fedavgm.momentum=0.5")


def test_momentum_arithmetic_and_state_round_trip():
    agg = aggregator_of(Config(train={"aggregation": "fedavgm"},
                               plugins={"fedavgm": {"momentum": 0.5, "server_lr": 2.0}}))
    assert agg.foldable_weights(np.array([1, 3])) is None  # always called, never folded
    ups = [[torch.tensor([1.0, 2.0])], [torch.tensor([3.0, 6.0])]]
    n = np.array([1, 3])
    first = agg.aggregate(ups, n)[0]  # mean (weighted 1:3) = [2.5, 5.0]
    assert torch.equal(first, torch.tensor([5.0, 10.0]))
    saved = agg.state_dict()
    second = agg.aggregate(ups, n)[0]  # v = 0.5 * 2.5 + 2.5
    assert torch.equal(second, torch.tensor([7.5, 15.0]))
    again = aggregator_of(Config(train={"aggregation": "fedavgm"},
                                 plugins={"fedavgm": {"momentum": 0.5, "server_lr": 2.0}}))
    again.load_state_dict(saved)
    assert torch.equal(again.aggregate(ups, n)[0], second)


def test_plain_means_fold_and_subclasses_that_override_do_not():
    from fedkd_mpi.aggregators.mean import Weighted

    class Scaled(Weighted):  # the natural way to write a variant: it must be called
        name = ""

        def aggregate(self, updates, num_samples):
            return [2 * t for t in super().aggregate(updates, num_samples)]

    cfg = Config(train={"aggregation": "weighted"})
    assert aggregator_of(cfg).foldable_weights(np.array([1, 2])).tolist() == [1, 2]
    assert Scaled(cfg).foldable_weights(np.array([1, 2])) is None


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("fedavgm") / "ref.h5"
    res = run_job(2, "run", str(TINY), f"output={out}", *ARGS, timeout=150)
    assert res.returncode == 0, res.stderr
    return out


def test_the_svd_codec_calls_a_stateful_aggregator():
    """FedKD's SVD codec folds only a plain mean into its factored path: FedAvgM's aggregate
    runs (before the seam it was skipped, 0 calls, and the result was the plain mean)."""
    from fedkd_mpi.codecs.base import codec_class
    from fedkd_mpi.tensors import TensorSpec

    cfg = Config(train={"aggregation": "fedavgm"}, plugins={"fedavgm": {"momentum": 0.5}},
                 svd={"t_start": 1.0, "t_end": 1.0})
    specs = [TensorSpec("w", (8, 12)), TensorSpec("v", (6, 4))]
    cls = codec_class("svd", "fedkd.codec")
    codec = cls(cls.settings_from(cfg), specs, 0, 2)
    gen = torch.Generator().manual_seed(0)
    ups = [codec.encode([torch.randn(sp.shape, generator=gen) for sp in specs], 0,
                        codec.new_state(c)) for c in range(3)]
    agg = aggregator_of(cfg)
    calls = []
    inner = agg.aggregate
    agg.aggregate = lambda u, n: calls.append(1) or inner(u, n)  # count, then the real one
    first = codec.decode(codec.aggregate(ups, agg, np.array([1, 1, 1]), 0, codec.new_state(None)))
    second = codec.decode(codec.aggregate(ups, agg, np.array([1, 1, 1]), 1,
                                          codec.new_state(None)))
    assert len(calls) == 2
    for a, b in zip(first, second, strict=True):  # T = 1: v_2 = 1.5 v_1, up to rounding
        assert torch.allclose(b, 1.5 * a, atol=1e-4)


def test_sigterm_and_resume_continue_the_velocity_bit_for_bit(tmp_path, uninterrupted):
    out = tmp_path / "stopped.h5"
    job = Job(tmp_path, f"output={out}", *ARGS)
    try:
        job.wait_for("round 1/8")
        os.kill(job.proc.pid, signal.SIGTERM)
        assert job.wait() == 3, job.stderr
    finally:
        job.kill()
    with h5py.File(out, "r") as f:
        assert f.attrs["status"] == "interrupted" and 1 <= len(f["rounds/round"]) < 8
    res = run_job(2, "run", str(TINY), f"output={out}", *ARGS, "--resume", timeout=150)
    assert res.returncode == 0, res.stderr
    assert_same_science(uninterrupted, out)
