"""The config loader against malformed and hostile input (docs/errors.md, "Reliability").

Whatever the file or override holds (binary, huge, deeply nested, YAML alias bombs,
recursive aliases, duplicate keys, non-mappings, NaN, booleans for numbers, random
structures), ``load_config`` returns a Config or raises one ConfigError line, within a bounded
time: nothing else escapes. The misleading messages found by hand are pinned first; then
hypothesis fuzzes files, structures and overrides (bounded examples: the module runs in a
few seconds).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedkd_mpi.config import (
    MAX_CONFIG_BYTES,
    Config,
    ConfigError,
    load_config,
)

from ..conftest import TINY

FUZZ = settings(max_examples=150, deadline=2000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def _error(path: Path | str | None, *overrides: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(path, list(overrides))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("config error: ") and len(msg) < 600, msg
    return msg


# ---------------------------------------------------------------------------------------
# the messages that misled, and hostile files: one precise line each
# ---------------------------------------------------------------------------------------
def test_paths_that_are_not_config_files(tmp_path):
    assert _error(tmp_path) == f"config error: '{tmp_path}' is a directory, not a config file"
    assert _error("/dev/null") == ("config error: '/dev/null' is a character device, not a "
                                   "config file")
    assert _error(tmp_path / "nope.yaml") == f"config error: file '{tmp_path / 'nope.yaml'}' " \
        "not found"


@pytest.mark.parametrize("override, want", [
    ("output=", "config error: 'output': must be a file path, e.g. output=runs/run.h5 "
                "(got '')"),
    ("output=runs/", "config error: 'output': must be a file path, not a directory "
                     "(got 'runs/')"),
    ("train.lr_mentor=.nan", "config error: 'train.lr_mentor': Input should be a finite "
                             "number (got nan)"),
    ("train.lr_mentee=.inf", "config error: 'train.lr_mentee': Input should be a finite "
                             "number (got inf)"),
    ("train.rounds=true", "config error: 'train.rounds': Input should be a number, not a "
                          "boolean (got True)"),
    ("data.max_samples=false", "config error: 'data.max_samples': Input should be a number, "
                               "not a boolean (got False)"),
    ("train={}", "config error: override 'train={}' sets no key; give the keys to change "
                 "(train.<key>=value)"),
])
def test_misleading_values_now_say_what_is_wrong(override, want):
    assert _error(TINY, override) == want


def test_a_mapping_override_merges_into_its_section():
    cfg = load_config(TINY, ["model.mentor={layers: 3, heads: 4}"])
    assert cfg.model.mentor.layers == 3 and cfg.model.mentor.hidden == 32  # kept from tiny


@pytest.mark.parametrize("name, text, want", [
    ("duplicate", "seed: 1\ntrain:\n  rounds: 2\ntrain:\n  rounds: 3\n",
     "has the key 'train' twice (lines 2 and 4)"),
    ("duplicate-nested", "train:\n  rounds: 2\n  rounds: 3\n",
     "has the key 'rounds' twice (lines 2 and 3)"),
    ("alias-bomb", "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi",
                                                                     strict=True)),
     "expands to more than 20000 values (YAML aliases?)"),
    ("recursive-alias", "&a [*a]\n", "refers to itself (a recursive YAML alias at line 1)"),
    ("deep", "a: " + "[" * 500 + "]" * 500 + "\n", "is nested more than 32 levels deep"),
    ("deep-block", "".join("  " * i + f"k{i}:\n" for i in range(60)), "is nested more than"),
    ("not-a-mapping", "- 1\n- 2\n", "must hold a mapping of keys"),
    ("scalar", "42\n", "must hold a mapping of keys"),
    ("huge-int", "seed: " + "9" * 5000 + "\n", "is not valid YAML (Exceeds the limit"),
    ("python-tag", "seed: !!python/object/apply:os.system ['true']\n", "is not valid YAML"),
    ("two-documents", "seed: 1\n---\nseed: 2\n", "is not valid YAML"),
    ("unknown-home", "data:\n  path: '~nosuchuser/x.csv'\n",
     "data paths: Could not determine home directory"),
])
def test_hostile_files_are_refused_quickly(tmp_path, name, text, want):
    f = tmp_path / f"{name}.yaml"
    f.write_text(text)
    t = time.perf_counter()
    msg = _error(f)
    assert time.perf_counter() - t < 5
    assert msg.startswith(f"config error: '{f}'") and want in msg, msg


def test_a_huge_file_is_refused_unread(tmp_path):
    f = tmp_path / "huge.yaml"
    with open(f, "wb") as fh:  # sparse: 1 GiB that would take minutes to parse
        fh.truncate(1 << 30)
    t = time.perf_counter()
    assert _error(f) == (f"config error: '{f}' is larger than {MAX_CONFIG_BYTES // 1024} KiB; "
                         "a config file is a few KiB of YAML")
    assert time.perf_counter() - t < 1
    assert "longer than" in _error(None, "seed=" + "1" * (MAX_CONFIG_BYTES + 1))


def test_binary_and_nul_bytes(tmp_path):
    f = tmp_path / "bin.yaml"
    f.write_bytes(b"\xff\xfe\x00rounds")
    assert _error(f) == f"config error: cannot read '{f}' (not UTF-8 text)"
    f.write_bytes(b"seed: 1\x00\n")
    assert "is not valid YAML" in _error(f)


# ---------------------------------------------------------------------------------------
# fuzzing
# ---------------------------------------------------------------------------------------
def _accepts_or_one_line(path: Path | None, overrides: list[str]) -> None:
    t = time.perf_counter()
    try:
        cfg = load_config(path, overrides)
    except ConfigError as exc:
        msg = str(exc)
        assert "\n" not in msg and len(msg) < 600, msg
        assert msg.startswith("config error: "), msg
    else:
        assert isinstance(cfg, Config)
    assert time.perf_counter() - t < 2


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "cfg.yaml"


@FUZZ
@given(data=st.binary(max_size=3000))
def test_fuzz_bytes(fuzz_file, data):
    fuzz_file.write_bytes(data)
    _accepts_or_one_line(fuzz_file, [])


YAML_BITS = st.sampled_from(["train", "rounds", "seed", "model", "mentor", "data", ":", ": ",
                             "\n", "  ", "- ", "[", "]", "{", "}", ",", "&a ", "*a", "<<: ",
                             "!!str ", "!!python/name:os.system", "'", '"', "#", "---",
                             ".nan", "true", "null", "1e400", "-1", "0x1f", "~", "? ", "|",
                             ">", "%YAML 1.1\n", "\t", "\\", "…", "é"])


@FUZZ
@given(bits=st.lists(YAML_BITS, max_size=60))
def test_fuzz_yaml_text(fuzz_file, bits):
    fuzz_file.write_text("".join(bits), encoding="utf-8")
    _accepts_or_one_line(fuzz_file, [])


def _schema_keys() -> list[str]:
    keys = list(Config.model_fields)
    for section in Config.model_fields.values():
        ann = section.annotation
        if isinstance(ann, type) and hasattr(ann, "model_fields"):
            keys += list(ann.model_fields)
    return keys


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
TREES = st.recursive(
    SCALARS,
    lambda kids: st.one_of(st.lists(kids, max_size=4),
                           st.dictionaries(st.sampled_from(_schema_keys()) | st.text(max_size=8),
                                           kids, max_size=5)),
    max_leaves=25)


@FUZZ
@given(tree=st.dictionaries(st.sampled_from(_schema_keys()), TREES, max_size=6))
def test_fuzz_structures(fuzz_file, tree):
    fuzz_file.write_text(yaml.safe_dump(tree), encoding="utf-8")
    _accepts_or_one_line(fuzz_file, [])


OVERRIDE_KEYS = st.lists(st.sampled_from(_schema_keys()) | st.text(max_size=6), min_size=1,
                         max_size=3).map(".".join)


@FUZZ
@given(items=st.lists(st.tuples(OVERRIDE_KEYS, st.text(max_size=30) | YAML_BITS),
                      max_size=4))
def test_fuzz_overrides(items):
    _accepts_or_one_line(TINY, [f"{k}={v}" for k, v in items])
