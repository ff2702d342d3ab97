"""runtime.callbacks and runtime.tensorboard: rank 0's per-round observers."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from fedkd_mpi.config import ConfigError, load_config
from fedkd_mpi.runtime import observers
from fedkd_mpi.runtime.observers import Observers, check_tensorboard

from ..conftest import FEDKD, ROOT, TINY, run_job

CALLBACKS = textwrap.dedent("""\
    import json, os

    def record(event):
        with open(os.environ["FEDKD_TEST_EVENTS"], "a") as fh:
            fh.write(json.dumps({
                "round": event["round"], "bytes_up": int(event["record"]["bytes_up"]),
                "mentor": float(event["record"]["mentor_metric"]),
                "clients_up": event["clients"]["bytes_up"].tolist()}) + "\\n")

    NOT_CALLABLE = 3
    """)


def read_scalars(logdir: Path) -> dict[str, dict[int, float]]:
    """tag -> {step: value} from the event files (TFRecord framing, tensorboardX's protos)."""
    from tensorboardX.proto import event_pb2

    out: dict[str, dict[int, float]] = {}
    for f in sorted(logdir.glob("events.out.tfevents.*")):
        data, i = f.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            ev = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in ev.summary.value:
                out.setdefault(v.tag, {})[ev.step] = v.simple_value
    return out


@pytest.fixture(scope="module")
def observed_run(tmp_path_factory):
    """One 2-rank tiny run with a callback by import path and a TensorBoard directory."""
    tmp = tmp_path_factory.mktemp("observed")
    (tmp / "cbmod.py").write_text(CALLBACKS)
    env = {"PYTHONPATH": os.pathsep.join([str(tmp), os.environ.get("PYTHONPATH", "")]),
           "FEDKD_TEST_EVENTS": str(tmp / "events.jsonl")}
    res = run_job(2, "run", str(TINY), f"output={tmp / 'run.h5'}", "train.rounds=2",
                  "runtime.callbacks=[cbmod:record]", f"runtime.tensorboard={tmp / 'tb'}",
                  env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    return tmp, env


def test_callback_by_import_path_gets_every_round(observed_run):
    tmp, _ = observed_run
    events = [json.loads(x) for x in (tmp / "events.jsonl").read_text().splitlines()]
    with h5py.File(tmp / "run.h5", "r") as f:
        assert [e["round"] for e in events] == list(f["rounds/round"][:]) == [1, 2]
        assert [e["bytes_up"] for e in events] == list(f["rounds/bytes_up"][:])
        assert [e["clients_up"] for e in events] == f["clients/bytes_up"][:].tolist()
        np.testing.assert_allclose([e["mentor"] for e in events], f["rounds/mentor_metric"][:])


def test_callback_that_is_not_callable_is_a_validate_error(observed_run):
    _, env = observed_run
    res = subprocess.run([str(FEDKD), "validate", str(TINY),
                          "runtime.callbacks=[cbmod:NOT_CALLABLE]"], capture_output=True,
                         text=True, timeout=120, cwd=ROOT, env={**os.environ, **env})
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr == ("config error: 'runtime.callbacks[0]': cbmod:NOT_CALLABLE is not "
                          "callable\n")


def test_tensorboard_scalars_match_the_hdf5_rounds(observed_run):
    tmp, _ = observed_run
    tb = read_scalars(tmp / "tb")
    with h5py.File(tmp / "run.h5", "r") as f:
        steps = [int(r) for r in f["rounds/round"][:]]
        for key in ("mentor_metric", "mentee_metric", "bytes_up", "bytes_down",
                    "energy_threshold", "wall_time_s", "train_time_s", "mentor_f1"):
            assert list(tb[f"rounds/{key}"]) == steps, key
            np.testing.assert_allclose([tb[f"rounds/{key}"][s] for s in steps],
                                       f[f"rounds/{key}"][:], rtol=1e-6, err_msg=key)
        for key in ("mentor_metric", "mentee_metric", "mentor_train_loss", "bytes_up"):
            got = [[tb[f"clients/{key}/{c}"][s] for c in range(3)] for s in steps]
            np.testing.assert_allclose(got, f[f"clients/{key}"][:], rtol=1e-6, err_msg=key)
        # ranks per layer: once the server loop passes them (round_done's third argument)
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["layers/names"][:]]
        down = f["layers/rank_down"][:]
        for j, name in enumerate(names):
            for tag in (f"layers/rank_down/{name}", f"layers/rank_down/{j:03d}"):
                if tag in tb:
                    assert [tb[tag][s] for s in steps] == list(down[:, j])


def test_ranks_and_participation_in_tensorboard(tmp_path):
    cfg = load_config(TINY, [f"runtime.tensorboard={tmp_path / 'tb'}"])
    obs = Observers(cfg)
    record = {"round": 1, "bytes_up": 30, "energy_threshold": float("nan"), "mentor_metric": 0.5}
    clients = {"bytes_up": np.array([10, 0, 20]), "participated": np.array([1, 0, 1]),
               "mentor_metric": np.array([0.4, np.nan, 0.6])}
    ranks = {"rank_up": np.array([[3, -1], [-2, -2], [5, -1]]), "rank_down": np.array([4, -1]),
             "names": ["q.weight", "q.bias"]}
    obs.round_done(record, clients, ranks)
    obs.close()
    tb = read_scalars(tmp_path / "tb")
    assert tb["layers/rank_down/q.weight"] == {1: 4.0}
    assert tb["layers/rank_up_mean/q.weight"] == {1: 4.0}
    assert not any("q.bias" in t for t in tb)  # sent dense: no rank
    assert "rounds/energy_threshold" not in tb and tb["rounds/bytes_up"] == {1: 30.0}
    assert set(tb) >= {"clients/bytes_up/0", "clients/bytes_up/2"}
    assert "clients/bytes_up/1" not in tb  # not sampled this round


def test_tensorboard_without_a_writer_package_is_one_line(tmp_path, monkeypatch):
    cfg = load_config(TINY, [f"runtime.tensorboard={tmp_path / 'tb'}"])
    check_tensorboard(cfg)
    monkeypatch.setattr(observers, "tensorboard_backend", lambda: None)
    with pytest.raises(ConfigError, match=r"^config error: 'runtime.tensorboard': .*tensorboardX"):
        check_tensorboard(cfg)
    monkeypatch.undo()
    (tmp_path / "file").write_text("")
    cfg = load_config(TINY, [f"runtime.tensorboard={tmp_path / 'file' / 'tb'}"])
    with pytest.raises(ConfigError, match="is not a directory"):
        check_tensorboard(cfg)
