"""The twins' ground truth is what a measurement reads on average, not the descriptor of the
noiseless signal: the Raman centroid of a noisy spectrum sits ~10 cm^-1 above the noiseless
one (noise above the baseline is kept, below it clipped), a floor no agent could get under."""

from __future__ import annotations

import numpy as np

from coorch.instrument_agents.twins import make_twin
from coorch.models.descriptors import describe
from coorch.tasks.report import TRUTH_DRAWS, ground_truth

SHAPE = (3, 1)  # three positions along the library, mid y
MEASUREMENTS = 120  # per position: real twin.measure calls


def raman(seed: int):
    twin = make_twin("raman", "smbfo", seed=seed)
    return {"raman": twin}, {"raman": "raman"}, np.asarray(twin.library.extent, float)


def measured(twin, x: float, y: float, n: int) -> np.ndarray:
    """``n`` descriptors of real acquisitions at library (x, y), moving in stage coordinates
    as the benchmark's ``twin_measure`` does."""
    twin.move(*twin.frame.to_stage(x, y))
    return np.array([describe("raman", twin.measure("raman", {}))[0] for _ in range(n)])


def test_truth_is_the_mean_of_real_measurements_and_the_noiseless_value_is_not() -> None:
    twins, modalities, extent = raman(seed=7)
    truth = ground_truth(twins, modalities, extent, SHAPE)
    noiseless = ground_truth(twins, modalities, extent, SHAPE, draws=0)
    for q, (x, y) in enumerate(truth.grid):
        d = measured(twins["raman"], x, y, MEASUREMENTS)
        sd = d.std(ddof=1)
        # the difference of two means: the measurements' and the truth's Monte Carlo mean
        se = sd * np.sqrt(1 / MEASUREMENTS + 1 / TRUTH_DRAWS)
        assert abs(d.mean() - truth.values[q, 0]) < 4 * se, (x, d.mean(), truth.values[q, 0], se)
        assert d.mean() - noiseless.values[q, 0] > 8 * se, (x, d.mean(), noiseless.values[q], se)


def test_truth_leaves_the_twins_noise_alone_and_is_reproducible() -> None:
    """Scoring draws from its own generator: a twin measures the same after a truth was built
    as a fresh twin of the same seed does, and the same ``draws_seed`` gives the same truth."""
    twins, modalities, extent = raman(seed=3)
    first = ground_truth(twins, modalities, extent, SHAPE, draws_seed=11)
    fresh, _, _ = raman(seed=3)
    x, y = first.grid[0]
    np.testing.assert_array_equal(
        measured(twins["raman"], x, y, 3), measured(fresh["raman"], x, y, 3)
    )
    again, _, _ = raman(seed=5)  # another twin seed: its noise differs, the truth does not
    np.testing.assert_array_equal(
        ground_truth(again, modalities, extent, SHAPE, draws_seed=11).values, first.values
    )
    other = ground_truth(twins, modalities, extent, SHAPE, draws_seed=12)
    assert not np.array_equal(other.values, first.values)  # the draws are the seed's
