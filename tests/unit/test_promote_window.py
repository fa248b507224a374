"""The canary's request-log read: one arm's rows by version since a moment, with the latest feedback."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from flywheel.requestlog import FeedbackItem, open_request_log
from flywheel.schemas import ChatMessage, RequestRecord
from tasks.promote.analysis import ROW_COLUMNS
from tasks.promote.window import ArmSelector, SqlWindowReader

T0 = datetime(2026, 1, 1, 12, tzinfo=UTC)


def record(rid: str, arm: str, version: str | None, at: datetime, prompt: str = "1") -> RequestRecord:
    """A minimal logged request."""
    return RequestRecord(
        request_id=rid,
        timestamp=at,
        application="app",
        arm=arm,  # type: ignore[arg-type]  # champion | challenger
        model_name="m",
        model_version=version,
        prompt_name="p",
        prompt_version=prompt,
        messages=[ChatMessage(role="user", content="hi")],
        prompt_tokens=3,
        completion_tokens=7,
        ttft_ms=10.0,
        latency_ms=100.0,
        cost_usd=0.001,
    )


def test_rows_of_one_arm_since_a_moment_with_their_latest_feedback(tmp_path: Path) -> None:
    # given a log with both arms, an old row, another version, and two ratings of one request
    url = f"sqlite:///{tmp_path / 'requests.db'}"
    log = open_request_log(url)
    log.append(
        [
            record("old", "challenger", "2", T0 - timedelta(minutes=10)),
            record("c1", "challenger", "2", T0 + timedelta(seconds=1)),
            record("c2", "challenger", "2", T0 + timedelta(seconds=2), prompt="9"),
            record("other", "challenger", "3", T0 + timedelta(seconds=2)),
            record("b1", "champion", "1", T0 + timedelta(seconds=3)),
        ]
    )
    log.add_feedback(
        [
            FeedbackItem("c1", -1, None, T0 + timedelta(seconds=5)),
            FeedbackItem("c1", 1, "changed my mind", T0 + timedelta(seconds=9)),
        ]
    )
    log.close()
    reader = SqlWindowReader(url)

    # when the challenger v2 rows since T0 are read, by model version and by prompt version
    by_model = reader.rows(ArmSelector("challenger", "model", "2"), T0)
    by_prompt = reader.rows(ArmSelector("challenger", "prompt", "9"), T0)
    champion = reader.rows(ArmSelector("champion", "model", None, application="app"), T0)
    reader.close()

    # then only the window's rows of that arm and version come back, with the latest rating
    assert list(by_model.columns) == list(ROW_COLUMNS), f"the analysis columns: {list(by_model.columns)}"
    assert sorted(by_model["request_id"]) == ["c1", "c2"], f"{by_model['request_id'].tolist()}"
    scores = dict(zip(by_model["request_id"], by_model["feedback_score"], strict=True))
    assert scores["c1"] == 1.0, f"the latest rating wins: {scores}"
    assert by_model.set_index("request_id")["feedback_score"].isna()["c2"], "unrated is NaN"
    assert by_prompt["request_id"].tolist() == ["c2"], f"prompt canary rows: {by_prompt}"
    assert champion["request_id"].tolist() == ["b1"], f"any champion version: {champion}"
