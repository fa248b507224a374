"""Curate dedup: normalised keys, near duplicates by MinHash LSH, the best row kept, stable cluster ids."""

from __future__ import annotations

import itertools
from collections import defaultdict
from datetime import timedelta

import numpy as np
import orjson
import pandas as pd
import pytest

from flywheel.demo.history import HistoryGenerator, Planted
from flywheel.demo.knowledge import load_knowledge, normalize_question
from flywheel.schemas import ChatMessage
from flywheel.settings import CurateParams, DemoParams
from tasks.curate.dedup import (
    DedupResult,
    cluster_ids,
    dedup_frame,
    key_hash,
    lsh_bands,
    normalize,
    shingles,
)
from tasks.curate.frame import COLUMNS, frame_from_records
from tests.helpers.request_records import T0, make_record

THRESHOLD = 0.7
SHINGLE_CHARS = 3


def exchange(
    i: int,
    prompt: str,
    score: int | None = None,
    seconds: int | None = None,
    response: str | None = "An answer.",
) -> dict[str, object]:
    """A harvested record (as JSON) asking `prompt`, rated `score`, `seconds` after T0 (default i)."""
    record = make_record(
        i,
        messages=[ChatMessage(role="user", content=prompt)],
        response=response,
        timestamp=T0 + timedelta(seconds=i if seconds is None else seconds),
        feedback=None if score is None else {"score": score},
    )
    return record.model_dump(mode="json")


def frame_of(*records: dict[str, object]) -> pd.DataFrame:
    return frame_from_records(list(records))


def dedup(frame: pd.DataFrame) -> DedupResult:
    return dedup_frame(frame, threshold=THRESHOLD, shingle_chars=SHINGLE_CHARS, seed=7)


def jaccard(a: str, b: str) -> float:
    left, right = shingles(normalize(a), SHINGLE_CHARS), shingles(normalize(b), SHINGLE_CHARS)
    return len(left & right) / len(left | right)


# -- keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "key"),
    [
        ("How do I export my notes?", "how do i export my notes"),
        ("  HOW do I   export\tmy notes??  ", "how do i export my notes"),
        ("what's the price_of Pro...", "what s the price of pro"),
        ("Ça ne marche pas, René!", "ça ne marche pas rené"),
        ("?!...", ""),
        ("", ""),
    ],
)
def test_normalize_lowercases_drops_punctuation_and_collapses_spaces(prompt: str, key: str) -> None:
    assert normalize(prompt) == key, f"normalize({prompt!r})"


def test_normalize_matches_the_knowledge_base_identity_on_ascii() -> None:
    # given every knowledge-base question, when normalised both ways, then the keys agree
    for fact in load_knowledge():
        for question in fact.paraphrases:
            assert normalize(question) == normalize_question(question), question


def test_shingles_pad_the_key_and_keep_short_keys_whole() -> None:
    assert shingles("ab", 3) == {" ab", "ab "}, "a two-letter key padded is four characters: two shingles"
    assert shingles("", 3) == {"  "}, "an empty key padded is shorter than k: one shingle, itself"


@pytest.mark.parametrize(
    ("threshold", "permutations"), [(0.7, 128), (0.7, 64), (0.8, 64), (0.9, 256), (0.5, 8)]
)
def test_lsh_bands_find_a_pair_at_the_threshold_at_least_98_percent_of_the_time(
    threshold: float, permutations: int
) -> None:
    bands, rows = lsh_bands(threshold, permutations)
    assert bands * rows <= permutations, "bands use only the permutations there are"
    assert 1 - (1 - threshold**rows) ** bands >= 0.98, f"{bands} bands of {rows} rows"


# -- cluster ids --------------------------------------------------------------------


def test_exact_duplicates_by_normalised_key_share_one_cluster() -> None:
    prompts = [
        "How do I export my notes?",
        "how do i export my notes",
        "HOW DO I EXPORT MY NOTES!!",
        "Other?",
    ]
    ids = cluster_ids(prompts)
    assert len(set(ids[:3].tolist())) == 1, "case and punctuation variants are one question"
    assert ids[3] != ids[0], "a different question is another cluster"


