"""report / compare / export on run files written by real mpiexec jobs (tests/tiny.yaml).

Every number the commands print or write is checked against the HDF5 datasets read here
independently with h5py.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from fedkd_mpi.analysis import RunFileError, load
from fedkd_mpi.cli import main
from fedkd_mpi.storage.h5 import open_live

from ..conftest import FEDKD, MPIEXEC, ROOT, TINY, run_job

SEEDS = (1, 2)
ALGS = ("fedkd", "fedavg")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[tuple[str, int], Path]:
    """2 seeds x (FedKD, mentee FedAvg), 2 rounds each, on 3 ranks: run once per module."""
    d = tmp_path_factory.mktemp("analysis")
    out = {}
    for alg in ALGS:
        for seed in SEEDS:
            path = d / f"{alg}_s{seed}.h5"
            res = run_job(3, "run", str(TINY), f"output={path}", f"algorithm={alg}",
                          f"seed={seed}", "train.rounds=2")
            assert res.returncode == 0, res.stderr
            out[(alg, seed)] = path
    return out


def _h5(path: Path) -> dict:
    """What the tests compare against: the raw datasets and attributes."""
    with h5py.File(path, "r") as f:
        return {"attrs": dict(f.attrs),
                **{f"{g}/{k}": f[g][k][()] for g in ("rounds", "clients", "layers", "timing")
                   for k in f[g]}}


def _reduction(h: dict, ref_attr: str) -> float:
    n = int(h["attrs"]["num_clients"])
    total = (h["rounds/bytes_up"].sum() + h["rounds/bytes_down"].sum()) / n
    return 2 * len(h["rounds/round"]) * int(h["attrs"][ref_attr]) / total


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_load_tables_match_datasets(runs):
    path = runs[("fedkd", 1)]
    run, h = load(path), _h5(path)
    n, r = int(h["attrs"]["num_clients"]), len(h["rounds/round"])
    assert r == 2 and run.summary.rounds_completed == 2 and run.summary.complete
    for k in ("round", "bytes_up", "mentor_metric", "mentee_metric", "energy_threshold"):
        np.testing.assert_array_equal(run.rounds[k].to_numpy(), h[f"rounds/{k}"])
    np.testing.assert_allclose(run.rounds["cum_mb_per_client"],
                               np.cumsum(h["rounds/bytes_up"] + h["rounds/bytes_down"]) / n / 1e6)
    c = run.clients.set_index(["round", "client"])
    assert len(c) == r * n
    for k in ("bytes_up", "mentor_metric", "mentee_metric", "num_samples"):
        np.testing.assert_array_equal(c[k].unstack().to_numpy(), h[f"clients/{k}"])
    lay = run.layers.set_index(["round", "layer"])
    np.testing.assert_array_equal(lay["rank_down"].unstack().to_numpy(), h["layers/rank_down"])
    up = h["layers/rank_up"].astype(float)
    fac = np.where(up >= 0, up, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: dense layers
        want = np.nanmean(fac, axis=1)
    np.testing.assert_allclose(lay["rank_up_mean"].unstack().to_numpy(), want)
    assert (lay["dense_up_clients"].unstack().to_numpy() == (up == -1).sum(axis=1)).all()
    t = run.timing.set_index(["round", "rank"])
    np.testing.assert_array_equal(t["train_s"].unstack().to_numpy(), h["timing/train_s"])
    assert set(run.timing["role"]) == {"server", "client"}


def test_report_numbers_and_figures(runs, tmp_path, capsys):
    path = runs[("fedkd", 1)]
    h = _h5(path)
    n, r = int(h["attrs"]["num_clients"]), len(h["rounds/round"])
    rc, out, _ = _cli(capsys, "report", str(path), "--out", str(tmp_path / "fig"))
    assert rc == 0
    rows = dict(re.findall(r"^(\S.*?)\s{2,}(\S.*)$", out, flags=re.M))
    assert rows["status"] == "completed"
    assert rows["rounds"] == f"{r} of {r}"
    assert rows["final mentor accuracy (mean over clients)"] == \
        f"{h['rounds/mentor_metric'][-1]:.4f}"
    assert rows["final mentee accuracy (mean over clients)"] == \
        f"{h['rounds/mentee_metric'][-1]:.4f}"
    assert rows["MB up per client (total)"] == f"{h['rounds/bytes_up'].sum() / n / 1e6:.4f}"
    assert rows["MB down per client (total)"] == f"{h['rounds/bytes_down'].sum() / n / 1e6:.4f}"
    assert rows["reduction vs FedAvg on the mentor"] == \
        f"{_reduction(h, 'dense_bytes_mentor'):.1f}x"
    assert rows["reduction vs mentee sent dense"] == f"{_reduction(h, 'dense_bytes_mentee'):.1f}x"
    train = float(rows["local training"].split()[0])
    assert train == pytest.approx(h["rounds/train_time_s"].mean(), abs=1e-3)
    names = {p.name for p in (tmp_path / "fig").iterdir()}
    assert names == {"metric_vs_round.png", "metric_vs_mb.png", "svd_rank.png",
                     "client_spread.png", "loss_parts.png", "time_breakdown.png"}
    assert all((tmp_path / "fig" / x).stat().st_size > 10_000 for x in names)


def test_report_fedavg_has_no_mentor(runs, tmp_path, capsys):
    path = runs[("fedavg", 1)]
    h = _h5(path)
    rc, out, _ = _cli(capsys, "report", str(path), "--out", str(tmp_path), "--format", "pdf")
    assert rc == 0
    assert re.search(r"final mentor accuracy \(mean over clients\)\s+n/a", out)
    assert f"{h['rounds/mentee_metric'][-1]:.4f}" in out
    assert re.search(r"reduction vs mentee sent dense\s+1\.0x", out)  # FedAvg sends it dense
    assert "svd_rank.pdf" not in {p.name for p in tmp_path.iterdir()}  # nothing factorised
    assert (tmp_path / "metric_vs_mb.pdf").stat().st_size > 1000


def test_compare_mean_std_against_datasets(runs, tmp_path, capsys):
    paths = [str(runs[(a, s)]) for a in ALGS for s in SEEDS]
    target = 0.5
    rc, out, _ = _cli(capsys, "compare", *paths, "--out", str(tmp_path), "--target",
                      str(target))
    assert rc == 0
    table = pd.read_csv(tmp_path / "compare.csv").set_index("group")
    assert list(table.index) == list(ALGS)
    for alg in ALGS:
        hs = [_h5(runs[(alg, s)]) for s in SEEDS]
        row = table.loc[alg]
        assert row["n"] == len(SEEDS)
        n = int(hs[0]["attrs"]["num_clients"])
        mb = [(h["rounds/bytes_up"].sum() + h["rounds/bytes_down"].sum()) / n / 1e6 for h in hs]
        red = [_reduction(h, "dense_bytes_mentor") for h in hs]
        mentee = [h["rounds/mentee_metric"][-1] for h in hs]
        mentor = [h["rounds/mentor_metric"][-1] for h in hs]
        for col, vals in (("mb_per_client", mb), ("reduction_vs_mentor_fedavg", red),
                          ("final_mentee", mentee), ("final_mentor", mentor)):
            if alg == "fedavg" and col == "final_mentor":
                assert np.isnan(vals).all() and np.isnan(row[f"{col}_mean"])
                assert row[f"{col}_n"] == 0
                continue
            assert row[f"{col}_mean"] == pytest.approx(np.mean(vals), rel=1e-12)
            assert row[f"{col}_std"] == pytest.approx(np.std(vals, ddof=1), rel=1e-9, abs=1e-15)
        # MB to reach the target with the run's own model (mentor for FedKD, mentee for FedAvg)
        own = "mentor_metric" if alg == "fedkd" else "mentee_metric"
        reach = []
        for h in hs:
            hit = np.flatnonzero(h[f"rounds/{own}"] >= target)
            cum = np.cumsum(h["rounds/bytes_up"] + h["rounds/bytes_down"]) / n / 1e6
            if len(hit):
                reach.append(cum[hit[0]])
        assert row["mb_to_target_n"] == len(reach)
        if reach:
            assert row["mb_to_target_mean"] == pytest.approx(np.mean(reach))
        # the markdown line shows the same numbers
        line = next(x for x in out.splitlines() if x.startswith(f"| {alg} "))
        assert f"{np.mean(mb):.4f} ± {np.std(mb, ddof=1):.4f}" in line
        assert f"{np.mean(mentee):.4f} ± {np.std(mentee, ddof=1):.4f}" in line
    per_run = pd.read_csv(tmp_path / "compare_runs.csv")
    assert len(per_run) == 4 and set(per_run["status"]) == {"completed"}
    assert (tmp_path / "compare_metric_vs_mb.png").stat().st_size > 10_000
    assert (tmp_path / "compare.md").read_text().startswith("| algorithm")


def test_compare_dotted_group_key_and_mixed_note(runs, capsys):
    paths = [str(runs[(a, s)]) for a in ALGS for s in SEEDS]
    rc, out, _ = _cli(capsys, "compare", *paths, "--group-by", "model.mentee.layers",
                      "--metric", "mentee")
    assert rc == 0
    assert re.search(r"^\| 1 +\| 4 ", out, flags=re.M)  # one group of 4 runs
    assert "mixes runs that differ in algorithm" in out
    rc, _, err = _cli(capsys, "compare", *paths, "--group-by", "model.nope")
    assert rc == 2 and "model.nope" in err and len(err.strip().splitlines()) == 1
    rc, _, err = _cli(capsys, "compare", *paths, "--metric", "auroc", "--target", "0.5")
    assert rc == 2 and "no metric 'auroc'" in err


def test_export_csv_and_parquet(runs, tmp_path, capsys):
    path = runs[("fedkd", 2)]
    h = _h5(path)
    rc, out, _ = _cli(capsys, "export", str(path), "--to", "csv", "--out", str(tmp_path / "c"))
    assert rc == 0
    stem = path.stem
    rounds = pd.read_csv(tmp_path / "c" / f"{stem}_rounds.csv")
    for k in ("bytes_up", "bytes_down", "round"):
        np.testing.assert_array_equal(rounds[k], h[f"rounds/{k}"])
    np.testing.assert_allclose(rounds["mentor_metric"], h["rounds/mentor_metric"], rtol=1e-15)
    clients = pd.read_csv(tmp_path / "c" / f"{stem}_clients.csv")
    np.testing.assert_array_equal(
        clients.pivot(index="round", columns="client", values="bytes_up").to_numpy(),
        h["clients/bytes_up"])
    np.testing.assert_array_equal(clients["rank"].to_numpy().reshape(h["clients/bytes_up"].shape),
                                  np.broadcast_to(h["attrs"]["client_rank"],
                                                  h["clients/bytes_up"].shape))
    layers = pd.read_csv(tmp_path / "c" / f"{stem}_layers.csv")
    names = [x.decode() for x in h["layers/names"]]
    assert list(layers["name"][: len(names)]) == names
    np.testing.assert_array_equal(layers["rank_down"].to_numpy().reshape(-1, len(names)),
                                  h["layers/rank_down"])
    summary = pd.read_csv(tmp_path / "c" / f"{stem}_summary.csv")
    assert summary["rounds_completed"][0] == 2 and summary["status"][0] == "completed"
    assert len(out.splitlines()) == 5  # rounds, clients, layers, timing, summary
    rc, _, _ = _cli(capsys, "export", str(path), "--to", "parquet", "--out", str(tmp_path / "p"))
    assert rc == 0
    for table in ("rounds", "clients", "layers", "timing"):
        pq = pd.read_parquet(tmp_path / "p" / f"{stem}_{table}.parquet")
        pd.testing.assert_frame_equal(pq, load(path).tables[table])


def test_version_2_and_extra_metrics_are_discovered(runs, tmp_path, capsys):
    """format_version 1 and 2 load; a secondary metric listed in metric_names is reported."""
    path = tmp_path / "v.h5"
    shutil.copy(runs[("fedkd", 1)], path)
    for version in (1, 2):
        with h5py.File(path, "r+") as f:
            f.attrs["format_version"] = version
            names = [x.decode() if isinstance(x, bytes) else str(x)
                     for x in np.atleast_1d(f.attrs.get("metric_names", ["accuracy"]))]
            if "auroc" not in names:
                f.attrs["metric_names"] = np.array([*names, "auroc"], dtype=h5py.string_dtype())
                f["rounds/mentor_auroc"] = np.array([0.25, 0.375])
                f["rounds/mentee_auroc"] = np.array([0.5, 0.625])
                f["clients/mentor_auroc"] = np.zeros((2, 3))
        run = load(path)
        assert run.summary.format_version == version
        assert run.summary.metric_names[0] == "accuracy" and "auroc" in run.summary.metric_names
        assert run.summary.final["mentee_auroc"] == 0.625
        assert "mentor_auroc" in run.clients
    rc, out, _ = _cli(capsys, "report", str(path), "--no-figures")
    assert rc == 0 and re.search(r"final mentee auroc \(mean over clients\)\s+0\.6250", out)
    rc, out, _ = _cli(capsys, "compare", str(path), "--metric", "mentee_auroc", "--target",
                      "0.6")
    assert rc == 0 and "0.6250" in out
    with h5py.File(path, "r+") as f:  # a failed run names its cause (root attr error)
        f.attrs["status"], f.attrs["error"] = "failed", "NonFiniteError: client 1, round 2"
    note = load(path).summary.status_note
    assert note == "failed after 2 completed rounds: NonFiniteError: client 1, round 2"


@pytest.mark.parametrize("kind", ["text", "no_version", "version_99", "missing"])
def test_bad_files_one_line_exit_2(tmp_path, capsys, kind):
    path = tmp_path / "x.h5"
    if kind == "text":
        path.write_text("not hdf5\n")
        want = "not a fedkd_mpi run file (not an HDF5 file)"
    elif kind == "no_version":
        with h5py.File(path, "w") as f:
            f["rounds/round"] = np.arange(1, 3)
        want = "not a fedkd_mpi run file (HDF5 without a 'format_version' attribute)"
    elif kind == "version_99":
        with h5py.File(path, "w") as f:
            f.attrs["format_version"] = 99
        want = "format_version 99 is not supported"
    else:
        want = "no such file"
    with pytest.raises(RunFileError, match=re.escape(want)):
        load(path)
    for cmd in (["report", str(path)], ["export", str(path), "--to", "csv"],
                ["compare", str(path)]):
        rc, out, err = _cli(capsys, *cmd)
        assert rc == 2 and out == ""
        assert len(err.strip().splitlines()) == 1 and want in err


def test_cli_exit_code_and_no_mpi_import(runs, tmp_path):
    """As a user runs it: exit 2 on a bad file; report never imports mpi4py or torch."""
    bad = tmp_path / "bad.h5"
    bad.write_text("x")
    res = subprocess.run([str(FEDKD), "report", str(bad)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2 and "not a fedkd_mpi run file" in res.stderr
    code = ("import sys; from fedkd_mpi.cli import main; "
            f"rc = main(['report', {str(runs[('fedkd', 1)])!r}, '--no-figures']); "
            "bad = [m for m in ('mpi4py', 'torch') if m in sys.modules]; "
            "sys.exit(10 + len(bad) if bad else rc)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr


def _wait_dead(pids: list[int], timeout: float) -> None:
    """Until every pid is gone or a zombie (a killed rank blocked in I/O dies on its return)."""
    end = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < end:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                break
            if state in ("Z", "X", "x"):
                break
            time.sleep(0.05)


def _descendants(pid: int) -> list[int]:
    """Every live descendant of pid (from /proc), children first."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def test_report_on_killed_run(tmp_path, capsys):
    """SIGKILL the whole job after >= 1 round: report shows the completed rounds, incomplete."""
    path = tmp_path / "killed.h5"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([str(MPIEXEC), "-n", "3", str(FEDKD), "run", str(TINY),
                             f"output={path}", "train.rounds=400"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        done = 0
        while done < 1:
            assert proc.poll() is None, "the job ended before it could be killed"
            assert time.monotonic() < deadline, "no round written within 180 s"
            time.sleep(0.5)
            if path.exists():
                try:
                    with open_live(path) as f:
                        done = len(f["rounds/round"]) if "rounds/round" in f else 0
                except (OSError, KeyError):
                    done = 0
    finally:
        # the ranks run in their own process groups under MPICH's hydra: kill every process
        # of the job (mpiexec's group and each descendant), as a batch scheduler would
        pids = _descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)
        _wait_dead(pids, timeout=30)  # SIGKILL lands when a rank leaves an uninterruptible write
    with h5py.File(path, "r", libver="latest", swmr=True) as f:
        rows = min(len(f[g][k]) for g in ("rounds", "clients", "timing") for k in f[g])
        status = f.attrs["status"]
        last_mentee = f["rounds/mentee_metric"][rows - 1]
    assert status == "running" and rows >= 1
    rc, out, _ = _cli(capsys, "report", str(path), "--out", str(tmp_path / "fig"))
    assert rc == 0
    assert re.search(r"^status\s+killed: ", out, flags=re.M)  # its writer's pid is gone
    assert re.search(rf"^rounds\s+{rows} of 400$", out, flags=re.M)
    assert f"{last_mentee:.4f}" in out
    assert (tmp_path / "fig" / "metric_vs_mb.png").exists()
    run = load(path)
    assert not run.summary.complete and run.summary.status_note.startswith("killed: ")
    assert math.isfinite(run.summary.mb_per_client)


def test_rank_heat_map_only_for_codecs_whose_meta_is_a_rank(tmp_path, capsys):
    """top-k's meta is a count of values, not a rank: no 'svd_rank' figure for it (it used
    to plot K = 576 as the 'rank' of a tensor of full rank 8); the run file says what the meta
    holds (attr layer_meta)."""
    path = tmp_path / "topk.h5"
    res = run_job(3, "run", str(TINY), f"output={path}", "algorithm=topk", "train.rounds=2")
    assert res.returncode == 0, res.stderr
    with h5py.File(path, "r") as f:
        assert f.attrs["layer_meta"] == "codec-specific"
    rc, _, _ = _cli(capsys, "report", str(path), "--out", str(tmp_path / "fig"))
    assert rc == 0 and "svd_rank.png" not in {p.name for p in (tmp_path / "fig").iterdir()}
