"""The drift flow on the real stack: a log whose last day got slower alerts on latency, and only that."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flywheel.demo.knowledge import load_knowledge
from flywheel.requestlog import open_request_log
from flywheel.schemas import RequestRecord
from flywheel.settings import Environment

pytestmark = pytest.mark.integration

END = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _records(n: int, start: datetime, hours: float, slow: float, seed: int) -> list[RequestRecord]:
    """`n` requests of demo questions spread over [start, start + hours), latency scaled by `slow`."""
    rng = random.Random(seed)
    questions = [q for fact in load_knowledge() for q in fact.paraphrases]
    out = []
    for i in range(n):
        completion = rng.randint(20, 40)
        ttft = rng.lognormvariate(5.3, 0.2) * slow
        out.append(
            RequestRecord.model_validate(
                {
                    "request_id": f"drift-{seed}-{i}",
                    "timestamp": start + timedelta(hours=hours * rng.random()),
                    "application": "support-assistant",
                    "model_name": "flywheel-support",
                    "model_version": "1",
                    "messages": [{"role": "user", "content": rng.choice(questions)}],
                    "response": "An answer.",
                    "finish_reason": "stop",
                    "prompt_tokens": rng.randint(30, 40),
                    "completion_tokens": completion,
                    "ttft_ms": ttft,
                    "latency_ms": ttft + completion * 40.0 * slow,
                    "cost_usd": 1e-6,
                }
            )
        )
    return out


def test_a_slower_last_day_alerts_on_latency_and_reports_to_mlflow(
    stack: Environment, mlflow_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    from flows.drift import drift

    # given a week of steady traffic and a last day where every response took twice as long
    url = f"sqlite:///{tmp_path / 'requests.db'}"
    log = open_request_log(url)
    log.append(_records(1400, END - timedelta(days=8), 24 * 7, slow=1.0, seed=1))
    log.append(_records(400, END - timedelta(hours=24), 24, slow=2.0, seed=2))
    log.close()
    monkeypatch.setenv("FLYWHEEL_REQUEST_LOG_URL", url)
    monkeypatch.setenv("PREFECT_API_URL", stack.api_url)
    # when the drift flow runs for that moment
    result = drift(end=END)
    # then latency (end to end and to the first token) alerts, and nothing about the inputs
    assert result["status"] == "alert", f"a doubled latency must alert: {result}"
    assert {"latency_p95", "ttft_p95"} <= set(result["alerting"]), result
    assert not {"embedding_centroid", "embedding_mmd", "new_topics"} & set(result["alerting"]), result
    # and the run in MLflow holds the HTML report and a metric per signal
    client = MlflowClient(mlflow_uri)
    run = client.get_run(str(result["run_id"]))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"drift_report.html", "drift_report.md"} <= artifacts, artifacts
    assert run.data.tags["flywheel.drift.status"] == "alert", run.data.tags
    assert run.data.metrics["latency_p95"] > 0, run.data.metrics


def test_too_few_requests_is_insufficient_data(
    stack: Environment, mlflow_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.drift import drift

    url = f"sqlite:///{tmp_path / 'requests.db'}"
    log = open_request_log(url)
    log.append(_records(20, END - timedelta(hours=24), 24, slow=1.0, seed=3))
    log.close()
    monkeypatch.setenv("FLYWHEEL_REQUEST_LOG_URL", url)
    monkeypatch.setenv("PREFECT_API_URL", stack.api_url)
    result = drift(end=END)
    assert result["status"] == "insufficient_data", f"20 requests give no verdict: {result}"
    assert result["alerting"] == [], result
