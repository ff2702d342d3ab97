"""``data.name: hf_disk`` (fedkd_mpi/data/hf_disk.py): folders written by ``datasets``'
``save_to_disk`` (a DatasetDict with train/test, one Dataset, ClassLabel columns), read with
pyarrow only, giving the same corpus as ``table`` on the same rows; its bad-data lines."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedkd_mpi.cli import main
from fedkd_mpi.config import load_config
from fedkd_mpi.data import dataset_of, load_federated

from ..conftest import ROOT, TINY
from .test_table import DEBATES

datasets = pytest.importorskip("datasets")  # a dev dependency (requirements-dev.txt)
datasets.disable_progress_bars()

KEYS = ["data.text_column=statement", "data.label_column=party"]


def _load(*overrides: str):
    ds = dataset_of(load_config(None, list(overrides)).data)
    return ds.load(), ds.provenance


def _sha(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def debates() -> pd.DataFrame:
    df = pd.read_csv(DEBATES)[["statement", "party", "debate"]]
    return df.iloc[::7].reset_index(drop=True)  # 161 real rows


def test_one_dataset_equals_the_same_rows_as_a_table(debates, tmp_path):
    folder = tmp_path / "one"
    datasets.Dataset.from_pandas(debates).save_to_disk(str(folder))
    csv = tmp_path / "same.csv"
    debates.to_csv(csv, index=False)
    h, prov = _load("data.name=hf_disk", f"data.path={folder}", *KEYS, "data.group_column=debate")
    t, _ = _load("data.name=table", f"data.path={csv}", *KEYS, "data.group_column=debate")
    assert h.class_names == t.class_names == ("Democratic", "Moderator", "Republican")
    assert h.labels.tolist() == t.labels.tolist() and h.texts == t.texts
    assert h.groups.tolist() == t.groups.tolist() and h.test_idx is None
    arrows = sorted(folder.glob("*.arrow"))
    assert prov["data_path"] == str(folder.resolve()) and prov["data_rows"] == len(debates)
    assert prov["data_bytes"] == sum(f.stat().st_size for f in arrows)
    assert prov["data_sha256"] == _sha(arrows)


def test_dataset_dict_train_test_and_class_label(tmp_path):
    feats = datasets.Features({"text": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["pos", "neg", "mixed"]),
                               "x": datasets.Value("float32")})
    train = {"text": ["good", "bad", "fine", "", "meh", "ok"], "label": [0, 1, 0, 1, -1, 2],
             "x": [1, 2, 3, 4, 5, 6]}
    test = {"text": ["nice", "awful"], "label": [0, 1], "x": [7, 8]}
    folder = tmp_path / "dd"
    datasets.DatasetDict(
        train=datasets.Dataset.from_dict(train, features=feats).shuffle(seed=1).select(range(6)),
        test=datasets.Dataset.from_dict(test, features=feats),
    ).save_to_disk(str(folder))
    ov = ["data.name=hf_disk", f"data.path={folder}", "data.text_column=text",
          "data.label_column=label", "data.test_protocol=global", "data.num_clients=2"]
    corpus, prov = _load(*ov)
    assert corpus.class_names == ("pos", "neg", "mixed")  # ClassLabel order, not sorted
    assert sorted(corpus.texts[:4]) == ["bad", "fine", "good", "ok"]  # "" and -1 dropped
    assert corpus.texts[4:] == ["nice", "awful"] and corpus.test_idx.tolist() == [4, 5]
    assert corpus.labels[4:].tolist() == [0, 1]
    assert prov["data_dropped_rows"] == 2 and prov["data_test_rows"] == 2
    assert prov["data_path"] == str((folder / "train").resolve())
    assert prov["data_test_sha256"] == _sha(sorted((folder / "test").glob("*.arrow")))
    fed = load_federated(load_config(None, ov).data, 0, [0, 1])
    assert all(c.test_y.tolist() == [0, 1] for c in fed.clients.values())
    feat, _ = _load(*ov, "data.text_column=null", "data.feature_columns=[x]")
    assert feat.input_kind == "features" and feat.features[:, 0].tolist()[-3:] == [4.0, 7.0, 8.0]
    assert feat.test_idx.tolist() == [5, 6]  # the empty text no longer matters


def test_reading_does_not_import_datasets(tmp_path):
    folder = tmp_path / "one"
    datasets.Dataset.from_dict({"t": ["a", "b", "c"], "y": ["p", "q", "p"]}).save_to_disk(
        str(folder))
    code = ("import sys\nfrom fedkd_mpi.config import load_config\n"
            "from fedkd_mpi.data import dataset_of\n"
            f"cfg = load_config(None, ['data.name=hf_disk', 'data.path={folder}', "
            "'data.text_column=t', 'data.label_column=y', 'data.num_clients=1'])\n"
            "c = dataset_of(cfg.data).load()\n"
            "assert c.class_names == ('p', 'q'), c.class_names\n"
            "assert 'datasets' not in sys.modules, 'datasets was imported'\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr


@pytest.fixture
def validate(capsys):
    def _run(*args: str) -> str:
        capsys.readouterr()  # drop what came before
        code = main(["validate", str(TINY), "data.name=hf_disk", "data.text_column=t",
                     "data.label_column=y", "data.num_clients=2", *args])
        cap = capsys.readouterr()
        lines = [ln for ln in cap.err.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1, (code, cap.err)
        return lines[0]

    return _run


def test_bad_folders_are_one_line(validate, tmp_path):
    dd = tmp_path / "dd"
    datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"t": ["a", "b", "c"], "y": [0, 1, 0]}),
        test=datasets.Dataset.from_dict({"t": ["d"], "y": [1]}),
    ).save_to_disk(str(dd))
    csv = tmp_path / "f.csv"
    csv.write_text("t,y\na,0\n")
    assert validate(f"data.path={tmp_path / 'nope'}") == (
        f"data error: data.path '{tmp_path / 'nope'}': folder not found")
    assert validate(f"data.path={csv}") == (
        f"data error: data.path '{csv}': is a file, not a datasets.save_to_disk folder (a CSV, "
        "TSV, JSONL or Parquet file is data.name table)")
    assert validate(f"data.path={tmp_path}") == (
        f"data error: data.path '{tmp_path}': not a folder written by datasets.save_to_disk "
        "(no dataset_dict.json or state.json)")
    assert validate(f"data.path={dd}") == (
        f"data error: data.path '{dd}': has a 'test' split, which needs data.test_protocol "
        "global (per_client would train on it)")
    assert validate(f"data.path={dd}", "data.test_protocol=global", "data.label_column=lab") == (
        f"data error: data.path '{dd}': no column 'lab' (data.label_column); its columns: t, y")
    assert validate(f"data.path={dd}", "data.test_protocol=global",
                    f"data.test_path={csv}") == (
        "config error: 'data': data.test_path is for data.name table; hf_disk reads the "
        "folder's 'test' split")
    (dd / "train" / "data-00000-of-00001.arrow").write_bytes(b"garbage")
    assert validate(f"data.path={dd}", "data.test_protocol=global") == (
        f"data error: data.path '{dd}': 'train/data-00000-of-00001.arrow' is not a readable "
        "Arrow file (ArrowInvalid: Expected to read 1651663207 metadata bytes, but only read 3)")


def test_hf_disk_validates_with_every_model_check(tmp_path):
    folder = tmp_path / "one"
    rng = np.random.default_rng(0)
    datasets.Dataset.from_dict({"t": [f"w{i} w{i % 5}" for i in range(40)],
                                "y": rng.integers(0, 3, 40).tolist()}).save_to_disk(str(folder))
    assert main(["validate", str(TINY), "data.name=hf_disk", f"data.path={folder}",
                 "data.text_column=t", "data.label_column=y"]) == 0
