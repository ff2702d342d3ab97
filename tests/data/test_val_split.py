"""data.val_fraction: a validation split per client, carved from its training part, disjoint
from the held-out data, and no change at all to the test split (either protocol)."""

from __future__ import annotations

import numpy as np
import pytest

from fedkd_mpi.config import DataConfig
from fedkd_mpi.data import load_federated
from fedkd_mpi.data.rotten_tomatoes import DataError


@pytest.mark.parametrize("protocol", ["per_client", "global"])
def test_val_split_comes_out_of_training_only(protocol):
    base = dict(name="fashion_mnist", num_clients=4, max_samples=800, partition="dirichlet",
                test_protocol=protocol, test_samples=200)
    plain = load_federated(DataConfig(**base), 0, [0, 1, 2, 3])
    val = load_federated(DataConfig(**base, val_fraction=0.2), 0, [0, 1, 2, 3])
    assert plain.val_label_hist is None
    np.testing.assert_array_equal(plain.test_label_hist, val.test_label_hist)
    for c in range(4):
        a, b = plain.clients[c], val.clients[c]
        assert a.val_x is None and b.val_x is not None
        assert np.array_equal(a.test_x.numpy(), b.test_x.numpy())  # the test data unchanged
        share = a.num_train + (0 if protocol == "global" else len(a.test_y))
        assert len(b.val_y) == max(1, round(0.2 * share))
        assert b.num_train + len(b.val_y) == a.num_train  # train = train' + val
        np.testing.assert_array_equal(
            np.sort(a.train_y.numpy()), np.sort(np.concatenate([b.train_y, b.val_y])))
        whole = sorted(r.tobytes() for r in a.train_x.numpy())  # the same examples, split
        assert whole == sorted(r.tobytes() for r in np.concatenate([b.train_x, b.val_x]))
        np.testing.assert_array_equal(val.val_label_hist[c],
                                      np.bincount(b.val_y.numpy(), minlength=10))
    assert val.sizes.sum() + val.val_label_hist.sum() == plain.sizes.sum()


def test_val_fraction_that_empties_training_is_one_line():
    with pytest.raises(DataError, match=r"client \d has no training data.*data.val_fraction"):
        load_federated(DataConfig(name="fashion_mnist", num_clients=4, max_samples=40,
                                  test_fraction=0.5, val_fraction=0.5), 0, [0])