def test_a_question_alone_has_the_hash_of_its_key_as_cluster_id() -> None:
    ids = cluster_ids(["Is there a free trial?", "How do I enable 2FA?"])
    assert ids.tolist() == [key_hash("is there a free trial"), key_hash("how do i enable 2fa")], (
        "a singleton's id depends only on its own text, so it is the same in every run"
    )
    assert ids.dtype == np.int64 and (ids >= 0).all(), "ids are non-negative int64"


@pytest.mark.parametrize(
    ("original", "variant"),
    [
        (
            "How much does Pro cost if I pay month to month?",
            "How much does Pro cost if I pay mnoth to month?",
        ),
        (
            "How much does Pro cost if I pay month to month?",
            "hey how much does Pro cost if I pay month to month",
        ),
        ("Can I restore a deleted notebook?", "Can I restore a delted notebook? thanks"),
    ],
)
def test_small_edits_cluster_with_the_original(original: str, variant: str) -> None:
    ids = cluster_ids([original, variant, "What payment methods do you accept?"])
    assert ids[0] == ids[1], f"{variant!r} is a near duplicate (Jaccard {jaccard(original, variant):.2f})"
    assert ids[2] != ids[0], "an unrelated question stays apart"


def test_near_duplicate_chains_are_one_cluster() -> None:
    # given a -> b -> c where each step is a small edit, when clustered, then all three are one cluster
    chain = [
        "How do I share a notebook with my whole team?",
        "how do I share a notebook with my whole team please",
        "hi how do I share a notebook with my whole team please",
    ]
    assert jaccard(chain[0], chain[1]) >= THRESHOLD and jaccard(chain[1], chain[2]) >= THRESHOLD, "links"
    ids = cluster_ids(chain, threshold=THRESHOLD, shingle_chars=SHINGLE_CHARS)
    assert len(set(ids.tolist())) == 1, "union-find joins the chain"


def test_long_prompts_are_judged_by_their_minhash_estimate() -> None:
    # given prompts of more than 1,000 shingles: two differ by one word, one is different text
    base = " ".join(f"line {i} of the sync log reports block {i * 7919 % 10007} pushed" for i in range(60))
    edited = base.replace("line 30 ", "line thirty ")
    other = " ".join(f"paragraph {i}: the team agreed to revisit item {i * 31 % 997}" for i in range(60))
    ids = cluster_ids([base, edited, other])
    assert len(base) > 2000, "the long-key path is the one under test"
    assert ids[0] == ids[1], "one edited word in a long dump is a near duplicate"
    assert ids[2] != ids[0], "a different dump is not"


def test_cluster_ids_do_not_depend_on_row_order() -> None:
    prompts = [
        "How do I export my notes?",
        "how do I export my notes please",
        "Is there a free trial?",
        "is there a free trial??",
        "Do you support SSO?",
    ] * 3
    ids = cluster_ids(prompts)
    order = np.random.default_rng(0).permutation(len(prompts))
    shuffled = cluster_ids([prompts[i] for i in order])
    assert shuffled.tolist() == ids[order].tolist(), "each prompt keeps its id in any order"


@pytest.mark.parametrize(
    "prompts",
    [[], [""], ["", "", "  "], ["a"], ["\ud800 lone surrogate?"], ["x" * 50_000, "x" * 50_001]],
    ids=["none", "empty", "blank", "one-char", "surrogate", "very-long"],
)
def test_cluster_ids_handle_edge_inputs(prompts: list[str]) -> None:
    ids = cluster_ids(prompts)
    assert ids.shape == (len(prompts),) and ids.dtype == np.int64, "one int64 id per prompt"
    if len(prompts) > 1:
        assert len(set(ids.tolist())) == 1, "these prompts are the same question"


