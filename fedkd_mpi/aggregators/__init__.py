"""Aggregators: how the server combines the decoded client updates of a round."""

from fedkd_mpi.aggregators.base import Aggregator, aggregator_of, weighted_mean

__all__ = ["Aggregator", "aggregator_of", "weighted_mean"]
