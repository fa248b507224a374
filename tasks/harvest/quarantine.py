"""Classify one raw line: a valid `RequestRecord`, or a `Rejection` with its reason."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from flywheel.schemas import RequestRecord

REASONS: tuple[str, ...] = (
    "oversize",
    "null_bytes",
    "bad_encoding",
    "bad_json",
    "missing_field",
    "wrong_type",
    "invalid_record",
)
RAW_PREVIEW_BYTES = 2048  # how much of a rejected line the quarantine keeps


@dataclass(frozen=True)
class Rejection:
    """Why a line is not a record."""

    reason: str  # one of REASONS
    detail: str


def _validation_reason(error: ValidationError) -> Rejection:
    """Map pydantic errors to a reason: missing field, wrong type, else invalid record."""
    errors = error.errors(include_url=False)
    kinds = {e["type"] for e in errors}
    summary = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5])
    if "missing" in kinds:
        return Rejection("missing_field", summary)
    if any(kind.endswith(("_type", "_parsing")) for kind in kinds):
        return Rejection("wrong_type", summary)
    return Rejection("invalid_record", summary)


def classify(line: bytes, max_record_bytes: int) -> RequestRecord | Rejection:
    """Parse one line of JSON into a record, or say why it is malformed.

    Checks go cheapest first, so a 10 MB line is rejected before it is decoded.
    """
    if len(line) > max_record_bytes:
        return Rejection("oversize", f"{len(line)} bytes > limit {max_record_bytes}")
    nul = line.find(b"\x00")
    if nul >= 0:
        return Rejection("null_bytes", f"NUL byte at offset {nul}")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        return Rejection("bad_encoding", str(error))
    try:
        data: Any = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        return Rejection("bad_json", str(error))
    if not isinstance(data, dict):
        return Rejection("wrong_type", f"a record is a JSON object, not {type(data).__name__}")
    try:
        return RequestRecord.model_validate(data)
    except ValidationError as error:
        return _validation_reason(error)


def quarantine_entry(rejection: Rejection, source: str, position: str, line: bytes) -> dict[str, Any]:
    """The quarantine line of a rejected record: reason, detail, where it was, a safe preview."""
    return {
        "reason": rejection.reason,
        "detail": rejection.detail,
        "source": source,
        "position": position,
        "raw": line[:RAW_PREVIEW_BYTES].decode("utf-8", errors="backslashreplace"),
        "raw_bytes": len(line),
    }
