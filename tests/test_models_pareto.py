"""The observed Pareto front is exactly the non-dominated set."""

from __future__ import annotations

import numpy as np
import pytest

from coorch.models.pareto import pareto_front


def _brute_force_front(y: np.ndarray) -> np.ndarray:
    dominated = [any(np.all(other >= row) and np.any(other > row) for other in y) for row in y]
    return ~np.array(dominated)


@pytest.mark.parametrize("k", [2, 3])
def test_front_is_exactly_the_non_dominated_set(k: int) -> None:
    rng = np.random.default_rng(k)
    y = rng.normal(size=(60, k))
    y[1] = y[0]  # a duplicated point
    y[2] = y[int(np.argmax(y[:, 0]))]  # a duplicate of a point that is surely on the front
    mask = pareto_front(y)
    np.testing.assert_array_equal(mask, _brute_force_front(y))
    front = y[mask]
    for row in front:  # non-dominated ...
        assert not np.any(np.all(front >= row, axis=1) & np.any(front > row, axis=1))
    for row in y[~mask]:  # ... and everything left out is dominated by something on it
        assert np.any(np.all(front >= row, axis=1) & np.any(front > row, axis=1))
    assert pareto_front(np.zeros((0, k))).shape == (0,)
