"""Sources the harvest reads incrementally: the gateway's request log and JSONL files.

A source turns a watermark (a JSON-able dict) into a `Batch`: the raw lines
after it and the watermark that covers them. Nothing here commits anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import fsspec
from fsspec.core import url_to_fs
from sqlalchemy.engine import make_url

from flywheel.requestlog import open_request_log

REQUESTLOG_PAGE = 10_000  # rows per read_since call when no limit is given


@dataclass(frozen=True)
class RawLine:
    """One line read from a source, with where it came from (`file-url:byte-offset` or `seq:n`)."""

    position: str
    data: bytes


@dataclass(frozen=True)
class Batch:
    """The lines after a watermark, and the watermark to commit once they are stored."""

    lines: list[RawLine]
    end_watermark: dict[str, Any]


class Source(Protocol):
    """Anything with a stable id that reads the lines after a watermark."""

    @property
    def source_id(self) -> str: ...

    def read(self, watermark: dict[str, Any], limit: int | None) -> Batch: ...


@dataclass(frozen=True)
class RequestLogSource:
    """The gateway's request log; watermark `{"seq": last harvested seq}`."""

    url: str

    @property
    def source_id(self) -> str:
        return "requestlog:" + make_url(self.url).render_as_string(hide_password=True)

    def read(self, watermark: dict[str, Any], limit: int | None) -> Batch:
        """Requests with seq above the watermark, in seq order, as JSON lines."""
        seq = int(watermark.get("seq", 0))
        log = open_request_log(self.url)
        lines: list[RawLine] = []
        try:
            while limit is None or len(lines) < limit:
                page = REQUESTLOG_PAGE if limit is None else min(REQUESTLOG_PAGE, limit - len(lines))
                rows = log.read_since(seq, page)
                if not rows:
                    break
                for row in rows:
                    lines.append(RawLine(f"seq:{row.seq}", row.record.model_dump_json().encode()))
                seq = rows[-1].seq
        finally:
            log.close()
        return Batch(lines, {"seq": seq})


def _has_glob(path: str) -> bool:
    return any(char in path for char in "*?[")


@dataclass(frozen=True)
class JsonlFilesSource:
    """JSONL files under a folder or glob at any fsspec URL; watermark `{"offsets": {file: byte}}`.

    Each offset is just past the last complete line consumed, so files that grow
    are read incrementally; a last line without its newline waits for the next run.
    """

    url: str

    @property
    def source_id(self) -> str:
        return "files:" + self.url

    def files(self) -> list[str]:
        """The matching files as full URLs, in sorted order."""
        fs, path = url_to_fs(self.url)
        pattern = path if _has_glob(path) else path.rstrip("/") + "/*.jsonl"
        return sorted(fs.unstrip_protocol(found) for found in fs.glob(pattern))

    def read(self, watermark: dict[str, Any], limit: int | None) -> Batch:
        """Complete lines after each file's offset, up to `limit` lines in all."""
        offsets: dict[str, int] = dict(watermark.get("offsets", {}))
        lines: list[RawLine] = []
        for file_url in self.files():
            if limit is not None and len(lines) >= limit:
                break
            start = offsets.get(file_url, 0)
            with fsspec.open(file_url, "rb") as handle:
                handle.seek(start)
                data: bytes = handle.read()
            position = start
            for piece in data.split(b"\n")[:-1]:  # the last piece has no newline: not consumed
                if limit is not None and len(lines) >= limit:
                    break
                if piece.strip():  # blank lines are not records
                    lines.append(RawLine(f"{file_url}:{position}", piece))
                position += len(piece) + 1
            offsets[file_url] = position
        return Batch(lines, {"offsets": offsets})
