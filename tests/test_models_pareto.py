"""Multi-objective BO: the observed Pareto front is exact; suggestions are new, in-bounds points."""

from __future__ import annotations

import numpy as np
import pytest

from coorch.models.pareto import pareto_front, suggest_mobo


def _brute_force_front(y: np.ndarray) -> np.ndarray:
    dominated = [any(np.all(other >= row) and np.any(other > row) for other in y) for row in y]
    return ~np.array(dominated)


def _objectives(x: np.ndarray) -> np.ndarray:
    """Two competing properties over a 2-D design box, peaked at opposite corners."""
    u = (x - np.array([0.0, 5.0])) / np.array([10.0, 3.0])  # to the unit square
    a = np.exp(-((u[:, 0] - 0.2) ** 2 + (u[:, 1] - 0.3) ** 2) / 0.1)
    b = np.exp(-((u[:, 0] - 0.8) ** 2 + (u[:, 1] - 0.7) ** 2) / 0.1)
    return np.column_stack([a, b])


BOUNDS = np.array([[0.0, 5.0], [10.0, 8.0]])


@pytest.fixture(scope="module")
def observed() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = BOUNDS[0] + (BOUNDS[1] - BOUNDS[0]) * rng.uniform(size=(12, 2))
    return x, _objectives(x) + rng.normal(0, 0.01, (12, 2))


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


def _assert_new_and_inside(points: np.ndarray, taken: np.ndarray) -> None:
    assert np.all(points >= BOUNDS[0]) and np.all(points <= BOUNDS[1])
    scaled = (points - BOUNDS[0]) / (BOUNDS[1] - BOUNDS[0])
    taken_scaled = (taken - BOUNDS[0]) / (BOUNDS[1] - BOUNDS[0])
    gaps = np.linalg.norm(scaled[:, None] - taken_scaled[None], axis=2)
    assert gaps.min() > 1e-4
    if len(points) > 1:
        own = np.linalg.norm(scaled[:, None] - scaled[None], axis=2) + np.eye(len(points))
        assert own.min() > 1e-4


def test_suggest_continuous_batch_in_bounds_and_new(observed) -> None:
    x, y = observed
    points = suggest_mobo(x, y, BOUNDS, q=2, seed=0)
    assert points.shape == (2, 2)
    _assert_new_and_inside(points, x)


def test_suggest_from_candidates_skips_observed_and_pending(observed) -> None:
    x, y = observed
    rng = np.random.default_rng(1)
    candidates = BOUNDS[0] + (BOUNDS[1] - BOUNDS[0]) * rng.uniform(size=(300, 2))
    candidates = np.vstack([x, candidates])  # observed positions are candidates too
    first = suggest_mobo(x, y, BOUNDS, q=1, candidates=candidates, ref_point=[0.0, 0.0])
    assert first.shape == (1, 2)
    assert np.any(np.all(np.isclose(candidates, first[0]), axis=1))  # drawn from the set
    _assert_new_and_inside(first, x)
    second = suggest_mobo(x, y, BOUNDS, q=2, candidates=candidates, pending=first)
    _assert_new_and_inside(second, np.vstack([x, first]))


def test_optimum_on_an_observed_point_falls_back_to_new_points(observed, monkeypatch) -> None:
    """If the continuous optimiser lands on an observed point, a new point is returned."""
    import torch

    from coorch.models import pareto

    x, y = observed
    monkeypatch.setattr(
        pareto, "optimize_acqf", lambda *a, **k: (torch.as_tensor(x[:1]), torch.zeros(1))
    )
    points = suggest_mobo(x, y, BOUNDS, q=1, seed=0)
    _assert_new_and_inside(points, x)


def test_rejects_bad_input(observed) -> None:
    x, y = observed
    with pytest.raises(ValueError):
        suggest_mobo(x, y[:, :1], BOUNDS)
    with pytest.raises(ValueError):
        suggest_mobo(x, y, BOUNDS[::-1])
    with pytest.raises(ValueError):
        suggest_mobo(x, y, BOUNDS, candidates=x)  # nothing new to choose from
