"""benchmarks/suite.py: runs a suite through mpiexec, resumes without redoing, builds the table."""

from __future__ import annotations

import subprocess
import sys

import h5py

from ..conftest import ROOT, TINY


def test_suite_runs_resumes_and_tabulates(tmp_path):
    suite = tmp_path / "mini.yaml"
    suite.write_text(
        f"base: {TINY}\n"
        "overrides: [train.rounds=2, fedavg.model=mentor]\n"
        "ranks: 3\nseeds: [0]\nmetric: auto\nreference: avg\ntarget: 0.0\n"
        "runs:\n"
        "  - {name: avg, overrides: [algorithm=fedavg]}\n"
        "  - {name: paq, overrides: [algorithm=fedpaq, fedpaq.bits=8]}\n")
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "suite.py"), str(suite), "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    for run in ("avg", "paq"):
        with h5py.File(out / f"{run}-s0.h5", "r") as f:
            assert f.attrs["status"] == "completed"
    table = (out / "table.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()
            if line.startswith("| avg") or line.startswith("| paq")}
    assert " 1.0x " in rows["avg"]
    # 8-bit quantisation: a bit under 4x fewer bytes than float32 (headers, scale, zero point)
    ratio = float(rows["paq"].split("|")[6].strip().rstrip("x"))
    assert 3.0 < ratio < 4.0
    assert (out / "metric_vs_mb.png").stat().st_size > 0
    # a half-finished suite resumes: a completed file is never rerun
    (out / "paq-s0.h5").unlink()
    mtime = (out / "avg-s0.h5").stat().st_mtime_ns
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "avg seed 0: done, skipped" in res.stdout
    assert (out / "avg-s0.h5").stat().st_mtime_ns == mtime
    assert (out / "paq-s0.h5").is_file()