@pytest.mark.parametrize(
    ("threshold", "permutations", "message"),
    [(0.0, 128, "threshold"), (1.5, 128, "threshold"), (0.7, 0, "permutations")],
)
def test_cluster_ids_reject_bad_parameters(threshold: float, permutations: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cluster_ids(["a"], threshold=threshold, permutations=permutations)


# -- the frame ----------------------------------------------------------------------


def test_dedup_frame_keeps_one_row_per_cluster_and_counts_what_it_removed() -> None:
    frame = frame_of(
        exchange(0, "How do I export my notes?"),
        exchange(1, "how do i export my notes"),
        exchange(2, "How do I export my notes??"),
        exchange(3, "how do I export my notes please"),
        exchange(4, "Is there a free trial?"),
    )
    result = dedup(frame)
    assert (result.n_in, result.exact_removed, result.near_removed, result.n_clusters) == (5, 2, 1, 2), (
        "three spellings of one key (2 exact), one near duplicate of it, one other question"
    )
    assert result.n_out == len(result.frame) == 2, "one row per cluster"
    assert list(result.frame.columns) == [*COLUMNS, "cluster"], "the frame gains only `cluster`"
    assert result.frame["cluster"].dtype == np.int64, "cluster is int64"
    assert result.frame.index.equals(pd.RangeIndex(2)), "a fresh index"


def test_dedup_frame_names_every_dropped_row_and_clusters_every_input_row() -> None:
    frame = frame_of(
        exchange(0, "How do I export my notes?", -1),
        exchange(1, "how do i export my notes", 1),
        exchange(2, "How do I export my notes please", 0),
        exchange(3, "how do I export my notes please!", None),
        exchange(4, "Is there a free trial?"),
    )
    result = dedup(frame)
    assert result.frame["request_id"].tolist() == ["req-000001", "req-000004"], "the best of each cluster"
    assert result.dropped == {
        "exact_duplicate": ["req-000000", "req-000002"],
        "near_duplicate": ["req-000003"],
    }, "a key's other rows are exact duplicates; the best row of a losing key is a near duplicate"
    step = result.step
    assert (step.step, step.n_in, len(step.kept)) == ("dedup", 5, 2), "the funnel's books balance"
    assert step.stats == {"clusters": 2, "distinct_prompts": 3}, "stats"
    assert result.clustered["request_id"].tolist() == frame["request_id"].tolist(), (
        "every input row, in order"
    )
    assert result.clustered["cluster"].nunique() == 2, "two clusters"
    kept_cluster = dict(zip(result.frame["request_id"], result.frame["cluster"], strict=True))
    assert result.clustered["cluster"].iloc[0] == kept_cluster["req-000001"], "rows share their kept row's id"


@pytest.mark.parametrize(
    ("scores", "kept"),
    [
        ([-1, 1, 0], 1),  # thumbs up wins
        ([0, None, -1], 1),  # unrated beats neutral: most good answers go unrated
        ([-1, 0, -1], 1),  # neutral beats thumbs down
        ([None, None, None], 2),  # equal ratings: the latest
        ([1, None, 1], 2),
    ],
)
def test_dedup_frame_keeps_the_best_rated_row(scores: list[int | None], kept: int) -> None:
    frame = frame_of(*(exchange(i, "How do I export my notes?", score) for i, score in enumerate(scores)))
    result = dedup(frame)
    assert result.frame["request_id"].tolist() == [f"req-{kept:06d}"], f"ratings {scores}"


def test_dedup_frame_prefers_an_answered_row_and_breaks_full_ties_by_request_id() -> None:
    frame = frame_of(
        exchange(0, "Is there a free trial?", 1, response=None),  # failed: no answer to train on
        exchange(1, "Is there a free trial?", None),
        exchange(5, "Do you support SSO?", None, seconds=100),
        exchange(4, "do you support sso", None, seconds=100),
    )
    result = dedup(frame)
    assert result.frame["request_id"].tolist() == ["req-000001", "req-000004"], (
        "an answer beats a failed request whatever its rating; same rating and time: smallest request id"
    )


def test_dedup_frame_is_deterministic_and_independent_of_row_order() -> None:
    prompts = ["How do I export my notes?", "how do I export my notes please", "Is there a free trial?"]
    records = [exchange(i, prompts[i % 3], [None, 1, 0, -1][i % 4]) for i in range(24)]
    frame = frame_of(*records)
    first, second = dedup(frame), dedup(frame)
    shuffled = dedup(frame.sample(frac=1.0, random_state=3))
    assert first.frame.to_json() == second.frame.to_json(), "same input, same bytes"
    assert sorted(shuffled.frame["request_id"]) == sorted(first.frame["request_id"]), "same rows kept"
    assert dict(zip(shuffled.frame["request_id"], shuffled.frame["cluster"], strict=True)) == dict(
        zip(first.frame["request_id"], first.frame["cluster"], strict=True)
    ), "same cluster ids"


def test_dedup_frame_of_an_empty_frame_is_empty() -> None:
    empty = frame_from_records([])
    result = dedup(empty)
    assert (result.n_in, result.exact_removed, result.near_removed, result.n_clusters) == (0, 0, 0, 0), (
        "counts"
    )
    assert len(result.frame) == 0 and "cluster" in result.frame.columns, "an empty frame with the column"
    assert result.dropped == {} and result.step.n_in == 0, "nothing dropped"


def test_dedup_frame_runs_with_curate_params() -> None:
    params = CurateParams()
    frame = frame_of(exchange(0, "Is there a free trial?"), exchange(1, "is there a free trial"))
    result = dedup_frame(
        frame,
        threshold=params.near_dup_threshold,
        permutations=params.minhash_permutations,
        shingle_chars=params.shingle_chars,
        seed=params.seed,
    )
    assert result.n_out == 1, "the settings section's values are valid arguments"


# -- quality on the demo history ----------------------------------------------------


@pytest.fixture(scope="module")
def demo() -> tuple[list[str], list[Planted]]:
    """Every parseable prompt of 20,000 demo records, and what the generator planted."""
    generator = HistoryGenerator(DemoParams(seed=11, n_records=20_000), "support-assistant")
    prompts: list[str] = []
    for chunk in generator.chunks():
        for line in chunk:
            try:
                prompts.append(orjson.loads(line)["messages"][-1]["content"])
            except (orjson.JSONDecodeError, KeyError, TypeError, IndexError):
                continue  # the demo plants lines that are not records
    return prompts, [p for p in generator.planted if p.kind == "near_duplicate"]


def test_planted_near_duplicates_cluster_with_their_original(demo: tuple[list[str], list[Planted]]) -> None:
    prompts, planted = demo
    originals = [p.value for p in planted]
    ids = cluster_ids(prompts + originals, threshold=THRESHOLD, shingle_chars=SHINGLE_CHARS)
    cluster = dict(zip(prompts + originals, ids.tolist(), strict=True))
    found = [cluster[p.text] == cluster[p.value] for p in planted]
    assert len(planted) > 200, "enough planted near duplicates to measure"
    assert np.mean(found) >= 0.9, f"near-duplicate recall {np.mean(found):.3f}"


def test_lsh_finds_the_pairs_an_all_pairs_comparison_finds(demo: tuple[list[str], list[Planted]]) -> None:
    # given every distinct short key of the demo history, compared all against all
    prompts, _ = demo
    keys = sorted({normalize(p) for p in prompts if len(p) < 500})
    sets = [shingles(key, SHINGLE_CHARS) for key in keys]
    similar = [
        (i, j)
        for i, j in itertools.combinations(range(len(keys)), 2)
        if len(sets[i] & sets[j]) >= THRESHOLD * len(sets[i] | sets[j])
    ]
    # when clustered by MinHash LSH, then nearly every such pair shares a cluster
    ids = cluster_ids(keys, threshold=THRESHOLD, shingle_chars=SHINGLE_CHARS)
    found = np.mean([ids[i] == ids[j] for i, j in similar])
    assert len(similar) > 100, "enough similar pairs to measure"
    assert found >= 0.98, f"LSH put {found:.3f} of the similar pairs together"


def test_knowledge_base_questions_never_merge(demo: tuple[list[str], list[Planted]]) -> None:
    # given the demo history and every knowledge-base question, different facts and
    # different paraphrases of one fact are different training questions
    prompts, _ = demo
    questions = [(fact.id, q) for fact in load_knowledge() for q in fact.paraphrases]
    ids = cluster_ids(prompts + [q for _, q in questions], threshold=THRESHOLD, shingle_chars=SHINGLE_CHARS)
    members: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for cluster, question in zip(ids[len(prompts) :].tolist(), questions, strict=True):
        members[cluster].append(question)
    merged = [group for group in members.values() if len(group) > 1]
    assert merged == [], f"knowledge-base questions merged: {merged}"


def test_the_closest_questions_of_different_facts_stay_below_the_threshold() -> None:
    # the margin the defaults rely on, measured on the knowledge base itself
    questions = [
        (fact.id, shingles(normalize(q), SHINGLE_CHARS))
        for fact in load_knowledge()
        for q in fact.paraphrases
    ]
    closest = max(
        len(a & b) / len(a | b)
        for (fact_a, a), (fact_b, b) in itertools.combinations(questions, 2)
        if fact_a != fact_b
    )
    assert closest < THRESHOLD, f"two facts' questions reach Jaccard {closest:.3f}"
