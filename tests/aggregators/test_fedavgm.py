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


def test_momentum_changes_the_run_under_the_svd_codec(tmp_path, uninterrupted):
    out = tmp_path / "plain.h5"
    res = run_job(2, "run", str(TINY), f"output={out}", "train.rounds=8",
                  "train.aggregation=weighted", timeout=150)
    assert res.returncode == 0, res.stderr
    with h5py.File(out, "r") as a, h5py.File(uninterrupted, "r") as b:
        assert a["rounds/round"][0] == b["rounds/round"][0]
        assert not np.array_equal(a["rounds/mentee_metric"][-1:], b["rounds/mentee_metric"][-1:]) \
            or not np.array_equal(a["layers/rank_down"][()], b["layers/rank_down"][()])


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
