"""fedkd-mpi sweep (grid, names, resumable runner, summary), compare --group-by k1,k2, and the
one bytes-to-target definition shared by compare, the sweep summary and benchmarks/suite.py."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest

from fedkd_mpi.analysis import load
from fedkd_mpi.analysis.compare import compare
from fedkd_mpi.api import Config
from fedkd_mpi.config import ConfigError
from fedkd_mpi.sweep import Job, grid_jobs, plan, split_values, summary

from .conftest import FEDKD, ROOT, TINY


def sweep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(FEDKD), "sweep", *args], capture_output=True, text=True,
                          timeout=400, cwd=ROOT)


def test_values_names_and_bad_items(tmp_path):
    assert split_values("fedkd,fedavg") == ["fedkd", "fedavg"]
    assert split_values("[1,2]") == ["[1,2]"]
    assert split_values("[1,2],[3]") == ["[1,2]", "[3]"]
    assert split_values("{layers: 2, hidden: 8}") == ["{layers: 2, hidden: 8}"]
    assert split_values("'a,b',c") == ["'a,b'", "c"]
    keys, jobs = grid_jobs(TINY, ["algorithm=fedkd,fedavg", "train.rounds=2", "seed=0,1,2",
                                  "model.mentee={layers: 1, hidden: 16}"], tmp_path, 2)
    assert keys == ["algorithm", "seed"] and len(jobs) == 6
    assert [j.name for j in jobs[:2]] == ["algorithm=fedkd__seed=0", "algorithm=fedkd__seed=1"]
    assert jobs[4].label == "algorithm=fedavg seed=1" and jobs[4].values == {
        "algorithm": "fedavg", "seed": "1"}
    assert jobs[4].config["train.rounds"] == 2 and jobs[4].config["seed"] == 1
    _, odd = grid_jobs(TINY, ["svd.t_end=0.9,0.95", "data.feature_columns=[a,b],[c]"],
                       tmp_path, 2)
    assert [j.name for j in odd][:2] == ["svd.t_end=0.9__data.feature_columns=-a-b",
                                         "svd.t_end=0.9__data.feature_columns=-c"]
    assert odd[0].config["data.feature_columns"] == ["a", "b"]
    for items, msg in ((["output=x.h5"], "'output' is set by the sweep"),
                       (["seed=1", "seed=2"], "given twice"), (["seed"], "not key=value"),
                       (["train.rounds=0,1"], "'train.rounds'")):
        with pytest.raises(ConfigError, match=msg):
            grid_jobs(TINY, items, tmp_path, 2)
    with pytest.raises(ValueError, match="ranks"):
        grid_jobs(TINY, ["seed=0,1"], tmp_path, 1)


def test_everything_written_goes_under_out_and_inputs_follow_the_config(tmp_path):
    (tmp_path / "exp").mkdir()
    cfg = tmp_path / "exp" / "c.yaml"
    cfg.write_text(TINY.read_text() + "runtime: {tensorboard: tb, checkpoint_dir: /elsewhere, "
                   "progress: false}\n" + "data: {name: rotten_tomatoes, path: x.csv}\n")
    _, jobs = grid_jobs(cfg, ["seed=0,1"], tmp_path / "out", 2)
    final = jobs[1].final_config()
    assert final["output"] == str(tmp_path / "out" / "seed=1.h5")
    assert final["runtime.checkpoint_dir"] is None  # default: <output>.ckpt, under --out
    assert final["runtime.tensorboard"] == str(tmp_path / "out" / "tensorboard" / "seed=1")
    assert final["data.path"] == str(tmp_path / "exp" / "x.csv")


def _fake_run(path, status, ckpt=False):
    with h5py.File(path, "w") as f:
        f.attrs["status"] = status
        f.attrs["format_version"] = 2
        f.create_dataset("rounds/round", data=np.arange(1, 3))
    if ckpt:
        (path.parent / f"{path.name}.ckpt").mkdir()
        (path.parent / f"{path.name}.ckpt" / "manifest.json").write_text("{}")


def test_plan_skips_resumes_and_overwrites(tmp_path):
    job = Job("seed=0", "seed=0", Config.load(TINY), tmp_path, 2)
    assert plan(job, False, False) == ("run", "")
    for status, ckpt, flags, want in (
            ("completed", False, (True, True), "skip"),
            ("interrupted", True, (False, False), "blocked"),
            ("interrupted", True, (True, False), "resume"),
            ("interrupted", True, (False, True), "overwrite"),
            ("interrupted", False, (True, False), "blocked"),
            ("failed", False, (True, False), "blocked"),
            ("failed", False, (False, True), "overwrite"),
            ("running", False, (False, True), "overwrite")):
        _fake_run(job.h5, status, ckpt)
        action, note = plan(job, *flags)
        assert action == want, (status, ckpt, flags, note)
        if action == "blocked":
            assert note.endswith("--resume" if ckpt and status == "interrupted"
                                 else "--overwrite"), note
        subprocess.run(["rm", "-rf", f"{job.h5}.ckpt"], check=True)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "sw"
    res = sweep(str(TINY), "algorithm=fedkd,fedavg", "train.rounds=2", "--ranks", "2",
                "--jobs", "2", "--target", "0.5", "--out", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    return out, res.stdout


def test_sweep_runs_the_grid_and_resumes_without_redoing(swept):
    out, stdout = swept
    lines = stdout.splitlines()
    assert lines[0] == f"sweep: 2 runs (2 algorithm), 2 ranks each, 2 at once -> {out}"
    assert any(ln.startswith("[1/2] algorithm=fedkd: completed in ") for ln in lines)
    assert any(ln.startswith("[2/2] algorithm=fedavg: completed in ") for ln in lines)
    assert sorted(p.name for p in out.iterdir()) == [
        "algorithm=fedavg.h5", "algorithm=fedkd.h5", "logs", "sweep.csv", "sweep.md"]
    table = pd.read_csv(out / "sweep.csv")
    assert list(table["algorithm"]) == ["fedkd", "fedavg"]
    for _, row in table.iterrows():
        s = load(row["path"]).summary
        assert (s.status, s.rounds_completed) == ("completed", 2)
        assert row["mb_per_client"] == pytest.approx(s.mb_per_client, rel=1e-12)
    assert "| algorithm   | status    | rounds" in stdout
    # a failed file is left alone without --overwrite, rerun with it; completed ones skipped
    with h5py.File(out / "algorithm=fedavg.h5", "r+") as f:
        f.attrs["status"] = "failed"
        f.attrs["error"] = "rank 1 failed: RuntimeError: x"
    args = (str(TINY), "algorithm=fedkd,fedavg", "train.rounds=2", "--ranks", "2",
            "--target", "0.5", "--out", str(out))
    res = sweep(*args)
    assert res.returncode == 1
    assert "[1/2] algorithm=fedkd: done, skipped" in res.stdout
    assert ("[2/2] algorithm=fedavg: failed (rank 1 failed: RuntimeError: x); rerun with "
            "--overwrite") in res.stdout
    res = sweep(*args, "--overwrite")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "[2/2] algorithm=fedavg: completed in " in res.stdout
    assert load(out / "algorithm=fedavg.h5").summary.status == "completed"


def _by_hand(path, target):
    """MB per client (up + down) at the first round whose metric (the mentor's if the run has
    one, else the mentee's) is >= target, straight from the datasets."""
    with h5py.File(path, "r") as f:
        n = int(f.attrs["num_clients"])
        metric = f["rounds/mentor_metric"][:]
        if np.isnan(metric).all():
            metric = f["rounds/mentee_metric"][:]
        cum = np.cumsum(f["rounds/bytes_up"][:] + f["rounds/bytes_down"][:]) / n / 1e6
    hit = np.flatnonzero(metric >= target)
    return (float(cum[hit[0]]), int(hit[0]) + 1) if len(hit) else (np.nan, None)


def test_bytes_to_target_is_one_definition_everywhere(swept):
    out, _ = swept
    csv = pd.read_csv(out / "sweep.csv").set_index("algorithm")
    spec = importlib.util.spec_from_file_location("suite", ROOT / "benchmarks" / "suite.py")
    suite = importlib.util.module_from_spec(spec)
    sys.modules["suite"] = suite  # dataclasses look their module up
    spec.loader.exec_module(suite)
    for algo in ("fedkd", "fedavg"):
        path = out / f"algorithm={algo}.h5"
        mb, _ = _by_hand(path, 0.5)  # the sweep's own --target
        np.testing.assert_allclose(csv.loc[algo, "mb_to_target"], mb, rtol=1e-12)
        with h5py.File(path, "r") as f:  # a target first reached in the last round
            m = f["rounds/mentor_metric"][:]
            m = f["rounds/mentee_metric"][:] if np.isnan(m).all() else m
        target = float(m.max())
        mb, rnd = _by_hand(path, target)
        run = load(path)
        _, _, per_run, _ = compare([run], "algorithm", None, target)
        assert per_run["mb_to_target"][0] == pytest.approx(mb, rel=1e-12)
        assert per_run["round_to_target"][0] == rnd
        job = Job(algo, f"algorithm={algo}", Config.load(TINY), out, 2, {"algorithm": algo})
        table, text = summary([job], ["algorithm"], target)
        assert table["mb_to_target"][0] == pytest.approx(mb, rel=1e-12)
        assert f"{mb:.4f} (round {rnd})" in text
        got, rounds = suite.to_target([suite.read_curve(path, "auto")], target)
        assert got == pytest.approx(mb, rel=1e-12) and rounds == [rnd]


def test_compare_groups_by_several_keys(swept):
    out, _ = swept
    files = sorted(str(p) for p in out.glob("*.h5"))
    res = subprocess.run([str(FEDKD), "compare", *files, "--group-by", "algorithm,seed",
                          "--out", str(out / "cmp")], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    header = res.stdout.splitlines()[0]
    assert header.startswith("| algorithm   | seed   | n   | final mentor accuracy")
    folded = pd.read_csv(out / "cmp" / "compare.csv")
    assert list(folded["group"]) == ["fedavg, 3", "fedkd, 3"]
    assert list(folded["algorithm"]) == ["fedavg", "fedkd"] and list(folded["n"]) == [1, 1]
    old = subprocess.run([str(FEDKD), "compare", *files, "--key", "algorithm"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert old.returncode == 0 and old.stdout.startswith("| algorithm   | n ")
    bad = subprocess.run([str(FEDKD), "compare", *files, "--group-by", "algorithm,nokey"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode == 2 and "config has no key 'nokey'" in bad.stderr
    assert json.dumps(bad.stderr.strip()).count("\\n") == 0
