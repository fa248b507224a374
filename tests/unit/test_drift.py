"""Drift signals on a synthetic request log: each injected drift trips exactly its signals, a stable log none.

The log generator draws Quillbox support questions (the demo knowledge base)
for two applications; each injection changes one thing about the current
window. Embeddings come from a hashed bag of words (deterministic, fast); the
SQL loader is checked against a real SQLite request log.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flywheel.demo import FACTS, HashingEmbedder
from flywheel.requestlog import FeedbackItem, open_request_log
from flywheel.schemas import ChatMessage, Feedback, RequestRecord
from flywheel.settings import DriftParams
from tasks.drift.drift import (
    COMPLETION_TOKENS,
    COST_PER_QUERY,
    EMBEDDING_MMD,
    ERROR_RATE,
    FEEDBACK,
    LATENCY_P95,
    NEW_TOPICS,
    PROMPT_TOKENS,
    SIGNALS,
    TTFT_P95,
    DriftResult,
    compute_drift,
    mmd_permutation_test,
    two_proportion_z,
)
from tasks.drift.frame import drift_windows, load_window, monitor_frame
from tasks.drift.report import markdown_report, write_html_report
from tasks.drift.topics import spherical_kmeans

END = datetime(2026, 12, 4, 12, 0)
PARAMS = DriftParams()
QUESTIONS = [question for fact in FACTS for question in fact.paraphrases]
CITIES = ["Paris", "Rome", "Tokyo", "Lisbon", "Oslo", "Cairo", "Lima", "Seoul", "Dublin", "Quito"]
TRAVEL = [
    f"{verb} a {what} to {city} {when}"
    for verb in ("Book me", "Can you find", "I need", "Cancel my")
    for what in ("flight", "train ticket", "hotel room")
    for city in CITIES
    for when in ("tomorrow", "next weekend")
]
APPS = {"support-assistant": 0.8, "docs-helper": 0.2}
embed = HashingEmbedder()


@dataclass(frozen=True)
class Traffic:
    """How one window's requests are drawn; an injection changes one field."""

    error_rate: float = 0.001
    positive_rate: float = 0.7
    prompt_scale: float = 1.0
    latency_scale: float = 1.0
    cost_scale: float = 1.0
    model_version: str = "3"
    new_topic_share: float = 0.0


def request_log(
    n: int, seed: int, start: datetime, hours: float, traffic: Traffic = Traffic()
) -> pd.DataFrame:
    """A synthetic monitoring frame of `n` requests in [start, start + hours), drawn with `seed`."""
    rng = np.random.default_rng(seed)
    messages = rng.choice(QUESTIONS, n).astype(object)
    new = rng.random(n) < traffic.new_topic_share
    messages[new] = rng.choice(TRAVEL, int(new.sum()))
    error = rng.random(n) < traffic.error_rate
    prompt_tokens = np.round((rng.poisson(120, n) + 10) * traffic.prompt_scale).astype(np.int64)
    completion_tokens = np.where(error, 0, rng.poisson(40, n) + 5)
    ttft = rng.lognormal(np.log(200.0), 0.3, n) * traffic.latency_scale
    latency = ttft + completion_tokens * 20.0 * rng.lognormal(0.0, 0.2, n) * traffic.latency_scale
    cost = (prompt_tokens * 0.05 + completion_tokens * 0.10) / 1e6 * traffic.cost_scale
    rated = rng.random(n) < 0.3
    draw = rng.random(n)
    positive, negative = traffic.positive_rate, (1 - traffic.positive_rate) * 0.7
    score = np.where(draw < positive, 1.0, np.where(draw < positive + negative, -1.0, 0.0))
    return monitor_frame(
        {
            "request_id": [f"r-{seed}-{start:%j%H}-{i}" for i in range(n)],
            "ts": [start + timedelta(hours=hours * float(f)) for f in rng.random(n)],
            "application": rng.choice(list(APPS), n, p=list(APPS.values())),
            "model_name": "smollm2-135m",
            "model_version": traffic.model_version,
            "prompt_version": "2",
            "status": np.where(error, "error", "ok"),
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "ttft_ms": ttft,
            "latency_ms": latency,
            "cost_usd": cost,
            "feedback": np.where(rated, score, np.nan),
            "message": messages,
        }
    )


