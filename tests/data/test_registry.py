"""The data axis as registered interfaces: built-in and plug-in datasets and partitioners, the
corpus protocol, validation without tokenising, and bit-identical built-in outputs."""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
import pytest
import torch

from fedkd_mpi.config import DataConfig, load_config
from fedkd_mpi.data import (
    Corpus,
    DataError,
    Dataset,
    Partitioner,
    check_data,
    dataset_of,
    load_federated,
    partitioner_of,
)
from fedkd_mpi.data import federated as federated_mod
from fedkd_mpi.data.rotten_tomatoes import DataError as LegacyDataError
from fedkd_mpi.registry import PluginError

from ..conftest import TINY

HERE = "tests.data.test_registry"


@lru_cache(maxsize=1)
def _tiny_digits() -> Corpus:
    rs = np.random.RandomState(0)
    labels = rs.randint(0, 3, size=300).astype(np.int64)
    features = (rs.normal(size=(300, 5)) + labels[:, None]).astype(np.float64)
    features[:, 0] = np.arange(300)  # column 0: the example's position (checked below)
    return Corpus(labels, ("a", "b", "c"), features=features)


class TinyDigits(Dataset):
    """300 float feature vectors, 3 classes, no grouping key (a plug-in by import path)."""

    name = "tiny_digits"
    input_kind = "features"

    def load(self) -> Corpus:
        return _tiny_digits()


class BadLabels(Dataset):
    name = "bad_labels"
    input_kind = "features"

    def load(self) -> Corpus:
        c = _tiny_digits()
        return Corpus(c.labels + 1, c.class_names, features=c.features)  # 3 is out of range


class RoundRobin(Partitioner):
    """Example i goes to client i mod num_clients."""

    name = "round_robin"

    def split(self, labels, groups, num_clients, seed):
        return [np.arange(c, len(labels), num_clients) for c in range(num_clients)]


class Overlapping(Partitioner):
    name = "overlapping"

    def split(self, labels, groups, num_clients, seed):
        return [np.arange(len(labels)) for _ in range(num_clients)]


def test_builtin_names():
    assert Dataset.registry.builtin_names() == ["bbc_news", "fashion_mnist", "hf_disk",
                                                "rotten_tomatoes", "table"]
    assert Partitioner.registry.builtin_names() == ["dirichlet", "iid", "natural", "shards"]
    assert LegacyDataError is DataError
    assert [type(dataset_of(DataConfig(name=n))).input_kind
            for n in ("rotten_tomatoes", "bbc_news", "fashion_mnist")] == [
        "tokens", "tokens", "images"]
    assert partitioner_of(DataConfig(partition="natural")).needs_groups


def test_dataset_plugin_by_import_path_loads_float32_features():
    cfg = DataConfig(name=f"{HERE}:TinyDigits", num_clients=3)
    fed = load_federated(cfg, 0, [0, 1, 2])
    assert fed.class_names == ("a", "b", "c") and fed.num_classes == 3
    assert fed.input_kind == "features"
    for cd in fed.clients.values():
        assert cd.train_x.dtype == torch.float32 and cd.test_x.dtype == torch.float32
        assert cd.train_x.shape[1] == 5 and cd.train_y.dtype == torch.int64
    assert fed.sizes.sum() + sum(len(cd.test_y) for cd in fed.clients.values()) == 300
    assert check_data(cfg, 0) is _tiny_digits()


def test_out_of_range_labels_are_a_data_error_naming_data_name():
    cfg = DataConfig(name=f"{HERE}:BadLabels", num_clients=3)
    with pytest.raises(DataError, match=r"^data error: data\.name: label 3 at position"):
        load_federated(cfg, 0, [0])
    with pytest.raises(DataError, match=r"data\.name"):
        check_data(cfg, 0)


def test_partitioner_plugin_by_import_path():
    cfg = DataConfig(name=f"{HERE}:TinyDigits", num_clients=3, partition=f"{HERE}:RoundRobin")
    fed = load_federated(cfg, 0, [0, 1, 2])
    for c, cd in fed.clients.items():  # per_client protocol: the share is train + test
        pos = torch.cat([cd.train_x[:, 0], cd.test_x[:, 0]]).int()
        assert sorted(pos.tolist()) == list(range(c, 300, 3))
    assert fed.sizes.tolist() == [80, 80, 80]
    bad = cfg.model_copy(update={"partition": f"{HERE}:Overlapping"})
    with pytest.raises(DataError, match="more than one client"):
        load_federated(bad, 0, [0])


def test_unknown_names_are_plugin_errors_naming_the_field():
    with pytest.raises(PluginError, match=r"data\.name") as err:
        dataset_of(DataConfig(name="no_such_dataset"))
    assert "rotten_tomatoes" in str(err.value)  # lists what would be valid
    with pytest.raises(PluginError, match=r"data\.name"):
        load_federated(DataConfig(name="no_such_dataset"), 0, [0])
    with pytest.raises(PluginError, match=r"data\.partition"):
        partitioner_of(DataConfig(partition="no_such_partition"))
    with pytest.raises(PluginError, match=r"data\.name"):
        dataset_of(DataConfig(name=f"{HERE}:RoundRobin"))  # a partitioner, not a dataset


