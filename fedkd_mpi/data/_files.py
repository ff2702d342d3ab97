"""Reading labelled table files with pandas for ``data.name: table`` (imported only when such
a dataset loads: the registry scan of fedkd_mpi/data must stay light)."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_float_dtype, is_integer_dtype, is_numeric_dtype

from fedkd_mpi.config import DataConfig
from fedkd_mpi.data.base import Corpus, DataError

FORMATS = {".csv": "CSV", ".tsv": "TSV", ".jsonl": "JSONL", ".parquet": "Parquet"}
COMPRESSIONS = {".gz": gzip.decompress, ".bz2": bz2.decompress}
VALID = "valid: .csv, .tsv, .jsonl, .parquet, each also .gz or .bz2"
_NAN_WORDS = {"nan", "-nan", "na", "n/a", "null", "none", "inf", "-inf", "+inf"}


def sha256_of(paths: list[Path]) -> str:
    """sha256 of the files' bytes, concatenated in order."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def file_facts(prefix: str, given: str, files: list[Path], rows: int, dropped: int) -> dict:
    """Provenance attributes ``<prefix>_path/_bytes/_sha256/_rows/_dropped_rows``."""
    return {f"{prefix}_path": str(Path(given).expanduser().resolve()),
            f"{prefix}_bytes": int(sum(p.stat().st_size for p in files)),
            f"{prefix}_sha256": sha256_of(files), f"{prefix}_rows": int(rows),
            f"{prefix}_dropped_rows": int(dropped)}


def error_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200] if lines else ''}".rstrip(": ")


def read_frame(given: str, field: str, text_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """The file ``given`` (config field ``field``) as a DataFrame; DataError (one line) when
    it is missing, has an unknown suffix, is not UTF-8 or cannot be parsed. ``text_columns``
    are read as strings (CSV/TSV)."""
    path = Path(given).expanduser()
    where = f"data error: {field} '{given}'"
    if path.is_dir():
        raise DataError(f"{where}: is a folder, not a file (a datasets.save_to_disk folder is "
                        "data.name hf_disk)")
    if not path.is_file():
        raise DataError(f"{where}: file not found")
    name = path.name.lower()
    comp = next((c for c in COMPRESSIONS if name.endswith(c)), None)
    fmt = Path(name[: -len(comp)] if comp else name).suffix
    if fmt not in FORMATS:
        raise DataError(f"{where}: unknown format '{fmt + (comp or '') or path.name}' ({VALID})")
    kind = FORMATS[fmt] + (f" ({comp[1:]})" if comp else "")
    try:
        raw = path.read_bytes()
        if comp:
            raw = COMPRESSIONS[comp](raw)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise DataError(f"{where}: not a readable {kind} file ({error_line(exc)})") from None
    if fmt == ".parquet":
        try:
            return pd.read_parquet(io.BytesIO(raw))
        except Exception as exc:
            raise DataError(f"{where}: not a readable {kind} file ({error_line(exc)})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{where}: line {line} is not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
                        "save the file as UTF-8") from None
    if not text.strip():
        raise DataError(f"{where}: the file is empty")
    try:
        if fmt == ".jsonl":
            return pd.read_json(io.StringIO(text), lines=True, dtype=False)
        return pd.read_csv(io.StringIO(text), sep="\t" if fmt == ".tsv" else ",",
                           keep_default_na=False, na_values=[""],
                           dtype=dict.fromkeys(text_columns, str))
    except Exception as exc:
        raise DataError(f"{where}: not a readable {kind} file ({error_line(exc)})") from None


@dataclass
class Rows:
    """One file's usable rows: label keys (str), inputs, groups, and what was dropped."""

    labels: list[str]
    numeric: bool  # the label column holds integers (class names sorted numerically)
    texts: list[str] | None
    features: np.ndarray | None
    groups: np.ndarray | None
    dropped: int


def _missing(v: object) -> bool:
    if v is None or v is pd.NA:
        return True
    if isinstance(v, (float, np.floating)):
        return bool(np.isnan(v))
    return isinstance(v, str) and not v.strip()


def _text(v: object, where: str, col: str, row: int) -> str | None:
    if isinstance(v, (bytes, bytearray)):
        try:
            v = bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{where}: column '{col}' (data.text_column), row {row}: not UTF-8 "
                            "text") from None
    return None if _missing(v) else str(v)