def windows_for(seed: int, current: Traffic = Traffic(), n_current: int = 1500) -> tuple[pd.DataFrame, ...]:
    """(current, baseline) frames: the last 24 h under `current` traffic, the 7 days before as usual."""
    windows = drift_windows(END, PARAMS)
    baseline = request_log(6000, seed + 1000, windows.baseline_start, 24 * 7)
    return request_log(n_current, seed, windows.current_start, 24, current), baseline


def run(current: pd.DataFrame, baseline: pd.DataFrame, params: DriftParams = PARAMS) -> DriftResult:
    return compute_drift(current, baseline, embed, params, redact=lambda texts: [t.upper() for t in texts])


def describe(result: DriftResult) -> str:
    return "; ".join(f"{g.key}:{s.name}={s.value:.4g} ({s.detail})" for g, s in result.alerts())


# -- injected drift ---------------------------------------------------------------------------------

INJECTIONS: list[tuple[str, Traffic, set[str]]] = [
    # MMD sees a quarter of the traffic on a new subject; the centroid barely moves (0.2 needs a whole shift).
    ("new topic", Traffic(new_topic_share=0.25), {EMBEDDING_MMD, NEW_TOPICS}),
    # Longer prompts are billed: cost per query rises with them.
    ("longer prompts", Traffic(prompt_scale=1.5), {PROMPT_TOKENS, COST_PER_QUERY}),
    ("slower responses", Traffic(latency_scale=1.6), {TTFT_P95, LATENCY_P95}),
    ("more errors", Traffic(error_rate=0.05), {ERROR_RATE}),
    ("costlier model", Traffic(cost_scale=1.5, model_version="4"), {COST_PER_QUERY}),
    ("worse feedback", Traffic(positive_rate=0.45), {FEEDBACK}),
]


@pytest.mark.parametrize(("kind", "traffic", "expected"), INJECTIONS, ids=[row[0] for row in INJECTIONS])
def test_injected_drift_trips_exactly_its_signals(kind: str, traffic: Traffic, expected: set[str]) -> None:
    # given a baseline week and a current day with one kind of drift injected
    current, baseline = windows_for(seed=0, current=traffic)
    # when
    result = run(current, baseline)
    # then
    assert result.alerting == expected, f"{kind}: expected {sorted(expected)}, got {describe(result)}"
    assert result.status == "alert", f"{kind}: the run's status should be alert, got {result.status}"
    for name in expected:
        assert result.overall.signal(name).status == "alert", f"{kind}: {name} should alert overall"


@pytest.mark.parametrize("seed", range(5))
def test_stable_log_trips_no_signal(seed: int) -> None:
    # given two windows drawn from the same traffic
    current, baseline = windows_for(seed)
    # when
    result = run(current, baseline)
    # then
    assert result.alerting == frozenset(), f"seed {seed}: false alarms {describe(result)}"
    assert result.status == "ok", f"seed {seed}: status should be ok, got {result.status}"
    assert not result.topics, f"seed {seed}: no new topic expected, got {result.topics}"


def test_every_group_has_every_signal() -> None:
    current, baseline = windows_for(seed=1)
    result = run(current, baseline)
    keys = [(group.scope, group.key) for group in result.groups]
    assert keys == [
        ("all", "all"),
        ("application", "docs-helper"),
        ("application", "support-assistant"),
        ("model_version", "docs-helper/3"),
        ("model_version", "support-assistant/3"),
    ], f"groups: {keys}"
    assert [s.name for s in result.overall.signals] == list(SIGNALS), "overall carries every signal"
    for group in result.groups[1:]:
        assert [s.name for s in group.signals] == list(SIGNALS[:-1]), f"{group.key}: all but new_topics"
        assert group.baseline_scope == "same version" or group.scope != "model_version", f"{group.key}"


