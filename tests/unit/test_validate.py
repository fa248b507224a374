"""Data validation: the raw and curated suites pass good frames, name what fails, and write data docs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flywheel.schemas import ChatMessage
from tasks.curate.frame import frame_from_records
from tasks.validate import (
    PII_PATTERNS,
    DataValidationError,
    ValidationReport,
    curated_suite,
    raise_on_failure,
    raw_suite,
    validate,
)
from tasks.validate.suites import PII_GATE, card_candidate, luhn_ok
from tests.helpers.request_records import make_record

# Importing great_expectations takes seconds: build each suite once per module.


@pytest.fixture(scope="module")
def raw() -> object:
    return raw_suite()


@pytest.fixture(scope="module")
def curated() -> object:
    return curated_suite(split_shares={"train": (0.5, 0.95), "validation": (0.0, 0.3), "eval": (0.0, 0.3)})


def raw_frame(n: int = 40) -> pd.DataFrame:
    """A raw curation frame built the way curate builds it, from realistic records."""
    records = [make_record(i).model_dump(mode="json") for i in range(n)]
    records[3]["feedback"] = {"score": -1}
    records[4]["feedback"] = {"score": 1}
    return frame_from_records(records)


def curated_frame(n: int = 40) -> pd.DataFrame:
    """A curated frame: clusters of two rows, 80/10/10 by cluster."""
    cluster = np.arange(n) // 2
    split = np.select([cluster % 10 < 8, cluster % 10 < 9], ["train", "validation"], "eval")
    return pd.DataFrame(
        {
            "request_id": [f"req-{i:06d}" for i in range(n)],
            "prompt": [f"How do I reset my password, attempt {i}?" for i in range(n)],
            "response": ["Open Settings, then Security, then choose Reset password."] * n,
            "feedback": [1.0 if i % 3 == 0 else np.nan for i in range(n)],
            "cluster": cluster.astype("int64"),
            "split": split,
            "messages": [[{"role": "user", "content": "hi"}]] * n,  # a column of dicts: GX must not need it
        }
    ).assign(
        # numbers that look like PII but are not (curate keeps them): must pass
        response=lambda f: f["response"].where(
            f.index % 4 != 3, "Your parcel 4000 1234 5678 9011 (SKU-555-123-4567) ships from 10.2.3 today."
        )
    )


def failing(report: ValidationReport) -> dict[str, int | None]:
    """Failed expectations as `type(column)` -> unexpected count."""
    return {o.label: o.unexpected_count for o in report.failures}


# ---- raw suite


def test_good_raw_frame_passes(raw: object, tmp_path: Path) -> None:
    # given a raw frame built from valid records
    frame = raw_frame()
    # when it is validated
    report = validate(frame, raw, tmp_path / "docs")
    # then every expectation holds and raise_on_failure lets it through
    assert report.success, f"a good raw frame should pass, failed: {failing(report)}"
    assert raise_on_failure(report) is report, "raise_on_failure should return a passing report"
    assert report.n_rows == len(frame), "the report should count the frame's rows"
    assert "passed" in report.markdown(), f"the markdown should say it passed:\n{report.markdown()}"


def test_tool_role_fails_naming_expectation_column_and_docs(raw: object, tmp_path: Path) -> None:
    # given one record with a tool turn (legal in a RequestRecord, not in training data)
    records = [make_record(i).model_dump(mode="json") for i in range(10)]
    messages = [
        ChatMessage(role="user", content="What is the weather?"),
        ChatMessage(role="tool", content='{"temp": 21}'),
        ChatMessage(role="user", content="And tomorrow?"),
    ]
    records[7] = make_record(7, messages=messages).model_dump(mode="json")
    frame = frame_from_records(records)
    # when it is validated and checked
    report = validate(frame, raw, tmp_path / "docs")
    with pytest.raises(DataValidationError) as caught:
        raise_on_failure(report)
    # then the roles expectation fails on that one row, and the error says where to look
    message = str(caught.value)
    assert failing(report) == {"expect_column_values_to_match_regex(roles)": 1}, (
        f"only the roles regex should fail, once: {failing(report)}"
    )
    assert "expect_column_values_to_match_regex(roles)" in message, (
        f"error should name the expectation: {message}"
    )
    assert "1 unexpected" in message, f"error should give the unexpected count: {message}"
    assert "req-000007: 'user,tool,user'" in message, f"error should show the offending row: {message}"
    assert str(tmp_path / "docs" / "index.html") in message, (
        f"error should give the data docs path: {message}"
    )
    assert "expect_column_values_to_match_regex" in report.markdown(), "the markdown should list the failure"
    (page,) = (tmp_path / "docs" / "validations").rglob("*.html")
    html = page.read_text()
    assert "roles are only system/user/assistant" in html, "the data docs page should show the failed rule"
    assert "user,tool,user" in html, "the data docs page should show the unexpected value"


def test_one_request_id_on_two_different_requests_fails(raw: object, tmp_path: Path) -> None:
    # given a frame where one request id names two different requests
    frame = raw_frame()
    frame.loc[5, "request_id"] = frame.loc[6, "request_id"]
    # when it is validated
    report = validate(frame, raw, tmp_path / "docs")
    # then the conflicting-id expectation fails on both rows
    assert failing(report) == {"expect_column_values_to_be_null(conflicting_request_id)": 2}, (
        f"the conflicting-id expectation should fail on the two rows: {failing(report)}"
    )


def test_a_redelivered_request_passes_the_raw_suite(raw: object, tmp_path: Path) -> None:
    # given a frame where one request arrived twice, byte for byte (at-least-once shipping)
    frame = raw_frame()
    frame = pd.concat([frame, frame.iloc[[3]]], ignore_index=True)
    # when it is validated
    report = validate(frame, raw, tmp_path / "docs")
    # then it passes: curate drops the re-delivery with its reason
    assert report.success, f"a re-delivery is not a broken record: {failing(report)}"


def test_each_bad_raw_value_fails_its_own_expectation(raw: object, tmp_path: Path) -> None:
    # given one bad value per rule, each in its own row
    frame = raw_frame()
    frame.loc[2, "prompt_tokens"] = -1
    frame.loc[3, "feedback"] = 0.5
    frame.loc[4, "status"] = "timeout"
    frame.loc[5, "roles"] = "system,user,assistant"  # ends with the model's turn
    # when it is validated
    report = validate(frame, raw, tmp_path / "docs")
    # then each rule fails once, and nothing else does
    assert failing(report) == {
        "expect_column_values_to_be_between(prompt_tokens)": 1,
        "expect_column_values_to_be_in_set(feedback)": 1,
        "expect_column_values_to_be_in_set(status)": 1,
        "expect_column_values_to_match_regex(roles)": 1,
    }, f"each bad value should fail its own rule: {failing(report)}"


def test_missing_column_is_a_named_failure(raw: object, tmp_path: Path) -> None:
    # given a frame without its roles column
    frame = raw_frame().drop(columns=["roles"])
    # when it is validated
    report = validate(frame, raw, tmp_path / "docs")
    # then the column's existence fails, and the checks on it fail rather than crash
    labels = set(failing(report))
    assert "expect_column_to_exist(roles)" in labels, f"a missing column should be named: {labels}"
    assert "expect_column_values_to_match_regex(roles)" in labels, f"checks on it should fail: {labels}"


def test_data_docs_index_lists_every_run_in_the_folder(raw: object, curated: object, tmp_path: Path) -> None:
    # when a raw and a curated frame are validated into one docs folder
    docs = tmp_path / "docs"
    raw_report = validate(raw_frame(), raw, docs)
    curated_report = validate(curated_frame(), curated, docs)
    # then the site's index exists and links both runs' pages
    index = curated_report.data_docs
    assert index == (docs / "index.html").resolve(), f"unexpected index path {index}"
    assert index.is_file(), f"data docs index missing at {index}"
    html = index.read_text()
    for page in (*raw_report.pages, *curated_report.pages):
        assert page.is_file(), f"the run's page should be written: {page}"
        assert page.relative_to(docs.resolve()).as_posix() in html, f"the index should link {page}"


# ---- curated suite


def test_good_curated_frame_passes(curated: object, tmp_path: Path) -> None:
    frame = curated_frame()
    report = validate(frame, curated, tmp_path / "docs")
    assert report.success, f"a good curated frame should pass, failed: {failing(report)}"
    assert list(frame.columns)[-1] == "messages", "validate must not add columns to the caller's frame"


def _email(frame: pd.DataFrame) -> None:
    frame.loc[4, "prompt"] = "mail me at jane.doe@example.com please"


def _straddle(frame: pd.DataFrame) -> None:
    # cluster 0 (train) gets a row in eval
    frame.loc[1, "split"] = "eval"


def test_each_curated_damage_fails_its_own_expectation(curated: object, tmp_path: Path) -> None:
    # given a good curated frame with several kinds of damage, each in its own rows
    frame = curated_frame()
    _email(frame)
    _straddle(frame)
    frame.loc[6, "response"] = "Call us on +1 555 123 4567."
    frame.loc[8, "response"] = ""
    frame.loc[[10, 11], "split"] = "test"
    frame.loc[12, "feedback"] = -1.0  # rated down: curate drops these
    frame.loc[14, "response"] = "Your card 4111-1111-1111-1111 is on file."  # passes Luhn
    # when it is validated
    report = validate(frame, curated, tmp_path / "docs")
    # then each damage fails its own expectation with its own count, and nothing else fails
    by_rule = {o.description: o.unexpected_count for o in report.failures}
    assert by_rule == {
        "no email left in prompt": 1,
        "no phone number left in response": 1,
        "no card number left in response": 1,
        "response has 1-4000 characters": 1,
        "split is train, validation or eval": 2,
        "feedback is one of [0.0, 1.0] or unrated": 1,
        "no near-duplicate cluster in two splits (values: cluster ids)": 2,
    }, f"unexpected failures: {by_rule}"
    labels = {o.description: o.label for o in report.failures}
    assert labels["no email left in prompt"] == "expect_column_values_to_not_match_regex(prompt)", labels
    assert labels["no card number left in response"] == "expect_column_values_to_not_match_regex(response)", (
        labels
    )


def test_no_train_rows_fails_row_count_and_shares(curated: object, tmp_path: Path) -> None:
    # given a curated frame with nothing in train
    frame = curated_frame()
    frame["split"] = np.where(frame["cluster"] % 2 == 0, "validation", "eval")
    # when it is validated
    report = validate(frame, curated, tmp_path / "docs")
    # then the train row count and every share bound fail
    assert set(failing(report)) == {
        "expect_table_row_count_to_be_between",
        "expect_column_proportion_of_non_null_values_to_be_between(in_split_train)",
        "expect_column_proportion_of_non_null_values_to_be_between(in_split_validation)",
        "expect_column_proportion_of_non_null_values_to_be_between(in_split_eval)",
    }, f"unexpected failures: {failing(report)}"
    shares = {o.column: o.observed for o in report.failures if o.column}
    assert shares["in_split_train"] == "0.0", f"the observed train share should be 0: {shares}"


def test_leftover_email_error_names_rule_but_not_the_email(curated: object, tmp_path: Path) -> None:
    # given a curated frame with an email left in a prompt
    frame = curated_frame()
    _email(frame)
    # when it is checked
    with pytest.raises(DataValidationError) as caught:
        raise_on_failure(validate(frame, curated, tmp_path / "docs"))
    # then the error names the rule and the row, and does not repeat the personal data
    message = str(caught.value)
    assert "expect_column_values_to_not_match_regex(prompt): 'no email left in prompt'" in message, message
    assert "req-000004" in message, f"the offending row's id should be given: {message}"
    assert "jane.doe" not in message, f"the error must not repeat the email: {message}"
    assert "jane.doe" not in caught.value.report.markdown(), "the markdown must not repeat the email"


def test_straddling_cluster_examples_are_cluster_ids(curated: object, tmp_path: Path) -> None:
    frame = curated_frame()
    _straddle(frame)
    report = validate(frame, curated, tmp_path / "docs")
    (failure,) = report.failures
    assert failure.examples == ("req-000000: 0", "req-000001: 0"), (
        f"examples should name cluster 0: {failure}"
    )


def test_sampled_validation_still_finds_duplicates_and_straddles_exactly(
    curated: object, tmp_path: Path
) -> None:
    # given a larger frame with a duplicate id and a straddling cluster, both outside any small sample's luck
    frame = curated_frame(400)
    frame.loc[399, "request_id"] = frame.loc[0, "request_id"]
    _straddle(frame)
    # when only 20 rows are checked row by row
    report = validate(frame, curated, tmp_path / "docs", sample_rows=20)
    # then the whole-frame expectations still see every row
    assert report.sampled_rows == 20, "the report should say it sampled"
    assert failing(report) == {
        "expect_column_values_to_be_unique(request_id)": 2,
        "expect_column_values_to_be_null(straddling_cluster)": 2,
    }, f"duplicates and straddles must be found on all rows: {failing(report)}"
    assert "sample of 20" in report.markdown(), "the markdown should say row checks were sampled"


def test_share_bounds_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="train"):
        curated_suite(split_shares={"train": (0.9, 0.5)})


# ---- PII patterns (plain regexes: no GX)

PII_EXAMPLES = [
    ("email", "write to john.doe+x@mail.example.co.uk today"),
    ("card number", "card 4111 1111 1111 1111 ok"),
    ("card number", "card 4111-1111-1111-1111"),
    ("card number", "amex 378282246310005."),
    ("IPv4 address", "server at 192.168.0.1."),
    ("phone number", "call +1 555 123 4567"),
    ("phone number", "call (555) 123-4567"),
    ("phone number", "call 555.123.4567 now"),
]
NOT_PII = [
    "redacted: <EMAIL_ADDRESS>, <PHONE_NUMBER>, <CREDIT_CARD>, <IP_ADDRESS>",
    "SKU-555-123-4567 and 555-123-4567-89",
    "not an address: 1.2.999.4",
    "epoch ms 1700000000000",
    "version 10.2 and pi 3.14159",
    "order 5551234567",
    "a@b",
    "Python 3.11.7 is installed",
]


@pytest.mark.parametrize(("kind", "text"), PII_EXAMPLES)
def test_pii_pattern_finds_its_kind_and_passes_the_gate(kind: str, text: str) -> None:
    assert re.search(PII_PATTERNS[kind], text), f"{kind} pattern should match {text!r}"
    assert re.search(PII_GATE, text), f"the gate must let {text!r} through, or its {kind} goes unchecked"


@pytest.mark.parametrize("text", NOT_PII)
def test_pii_patterns_leave_ordinary_text(text: str) -> None:
    hits = [kind for kind, pattern in PII_PATTERNS.items() if re.search(pattern, text)]
    assert not hits, f"{text!r} is not personal data, matched {hits}"


def test_missing_split_column_is_reported_not_raised(curated: object, tmp_path: Path) -> None:
    # given a curated frame without its split column (derived columns cannot be computed)
    frame = curated_frame().drop(columns=["split"])
    # when it is validated
    report = validate(frame, curated, tmp_path / "docs")
    # then the report names the missing column and the checks that needed it
    labels = set(failing(report))
    assert "expect_column_to_exist(split)" in labels, f"the missing split column should be named: {labels}"
    assert "expect_column_values_to_be_null(straddling_cluster)" in labels, (
        f"straddle check should fail: {labels}"
    )


@pytest.mark.parametrize(
    ("digits", "valid"),
    [
        ("4111111111111111", True),
        ("378282246310005", True),
        ("4000123456789011", False),
        ("79927398713", True),
    ],
)
def test_luhn(digits: str, valid: bool) -> None:
    assert luhn_ok(digits) is valid, f"Luhn({digits}) should be {valid}"


def test_card_candidate_flags_only_luhn_valid_runs() -> None:
    texts = pd.Series(["parcel 4000 1234 5678 9011", "card 4111-1111-1111-1111", None, "no digits", "1234"])
    assert card_candidate(texts).tolist() == [False, True, False, False, False], (
        "only the Luhn-valid run should be flagged (null and short texts never)"
    )
