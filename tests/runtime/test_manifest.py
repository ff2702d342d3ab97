"""Checkpoints that cannot lie: the manifest's own checksum, its schema and the run file's
record of it (fedkd_mpi/runtime/manifest.py), on a real interrupted run.

Before these checks, one bit flipped in the manifest's round (3 -> 2, 3 -> 1) resumed from
that round with state written at another, finished 'completed' with other metrics and deleted
the checkpoint; a renamed key gave a 55-line traceback."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import h5py
import pytest

from fedkd_mpi.config import ConfigError
from fedkd_mpi.runtime import manifest
from fedkd_mpi.storage.h5 import checkpoint_record, open_live

from ..conftest import TINY, run_job

N = 2
ARGS = ("train.rounds=5",)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> Path:
    """A tiny run stopped by a signal after round 3 of 5 (checkpoint of round 3)."""
    out = tmp_path_factory.mktemp("stopped") / "run.h5"
    res = run_job(N, "run", str(TINY), f"output={out}", *ARGS, env={"FEDKD_MPI_SIGNAL": "1:3"},
                  timeout=150)
    assert res.returncode == 3, res.stderr
    return out


def _copy(src: Path, dst: Path, name: str = "run.h5") -> Path:
    out = dst / name
    shutil.copy(src, out)
    shutil.copytree(f"{src}.ckpt", f"{out}.ckpt")
    return out


def _tree_digest(out: Path) -> str:
    h = hashlib.sha256(out.read_bytes())
    for p in sorted(Path(f"{out}.ckpt").rglob("*")):
        h.update(p.name.encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _resume(out: Path) -> tuple[int, list[str]]:
    res = run_job(N, "run", str(TINY), f"output={out}", *ARGS, "--resume", timeout=120)
    return res.returncode, res.stderr.strip().splitlines()


def _verdict(raw: bytes, where: Path, record: dict) -> dict | None:
    """The manifest when every check passes, None when refused."""
    try:
        man = manifest.parse(raw, where)
        manifest.cross_check(man, where, record, "run.h5", N, 3)
    except ConfigError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 600
        return None
    return man


def test_every_bit_flip_is_refused_or_harmless(stopped):
    where = Path(f"{stopped}.ckpt") / "manifest.json"
    raw = where.read_bytes()
    with open_live(stopped) as f:
        record = checkpoint_record(f)
    original = _verdict(raw, where, record)
    assert original is not None and original["round"] == 3
    accepted = 0
    for i in range(len(raw)):
        for bit in range(8):
            flipped = bytearray(raw)
            flipped[i] ^= 1 << bit
            got = _verdict(bytes(flipped), where, record)
            if got is not None:  # harmless: the very same content
                assert got == original, (i, bit)
                accepted += 1
    assert accepted == 0  # every flip changes the canonical content or breaks the JSON


def test_every_key_rename_is_refused(stopped):
    where = Path(f"{stopped}.ckpt") / "manifest.json"
    man = json.loads(where.read_bytes())
    with open_live(stopped) as f:
        record = checkpoint_record(f)

    def paths(node: object, trail: tuple = ()) -> list[tuple]:
        if not isinstance(node, dict):
            return []
        return [p for k, v in node.items() for p in [(*trail, k), *paths(v, (*trail, k))]]

    keys = paths(man)
    assert len(keys) > 50
    for path in keys:
        edited = json.loads(where.read_bytes())
        parent = edited
        for k in path[:-1]:
            parent = parent[k]
        parent[path[-1] + "_"] = parent.pop(path[-1])
        assert _verdict(json.dumps(edited).encode(), where, record) is None, path


@pytest.mark.parametrize("new", ["2", "1"])
def test_a_flipped_round_is_one_line_and_touches_nothing(tmp_path, stopped, new):
    out = _copy(stopped, tmp_path)
    where = Path(f"{out}.ckpt") / "manifest.json"
    where.write_bytes(where.read_bytes().replace(b'"round": 3', f'"round": {new}'.encode()))
    before = _tree_digest(out)
    code, lines = _resume(out)
    assert code == 2 and lines == [
        f"resume error: the checkpoint manifest {where} does not match its own checksum "
        "(damaged or edited); the run file and the checkpoint are left as they are (restore "
        "the manifest, or start a new run)"], lines
    assert _tree_digest(out) == before


def test_a_renamed_key_and_a_resealed_edit_are_one_line(tmp_path, stopped):
    out = _copy(stopped, tmp_path)
    where = Path(f"{out}.ckpt") / "manifest.json"
    where.write_bytes(where.read_bytes().replace(b'"world_size"', b'"world_sizf"'))
    before = _tree_digest(out)
    code, lines = _resume(out)
    assert code == 2 and len(lines) == 1 and "does not match its own checksum" in lines[0]
    assert _tree_digest(out) == before
    # a forger who recomputes the checksum: the run file never recorded that manifest
    man = json.loads(Path(f"{stopped}.ckpt/manifest.json").read_bytes())
    man.pop("sha256")
    man["config_yaml"] += "# edited\n"
    where.write_bytes(manifest.seal(man))
    before = _tree_digest(out)
    code, lines = _resume(out)
    assert code == 2 and len(lines) == 1, lines
    assert (f"resume error: the checkpoint manifest {where} and the run file {out} disagree "
            "(round 3 (") in lines[0] and "the run file wrote round 3 (" in lines[0]
    assert _tree_digest(out) == before


def test_a_checkpoint_of_another_run_is_refused(tmp_path, stopped):
    """Another run of the same config stopped at the same round: identical science, another
    run id (here: the same file with its id changed, as a second run would have it)."""
    out = _copy(stopped, tmp_path)
    with h5py.File(out, "r+") as f:
        f.attrs["run_id"] = "0" * 32
    before = _tree_digest(out)
    code, lines = _resume(out)
    assert code == 2 and len(lines) == 1, lines
    assert "the checkpoint is of another run" in lines[0]
    assert _tree_digest(out) == before


def test_an_intact_checkpoint_still_resumes(tmp_path, stopped):
    out = _copy(stopped, tmp_path)
    code, lines = _resume(out)
    assert code == 0, lines
    with open_live(out) as f:
        assert len(f["rounds/round"]) == 5
        assert checkpoint_record(f)["rounds"] == [-1, -1]  # completed: none left
    assert not Path(f"{out}.ckpt").exists()
