"""FedAvg's means: ``uniform`` (every participant counts once) and ``weighted`` (by its
number of training examples, McMahan et al. 2017)."""

from __future__ import annotations

import numpy as np

from fedkd_mpi.aggregators.base import Aggregator, weighted_mean


class Uniform(Aggregator):
    """The plain mean of the participants' updates."""

    name = "uniform"

    def weights(self, num_samples):
        return np.ones(len(num_samples), dtype=np.float64)

    def aggregate(self, updates, num_samples):
        return weighted_mean(updates, self.weights(num_samples))

    _mean_aggregate = aggregate  # the plain mean: a codec may fold it (foldable_weights)


class Weighted(Uniform):
    """The mean weighted by each participant's training examples."""

    name = "weighted"

    def weights(self, num_samples):
        return np.asarray(num_samples, dtype=np.float64)
