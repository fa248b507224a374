"""Harvest: incremental reads by watermark, quarantine reasons, the malformed threshold, crash safety."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from flywheel.demo import INVALID_KINDS, write_demo
from flywheel.requestlog import RequestLog, open_request_log
from flywheel.settings import DemoParams
from tasks.harvest import (
    FilesSource,
    HarvestResult,
    MalformedShareExceeded,
    RequestLogSource,
    make_source,
    run_harvest,
)
from tasks.harvest import harvest as harvest_module
from tasks.harvest.harvest import summary_markdown
from tasks.harvest.quarantine import Rejection, classify
from tests.helpers.request_records import make_record

MAX_BYTES = 1 << 20
# The demo's invalid kinds, by the reason harvest gives them.
DEMO_REASON = {
    "malformed_json": "bad_json",
    "missing_field": "missing_field",
    "wrong_type": "wrong_type",
    "bad_encoding": "bad_encoding",
}


def line(i: int) -> bytes:
    return make_record(i).model_dump_json().encode()


def harvested_ids(raw_dir: Path) -> list[str]:
    """Every request id in every valid partition (duplicates kept, to count them)."""
    return [
        orjson.loads(row)["request_id"]
        for part in sorted(raw_dir.glob("part-*.jsonl"))
        for row in part.read_bytes().splitlines()
    ]


def quarantined(raw_dir: Path) -> list[dict[str, object]]:
    return [
        orjson.loads(row)
        for part in sorted((raw_dir / "quarantine").glob("part-*.jsonl"))
        for row in part.read_bytes().splitlines()
    ]


def harvest_files(
    inbox: Path, tmp_path: Path, max_malformed_share: float = 0.2, limit: int | None = None
) -> HarvestResult:
    """Harvest the inbox folder into tmp_path/raw, with state in tmp_path/state."""
    source = FilesSource(str(inbox))
    return run_harvest(source, tmp_path / "raw", tmp_path / "state", MAX_BYTES, max_malformed_share, limit)


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "incoming"
    folder.mkdir()
    return folder


@pytest.fixture
def log(tmp_path: Path) -> Iterator[RequestLog]:
    store = open_request_log(f"sqlite:///{tmp_path / 'requests.db'}")
    yield store
    store.close()


# -- incremental reads -------------------------------------------------------------------------------


def test_files_second_run_reads_only_appended_lines(inbox: Path, tmp_path: Path) -> None:
    # given a file of 3 records and a partial 4th line without its newline
    path = inbox / "a.jsonl"
    path.write_bytes(b"\n".join(line(i) for i in range(3)) + b"\n" + line(3)[:20])
    # when harvested, then the 4th line is completed and 2 more appended and harvested again
    first = harvest_files(inbox, tmp_path)
    with path.open("ab") as out:
        out.write(line(3)[20:] + b"\n" + line(4) + b"\n" + line(5) + b"\n")
    second = harvest_files(inbox, tmp_path)
    third = harvest_files(inbox, tmp_path)
    # then each run got only the new complete lines, and together each record once
    assert (first.n_valid, second.n_valid, third.n_read) == (3, 3, 0), (
        f"runs read {first.n_valid}, {second.n_valid}, {third.n_read}; expected 3, 3, 0"
    )
    ids = harvested_ids(tmp_path / "raw")
    assert sorted(ids) == [f"req-{i:06d}" for i in range(6)], f"harvested ids {ids}"
    assert first.partition != second.partition, "each run writes its own partition"


def test_files_new_file_in_folder_is_picked_up(inbox: Path, tmp_path: Path) -> None:
    # given one harvested file
    (inbox / "a.jsonl").write_bytes(line(0) + b"\n")
    harvest_files(inbox, tmp_path)
    # when a second file lands in the folder
    (inbox / "b.jsonl").write_bytes(line(1) + b"\n")
    result = harvest_files(inbox, tmp_path)
    # then only its record is read
    assert result.n_valid == 1, f"expected 1 new record, got {result.n_valid}"
    assert sorted(harvested_ids(tmp_path / "raw")) == ["req-000000", "req-000001"], "each record once"


def test_requestlog_second_run_reads_only_new_records(log: RequestLog, tmp_path: Path) -> None:
    # given a request log with 5 records, harvested once
    url = f"sqlite:///{tmp_path / 'requests.db'}"
    log.append([make_record(i) for i in range(5)])
    first = run_harvest(RequestLogSource(url), tmp_path / "raw", tmp_path / "state")
    # when 3 more are logged and it is harvested again
    log.append([make_record(i) for i in range(5, 8)])
    second = run_harvest(RequestLogSource(url), tmp_path / "raw", tmp_path / "state")
    # then the second run got only the 3 new ones, the watermark is the last seq
    assert (first.n_valid, second.n_valid) == (5, 3), f"got {first.n_valid}, {second.n_valid}"
    assert second.end_watermark == {"seq": 8}, f"watermark {second.end_watermark}"
    ids = harvested_ids(tmp_path / "raw")
    assert sorted(ids) == [f"req-{i:06d}" for i in range(8)], f"harvested ids {ids}"


def test_requestlog_limit_pages_through_the_log(log: RequestLog, tmp_path: Path) -> None:
    # given 7 records and a limit of 3 per run
    url = f"sqlite:///{tmp_path / 'requests.db'}"
    log.append([make_record(i) for i in range(7)])
    # when harvested until a run reads nothing
    counts = []
    while (n := run_harvest(RequestLogSource(url), tmp_path / "raw", tmp_path / "state", limit=3).n_read) > 0:
        counts.append(n)
    # then runs read 3, 3, 1 and each record lands once
    assert counts == [3, 3, 1], f"runs read {counts}"
    assert len(set(harvested_ids(tmp_path / "raw"))) == 7, "each record once"


# -- bad input ---------------------------------------------------------------------------------------

BAD_LINES: list[tuple[bytes, str]] = [
    (line(100)[:57], "bad_json"),  # a writer killed mid-line
    (orjson.dumps({**orjson.loads(line(101)), "prompt_tokens": "twelve"}), "wrong_type"),
    (orjson.dumps({**orjson.loads(line(102)), "messages": "hello"}), "wrong_type"),
    (b"\x8f\xff\xfe\x81garbage\xc3(", "bad_encoding"),
    (b'{"request_id": "x' + b"a" * (10 * 1024 * 1024) + b'"}', "oversize"),
    (line(103)[:30] + b"\x00\x00" + line(103)[30:], "null_bytes"),
    (orjson.dumps({k: v for k, v in orjson.loads(line(104)).items() if k != "model_name"}), "missing_field"),
    (b"[1, 2, 3]", "wrong_type"),
    (orjson.dumps({**orjson.loads(line(105)), "messages": []}), "invalid_record"),
]


@pytest.mark.parametrize(("raw", "reason"), BAD_LINES, ids=[reason for _, reason in BAD_LINES])
def test_classify_gives_each_bad_line_its_reason(raw: bytes, reason: str) -> None:
    outcome = classify(raw, MAX_BYTES)
    assert isinstance(outcome, Rejection), f"{raw[:60]!r} should be rejected"
    assert outcome.reason == reason, f"{raw[:60]!r}: got {outcome.reason} ({outcome.detail}), want {reason}"


def test_bad_input_file_harvests_valid_and_quarantines_each_bad_line(inbox: Path, tmp_path: Path) -> None:
    # given a file mixing 5 valid lines with one of each kind of bad line
    lines = [line(i) for i in range(5)]
    mixed = [
        lines[0],
        *[raw for raw, _ in BAD_LINES[:5]],
        lines[1],
        lines[2],
        *[raw for raw, _ in BAD_LINES[5:]],
    ]
    mixed += [lines[3], lines[4]]
    (inbox / "mixed.jsonl").write_bytes(b"\n".join(mixed) + b"\n")
    # when harvested with a threshold above the bad share
    result = harvest_files(inbox, tmp_path, max_malformed_share=0.9)
    # then the run completes, the valid ones are harvested and each bad one is quarantined with its reason
    assert sorted(harvested_ids(tmp_path / "raw")) == [f"req-{i:06d}" for i in range(5)], (
        "valid lines harvested"
    )
    expected = Counter(reason for _, reason in BAD_LINES)
    assert result.reasons == dict(expected), f"reasons {result.reasons} != {dict(expected)}"
    entries = quarantined(tmp_path / "raw")
    assert [e["reason"] for e in entries] == [reason for _, reason in BAD_LINES], (
        "one entry per bad line, in order"
    )
    assert all(len(str(e["raw"])) <= 4 * 2048 for e in entries), "raw previews are truncated"
    assert all({"reason", "detail", "source", "position", "raw"} <= e.keys() for e in entries), "entry fields"
    assert result.md5.keys() == {str(result.partition), str(result.quarantine)}, "both partitions have an md5"


def test_malformed_share_over_threshold_fails_without_advancing(inbox: Path, tmp_path: Path) -> None:
    # given 2 valid and 2 bad lines (50% malformed)
    (inbox / "a.jsonl").write_bytes(b"\n".join([line(0), b"{oops", line(1), b"nope"]) + b"\n")
    # when harvested with a 20% threshold
    with pytest.raises(MalformedShareExceeded, match="2 of 4 records malformed") as caught:
        harvest_files(inbox, tmp_path, max_malformed_share=0.2)
    # then the quarantine is kept, no valid partition is written and the watermark did not move
    assert caught.value.result.reasons == {"bad_json": 2}, f"reasons {caught.value.result.reasons}"
    assert len(quarantined(tmp_path / "raw")) == 2, "the quarantine is written for inspection"
    assert harvested_ids(tmp_path / "raw") == [], "no valid partition while the run fails"
    # and a re-run with a higher threshold harvests everything once, replacing the same quarantine
    result = harvest_files(inbox, tmp_path, max_malformed_share=0.6)
    assert result.n_valid == 2, f"re-run harvested {result.n_valid}"
    assert len(quarantined(tmp_path / "raw")) == 2, "the quarantine file was replaced, not duplicated"


# -- crashes -----------------------------------------------------------------------------------------


class Crash(RuntimeError):
    pass


def crash(*_args: object, **_kwargs: object) -> None:
    raise Crash("killed")


@pytest.mark.parametrize("point", ["commit_watermark", "write_or_remove"])
def test_crash_then_rerun_harvests_each_record_exactly_once(
    point: str, inbox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given one harvested run and then more records (plus a bad line)
    path = inbox / "a.jsonl"
    path.write_bytes(b"\n".join(line(i) for i in range(3)) + b"\n")
    harvest_files(inbox, tmp_path)
    with path.open("ab") as out:
        out.write(b"\n".join([line(3), b"{bad", line(4)]) + b"\n")
    # when the next run is killed (after the write, before the commit; or before the write)
    with monkeypatch.context() as patch:
        patch.setattr(harvest_module, point, crash)
        with pytest.raises(Crash):
            harvest_files(inbox, tmp_path, max_malformed_share=0.5)
    # and more records arrive before the re-run
    with path.open("ab") as out:
        out.write(line(5) + b"\n")
    harvest_files(inbox, tmp_path, max_malformed_share=0.5)
    # then each source record is in exactly one partition, and the bad line in one quarantine entry
    ids = harvested_ids(tmp_path / "raw")
    assert sorted(ids) == [f"req-{i:06d}" for i in range(6)], f"crash at {point}: harvested {sorted(ids)}"
    assert len(quarantined(tmp_path / "raw")) == 1, f"crash at {point}: quarantine duplicated or lost"


def test_crash_between_partition_and_quarantine_write(
    inbox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a file with a bad line, and a run killed after the quarantine but before the valid partition
    (inbox / "a.jsonl").write_bytes(b"\n".join([line(0), b"{bad", line(1)]) + b"\n")
    real = harvest_module.write_or_remove
    calls: list[Path] = []

    def second_write_crashes(path: Path, lines: list[bytes], tmp_written: str = "") -> str | None:
        calls.append(path)
        if len(calls) == 2:
            raise Crash("killed")
        return real(path, lines, tmp_written)

    with monkeypatch.context() as patch:
        patch.setattr(harvest_module, "write_or_remove", second_write_crashes)
        with pytest.raises(Crash):
            harvest_files(inbox, tmp_path, max_malformed_share=0.5)
    # when re-run
    harvest_files(inbox, tmp_path, max_malformed_share=0.5)
    # then each record once
    assert sorted(harvested_ids(tmp_path / "raw")) == ["req-000000", "req-000001"], "each record once"
    assert len(quarantined(tmp_path / "raw")) == 1, "the bad line once"


def test_requestlog_crash_before_commit_then_rerun(
    log: RequestLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a log of 4 records and a run killed before its watermark commit
    url = f"sqlite:///{tmp_path / 'requests.db'}"
    log.append([make_record(i) for i in range(4)])
    with monkeypatch.context() as patch:
        patch.setattr(harvest_module, "commit_watermark", crash)
        with pytest.raises(Crash):
            run_harvest(RequestLogSource(url), tmp_path / "raw", tmp_path / "state")
    # when 2 more arrive and it is re-run
    log.append([make_record(i) for i in range(4, 6)])
    run_harvest(RequestLogSource(url), tmp_path / "raw", tmp_path / "state")
    # then each record is harvested exactly once
    ids = harvested_ids(tmp_path / "raw")
    assert sorted(ids) == [f"req-{i:06d}" for i in range(6)], f"harvested {sorted(ids)}"


# -- the demo history --------------------------------------------------------------------------------


def test_demo_history_quarantine_matches_the_manifest(tmp_path: Path) -> None:
    # given the demo history of 500 records
    inbox = tmp_path / "incoming"
    manifest = write_demo(
        DemoParams(n_records=500), "support", tmp_path / "demo", history_path=inbox / "demo-history.jsonl"
    )
    # when harvested
    result = harvest_files(inbox, tmp_path)
    # then the quarantine counts are the manifest's invalid kinds, and every valid line is harvested
    expected: Counter[str] = Counter()
    for kind in INVALID_KINDS:
        expected[DEMO_REASON[kind]] += manifest.counts[kind]
    assert result.reasons == {k: v for k, v in expected.items() if v}, f"{result.reasons} != {dict(expected)}"
    assert result.n_valid == manifest.n_valid_lines, f"valid {result.n_valid} != {manifest.n_valid_lines}"
    assert result.n_read == 500, f"read {result.n_read} lines"


# -- the task layer ----------------------------------------------------------------------------------


def test_summary_markdown_lists_counts_by_reason(inbox: Path, tmp_path: Path) -> None:
    (inbox / "a.jsonl").write_bytes(b"\n".join([line(0), b"{bad", line(1)]) + b"\n")
    markdown = summary_markdown(harvest_files(inbox, tmp_path, max_malformed_share=0.5))
    for row in ("| read | 3 |", "| valid | 2 |", "| quarantined: bad_json | 1 |"):
        assert row in markdown, f"{row} missing from the artifact:\n{markdown}"


def test_make_source_rejects_unknown_kinds() -> None:
    assert isinstance(make_source("files", "data/incoming"), FilesSource), "files -> files source"
    with pytest.raises(ValueError, match="unknown harvest source 'kafka'"):
        make_source("kafka", "kafka://broker/topic")
