"""Algorithms own their round: the runtime calls ``Algorithm.local_round`` and nothing else for
a client's local work, so an algorithm that overrides it changes what a job trains."""

from __future__ import annotations

import h5py
import numpy as np

from fedkd_mpi.algorithms.fedavg import FedAvg

from ..conftest import ROOT


class HalfSteps(FedAvg):
    """FedAvg whose clients train only on even rounds (0-based); odd rounds leave the model."""

    name = "half_steps"

    def local_round(self, client, shared, rnd, device):
        if rnd % 2:
            return {f"{self.shared_role}_loss": 0.0}
        return super().local_round(client, shared, rnd, device)


def test_an_overridden_local_round_is_what_the_job_runs(tiny_run):
    res, out = tiny_run(3, f"algorithm={__name__}:HalfSteps", "train.rounds=3",
                        env={"PYTHONPATH": str(ROOT)})  # the ranks import this test module
    assert res.returncode == 0, res.stderr
    with h5py.File(out, "r") as f:
        loss = f["clients/mentee_train_loss"][()]
        up = f["clients/bytes_up"][()]
        crc = f["replicas/checksum"][()][:, 0]
    assert (loss[1] == 0).all() and (loss[[0, 2]] > 0).all()
    assert crc[0] != crc[2]
    # round 2 trained nothing: every client's update is exactly zero, so the shared model after
    # round 2 is the one after round 1 (the replicas' CRC32 of the shared parameters)
    assert crc[1] == crc[0] and np.all(up > 0)
