"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``):
60,000 training + 10,000 test images, 28x28 grey, 10 classes (MIT)."""

from __future__ import annotations

import gzip
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from fedkd_mpi.data.base import Corpus, DataError, Dataset

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "ankle boot")
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def data_dir() -> Path:
    """``$FEDKD_FASHION_MNIST_DIR`` or the Debian package's folder."""
    return Path(os.environ.get("FEDKD_FASHION_MNIST_DIR", DEFAULT_DIR))


def _idx(path: Path, magic: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise DataError(f"data error: data.name 'fashion_mnist': cannot read '{path}' ({exc}); "
                        "install Debian's dataset-fashion-mnist (scripts/setup.sh does)") from None
    head = np.frombuffer(raw[:4], ">i4")[0]
    if head != magic:
        raise DataError(f"data error: data.name 'fashion_mnist': '{path}' is not an IDX file")
    ndim = magic & 0xFF
    shape = tuple(int(d) for d in np.frombuffer(raw[4 : 4 + 4 * ndim], ">i4"))
    data = np.frombuffer(raw[4 + 4 * ndim :], np.uint8)
    if data.size != int(np.prod(shape)):
        raise DataError(f"data error: data.name 'fashion_mnist': '{path}' is truncated")
    return data.reshape(shape)


@lru_cache(maxsize=1)
def load() -> Corpus:
    """uint8[70000, 1, 28, 28]: the official training images, then the official test images
    (``test_idx``); no natural grouping."""
    root = data_dir()
    imgs, labs = [], []
    for split in ("train", "test"):
        img_f, lab_f = FILES[split]
        imgs.append(_idx(root / img_f, 0x0803))
        labs.append(_idx(root / lab_f, 0x0801))
    n_train = len(labs[0])
    images = np.concatenate(imgs)[:, None]
    labels = np.concatenate(labs).astype(np.int64)
    return Corpus(labels, CLASSES, images=images, test_idx=np.arange(n_train, len(labels)))


class FashionMNIST(Dataset):
    """``fashion_mnist``: 70,000 28x28 grey images, 10 classes, official test split."""

    name = "fashion_mnist"
    input_kind = "images"

    def load(self) -> Corpus:
        return load()