def test_costlier_new_version_is_judged_against_its_application() -> None:
    current, baseline = windows_for(seed=2, current=Traffic(cost_scale=1.5, model_version="4"))
    result = run(current, baseline)
    group = next(g for g in result.groups if g.key == "support-assistant/4")
    assert group.baseline_scope == "all of support-assistant", (
        f"baseline of a new version: {group.baseline_scope}"
    )
    assert group.signal(COST_PER_QUERY).status == "alert", "the new version itself is flagged as costlier"


def test_new_topic_reports_redacted_examples_from_the_new_cluster() -> None:
    current, baseline = windows_for(seed=3, current=Traffic(new_topic_share=0.25))
    result = run(current, baseline)
    assert result.topics, "a new topic should be reported"
    share = sum(topic.share for topic in result.topics)
    assert 0.2 < share <= 0.3, f"new topics hold about a quarter of requests, got {share:.2f}"
    top = result.topics[0]
    assert len(top.examples) == PARAMS.topic_examples, f"examples: {top.examples}"
    travel = {text.upper() for text in TRAVEL}
    assert all(example in travel for example in top.examples), f"redacted travel examples: {top.examples}"


def test_examples_go_through_the_pii_redactor() -> None:
    # given a new topic whose messages carry e-mail addresses, and the real redactor
    rng = np.random.default_rng(0)
    current, baseline = windows_for(seed=4, current=Traffic(new_topic_share=0.25))
    travel = current["message"].astype(str).isin(TRAVEL)
    with_mail = [
        f"{text}, write to me at jo{rng.integers(9)}@example.com" for text in current.loc[travel, "message"]
    ]
    current = current.assign(message=current["message"].astype(object))
    current.loc[travel, "message"] = with_mail
    # when
    result = compute_drift(current, baseline, embed, PARAMS)
    # then
    examples = [example for topic in result.topics for example in topic.examples]
    assert examples, "a new topic with examples is expected"
    assert all("@example.com" not in e for e in examples), f"unredacted: {examples}"
    assert any("<EMAIL_ADDRESS>" in e for e in examples), f"the e-mail addresses masked: {examples}"


# -- not enough data ----------------------------------------------------------------------------------


def test_too_few_requests_is_insufficient_data_not_a_crash() -> None:
    current, baseline = windows_for(seed=0, n_current=PARAMS.min_requests - 1)
    result = run(current, baseline)
    assert result.status == "insufficient_data", f"status: {result.status}"
    assert {s.status for s in result.overall.signals} == {"insufficient_data"}, "every signal lacks data"
    assert "not enough data" in result.overall.signals[0].detail, result.overall.signals[0].detail
    assert "not enough data" in markdown_report(result), "the report says so"


def test_empty_windows_are_insufficient_data() -> None:
    empty = monitor_frame(
        {name: [] for name in ("request_id", "ts", "application", "model_name", "status")}
        | {"prompt_tokens": [], "completion_tokens": [], "latency_ms": [], "cost_usd": [], "message": []}
    )
    result = run(empty, empty)
    assert result.status == "insufficient_data", f"status: {result.status}"


def test_a_small_group_is_insufficient_while_the_rest_is_judged() -> None:
    current, baseline = windows_for(seed=0)
    docs = current["application"] == "docs-helper"
    current = current[~docs | (docs.cumsum() <= 50)]
    result = run(current, baseline)
    group = next(g for g in result.groups if g.key == "docs-helper")
    assert group.status == "insufficient_data", f"50 requests are too few: {group.status}"
    assert result.status == "ok", f"the rest is judged: {result.status} {describe(result)}"


def test_sparse_feedback_is_insufficient_for_that_signal_only() -> None:
    current, baseline = windows_for(seed=0)
    current = current.assign(feedback=np.where(np.arange(len(current)) < 20, 1.0, np.nan))
    result = run(current, baseline)
    assert result.overall.signal(FEEDBACK).status == "insufficient_data", "20 ratings are too few"
    assert result.overall.signal(COMPLETION_TOKENS).status == "ok", "other signals still judged"


