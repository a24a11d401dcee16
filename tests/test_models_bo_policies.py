"""Single-task BO baselines (UCB, EI): they find a clear maximum, never pick a pending point,
fall back to random without data, and keep each instrument's task to itself."""

import numpy as np
import pytest

from coorch.models.agent import RandomAgent
from coorch.models.bo_policies import EIPolicy, UCBPolicy
from coorch.models.cost import InstrumentCost
from coorch.models.observations import Observation

CANDIDATES = np.linspace(0.0, 10.0, 50)[:, None]  # library mm; the agents see [0, 1]
BOUNDS = np.array([[0.0, 10.0]])
ONE = [InstrumentCost("raman", (0,))]


def f(u):
    """A clear maximum near u = 0.7 on a gentle slope (unit-box coordinate)."""
    return np.exp(-(((u - 0.7) / 0.15) ** 2)) + 0.1 * u


ARGMAX = CANDIDATES[np.argmax(f(CANDIDATES[:, 0] / 10.0)), 0]


def run(policy, steps=12):
    xs = []
    for _ in range(steps):
        s = policy.ask()
        xs.append(float(s.x[0]))
        u = s.x[0] / 10.0
        policy.tell([Observation("raman", s.x, np.array([f(u)]), s.measurement_id)])
    return np.asarray(xs)


@pytest.mark.parametrize("cls", [UCBPolicy, EIPolicy])
def test_finds_the_maximum_more_often_than_random(cls):
    hits, rand_hits, last = 0, 0, []
    for seed in (0, 1):
        xs = run(cls(CANDIDATES, BOUNDS, ONE, seed=seed))
        hits += int((np.abs(xs - ARGMAX) <= 0.5).sum())  # within 5 % of the range
        last.append(abs(xs[-1] - ARGMAX))
        rxs = run(RandomAgent(CANDIDATES, BOUNDS, ONE, seed=seed))
        rand_hits += int((np.abs(rxs - ARGMAX) <= 0.5).sum())
    assert hits >= 8 and hits > 2 * rand_hits, (hits, rand_hits)
    assert min(last) <= 0.5


@pytest.mark.parametrize("cls", [UCBPolicy, EIPolicy])
@pytest.mark.parametrize("n_told", [0, 4])
def test_never_returns_a_pending_candidate(cls, n_told):
    p = cls(CANDIDATES, BOUNDS, ONE, seed=3)
    run(p, steps=n_told)
    picked = [p.ask("raman").x[0] for _ in range(5)]  # nothing told back: all pending
    assert len(set(picked)) == 5
    assert len(p.pending) == 5


@pytest.mark.parametrize("cls", [UCBPolicy, EIPolicy])
def test_fallback_without_data_is_random_and_seeded(cls):
    a = cls(CANDIDATES, BOUNDS, ONE, seed=5).ask()
    b = cls(CANDIDATES, BOUNDS, ONE, seed=5).ask()
    assert np.isnan(a.acquisition_value)
    assert a.x[0] == b.x[0] and a.instrument == "raman"
    p = cls(CANDIDATES, BOUNDS, ONE, seed=5)
    run(p, steps=1)  # one observation: still the fallback
    assert np.isnan(p.ask().acquisition_value)
    assert p.n_fits == 0


def test_instruments_take_turns_and_keep_their_task_to_themselves():
    two = [InstrumentCost("raman", (0,)), InstrumentCost("beps", (1,), cost_s=5.0)]
    p = UCBPolicy(CANDIDATES, BOUNDS, two, seed=0, refit_every=3)
    seen = []
    for _ in range(8):
        s = p.ask()  # instrument=None: fewest observations + pending first
        seen.append(s.instrument)
        u = s.x[0] / 10.0
        value = f(u) if s.instrument == "raman" else -f(u)
        p.tell([Observation(s.instrument, s.x, np.array([value]), s.measurement_id)])
    assert seen == ["raman", "beps"] * 4
    gp = p.model(0)
    assert gp.train_inputs[0].shape[0] == 4  # task 0 only, never beps' task 1
    assert np.isfinite(p.ask("beps").acquisition_value)
    # refit_every=3: fitted at 2 observations of each task; the 3rd and 4th reuse those
    # hyperparameters
    assert p.n_fits == 2
    r = p.report()
    assert r["policy"] == "ucb" and r["beta"] == 2.0 and set(r["lengthscale"]) == {0, 1}


def test_values_not_yet_known_are_ignored_and_relabel_refits():
    p = EIPolicy(CANDIDATES, BOUNDS, ONE, seed=2, refit_every=10)
    run(p, steps=3)
    p.tell([Observation("raman", CANDIDATES[7], np.array([np.nan]), "m-nan")])
    assert p.model(0).train_inputs[0].shape[0] == 3  # the NaN row is left out
    assert np.isfinite(p.ask().acquisition_value)
    fits = p.n_fits
    p.ask()  # same data: the cached model, no fit
    assert p.n_fits == fits
    p.relabel({"m-nan": np.array([0.5])})  # the value arrives: added, refit_every not reached
    assert p.model(0).train_inputs[0].shape[0] == 4 and p.n_fits == fits
    first = p.log.ids[0]
    p.relabel({first: np.array([2.0])})  # a value the hyperparameters were fitted on changed
    p.model(0)
    assert p.n_fits == fits + 1
