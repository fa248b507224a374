"""The gateway writing through the real request log (BatchWriter on a temporary SQLite file)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from flywheel.requestlog import BatchWriter, WriterClosedError, open_request_log
from flywheel.settings import GatewayParams, RequestLogParams
from gateway.app import GatewayDeps, create_app
from gateway.requestlog_sink import RequestLogSink
from tests.helpers.fake_gateway import BACKEND_ERROR, EchoBackend, StaticRoutes


def test_answers_errors_and_feedback_reach_the_request_log(tmp_path: Path) -> None:
    # given an app logging through a BatchWriter into SQLite
    log = open_request_log(f"sqlite:///{tmp_path / 'requests.db'}")
    sink = RequestLogSink(BatchWriter(log, RequestLogParams(flush_seconds=0.05)), log)
    deps = GatewayDeps(routes=StaticRoutes(), backend=EchoBackend(), sink=sink, application="app")
    chat = {"model": "app", "messages": [{"role": "user", "content": "hello log"}]}
    with TestClient(create_app(GatewayParams(), deps, tune_gc=False)) as client:
        # when one request is answered, one fails, and the answer is rated
        answered = client.post("/v1/chat/completions", json=chat).json()["id"]
        failed = client.post(
            "/v1/chat/completions", json={**chat, "messages": [{"role": "user", "content": BACKEND_ERROR}]}
        ).headers["x-request-id"]
        client.post("/v1/feedback", json={"request_id": answered, "thumbs": "up", "comment": "great"})
        health = client.get("/healthz").json()
        sink.writer.flush(timeout=10)
        ok, error = log.get(answered), log.get(failed)
    # then both requests are durable, the feedback is joined, and the app closed the log at shutdown
    assert ok is not None and ok.record.response == "echo: hello log", "the answer is logged"
    assert ok.record.feedback is not None and ok.record.feedback.score == 1, "feedback joined by id"
    assert error is not None and error.record.status == "error", "the failure is logged as an error"
    assert health["request_log"]["kind"] == "requestlog", f"/healthz shows the writer: {health}"
    with pytest.raises(WriterClosedError):
        sink.submit(ok.record)  # the app's shutdown closed the writer