def _columns_listed(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    more = f", ... ({len(cols) - 20} more)" if len(cols) > 20 else ""
    return ", ".join(cols[:20]) + more if cols else "none"


def _numeric(s: pd.Series, where: str, col: str) -> np.ndarray:
    if is_numeric_dtype(s) or is_bool_dtype(s):
        return s.to_numpy(dtype=np.float64, na_value=np.nan)
    num = pd.to_numeric(s, errors="coerce")
    words = s.map(lambda v: _missing(v) or str(v).strip().lower() in _NAN_WORDS)
    bad = np.flatnonzero(num.isna().to_numpy() & ~words.to_numpy(dtype=bool))
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{where}: column '{col}' (data.feature_columns) is not numeric (row "
                        f"{i + 1}: {s.iloc[i]!r})")
    return num.to_numpy(dtype=np.float64, na_value=np.nan)


def _label_keys(s: pd.Series, where: str, col: str) -> tuple[list[str], bool]:
    """Labels as class-name strings and whether they are integers (sorted numerically)."""
    if is_bool_dtype(s):
        return [str(bool(v)) for v in s], False
    if is_integer_dtype(s):
        return [str(int(v)) for v in s], True
    if is_float_dtype(s):
        v = s.to_numpy(np.float64)
        frac = np.flatnonzero(v != np.round(v))
        if frac.size:
            raise DataError(f"{where}: column '{col}' (data.label_column) holds non-integer "
                            f"numbers (row {int(s.index[frac[0]]) + 1}: {v[frac[0]]!r}); labels "
                            "must be strings or integers")
        return [str(int(x)) for x in v], True
    vals = s.tolist()
    ints = all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
               for v in vals)
    return [str(int(v)) if ints else str(v) for v in vals], ints


def extract(df: pd.DataFrame, cfg: DataConfig, where: str, test: bool = False) -> Rows:
    """The usable rows of one frame; DataError (naming ``where`` and the column) if a
    column is missing or unusable, or no row is left."""
    df = df.rename(columns=str)
    label = cfg.label_column
    need = [("data.label_column", label)]
    if cfg.text_column:
        need.append(("data.text_column", cfg.text_column))
    else:
        need += [("data.feature_columns", c) for c in cfg.feature_columns or []]
    if cfg.group_column and not test:  # a test file's group does not matter
        need.append(("data.group_column", cfg.group_column))
    for key, col in need:
        if col not in df.columns:
            raise DataError(f"{where}: no column '{col}' ({key}); its columns: "
                            f"{_columns_listed(df)}")
    keep = ~df[label].map(_missing).to_numpy(dtype=bool)
    texts = features = None
    if cfg.text_column:
        col = cfg.text_column
        texts = [_text(v, where, col, i + 1) for i, v in enumerate(df[col].tolist())]
        keep &= np.array([t is not None for t in texts], dtype=bool)
    else:
        features = np.stack([_numeric(df[c], where, c) for c in cfg.feature_columns], 1)
        keep &= np.isfinite(features).all(1)
    groups = None
    if cfg.group_column:
        col = df[cfg.group_column].tolist() if cfg.group_column in df.columns else [""] * len(df)
        groups = np.array(["" if _missing(v) else str(v) for v in col], dtype=str)
    n = int(keep.sum())
    if n == 0:
        inputs = (f"a non-empty text in '{cfg.text_column}'" if cfg.text_column else
                  "a finite number in every feature column")
        raise DataError(f"{where}: no row has both a label in '{label}' and {inputs} "
                        f"({len(df)} rows, all dropped)")
    labels, numeric = _label_keys(df[label][keep], where, label)
    return Rows(labels, numeric,
                None if texts is None else [t for t, k in zip(texts, keep, strict=True) if k],
                None if features is None else features[keep].astype(np.float32),
                None if groups is None else groups[keep], len(df) - n)


