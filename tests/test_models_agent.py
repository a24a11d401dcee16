"""The decision agents (models/agent.py, models/mtgp_agent.py, models/policies.py): pending
points, seeds, swapping in fitted hyperparameters, the trust rule, the grid survey, and the
acquisitions as pure scores."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from coorch.models.acquisition import integrated_variance_reduction, max_variance
from coorch.models.cost import InstrumentCost, instrument_seconds
from coorch.models.incremental import IncrementalPosterior
from coorch.models.mtgp import default_hyperparameters
from coorch.models.mtgp_agent import DecisionModel, MTGPAgent
from coorch.models.observations import Observation, ObservationLog
from coorch.models.policies import (
    COORCHESTRATE_PRIOR_SLOPE_VARIANCE,
    POLICIES,
    RECIPES,
    make_policy,
)


def instruments():
    return [InstrumentCost("a", (0,), cost_s=10.0), InstrumentCost("b", (1,), cost_s=10.0)]


@pytest.mark.parametrize(
    "name", ["coorchestrate", "single_task", "max_uncertainty", "random", "grid"]
)
def test_no_policy_picks_a_pending_point(name):
    cand = np.linspace(0, 10, 30)[:, None]
    pol = make_policy(name, cand, np.array([[0.0, 10.0]]), instruments(), seed=3)
    chosen = [tuple(pol.ask("a").x) for _ in range(12)]
    assert len(set(chosen)) == len(chosen)
    assert len(pol.pending) == 12


def test_single_task_is_coorchestration_with_the_tasks_decoupled():
    """The ablation differs from co-orchestration in the coupling alone, options included."""
    cand, bounds = np.linspace(0, 1, 11)[:, None], np.array([[0.0, 1.0]])
    co = make_policy("coorchestrate", cand, bounds, instruments(), balance=0.5)
    single = make_policy("single_task", cand, bounds, instruments(), balance=0.5)
    assert single.name == "single_task" and not single.decision.coupled
    assert single.decision == dataclasses.replace(co.decision, coupled=False)
    assert single.acquisition == co.acquisition and single.revisit is co.revisit is False


def test_the_recipe_table_names_every_policy_and_refuses_unknown_ones():
    assert set(POLICIES) == set(RECIPES)
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("clairvoyant", np.zeros((2, 1)), np.array([[0.0, 1.0]]), instruments())
    with pytest.raises(TypeError):  # an option the recipe does not take
        make_policy("random", np.zeros((2, 1)), np.array([[0.0, 1.0]]), instruments(), beta=1)


def test_pending_point_on_one_instrument_steers_the_other_away():
    """With coupled tasks, a point pending on instrument a is worth less to instrument b."""
    cand = np.linspace(0, 1, 41)[:, None]
    h = default_hyperparameters(2, 1, lengthscale=0.15, correlation=0.95)
    pol = MTGPAgent(cand, np.array([[0.0, 1.0]]), instruments(), hyperparameters=h)
    first = pol.ask("a")
    second = pol.ask("b")
    assert abs(first.x[0] - second.x[0]) > 0.1
    assert second.pending == (first.measurement_id,)


def test_tell_accepts_seeds_and_resolves_pending():
    cand = np.linspace(0, 1, 21)[:, None]
    pol = make_policy("coorchestrate", cand, np.array([[0.0, 1.0]]), instruments())
    pol.tell([Observation("a", np.array([0.5]), np.array([1.0]), "seed-1")])
    s = pol.ask("b")
    pol.tell([Observation("b", s.x, np.array([2.0]), s.measurement_id)])
    pol.tell([Observation("b", s.x, np.array([2.0]), s.measurement_id)])  # duplicate: ignored
    assert not pol.pending
    assert len(pol.rows) == 2
    _, t, y = pol.log.data()
    assert list(t) == [0, 1] and list(y) == [1.0, 2.0]


def test_a_posterior_built_elsewhere_replays_points_reserved_meanwhile(fitted):
    *_, h = fitted
    cand = np.linspace(0, 1, 41)[:, None]
    pol = MTGPAgent(cand, np.array([[0.0, 1.0]]), instruments())
    for _ in range(3):
        pol.ask("a")
    build = pol.posterior_work(h)  # snapshot now, build later (on a thread in a campaign)
    pol.ask("b")  # reserved while the new posterior is being built
    pol.install(build())
    pol.ask("a")
    assert pol.model_version == h.version
    assert pol.model.post.n == 5
    ref = IncrementalPosterior(pol.unit, h)
    for u, tasks in pol.rows[:5]:
        ref.add(u, list(tasks))
    np.testing.assert_allclose(pol.model.post.C[:, 0, 0], ref.C[:, 0, 0], rtol=1e-4, atol=1e-6)


def test_a_task_with_few_values_is_decided_on_the_prior(fitted):
    """Until task b has ``min_fit_values`` values, the agent's model keeps it uncoupled at
    prior variance, whatever the fit said; then the fit is used as it is."""
    *_, h = fitted
    cand = np.linspace(0, 1, 21)[:, None]
    pol = MTGPAgent(
        cand, np.array([[0.0, 1.0]]), instruments(), model=DecisionModel(min_fit_values=3)
    )
    for i, xi in enumerate((0.1, 0.5, 0.9)):
        pol.tell([Observation("a", np.array([xi]), np.array([float(i)]), f"a{i}")])
    pol.tell([Observation("b", np.array([0.5]), np.array([1.0]), "b0")])
    pol.set_hyperparameters(h)
    assert pol.model.post.hyper.task_covariance[0, 1] == 0.0
    assert pol.model.post.hyper.prior_variance[1] == pytest.approx(1.0)
    for i, xi in enumerate((0.2, 0.8)):
        pol.tell([Observation("b", np.array([xi]), np.array([0.0]), f"b{i + 1}")])
    pol.set_hyperparameters(h)
    np.testing.assert_allclose(pol.model.post.hyper.task_covariance, h.task_covariance)


def test_the_prior_guess_spends_a_third_point_on_the_gradient_it_expects():
    """One task on the prior guess, measured at two corners of a square's diagonal: the
    diagonal says nothing of a gradient across it. With the slope variance co-orchestration
    uses (the twins' fits find 2-14), the next point goes further across than with 1, where
    the stationary part's uncertainty pulls it in."""
    g = np.linspace(0, 1, 9)
    cand = np.array([[a, b] for a in g for b in g])
    bounds = np.array([[0.0, 1.0], [0.0, 1.0]])
    wds = [InstrumentCost("wds", (0,), cost_s=1.0)]

    def across(slope: float) -> float:
        pol = make_policy("coorchestrate", cand, bounds, wds, prior_slope_variance=slope)
        pol.tell(
            [
                Observation("wds", np.array([0.0, 0.0]), np.array([1.0]), "w0"),
                Observation("wds", np.array([1.0, 1.0]), np.array([3.0]), "w1"),
            ]
        )
        h = dataclasses.replace(pol.model.post.hyper, lengthscale=np.full(2, 0.4))
        pol.set_hyperparameters(h)  # rebuilt on the prior guess: 2 values < 6
        assert pol.model.post.hyper.trend_weight[0] == pytest.approx(slope * np.ones(2))
        x = pol.ask("wds").x
        return abs(x[0] - x[1]) / np.sqrt(2)  # distance from the measured diagonal

    assert across(COORCHESTRATE_PRIOR_SLOPE_VARIANCE) > across(1.0) + 0.1


def test_a_map_its_gradient_explains_is_not_worth_more_than_one_still_unknown():
    """Task a's fit puts its variance into its gradient (stationary variance 0.001), task b's
    is all stationary; both measured at the same six points. Judged against each map's spread
    over the library (what nRMSE divides by), b's map is the less known, so b is measured next.
    Judged against a's stationary variance alone, a's leftover slope uncertainty looked a
    thousand times larger, and a took every measurement (the smbfo twins' WDS, 2026-12-03)."""
    cand = np.linspace(0, 1, 21)[:, None]
    h = default_hyperparameters(2, 1, lengthscale=0.2, noise=0.01, trend=np.array([5.0]))
    h = dataclasses.replace(
        h, task_covariance=np.diag([0.001, 1.0]), trend_weight=np.array([[5.0], [0.0]])
    )
    spread = np.mean((cand[:, 0] - 0.5) ** 2)
    np.testing.assert_allclose(h.map_variance(cand), [0.001 + 5.0 * spread, 1.0])
    pol = MTGPAgent(cand, np.array([[0.0, 1.0]]), instruments(), hyperparameters=h)
    for i, xi in enumerate(np.linspace(0, 1, 6)):
        pol.tell([Observation("a", np.array([xi]), np.array([2.0 * xi]), f"a{i}")])
        pol.tell([Observation("b", np.array([xi]), np.array([np.sin(9 * xi)]), f"b{i}")])
    assert pol.ask(None).instrument == "b"


def test_grid_survey_skips_seeds_and_takes_instruments_in_turn():
    cand = np.linspace(0, 1, 11)[:, None]
    pol = make_policy("grid", cand, np.array([[0.0, 1.0]]), instruments())
    pol.tell(
        [
            Observation("a", np.array([0.0]), np.array([1.0]), "seed-a"),
            Observation("b", np.array([1.0]), np.array([1.0]), "seed-b"),
        ]
    )
    asked = [pol.ask(None) for _ in range(6)]
    assert [s.instrument for s in asked] == ["a", "b"] * 3
    assert all(s.x[0] != 0.0 for s in asked if s.instrument == "a")
    assert all(s.x[0] != 1.0 for s in asked if s.instrument == "b")
    assert len({s.x[0] for s in asked if s.instrument == "a"}) == 3


def test_coorchestration_never_revisits_and_reserved_points_count_as_visited():
    cand = np.linspace(0, 1, 6)[:, None]
    pol = make_policy("coorchestrate", cand, np.array([[0.0, 1.0]]), instruments())
    pol.reserve("a", np.array([0.0]))
    picks = [pol.ask("a").x[0] for _ in range(5)]
    assert sorted(picks) == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])


