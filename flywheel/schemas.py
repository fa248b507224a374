"""Record schemas shared by the gateway (writer), the demo workload and harvest (readers)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant", "tool"]
Arm = Literal["champion", "challenger"]


class ChatMessage(BaseModel):
    """One OpenAI-format chat message."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Role
    content: str


class Feedback(BaseModel):
    """A user's rating of one response, joined to its request by id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    score: Literal[-1, 0, 1]
    comment: str | None = None


class RequestRecord(BaseModel):
    """One request through the gateway, as the request log stores it (DESIGN.md)."""

    # inf/nan would be stored as JSON null and then fail to load back
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    request_id: str = Field(min_length=1)
    timestamp: datetime
    application: str
    arm: Arm = "champion"
    model_name: str
    model_version: str | None = None
    prompt_name: str | None = None
    prompt_version: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    response: str | None = None
    finish_reason: Literal["stop", "length", "error"] | None = None
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    ttft_ms: float | None = Field(default=None, ge=0)
    latency_ms: float = Field(ge=0)
    cost_usd: float = Field(ge=0)
    status: Literal["ok", "error"] = "ok"
    error: str | None = None
    user_hash: str | None = None
    session_hash: str | None = None
    cache_hit: bool = False
    feedback: Feedback | None = None
