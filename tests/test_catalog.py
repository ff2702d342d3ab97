"""``fedkd-mpi plugins`` lists every registered name of every axis, derived from the
registries (a new built-in shows up without editing a list)."""

from __future__ import annotations

from fedkd_mpi.catalog import AXES, _base, rows
from fedkd_mpi.cli import main


def test_every_registered_name_is_listed_with_its_settings(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    listed = {(r[0], r[1]): r for r in rows()}
    for axis, _field, path in AXES:
        for name in _base(path).registry.names():
            assert (axis, name) in listed and name in out
    assert listed[("aggregators", "fedavgm")][3] == (
        "plugins.fedavgm: momentum=0.9, server_lr=1.0, weighted=True")
    assert listed[("codecs", "svd")][3] == "section 'svd:'"
    assert listed[("algorithms", "fedprox")][3] == "section 'fedprox:'"
    assert all(r[2] == "built-in" for r in listed.values() if r[1] in ("svd", "fedkd", "iid"))
