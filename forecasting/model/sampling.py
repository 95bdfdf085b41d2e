"""A fixed budget of training windows per epoch, stratified by ticker.

A global model over the whole market sees ~3,000 windows per ticker and year of history; at
5,000 tickers an epoch over all of them takes hours on CPUs. :class:`WindowSampler` draws a
fresh sample of ``budget`` origins each epoch, split as evenly as possible across tickers (a
ticker with fewer windows than its share gives all it has, the rest goes to the others), so a
newly listed ticker counts as much as one with ten years, and the budget, not the universe,
sets the epoch time. Origins stay flat indices into the panel: the windows themselves remain
strided views (:mod:`forecasting.model.windows`), nothing is copied.
"""

from __future__ import annotations

import numpy as np

from forecasting.model.windows import Panel


def quotas(counts: np.ndarray, budget: int) -> np.ndarray:
    """Windows to draw per series: ``min(count, q)`` for the largest even share ``q`` that fits
    ``budget``, the remainder one each to the series with room, first come. ``[S] -> [S]``."""
    counts = np.asarray(counts, dtype=np.int64)
    if budget >= counts.sum():
        return counts.copy()
    if budget <= 0:
        return np.zeros_like(counts)
    ordered = np.sort(counts)
    # q such that sum(min(counts, q)) <= budget, by water-filling over the sorted counts
    below = np.concatenate([[0], np.cumsum(ordered)])  # [S+1] sum of the k smallest
    n = len(ordered)
    q = 0
    for k in range(n):
        # the k smallest give all they have; the other n - k give q each
        share = (budget - below[k]) // (n - k)
        if share <= ordered[k]:
            q = int(share)
            break
    out: np.ndarray = np.minimum(counts, q)
    left = budget - int(out.sum())
    room = np.flatnonzero(counts > out)
    out[room[:left]] += 1
    return out


class WindowSampler:
    """Each epoch's sample of training origins (see the module docstring).

    ``origins``: the flat training origins of ``panel``; ``budget``: windows per epoch (all of
    them when ``budget`` covers them). The sample of an epoch depends on ``seed`` and the epoch
    only, and comes back sorted (contiguous memory for the gathers).
    """

    def __init__(self, panel: Panel, origins: np.ndarray, budget: int, seed: int) -> None:
        self.origins = np.asarray(origins, dtype=np.int64)  # [N]
        self.series = np.searchsorted(panel.offsets, self.origins, side="right") - 1  # [N]
        counts = np.bincount(self.series, minlength=len(panel.tickers))  # [S]
        self.quota = quotas(counts, budget)  # [S]
        self.budget = int(self.quota.sum())
        self.seed = seed
        # start of each series' run within ``origins`` (origins are grouped by series, ascending)
        self._start = np.concatenate([[0], np.cumsum(counts)[:-1]])  # [S]

    def epoch(self, epoch: int) -> np.ndarray:
        """The sorted origins of ``epoch``: ``[budget]``."""
        if self.budget == len(self.origins):
            return self.origins
        rng = np.random.default_rng([self.seed, epoch])
        keys = rng.random(len(self.origins))  # [N]
        order = np.lexsort((keys, self.series))  # by series, then by random key
        rank = np.arange(len(order)) - self._start[self.series[order]]  # [N] rank in series
        chosen = order[rank < self.quota[self.series[order]]]  # [budget]
        return np.sort(self.origins[chosen])
