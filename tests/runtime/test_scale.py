"""HPC-scale building blocks without MPI: sampling, client residency/spilling, the start-up
memory budget, device choice, resume validation."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from fedkd_mpi.aggregators.mean import Uniform, Weighted
from fedkd_mpi.algorithms.base import AlgState, ClientState
from fedkd_mpi.codecs.topk import TopKState
from fedkd_mpi.config import Config, ConfigError, config_from_dict
from fedkd_mpi.data import ClientData
from fedkd_mpi.runtime import checkpoint, manifest, sampling
from fedkd_mpi.runtime.client import Client
from fedkd_mpi.runtime.devices import NodeInfo, choose_device
from fedkd_mpi.runtime.residency import (
    CheckpointError,
    ClientStore,
    budget_error,
    client_state,
    per_client_bytes,
)


# -- sampling ------------------------------------------------------------------------------
def test_sampling_is_a_deterministic_function_of_seed_and_round():
    a = [sampling.participants(20, r, 7, fraction=0.25) for r in range(6)]
    b = [sampling.participants(20, r, 7, fraction=0.25) for r in range(6)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert all(x.sum() == 5 for x in a)
    assert len({tuple(np.flatnonzero(x)) for x in a}) > 1, "rounds draw different clients"
    assert not np.array_equal(a[0], sampling.participants(20, 0, 8, fraction=0.25))
    assert sampling.participants(20, 3, 7, fraction=0.9, count=3).sum() == 3  # count wins
    assert sampling.participants(5, 0, 0).all()  # default: everyone
    assert sampling.num_sampled(10, 0.01) == 1 and sampling.num_sampled(4, 1.0, 9) == 4


def test_sample_count_above_num_clients_is_a_config_error():
    with pytest.raises(ConfigError, match=r"train\.sample_count \(9\) must be <= "):
        config_from_dict({"data": {"num_clients": 3}, "train": {"sample_count": 9}})


def test_aggregation_weights_over_participants_only():
    sizes = np.array([10, 20, 30, 40])
    mask = np.array([True, False, True, False])
    cfg = config_from_dict({})
    assert Uniform(cfg).weights(sizes[mask]).tolist() == [1.0, 1.0]
    assert Weighted(cfg).weights(sizes[mask]).tolist() == [10.0, 30.0]


# -- residency -----------------------------------------------------------------------------
def _factory(cid: int) -> Client:
    torch.manual_seed(cid)
    data = ClientData(cid, torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, dtype=torch.long),
                      torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    state = ClientState(TopKState(cid, [torch.zeros(3)]), AlgState(cid))
    cl = Client(cid, data, state, private=nn.Linear(8, 4), proj=nn.ModuleList([nn.Linear(4, 4)]))
    cl.opt_private = torch.optim.Adam(cl.private.parameters(), lr=0.1)
    cl.opt_shared = torch.optim.Adam(cl.proj.parameters(), lr=0.1)
    return cl


def _train(cl: Client, steps: int = 2) -> None:
    for _ in range(steps):
        loss = cl.private(torch.ones(2, 8)).pow(2).sum() + cl.proj[0](torch.ones(1, 4)).sum()
        for o in (cl.opt_private, cl.opt_shared):
            o.zero_grad()
        loss.backward()
        for o in (cl.opt_private, cl.opt_shared):
            o.step()
    cl.state.codec.residual = [cl.state.codec.residual[0] + 1.0]


def _same(a: dict, b: dict) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def test_spilled_clients_come_back_bit_identical(tmp_path):
    ref = {c: _factory(c) for c in range(5)}  # everything resident
    store = ClientStore(list(range(5)), _factory, capacity=2, spill_root=str(tmp_path), rank=1)
    for _ in range(3):
        for c in range(5):
            _train(ref[c])
            _train(store.get(c))
            assert len(store.resident) <= 2
    assert store.spills > 0 and store.loads > 0
    assert len(list(store.dir.glob("client_*.pt"))) >= 3
    for c in range(5):
        assert _same(client_state(store.get(c)), client_state(ref[c])), c
    states = store.states()  # lazily materialised, changes persist through spilling
    for s in states:
        s.codec.residual[0] += 10
    assert all(float(store.get(c).state.codec.residual[0][0]) == 13.0 for c in range(5))
    spill_dir = store.dir
    store.close()
    assert not spill_dir.exists()


def test_checkpoint_files_round_trip_through_the_store(tmp_path):
    store = ClientStore([3, 4, 5], _factory, capacity=1, spill_root=str(tmp_path), rank=2)
    for c in (3, 4):
        _train(store.get(c))
    for c in (3, 4, 5):  # 3 spilled, 4 resident, 5 never touched
        store.save_to(c, tmp_path / f"c{c}.pt")
    want = {c: client_state(store.get(c)) for c in (3, 4, 5)}
    for capacity in (None, 1):
        other = ClientStore([3, 4, 5], _factory, capacity, str(tmp_path), rank=2)
        for c in (3, 4, 5):
            other.adopt(c, tmp_path / f"c{c}.pt")
        for c in (3, 4, 5):
            assert _same(client_state(other.get(c)), want[c])
        other.close()
    store.close()


def test_all_resident_store_never_touches_disk(tmp_path):
    store = ClientStore([0, 1], _factory, capacity=None, spill_root=str(tmp_path), rank=1)
    store.get(0)
    store.get(1)
    assert store.dir is None and not list(tmp_path.iterdir())
    store.close()


def test_memory_budget_error_is_one_line_with_a_valid_value():
    mib = 1024 * 1024
    each = per_client_bytes(nn.Linear(1000, 1000), None, 10_000, "adam")
    assert 11 * mib < each < 16 * mib
    assert budget_error(100 * mib, 20, 5, 4, 4000 * mib, None, 1) == ""
    err = budget_error(100 * mib, 20, None, 4, 4000 * mib, None, 1)
    assert "runtime.resident_clients" in err and "use at most 10" in err and "\n" not in err
    err = budget_error(100 * mib, 20, 5, 4, 4000 * mib, 100 * mib, 1)
    assert "runtime.spill_dir" in err
    assert budget_error(100 * mib, 0, None, 4, 1, 1, 1) == ""


# -- devices -------------------------------------------------------------------------------
def _node(clients: int, index: int) -> NodeInfo:
    return NodeInfo("node7", clients + 1, clients, index)


@pytest.mark.parametrize("rank, index, n_gpus, device, want", [
    (1, 0, 0, "auto", "cpu"), (2, 1, 0, "auto", "cpu"), (1, 0, 4, "cpu", "cpu"),
    (1, 0, 4, "auto", "cuda:0"), (3, 2, 4, "auto", "cuda:2"), (4, 3, 4, "cuda", "cuda:3"),
])
def test_client_ranks_take_local_index_mod_gpus(rank, index, n_gpus, device, want):
    assert choose_device(rank, _node(4, index), n_gpus, device, "cpu", 1) == (want, "")


def test_more_client_ranks_than_gpus_needs_ranks_per_gpu():
    _, err = choose_device(5, _node(8, 4), 4, "auto", "cpu", 1)
    assert "runtime.ranks_per_gpu=2" in err and "\n" not in err
    assert choose_device(5, _node(8, 4), 4, "auto", "cpu", 2) == ("cuda:0", "")
    assert choose_device(6, _node(8, 5), 4, "auto", "cpu", 2) == ("cuda:1", "")


def test_server_device_and_missing_cuda():
    assert choose_device(0, _node(4, 0), 4, "auto", "cpu", 1) == ("cpu", "")
    assert choose_device(0, _node(4, 0), 4, "auto", "cuda", 1) == ("cuda:0", "")
    assert "runtime.server_device" in choose_device(0, _node(4, 0), 0, "auto", "cuda", 1)[1]
    assert "runtime.device" in choose_device(1, _node(4, 0), 0, "cuda", "cpu", 1)[1]


# -- resume validation ---------------------------------------------------------------------
def test_resume_checks_are_one_line(tmp_path):
    out = tmp_path / "run.h5"
    cfg = Config(output=str(out))
    with pytest.raises(ConfigError, match="does not exist"):
        checkpoint.check_resumable(cfg, 3)
    man = {"format": checkpoint.FORMAT, "round": 2, "dir": "round_000002", "world_size": 3,
           "num_clients": cfg.data.num_clients, "run_id": "r1",
           "config": checkpoint.science(cfg),
           "files": {n: ["0" * 64, 1] for n in ("server.pt", "rank_0000.pt", "rank_0001.pt",
                                                "rank_0002.pt", *(f"client_{c:07d}.pt" for c
                                                                  in range(cfg.data.num_clients)))}}
    with h5py.File(out, "w") as f:  # a run file stopped after round 2 (resume reads it)
        f.attrs["config"], f.attrs["status"] = cfg.to_yaml(), "interrupted"
        f.attrs["run_id"] = "r1"
        f.create_dataset("rounds/round", data=[1, 2], maxshape=(None,))
        f.create_dataset("run/checkpoint_round", data=[2, -1])
        f.create_dataset("run/checkpoint_sha256", data=np.array(
            [manifest.manifest_digest(man).encode(), b""], "S64"))
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        checkpoint.check_resumable(cfg, 3)
    root = checkpoint.checkpoint_dir(cfg)
    (root / "round_000002").mkdir(parents=True)
    (root / checkpoint.MANIFEST).write_bytes(manifest.seal(man))
    assert checkpoint.check_resumable(cfg, 3)["round"] == 2
    free = cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={
        "checkpoint_every": 9})})
    assert checkpoint.check_resumable(free, 3)["round"] == 2  # runtime keys may change
    other = Config(output=str(out), train={"lr_mentor": 0.5})
    with pytest.raises(ConfigError, match=r"train\.lr_mentor=0\.001 in the checkpoint"):
        checkpoint.check_resumable(other, 3)
    with pytest.raises(ConfigError, match="mpiexec -n 3"):
        checkpoint.check_resumable(cfg, 5)


def test_a_spilled_state_changed_on_disk_is_refused(tmp_path):
    """A spilled file is read back only if it is what this rank wrote (its SHA-256)."""
    store = ClientStore([0, 1], _factory, capacity=1, spill_root=str(tmp_path), rank=1)
    _train(store.get(0))
    store.get(1)  # client 0 spilled
    other = ClientStore([0, 1], _factory, capacity=1, spill_root=str(tmp_path), rank=1)
    other.get(1)
    other.get(0)  # client 1 spilled: a valid state file, but not client 0's
    shutil.copy(other._path(1), store._path(0))
    with pytest.raises(CheckpointError, match=r"the spilled state of client 0 \(.*\) is not "
                       "what this rank wrote"):
        store.get(0)
    with pytest.raises(CheckpointError, match="spilled state of client 0"):
        store.save_to(0, tmp_path / "ck.pt")
    assert not (tmp_path / "ck.pt").exists()
    store.close()
    other.close()