def test_integrated_variance_reduction_prefers_the_unmeasured_middle():
    """A pure score: with data at both ends, the middle removes the most variance."""
    cand = np.linspace(0, 1, 21)[:, None]
    post = IncrementalPosterior(cand, default_hyperparameters(1, 1, lengthscale=0.2))
    post.add(np.array([0.0]), [0])
    post.add(np.array([1.0]), [0])
    idx, gain = integrated_variance_reduction(post, [0], np.ones(1), top_k=21)
    assert cand[idx[0], 0] == pytest.approx(0.5, abs=0.1)
    assert (np.diff(gain) <= 1e-12).all()  # best first
    assert max_variance(post, [0]).argmax() == idx[0]


def test_cost_adds_the_stage_move_from_where_the_instrument_is():
    inst = InstrumentCost("a", (0,), cost_s=10.0, move_cost_s_per_mm=2.0)
    cand = np.array([[0.0, 0.0], [3.0, 4.0]])
    np.testing.assert_allclose(instrument_seconds(inst, cand, None), [10.0, 10.0])
    np.testing.assert_allclose(instrument_seconds(inst, cand, np.zeros(2)), [10.0, 20.0])


def test_observation_log_relabels_in_place_and_counts_values():
    log = ObservationLog(dim=1, num_tasks=2)
    log.add("m1", np.array([0.1]), (0, 1), np.array([np.nan, np.nan]))
    log.add("m2", np.array([0.2]), (0,), np.array([3.0]))
    assert log.counts().tolist() == [1, 0] and len(log) == 2
    log.relabel({"m1": np.array([1.0, 2.0])})
    x, t, y = log.data()
    assert log.revision == 1 and y.tolist() == [1.0, 2.0, 3.0] and t.tolist() == [0, 1, 0]
    assert log.data(tasks=(1,))[2].tolist() == [2.0]
