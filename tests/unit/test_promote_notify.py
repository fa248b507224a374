"""Webhook notifications: posted as JSON; a dead webhook is logged, never raised."""

from __future__ import annotations

import json

import pytest

from flywheel.stack.ports import free_port
from tasks.promote.notify import notify
from tests.helpers.servers import serve_in_thread


def test_notify_posts_json_and_survives_a_dead_webhook(caplog: pytest.LogCaptureFixture) -> None:
    received: list[dict[str, object]] = []

    async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        received.append(json.loads(body))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with serve_in_thread(app) as url:
        assert notify("promoted", {"version": "2"}, url), "a 204 is a delivered notification"
    assert received == [{"event": "promoted", "version": "2"}], f"{received}"
    assert not notify("aborted", {}, f"http://127.0.0.1:{free_port()}/hook", timeout_s=1), "dead: False"
    assert "webhook" in caplog.text, "the failure is logged"
    assert not notify("aborted", {}, None), "no URL: nothing sent"
