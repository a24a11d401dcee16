"""The operators' reward surrogate and its blend with knowledge (``coorch.models.preference``)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from coorch.models.acquisition import blend
from coorch.models.preference import RewardSurrogate


def _votes(n: int, t: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Descriptors (n, t) in mixed units and 1-5 scores high where descriptor 0 is high: the
    operators like one region of property space."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, t)) * np.array([1.0, 10.0, 0.1, 100.0])[:t]
    score = np.clip(np.round(3 + 2 * np.tanh(2 * x[:, 0])), 1, 5)
    return x, score


def test_predicts_higher_where_votes_are_high():
    x, y = _votes(40)
    s = RewardSurrogate(seed=1).fit(x, y)
    probe = np.zeros((2, 4))
    probe[0, 0], probe[1, 0] = 1.5, -1.5  # the liked and the disliked region
    mean, std = s.predict(probe)
    assert mean.shape == std.shape == (2,)
    assert mean[0] > 4.0 and mean[1] < 2.0, mean
    assert np.all(std > 0)


def test_std_shrinks_near_votes():
    x, y = _votes(30)
    s = RewardSurrogate().fit(x, y)
    far = x.mean(0) + 8 * x.std(0)  # far from every vote, in every descriptor's own units
    _, std_at = s.predict(x[:5])
    _, std_far = s.predict(far[None])
    assert std_at.max() < 0.5 * std_far[0], (std_at, std_far)


def test_deterministic_given_a_seed():
    x, y = _votes(25)
    a = RewardSurrogate(seed=3).fit(x, y).predict(x)
    b = RewardSurrogate(seed=3).fit(x, y).predict(x)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_one_vote_ties_and_repeats():
    one = RewardSurrogate(prior_std=0.7).fit(np.ones((1, 3)), np.array([4.0]))
    mean, std = one.predict(np.random.default_rng(0).normal(size=(5, 3)))
    np.testing.assert_array_equal(mean, 4.0)
    np.testing.assert_array_equal(std, 0.7)
    same = RewardSurrogate().fit(np.eye(3), np.array([5.0, 5.0, 5.0]))  # all tied: constant
    np.testing.assert_array_equal(same.predict(np.zeros((2, 3)))[0], 5.0)
    # one signal voted 5 three times and 1 once, another voted 1 twice: a finite GP between
    x = np.array([[0.0, 1.0]] * 4 + [[2.0, 1.0]] * 2)
    y = np.array([5.0, 5.0, 5.0, 1.0, 1.0, 1.0])
    mean, std = RewardSurrogate().fit(x, y).predict(np.array([[0.0, 1.0], [2.0, 1.0]]))
    assert np.isfinite(mean).all() and np.isfinite(std).all()
    assert mean[0] > mean[1]


def test_refuses_bad_input():
    with pytest.raises(ValueError):
        RewardSurrogate().fit(np.zeros((0, 2)), np.zeros(0))
    with pytest.raises(ValueError):
        RewardSurrogate().fit(np.array([[np.nan, 1.0]]), np.array([3.0]))
    with pytest.raises(ValueError):
        RewardSurrogate().fit(np.zeros((3, 2)), np.zeros(2))
    s = RewardSurrogate().fit(*_votes(5))
    with pytest.raises(ValueError):
        s.predict(np.zeros((2, 3)))
    with pytest.raises(RuntimeError):
        RewardSurrogate().predict(np.zeros((1, 4)))


def test_fit_time_50_votes_4_descriptors():
    x, y = _votes(50)
    RewardSurrogate().fit(*_votes(10, seed=1))  # imports and first-call costs out of the way
    times = []
    for seed in range(3):
        t0 = time.perf_counter()
        RewardSurrogate(seed=seed).fit(x, y)
        times.append(time.perf_counter() - t0)
    print(f"reward surrogate fit, 50 votes x 4 descriptors: {[f'{t:.3f}' for t in times]} s")


def test_blend_keeps_excluded_out_and_follows_the_endpoints():
    rng = np.random.default_rng(0)
    knowledge = 10.0 ** rng.uniform(-6, 0, size=200)  # value per second: orders of magnitude
    knowledge[[3, 50, 77]] = -np.inf
    reward = rng.uniform(1, 5, size=200)
    for w in (0.0, 0.3, 1.0):
        b = blend(knowledge, reward, w)
        assert not np.isnan(b).any()
        assert np.isneginf(b[[3, 50, 77]]).all()
        assert np.isfinite(np.delete(b, [3, 50, 77])).all()
    ok = np.isfinite(knowledge)
    b0, b1 = blend(knowledge, reward, 0.0), blend(knowledge, reward, 1.0)
    np.testing.assert_array_equal(np.argsort(b0[ok]), np.argsort(knowledge[ok]))
    np.testing.assert_array_equal(np.argsort(b1[ok]), np.argsort(reward[ok]))
    assert np.argmax(b0) == np.argmax(knowledge)
    assert np.argmax(b1) == np.flatnonzero(ok)[np.argmax(reward[ok])]


def test_blend_knowledge_stays_meaningful_at_a_middle_weight():
    """A candidate best in knowledge and middling in reward beats one middling in knowledge
    (a thousandth of the best's) and best in reward at weight 0.3: min-max of the raw
    knowledge would put the second at ~0 knowledge and let the reward decide everything."""
    knowledge = np.array([1.0, 1e-3, 1e-4, 1e-5, 1e-6])
    reward = np.array([3.0, 5.0, 1.0, 1.0, 1.0])
    assert np.argmax(blend(knowledge, reward, 0.3)) == 0
    assert np.argmax(blend(knowledge, reward, 0.9)) == 1


def test_blend_constant_and_degenerate_arrays():
    k = np.array([2.0, 1.0, 3.0])
    np.testing.assert_array_equal(np.argsort(blend(k, np.full(3, 4.0), 0.5)), np.argsort(k))
    flat = blend(np.full(3, 0.2), np.full(3, 4.0), 0.5)
    np.testing.assert_array_equal(flat, flat[0])
    assert np.isneginf(blend(np.full(3, -np.inf), np.ones(3), 0.5)).all()
    b = blend(np.array([1.0, np.nan, 2.0]), np.array([1.0, 2.0, np.nan]), 0.5)
    assert np.isneginf(b[1]) and np.isfinite(b[[0, 2]]).all()
    assert blend(np.array([5.0]), np.array([1.0]), 0.5).shape == (1,)
    with pytest.raises(ValueError):
        blend(k, np.ones(2), 0.5)
    with pytest.raises(ValueError):
        blend(k, np.ones(3), 1.5)