@pytest.mark.parametrize(("kw", "match"), [
    ({"labels": np.array([0.0, 1.0])}, "integer"),
    ({"labels": np.zeros(2, np.int64)}, "at least 2"),
    ({"labels": np.array([0, 1, 1])}, "2 features for 3 labels"),
    ({"texts": ["x", "y"]}, "exactly one of texts, images, features"),
    ({"features": None}, "exactly one of"),
    ({"groups": np.arange(5)}, "5 groups for 2 labels"),
    ({"features": None, "images": np.zeros((2, 1, 4, 4), np.float32)}, "uint8"),
])
def test_corpus_check_names_the_field(kw, match):
    args = {"labels": np.array([0, 1]), "class_names": ("n", "p"),
            "features": np.zeros((2, 3), np.float32), **kw}
    with pytest.raises(DataError, match=r"^data error: data\.name: .*" + match):
        Corpus(**args).check("data.name")
    assert Corpus(np.array([0, 1]), ("n", "p"), texts=["x", "y"]).input_kind == "tokens"


# Error messages of load_federated before the data axis became registered interfaces.
TODAY_ERRORS = [
    ({"num_clients": 400, "max_samples": 300}, "data error: client 0 has no training data; "
     "lower data.num_clients (400) or data.test_fraction (0.2)"),
    ({"num_clients": 11, "max_samples": 10, "test_protocol": "global"},
     "data error: client 10 has no training data; lower data.num_clients (11) or "
     "data.test_fraction (0.2)"),
    ({"num_clients": 5, "max_samples": 10, "partition": "shards", "shards_per_client": 3},
     "data error: data.partition 'shards': 15 shards (num_clients x shards_per_client) for "
     "only 10 examples"),
    ({"name": "fashion_mnist", "partition": "natural"},
     "data error: data.partition 'natural': this dataset has no natural grouping key"),
    ({"name": f"{HERE}:TinyDigits", "partition": "natural"},
     "data error: data.partition 'natural': this dataset has no natural grouping key"),
]


@pytest.mark.parametrize(("kw", "message"), TODAY_ERRORS)
def test_check_data_raises_what_load_federated_raises(kw, message, monkeypatch):
    cfg = DataConfig(tokenizer="hash", **kw)
    with pytest.raises(DataError) as loaded:
        load_federated(cfg, 0, [0])
    monkeypatch.setattr(federated_mod, "_features", _no_tensors)
    with pytest.raises(DataError) as checked:
        check_data(cfg, 0)
    assert str(loaded.value) == str(checked.value) == message


def _no_tensors(*args, **kw):
    raise AssertionError("check_data must not build tensors")


def test_check_data_builds_no_tensors(monkeypatch):
    monkeypatch.setattr(federated_mod, "_features", _no_tensors)
    cfg = load_config(TINY).data
    assert len(check_data(cfg, 3)) == 12_808


# sha256 over (client, dtype, shape, bytes) of train_x/train_y/test_x/test_y of every client of
# tests/tiny.yaml with data.test_protocol=global, computed before the registry refactoring.
TINY_DIGESTS = {
    "iid": "30c61da219711cb6e0350e05c7e65a5fe6a47e96d657a0c8001e87e023f4d520",
    "natural": "7443c68cb9f9923af86b8ba6f69c4248cf603b1dd818f38c85cbbb08097e761e",
    "dirichlet": "4ead0397bb14540f9d97fd9c91001891af4010ca54b22f7ad25514b071ef52ad",
    "shards": "6508de67ce9cd136eda8e19998714b4a48403dca89c0701765600710e2077931",
}


def _digest(fed) -> str:
    h = hashlib.sha256()
    for c in sorted(fed.clients):
        cd = fed.clients[c]
        for t in (cd.train_x, cd.train_y, cd.test_x, cd.test_y):
            a = np.ascontiguousarray(t.numpy())
            h.update(f"{c}:{a.dtype}:{a.shape};".encode())
            h.update(a.tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("kind", sorted(TINY_DIGESTS))
def test_builtin_tiny_outputs_are_bit_identical(kind):
    cfg = load_config(TINY, [f"data.partition={kind}", "data.test_protocol=global"])
    fed = load_federated(cfg.data, cfg.seed, list(range(cfg.data.num_clients)))
    assert fed.input_kind == "tokens" and fed.class_names == ("rotten", "fresh")
    assert _digest(fed) == TINY_DIGESTS[kind]


class Mislabelled(Dataset):
    name = "mislabelled"
    input_kind = "tokens"  # but load() returns features

    def load(self) -> Corpus:
        return _tiny_digits()


def test_declared_input_kind_must_match_the_corpus():
    with pytest.raises(DataError, match=r"declares input_kind 'tokens' but its corpus holds "
                       "features"):
        check_data(DataConfig(name=f"{HERE}:Mislabelled"), 0)
