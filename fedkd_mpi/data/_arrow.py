"""Reading ``datasets.save_to_disk`` folders with pyarrow for ``data.name: hf_disk`` (imported
only when such a dataset loads)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import pyarrow as pa

from fedkd_mpi.config import DataConfig
from fedkd_mpi.data._files import (
    build_corpus,
    error_line,
    extract,
    file_facts,
)
from fedkd_mpi.data.base import Corpus, DataError


def split_folders(folder: Path, where: str) -> tuple[Path, Path | None]:
    """The train split's folder and the test split's (None: no test split)."""
    if folder.is_file():
        raise DataError(f"{where}: is a file, not a datasets.save_to_disk folder (a CSV, TSV, "
                        "JSONL or Parquet file is data.name table)")
    if not folder.is_dir():
        raise DataError(f"{where}: folder not found")
    if (folder / "dataset_dict.json").is_file():
        splits = [str(s) for s in _json(folder / "dataset_dict.json", where).get("splits", [])]
        if "train" in splits:
            train = "train"
        elif len(splits) == 1:
            train = splits[0]
        else:
            raise DataError(f"{where}: no 'train' split (splits: {', '.join(splits) or 'none'})")
        test = "test" if "test" in splits and train != "test" else None
        return folder / train, None if test is None else folder / test
    if (folder / "state.json").is_file():
        return folder, None
    raise DataError(f"{where}: not a folder written by datasets.save_to_disk (no "
                    "dataset_dict.json or state.json)")


def _json(path: Path, where: str) -> dict:
    try:
        out = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{where}: cannot read '{path.name}' ({error_line(exc)})") from None
    if not isinstance(out, dict):
        raise DataError(f"{where}: '{path.name}' is not a JSON object")
    return out


def arrow_files(split: Path, where: str) -> list[Path]:
    """The split's Arrow files, in ``state.json`` order."""
    state = _json(split / "state.json", where)
    try:
        files = [split / str(d["filename"]) for d in state["_data_files"]]
    except (KeyError, TypeError):
        raise DataError(f"{where}: '{split.name}/state.json' lists no _data_files") from None
    missing = [f.name for f in files if not f.is_file()]
    if missing or not files:
        raise DataError(f"{where}: Arrow file(s) missing in '{split.name}': "
                        f"{', '.join(missing) or 'none listed'}")
    return files


def _read_arrow(f: Path) -> pa.Table:
    """An Arrow IPC stream file (what save_to_disk writes), else an IPC file."""
    with pa.memory_map(str(f)) as src:
        try:
            return pa.ipc.open_stream(src).read_all()
        except pa.ArrowInvalid as exc:
            src.seek(0)
            try:
                return pa.ipc.open_file(src).read_all()
            except pa.ArrowInvalid:
                raise exc from None


def read_split(files: list[Path], where: str) -> pa.Table:
    tables = []
    for f in files:
        try:
            tables.append(_read_arrow(f))
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{where}: '{f.parent.name}/{f.name}' is not a readable Arrow file "
                            f"({error_line(exc)})") from None
    try:
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    except pa.ArrowException as exc:
        raise DataError(f"{where}: the split's Arrow files differ ({error_line(exc)})") from None


def class_label_names(split: Path, column: str) -> tuple[str, ...] | None:
    """The names of a ClassLabel column (``dataset_info.json``), else None."""
    info = split / "dataset_info.json"
    try:
        feat = json.loads(info.read_text(encoding="utf-8")).get("features", {}).get(column)
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(feat, dict) and feat.get("_type") == "ClassLabel" and feat.get("names"):
        return tuple(str(n) for n in feat["names"])
    return None


def _frame(table: pa.Table, names: tuple[str, ...] | None, label: str, where: str):
    """The split as a DataFrame; ClassLabel ids become their names (-1: missing)."""
    df = table.to_pandas()
    if names is not None and label in df.columns:
        def name_of(v: object) -> object:
            if v is None or v != v or int(v) == -1:
                return None
            if not 0 <= int(v) < len(names):
                raise DataError(f"{where}: column '{label}' (data.label_column) holds class id "
                                f"{int(v)} outside its {len(names)} ClassLabel names")
            return names[int(v)]
        df[label] = df[label].map(name_of).astype(object)
    return df


@lru_cache(maxsize=4)
def _load(cfg_json: str, stamp: tuple) -> tuple[Corpus, dict]:
    cfg = DataConfig.model_validate_json(cfg_json)
    where = f"data error: data.path '{cfg.path}'"
    train_dir, test_dir = split_folders(Path(cfg.path).expanduser(), where)
    if test_dir is not None and cfg.test_protocol != "global":
        raise DataError(f"{where}: has a 'test' split, which needs data.test_protocol global "
                        "(per_client would train on it)")
    names = class_label_names(train_dir, cfg.label_column)
    files = arrow_files(train_dir, where)
    train = extract(_frame(read_split(files, where), names, cfg.label_column, where), cfg, where)
    facts = file_facts("data", str(train_dir), files, len(train.labels), train.dropped)
    test, test_where = None, f"data error: data.path '{cfg.path}' (split test)"
    if test_dir is not None:
        tfiles = arrow_files(test_dir, test_where)
        frame = _frame(read_split(tfiles, test_where), names, cfg.label_column, test_where)
        test = extract(frame, cfg, test_where, test=True)
        facts.update(file_facts("data_test", str(test_dir), tfiles, len(test.labels),
                                test.dropped))
    return build_corpus(cfg, train, test, where, test_where, names), facts


def _stamp(folder: Path) -> tuple:
    """(name, size, mtime_ns) of every file in the folder tree: the cache key."""
    if not folder.is_dir():
        return ()
    return tuple(sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                        for p in folder.rglob("*") if p.is_file()))