# -- the statistics -----------------------------------------------------------------------------------


def test_mmd_separates_shifted_samples_and_not_equal_ones() -> None:
    rng = np.random.default_rng(0)

    def unit(rows: np.ndarray) -> np.ndarray:
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    x, y = unit(rng.normal(size=(300, 16))), unit(rng.normal(size=(300, 16)))
    shifted = unit(rng.normal(size=(300, 16)) + 0.8)
    same, p_same = mmd_permutation_test(x, y, 199, 0)
    moved, p_moved = mmd_permutation_test(x, shifted, 199, 0)
    assert p_same > 0.05 and abs(same) < 0.01, f"same distribution: MMD²={same:.4f}, p={p_same}"
    assert p_moved == 1 / 200 and moved > 0.05, f"shifted: MMD²={moved:.4f}, p={p_moved}"


def test_two_proportion_z_is_one_sided_for_a_drop() -> None:
    z, p = two_proportion_z(450, 1000, 700, 1000)
    assert z < -10 and p < 1e-20, f"a drop from 70% to 45%: z={z}, p={p}"
    z, p = two_proportion_z(700, 1000, 450, 1000)
    assert p > 0.99, f"a rise is not a drop: p={p}"


def test_kmeans_is_seeded_and_finds_planted_clusters() -> None:
    rng = np.random.default_rng(0)
    centers = np.eye(8, dtype=np.float32)[:3]
    points = np.repeat(centers, 50, axis=0) + rng.normal(scale=0.05, size=(150, 8)).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    first = spherical_kmeans(points, np.ones(150), 3, seed=1)
    again = spherical_kmeans(points, np.ones(150), 3, seed=1)
    assert np.array_equal(first[1], again[1]), "the same seed gives the same clusters"
    assert len(set(first[1][:50])) == 1 and len(set(first[1])) == 3, f"planted clusters: {first[1]}"


# -- the reports ----------------------------------------------------------------------------------------


def test_reports_show_signals_topics_and_plots(tmp_path: Path) -> None:
    current, baseline = windows_for(seed=0, current=Traffic(new_topic_share=0.25, latency_scale=1.6))
    result = run(current, baseline)
    markdown = markdown_report(result, drift_windows(END, PARAMS))
    assert "| group | signal | value | baseline | threshold | status | detail |" in markdown, markdown[:300]
    assert markdown.count("**ALERT**") == len(result.alerts()), "one ALERT mark per alerting signal"
    assert "## New topics" in markdown and "BOOK" in markdown.upper(), "new topics with examples"
    page = write_html_report(result, current, baseline, tmp_path / "drift" / "report.html")
    text = page.read_text(encoding="utf-8")
    assert text.count("data:image/png;base64,") == 2, "histograms and the PCA scatter are embedded"
    assert "<script" not in text and "href=" not in text and "src='http" not in text, "self-contained"


# -- the SQL loader -----------------------------------------------------------------------------------


def _record(i: int, ts: datetime, application: str, version: str | None, **extra: object) -> RequestRecord:
    messages = [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content=f"first question {i}"),
        ChatMessage(role="assistant", content="an answer"),
        ChatMessage(role="user", content=f"follow-up {i % 3}"),
    ]
    return RequestRecord.model_validate(
        {
            "request_id": f"req-{i}",
            "timestamp": ts,
            "application": application,
            "model_name": "smollm2-135m",
            "model_version": version,
            "messages": messages,
            "prompt_tokens": 100 + i,
            "completion_tokens": 10 + i,
            "ttft_ms": None if i % 2 else 150.0,
            "latency_ms": 900.0 + i,
            "cost_usd": 0.001 * i,
            "status": "error" if i == 4 else "ok",
        }
        | extra
    )


