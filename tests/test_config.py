"""Config loading, overrides and one-line validation errors."""

from __future__ import annotations

import subprocess

import pytest

from fedkd_mpi.config import ConfigError, load_config

from .conftest import FEDKD, ROOT, TINY


def test_scratch_config_valid():
    cfg = load_config(ROOT / "configs" / "scratch.yaml")
    assert cfg.algorithm == "fedkd" and cfg.data.num_clients == 3


def test_default_config_is_fedkds_setting():
    """scripts/quickstart.sh's job: a pretrained mentor, its first 2 layers as the mentee."""
    cfg = load_config(ROOT / "configs" / "default.yaml")
    m = cfg.model
    assert (cfg.algorithm, m.kind, m.pretrained) == ("fedkd", "hf", "all-MiniLM-L6-v2")
    assert (m.mentor.layers, m.mentee.layers, cfg.fedkd.codec) == (6, 2, "svd")
    assert "configs/default.yaml" in (ROOT / "scripts" / "quickstart.sh").read_text()


def test_overrides_are_typed():
    cfg = load_config(None, ["train.rounds=7", "svd.t_start=0.5", "algorithm=fedavg"])
    assert cfg.train.rounds == 7 and cfg.svd.t_start == 0.5 and cfg.algorithm == "fedavg"


@pytest.mark.parametrize("override, field", [
    ("svd.t_start=1.5", "svd.t_start"),
    ("svd.t_end=0", "svd.t_end"),
    ("train.rounds=0", "train.rounds"),
    ("train.rounds=abc", "train.rounds"),
    ("train.lr_mentor=-1", "train.lr_mentor"),
    ("fedkd.loss_mode=both", "fedkd.loss_mode"),
    ("data.num_clients=0", "data.num_clients"),
    ("nosuchkey=1", "nosuchkey"),
    ("data.nosuch=1", "data.nosuch"),
    ("model.mentee.layers=9", "model"),
    ("model.mentor.heads=3", "model.mentor"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    msg = str(err.value)
    assert "\n" not in msg and f"'{field}" in msg


def test_t_start_above_t_end():
    with pytest.raises(ConfigError, match="t_start"):
        load_config(None, ["svd.t_start=0.99", "svd.t_end=0.9"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_validate_command_exit_code_and_single_line():
    res = subprocess.run([str(FEDKD), "validate", str(ROOT / "configs/scratch.yaml"),
                          "svd.t_start=2"], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "svd.t_start" in res.stderr
    ok = subprocess.run([str(FEDKD), "validate", str(ROOT / "configs/scratch.yaml")],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "algorithm: fedkd" in ok.stdout


# suites/ and studies/ hold run lists (benchmarks/suite.py, study.py), not configs
@pytest.mark.parametrize("path", sorted(p for p in (ROOT / "configs").rglob("*.yaml")
                                         if p.parent.name not in ("suites", "studies")),
                         ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_shipped_config_validates(path):
    load_config(path)


def test_paper_table_rows_share_data_and_budget():
    """The Table-1 rows differ only in method and model: same data, rounds, steps, lrs."""
    rows = ["centralized", "local", "fedavg_mentor", "fedavg_mentee", "fedavg_mentee3", "fedkd2",
            "fedkd3"]
    cfgs = {r: load_config(ROOT / "configs" / "paper" / f"{r}.yaml") for r in rows}
    ref = cfgs["fedkd2"]
    for name, c in cfgs.items():
        assert c.train == ref.train, name
        assert c.model.pretrained == ref.model.pretrained and c.model.mentor == ref.model.mentor
        data = c.data.model_dump(exclude={"num_clients"})
        assert data == ref.data.model_dump(exclude={"num_clients"}), name
        assert c.data.num_clients == (1 if name == "centralized" else 3), name
    assert cfgs["fedkd3"].model.mentee == cfgs["fedavg_mentee3"].model.mentee
    assert cfgs["fedkd2"].model.mentee == cfgs["fedavg_mentee"].model.mentee
    assert cfgs["fedkd2"].fedkd == cfgs["fedkd3"].fedkd


@pytest.mark.parametrize("override, field", [
    ("algorithm=nosuch", "algorithm"), ("fedkd.codec=nosuch", "fedkd.codec"),
    ("train.aggregation=nosuch", "train.aggregation"), ("data.name=nosuch", "data.name"),
    ("data.partition=nosuch", "data.partition"), ("model.kind=nosuch", "model.kind"),
    ("algorithm=json:dumps", "algorithm"), ("fedkd.codec=nosuch.module:X", "fedkd.codec"),
    ("train.aggregation=fedkd_mpi.aggregators.mean:nosuch", "train.aggregation"),
])
def test_unknown_implementations_name_the_field(override, field):
    """Registry names are checked by preflight (fedkd-mpi validate), one line each."""
    from fedkd_mpi.runtime.preflight import preflight

    with pytest.raises(ConfigError) as err:
        preflight(load_config(TINY, [override]))
    msg = str(err.value)
    assert f"'{field}'" in msg and "\n" not in msg, msg
