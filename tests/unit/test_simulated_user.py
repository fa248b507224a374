"""The simulated user: right answers get thumbs up, wrong ones thumbs down, noise is seeded.

Uses the cheap hashing embedder, so no model is loaded.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from flywheel.demo import FACTS, Fact, HashingEmbedder, SimulatedUser
from flywheel.demo.history import stale_answer
from flywheel.demo.traffic import DEFLECTIONS, INJECTION_REFUSALS
from flywheel.settings import DemoParams


@pytest.fixture(scope="module")
def user() -> SimulatedUser:
    return SimulatedUser(FACTS, noise=0.0, seed=0, embedder=HashingEmbedder())


def _unrelated(fact: Fact) -> Fact:
    """A fact half the knowledge base away: another topic, other key tokens."""
    return FACTS[(FACTS.index(fact) + len(FACTS) // 2) % len(FACTS)]


@pytest.mark.parametrize("fact", FACTS, ids=[f.id for f in FACTS])
def test_reference_answer_gets_thumbs_up_and_an_unrelated_one_thumbs_down(
    user: SimulatedUser, fact: Fact
) -> None:
    # given a question about the fact
    question = fact.paraphrases[0]
    # when the reference answer and an unrelated fact's answer are rated
    # then the first gets +1 and the second -1
    assert user.rate(question, fact.answer) == 1, f"{fact.id}: the reference answer should get +1"
    assert user.rate(question, _unrelated(fact).answer) == -1, f"{fact.id}: an unrelated answer gets -1"


@pytest.mark.parametrize(
    ("case", "answer"),
    [
        ("deflection", DEFLECTIONS[0]),
        ("refusal", INJECTION_REFUSALS[0]),
        ("empty", ""),
        ("whitespace", "   \n"),
    ],
)
def test_non_answers_get_thumbs_down(user: SimulatedUser, case: str, answer: str) -> None:
    fact = FACTS[0]
    assert user.rate(fact.paraphrases[1], answer) == -1, f"a {case} should get -1"


@pytest.mark.parametrize(
    "fact", [f for f in FACTS if stale_answer(f.answer, random.Random(0))], ids=lambda f: f.id
)
def test_a_stale_number_never_earns_thumbs_up(user: SimulatedUser, fact: Fact) -> None:
    # given the reference answer with its first number changed
    stale = stale_answer(fact.answer, random.Random(0))
    assert stale is not None
    question = fact.paraphrases[0]
    # then it scores below the reference and is not rated +1
    assert user.score(question, stale) < user.score(question, fact.answer), f"{fact.id}: stale scores lower"
    assert user.rate(question, stale) < 1, f"{fact.id}: a wrong number should not get +1"


@pytest.mark.parametrize(
    ("question", "fact_id"),
    [
        ("What is your refund policy?", "refund-policy"),  # exact paraphrase
        ("WHAT IS YOUR REFUND POLICY", "refund-policy"),  # case and punctuation
        ("Hi, this is Olivia Smith. Do you refund monthly subscriptions?", "refund-policy"),  # wrapped
        ("How do I cancle my subscription? thx", "cancel-plan"),  # typo: nearest by embedding
        ("what does the pro plan cost monthly", "price-pro-monthly"),  # unseen wording
    ],
)
def test_finds_the_fact_a_question_is_about(user: SimulatedUser, question: str, fact_id: str) -> None:
    assert user.fact_for(question).id == fact_id, f"{question!r} should map to {fact_id}"


def test_without_noise_ratings_are_deterministic() -> None:
    # given two noise-free users with different seeds
    a = SimulatedUser(FACTS, noise=0.0, seed=1, embedder=HashingEmbedder())
    b = SimulatedUser(FACTS, noise=0.0, seed=2, embedder=HashingEmbedder())
    pairs = [(f.paraphrases[2], answer) for f in FACTS[:20] for answer in (f.answer, DEFLECTIONS[1])]
    # when both rate the same pairs twice
    first = [a.rate(q, x) for q, x in pairs]
    # then every rating is the same, whatever the seed or the call order
    assert first == [a.rate(q, x) for q, x in pairs], "repeat ratings should not change without noise"
    assert first == [b.rate(q, x) for q, x in pairs], "the seed should not matter without noise"


def test_noise_is_seeded() -> None:
    # given a borderline answer (half the key tokens) rated many times with noise
    fact = next(f for f in FACTS if f.id == "storage-paid")
    answer = "Pro includes 20 GB of storage per user."
    question = fact.paraphrases[0]

    def ratings(seed: int) -> list[int]:
        noisy = SimulatedUser(FACTS, noise=0.3, seed=seed, embedder=HashingEmbedder())
        return [noisy.rate(question, answer) for _ in range(200)]

    # then the same seed repeats the sequence, another seed does not, and it is spread out
    assert ratings(5) == ratings(5), "the same seed should give the same ratings"
    assert ratings(5) != ratings(6), "a different seed should give different ratings"
    assert set(ratings(5)) == {-1, 0, 1}, "noise should spread a borderline answer over all ratings"


def test_score_is_bounded_and_orders_answers(user: SimulatedUser) -> None:
    fact = FACTS[3]
    question = fact.paraphrases[0]
    scores = [user.score(question, a) for a in (fact.answer, _unrelated(fact).answer, "")]
    assert all(0.0 <= s <= 1.0 for s in scores), f"scores should lie in [0, 1]: {scores}"
    assert scores[0] > scores[1] >= scores[2], f"reference > unrelated >= empty: {scores}"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"knowledge": ()}, "non-empty knowledge"),
        ({"noise": -0.1}, "noise"),
        ({"up_threshold": 0.2, "down_threshold": 0.5}, "down_threshold"),
    ],
)
def test_rejects_bad_settings(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"knowledge": FACTS, "embedder": HashingEmbedder(), **kwargs}
    with pytest.raises(ValueError, match=message):
        SimulatedUser(**arguments)  # type: ignore[arg-type]  # the table mixes argument types


def test_from_params_takes_noise_and_seed_from_the_demo_section() -> None:
    params = DemoParams(seed=3, simulated_user_noise=0.25)
    user = SimulatedUser.from_params(params, embedder=HashingEmbedder())
    assert user.noise == 0.25, "noise should come from demo.simulated_user_noise"
    assert len(user.facts) == len(FACTS), "the user knows the whole knowledge base"


def test_hashing_embedder_gives_unit_vectors() -> None:
    vectors = HashingEmbedder(dim=64)(["How much is Pro?", "", "Ctrl+K opens search"])
    norms = np.linalg.norm(vectors, axis=1)
    assert vectors.shape == (3, 64), "one row per text"
    assert np.allclose(norms, [1.0, 0.0, 1.0]), f"unit vectors, zero for a text without words: {norms}"
