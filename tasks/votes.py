"""Operators' votes as background work: the reward surrogate that tells the agent what they value.

Operators score measured signals (``coorch steer vote``); the campaign runtime keeps the votes
(:attr:`~coorch.tasks.runtime.Campaign.votes`). This work fits a
:class:`~coorch.models.preference.RewardSurrogate` on the descriptors of the voted positions
(the multi-task GP's mean of every task there) and predicts the reward at every candidate; the
agent then values knowledge more where the reward is high (:meth:`Agent.focus`), with the
campaign's ``target_weight`` between the library as a whole (0) and the voted target (1).

The fit takes a few hundred milliseconds, so it runs on its own thread, off the decision path,
whenever the votes, the model or the weight changed since the last one.
"""

from __future__ import annotations

from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING

import numpy as np

from coorch.models.preference import RewardSurrogate
from coorch.tasks.background import outcome

if TYPE_CHECKING:
    from coorch.tasks.runtime import Campaign


def _reward(voted: np.ndarray, scores: np.ndarray, candidates: np.ndarray, seed: int):
    """Predicted score (M,) at every candidate from the votes, in descriptor space."""
    mean, _ = RewardSurrogate(seed=seed).fit(voted, scores).predict(candidates)
    return mean


class Votes:
    """Keeps the agent's focus on what operators scored high (see the module docstring)."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self.running: Future | None = None
        self.running_weight = 0.0
        self.fitted_for: tuple | None = None
        self.fits = 0
        self.failed = 0

    def poll(self, campaign: Campaign) -> None:
        if self.running is not None and self.running.done():
            reward, exc = outcome(self.running)
            self.running = None
            if exc is not None:
                self.failed += 1
                campaign.log.warning("the votes' reward surrogate failed: %s", exc)
            else:
                campaign.agent.focus(reward, self.running_weight)
                self.fits += 1
        key = (len(campaign.votes), campaign.agent.model_version, campaign.target_weight)
        if self.running is not None or key == self.fitted_for or not campaign.votes:
            return
        self.fitted_for, self.running_weight = key, campaign.target_weight
        agent = campaign.agent
        known = [(campaign.positions[m], s) for m, s in campaign.votes if m in campaign.positions]
        voted = np.array([x for x, _ in known])
        scores = np.array([s for _, s in known], float)
        # descriptors: the GP's mean of every task, at the votes and at every candidate
        here, _ = agent.predict(voted)
        everywhere, _ = agent.predict(agent.candidates)
        self.running = self.executor.submit(_reward, here, scores, everywhere, agent.seed)

    def finish(self, campaign: Campaign) -> None:
        if self.running is not None:
            self.running.result()
            self.poll(campaign)