def build_corpus(cfg: DataConfig, train: Rows, test: Rows | None, where: str, test_where: str,
                 class_names: tuple[str, ...] | None = None) -> Corpus:
    """Train rows then test rows (``test_idx``) as one Corpus; class names sorted (integers
    numerically) unless given; DataError for one class or test labels unseen in training."""
    col = cfg.label_column
    if class_names is None:
        keys = set(train.labels)
        names = tuple(sorted(keys, key=int) if train.numeric else sorted(keys))
    else:
        names = class_names
    index = {c: i for i, c in enumerate(names)}
    present = sorted(set(train.labels) & set(names))
    if len(present) < 2:
        raise DataError(f"{where}: column '{col}' (data.label_column) holds one class "
                        f"({', '.join(repr(c) for c in present) or 'none'}) in "
                        f"{len(train.labels)} rows; a task needs at least 2")
    for rows, at in ((train, where), (test, test_where)):
        unseen = sorted(set(rows.labels) - set(index)) if rows is not None else []
        if unseen:
            shown = ", ".join(repr(u) for u in unseen[:5]) + (", ..." if len(unseen) > 5 else "")
            raise DataError(f"{at}: label(s) {shown} in column '{col}' (data.label_column) "
                            f"not among the training labels ({', '.join(names)})")
    parts = [train] + ([test] if test is not None else [])
    labels = np.array([index[k] for r in parts for k in r.labels], dtype=np.int64)
    texts = features = groups = None
    if train.texts is not None:
        texts = [t for r in parts for t in r.texts]
    else:
        features = np.ascontiguousarray(np.concatenate([r.features for r in parts]))
    if train.groups is not None:
        groups = np.concatenate([train.groups] + ([test.groups] if test is not None else []))
    test_idx = None if test is None else np.arange(len(train.labels), len(labels))
    return Corpus(labels, names, texts=texts, features=features, groups=groups,
                  test_idx=test_idx)


def check_clients(cfg: DataConfig, corpus: Corpus, rows: int, where: str) -> None:
    """DataError when the training rows (or, natural partition, the groups of
    ``data.group_column``) cannot give every client one."""
    n = cfg.num_clients
    if rows < n:
        raise DataError(f"{where}: {rows} training rows for {n} clients; lower "
                        f"data.num_clients ({n}) or add rows")
    if cfg.partition == "natural" and cfg.group_column and corpus.groups is not None:
        train = np.setdiff1d(np.arange(len(corpus)), corpus.test_idx if corpus.test_idx
                             is not None and cfg.test_protocol == "global" else [])
        groups = len(np.unique(corpus.groups[train]))
        if groups < n:
            raise DataError(f"{where}: column '{cfg.group_column}' (data.group_column) has "
                            f"{groups} groups for {n} clients (data.partition natural); lower "
                            f"data.num_clients ({n}) or use another partition")


#: the data keys a loaded file depends on (with the files' stamps: the cache key)

def _stamp(*given: str | None) -> tuple:
    """(size, mtime_ns) of each file: a rewritten file is read again."""
    out = []
    for g in given:
        p = Path(g).expanduser() if g else None
        st = p.stat() if p is not None and p.is_file() else None
        out.append(None if st is None else (st.st_size, st.st_mtime_ns))
    return tuple(out)


@lru_cache(maxsize=4)
def _load(cfg_json: str, stamp: tuple) -> tuple[Corpus, dict]:
    cfg = DataConfig.model_validate_json(cfg_json)
    text = tuple(c for c in (cfg.text_column, cfg.group_column) if c)
    where = f"data error: data.path '{cfg.path}'"
    train = extract(read_frame(cfg.path, "data.path", text), cfg, where)
    facts = file_facts("data", cfg.path, [Path(cfg.path).expanduser()], len(train.labels),
                       train.dropped)
    test = None
    test_where = f"data error: data.test_path '{cfg.test_path}'"
    if cfg.test_path:
        test = extract(read_frame(cfg.test_path, "data.test_path", text), cfg, test_where,
                       test=True)
        facts.update(file_facts("data_test", cfg.test_path,
                                [Path(cfg.test_path).expanduser()], len(test.labels),
                                test.dropped))
    return build_corpus(cfg, train, test, where, test_where), facts
