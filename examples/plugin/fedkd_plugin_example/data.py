"""The ``digits`` dataset: scikit-learn's ``load_digits()`` (1,797 handwritten digits of 8x8
pixels, 10 classes, shipped inside scikit-learn: no download) as feature vectors."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from fedkd_mpi.data import Corpus, DataError, Dataset

PIXEL_MAX = 16.0  # the digits' pixels are integers 0..16


@lru_cache(maxsize=1)
def load_corpus() -> Corpus:
    """The whole corpus (one object per process): float32 [1797, 64] in [0, 1]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DataError(f"data error: data.name: digits needs scikit-learn ({exc})") from None
    digits = load_digits()
    features = np.asarray(digits.data, dtype=np.float32) / np.float32(PIXEL_MAX)
    labels = np.asarray(digits.target, dtype=np.int64)
    return Corpus(labels=labels, class_names=tuple(str(c) for c in range(10)),
                  features=np.ascontiguousarray(features))


class Digits(Dataset):
    """``data.name: digits``: 64 pixel features per example, labels 0..9, no official test
    split (``data.test_fraction`` of each client's share is held out)."""

    name = "digits"
    input_kind = "features"

    def load(self) -> Corpus:
        return load_corpus()
