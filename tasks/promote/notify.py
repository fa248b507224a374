"""Webhook notifications: approval needed, abort, promotion, rollback. Failures are logged, never fatal."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import httpx

log = logging.getLogger(__name__)

WEBHOOK_ENV = "FLYWHEEL_WEBHOOK_URL"


def webhook_url() -> str | None:
    """The webhook from `$FLYWHEEL_WEBHOOK_URL`, or None (notifications off)."""
    return os.environ.get(WEBHOOK_ENV) or None


def notify(event: str, payload: Mapping[str, object], url: str | None, timeout_s: float = 5.0) -> bool:
    """POST `{"event": ..., **payload}` as JSON to `url`; True when it answered 2xx.

    A notification is a courtesy: a dead or slow webhook must never stop a
    rollback, so every failure is logged and swallowed.
    """
    if not url:
        return False
    body = {"event": event, **payload}
    try:
        response = httpx.post(url, json=body, timeout=timeout_s)
    except httpx.HTTPError as error:
        log.warning("webhook %s for %s failed: %s", url, event, error)
        return False
    if not response.is_success:
        log.warning("webhook %s for %s answered HTTP %s", url, event, response.status_code)
        return False
    return True
