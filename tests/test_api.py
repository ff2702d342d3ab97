"""fedkd_mpi.Config / fedkd_mpi.run: the Python API for scripts and notebooks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

import fedkd_mpi
from fedkd_mpi.api import failure_line
from fedkd_mpi.config import ConfigError

from .conftest import ROOT, TINY


def test_import_is_cheap_and_lazy():
    code = ("import sys, fedkd_mpi; print(fedkd_mpi.__version__, "
            "any(m in sys.modules for m in ('torch', 'pydantic', 'pandas', 'h5py')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [fedkd_mpi.__version__, "False"]


def test_config_validate_errors_are_one_line():
    cfg = fedkd_mpi.Config.load(TINY, ["train.rounds=2"])
    assert cfg["train.rounds"] == 2 and cfg.path == TINY.resolve()
    assert cfg.override("seed=9")["seed"] == 9 and cfg["seed"] == 3  # immutable
    cases = [
        (cfg.override("train.rounds=0"), "config error: 'train.rounds'"),
        (fedkd_mpi.Config.build(bogus=1), "config error: unknown key 'bogus'"),
        (cfg.override("algorithm=nosuch"), "config error: 'algorithm'"),  # preflight
        (cfg.override("runtime.callbacks=[os:sep]"), "is not callable"),  # preflight
    ]
    for c, expected in cases:
        with pytest.raises(ConfigError) as exc:
            c.validate()
        assert expected in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="not found"):
        fedkd_mpi.Config.load(ROOT / "nope.yaml")
    assert "seed: 3" in cfg.to_yaml() and "tokenizer: hash" in cfg.to_yaml()
    with pytest.raises(ValueError, match="ranks"):
        fedkd_mpi.run(cfg, ranks=1)


def test_relative_input_paths_follow_the_config_file(tmp_path, monkeypatch):
    sub = tmp_path / "exp"
    sub.mkdir()
    (sub / "c.yaml").write_text("data: {path: data/x.csv}\noutput: out.h5\n")
    monkeypatch.chdir(tmp_path)
    cfg = fedkd_mpi.Config.load("exp/c.yaml")
    assert cfg.to_dict()["data"]["path"] == str(sub / "data" / "x.csv")
    assert cfg["output"] == "out.h5"  # written paths: the working directory, as the CLI
    assert cfg.override("data.path=y.csv")["data.path"] == str(tmp_path / "y.csv")
    built = fedkd_mpi.Config.build(data={"path": "z.csv"})
    assert built["data.path"] == str(tmp_path / "z.csv")


def test_failure_line_from_a_traceback():
    err = textwrap.dedent("""\
        fedkd-mpi: rank 2 failed:
        Traceback (most recent call last):
          File "x.py", line 1, in f
            g()
        ValueError: boom
        fedkd-mpi: rank 0: ending the job because rank 2 failed (ValueError: boom)
        Abort(1) on node 0 (rank 0 in comm 0): application called MPI_Abort
        """)
    assert failure_line(1, err) == "rank 2: ValueError: boom"
    assert failure_line(2, "warning\nconfig error: 'x': bad\n") == "config error: 'x': bad"


def test_script_runs_a_job_and_returns_the_hdf5_summary(tmp_path):
    out = tmp_path / "api.h5"
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(f"""\
        import json
        import fedkd_mpi

        cfg = fedkd_mpi.Config.load({str(TINY)!r}, ["train.rounds=2"])
        res = fedkd_mpi.run(cfg, ranks=2, overrides=["output={out}"])
        s = res.summary
        print("RESULT " + json.dumps({{
            "path": str(res.path), "status": res.status, "returncode": res.returncode,
            "up": s.mb_up_per_client, "down": s.mb_down_per_client,
            "mentor": s.final["mentor_accuracy"], "mentee": s.final["mentee_accuracy"],
            "rounds": len(res.load().rounds)}}))
        """))
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert [ln.split()[1] for ln in lines if ln.startswith("round ")] == ["1/2", "2/2"]
    got = json.loads(lines[-1].removeprefix("RESULT "))
    with h5py.File(out, "r") as f:
        n = int(f.attrs["num_clients"])
        assert got["path"] == str(out) and got["status"] == "completed" == f.attrs["status"]
        assert got["returncode"] == 0 and got["rounds"] == 2
        assert got["up"] == pytest.approx(f["rounds/bytes_up"][:].sum() / n / 1e6, rel=1e-12)
        assert got["down"] == pytest.approx(f["rounds/bytes_down"][:].sum() / n / 1e6,
                                            rel=1e-12)
        assert got["mentor"] == pytest.approx(float(f["rounds/mentor_metric"][-1]), rel=1e-12)
        assert got["mentee"] == pytest.approx(float(f["rounds/mentee_metric"][-1]), rel=1e-12)
        assert np.isfinite(got["mentor"])


def test_failing_runs_raise_run_error_with_the_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "afile").write_text("")
    cfg = fedkd_mpi.Config.load(TINY, ["train.rounds=2"])
    with pytest.raises(fedkd_mpi.RunError) as exc:
        fedkd_mpi.run(cfg, ranks=2, overrides=[f"output={tmp_path}/afile/run.h5"])
    assert str(exc.value) == (f"config error: 'output' ({tmp_path}/afile/run.h5): "
                              f"{tmp_path}/afile is not a directory")
    assert exc.value.returncode == 2
    # a rank that raises mid-run: the run file's error attribute, naming the rank
    monkeypatch.setenv("FEDKD_MPI_FAULT", "1:1")
    monkeypatch.setenv("FEDKD_MPI_ABORT_GRACE_S", "2")
    with pytest.raises(fedkd_mpi.RunError) as exc:
        fedkd_mpi.run(cfg, ranks=2, overrides=[f"output={tmp_path}/f.h5"], quiet=True)
    assert str(exc.value).startswith("rank 1 failed: RuntimeError: injected fault")
    assert exc.value.returncode != 0 and "Traceback" in exc.value.stderr
    assert capsys.readouterr().out == ""  # quiet