def test_load_window_reads_the_sqlite_request_log(tmp_path: Path) -> None:
    # given a log with requests inside and outside the window, two applications, and feedback
    url = f"sqlite:///{tmp_path / 'requests.db'}"
    log = open_request_log(url)
    start = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    records = [_record(i, start + timedelta(hours=i), "support-assistant", "3") for i in range(6)]
    records.append(_record(6, start - timedelta(seconds=1), "support-assistant", "3"))  # before the window
    records.append(_record(7, start + timedelta(hours=24), "support-assistant", "3"))  # end is exclusive
    records.append(_record(8, start + timedelta(hours=1), "docs-helper", None))
    records.append(
        _record(9, start + timedelta(hours=2), "support-assistant", "3", feedback=Feedback(score=1))
    )
    log.append(records)
    at = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
    log.add_feedback(
        [
            FeedbackItem("req-1", 1, None, at),
            FeedbackItem("req-1", -1, "changed my mind", at + timedelta(minutes=5)),
            FeedbackItem("req-2", 0, None, at),
            FeedbackItem("req-6", 1, None, at),
        ]
    )
    log.close()
    # when
    frame = load_window(url, start, start + timedelta(hours=24)).sort_values("request_id", ignore_index=True)
    only = load_window(url, start, start + timedelta(hours=24), application="docs-helper")
    versioned = load_window(url, start, start + timedelta(hours=24), model_version="3")
    # then
    ids = frame["request_id"].tolist()
    assert ids == ["req-0", "req-1", "req-2", "req-3", "req-4", "req-5", "req-8", "req-9"], f"window: {ids}"
    first = frame.iloc[0]
    assert first["message"] == "follow-up 0", f"the last user message: {first['message']!r}"
    assert first["ts"] == pd.Timestamp("2026-12-03 12:00"), f"naive UTC timestamps: {first['ts']}"
    assert first["prompt_tokens"] == 100 and first["ttft_ms"] == 150.0, "indexed columns read as stored"
    assert np.isnan(frame.iloc[1]["ttft_ms"]), "a missing TTFT is NaN"
    scores = dict(zip(frame["request_id"], frame["feedback"], strict=True))
    assert scores["req-1"] == -1.0, "the latest feedback wins"
    assert scores["req-2"] == 0.0 and np.isnan(scores["req-0"]), f"scores: {scores}"
    assert scores["req-9"] == 1.0, "feedback attached to the record counts when the table has none"
    assert frame.loc[frame["request_id"] == "req-4", "status"].item() == "error", "status read"
    assert frame.loc[frame["request_id"] == "req-8", "model_version"].item() == "", "no version -> ''"
    assert only["request_id"].tolist() == ["req-8"], f"application filter: {only['request_id'].tolist()}"
    assert len(versioned) == 7, f"version filter: {versioned['request_id'].tolist()}"
    assert isinstance(frame["message"].dtype, pd.CategoricalDtype), "messages are categorical (distinct once)"


def test_load_window_of_an_empty_range_is_an_empty_frame(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'requests.db'}"
    open_request_log(url).close()
    frame = load_window(url, END - timedelta(hours=1), END)
    assert frame.empty and "message" in frame.columns, f"empty frame with columns: {list(frame.columns)}"


def test_drift_windows_follow_params() -> None:
    windows = drift_windows(
        datetime(2026, 12, 4, 12, tzinfo=UTC), DriftParams(current_hours=6, baseline_days=2)
    )
    assert windows.end == datetime(2026, 12, 4, 12), f"naive UTC end: {windows.end}"
    assert windows.current_start == datetime(2026, 12, 4, 6), f"current start: {windows.current_start}"
    assert windows.baseline_start == datetime(2026, 12, 2, 6), f"baseline start: {windows.baseline_start}"


def test_embed_sees_each_distinct_message_once() -> None:
    seen: list[list[str]] = []

    def counting(texts: list[str]) -> np.ndarray:
        seen.append(texts)
        return embed(texts)

    current, baseline = windows_for(seed=0)
    compute_drift(current, baseline, counting, PARAMS, redact=lambda texts: texts)
    distinct = set(current["message"].astype(str)) | set(baseline["message"].astype(str))
    assert len(seen) == 1, f"one embed call, got {len(seen)}"
    assert sorted(seen[0]) == sorted(distinct), "exactly the distinct messages of both windows"
