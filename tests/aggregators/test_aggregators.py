"""Aggregators: the means against numpy, coordinate-wise median and trimmed mean, plug-ins by
import path, and one-line errors for unknown names."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedkd_mpi.aggregators import Aggregator, aggregator_of, weighted_mean
from fedkd_mpi.config import load_config
from fedkd_mpi.registry import PluginError

SHAPES = [(4, 3), (5,)]


class Half(Aggregator):
    """A plug-in for the tests: half of the first participant's update."""

    name = "half"

    def aggregate(self, updates, num_samples):
        first = next(iter(updates))
        return [0.5 * t for t in first]


def _agg(name: str, *more: str) -> Aggregator:
    return aggregator_of(load_config(None, [f"train.aggregation={name}", *more]))


def _updates(n: int, seed: int = 0) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g) for s in SHAPES] for _ in range(n)]


def _scalars(values) -> list[list[torch.Tensor]]:
    """One update per value: every coordinate of a (2, 2) tensor holds that value."""
    return [[torch.full((2, 2), float(v))] for v in values]


def test_uniform_is_the_plain_mean():
    ups = _updates(3)
    agg = _agg("uniform")
    out = agg.aggregate(ups, np.array([1, 3, 7]))
    for j, o in enumerate(out):
        want = np.mean([u[j].double().numpy() for u in ups], axis=0)
        assert o.dtype == torch.float32 and o.shape == SHAPES[j]
        assert np.allclose(o.numpy(), want, atol=1e-6, rtol=0)
    assert np.array_equal(agg.weights(np.array([1, 3, 7])), np.ones(3))


def test_weighted_mean_by_training_examples():
    ups = _updates(2, seed=1)
    agg = _agg("weighted")
    sizes = np.array([1, 3])
    out = agg.aggregate(ups, sizes)
    for j, o in enumerate(out):
        want = np.average([u[j].double().numpy() for u in ups], axis=0, weights=[1, 3])
        assert np.allclose(o.numpy(), want, atol=1e-6, rtol=0)
        assert not np.allclose(o.numpy(), np.mean([u[j].numpy() for u in ups], axis=0),
                               atol=1e-6)  # the weights matter
    assert np.array_equal(agg.weights(sizes), [1.0, 3.0])


def test_weighted_mean_function_streams_and_normalises():
    ups = _updates(3, seed=2)
    out = weighted_mean(iter(ups), np.array([2.0, 2.0, 4.0]))
    for j, o in enumerate(out):
        want = np.average([u[j].double().numpy() for u in ups], axis=0, weights=[1, 1, 2])
        assert np.allclose(o.numpy(), want, atol=1e-6, rtol=0)


def test_median_per_coordinate_odd_and_even():
    agg = _agg("median")
    (odd,) = agg.aggregate(_scalars([10, 1, 2]), np.array([1, 1, 1]))
    assert torch.equal(odd, torch.full((2, 2), 2.0))
    (even,) = agg.aggregate(_scalars([10, 3, 1, 2]), np.array([1, 1, 1, 1]))
    assert torch.equal(even, torch.full((2, 2), 2.5))
    # coordinate-wise: each coordinate takes its own median
    ups = [[torch.tensor([1.0, 30.0])], [torch.tensor([2.0, 10.0])], [torch.tensor([10.0, 20.0])]]
    assert torch.equal(agg.aggregate(ups, np.ones(3))[0], torch.tensor([2.0, 20.0]))
    assert agg.weights(np.ones(3)) is None


def test_trimmed_mean_drops_min_and_max_of_four():
    agg = _agg("trimmed_mean", "train.trim_fraction=0.25")
    (out,) = agg.aggregate(_scalars([100, 1, 2, -50]), np.array([1, 1, 1, 1]))
    assert torch.allclose(out, torch.full((2, 2), 1.5))  # mean of 1 and 2
    ups = [[torch.tensor([1.0, 8.0])], [torch.tensor([2.0, -9.0])],
           [torch.tensor([3.0, 7.0])], [torch.tensor([4.0, 6.0])]]
    assert torch.allclose(agg.aggregate(ups, np.ones(4))[0], torch.tensor([2.5, 6.5]))
    assert agg.weights(np.ones(4)) is None


def test_aggregator_by_import_path():
    agg = _agg("tests.aggregators.test_aggregators:Half")
    assert type(agg).__name__ == "Half" and agg.name == "half"
    assert isinstance(agg, Aggregator)
    ups = _updates(2, seed=3)
    out = agg.aggregate(ups, np.array([1, 1]))
    assert all(torch.equal(o, 0.5 * u) for o, u in zip(out, ups[0], strict=True))
    assert agg.weights(np.array([1, 1])) is None


def test_unknown_aggregator_is_a_plugin_error_naming_the_field():
    with pytest.raises(PluginError, match=r"train\.aggregation") as err:
        _agg("no_such_aggregator")
    assert "\n" not in str(err.value)
    assert "uniform" in str(err.value)  # lists the valid names
    with pytest.raises(PluginError, match=r"train\.aggregation"):
        _agg("tests.aggregators.test_aggregators:Nope")
