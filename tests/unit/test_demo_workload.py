"""The demo workload: deterministic, leak-free, and every kind of bad record is really there.

The scan below classifies each history line from the outside (bytes, JSON,
RequestRecord validation, regexes for personal data) and must agree with the
counts the generator wrote into the manifest.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from flywheel.demo import (
    INVALID_KINDS,
    KINDS,
    VALID_KINDS,
    DemoManifest,
    EvalCase,
    HistoryGenerator,
    generate_history,
    knowledge_problems,
    load_knowledge,
    normalize_question,
    split_questions,
    write_demo,
)
from flywheel.demo.history import MIN_RECORDS_FOR_ALL_KINDS, REFERENCE_END
from flywheel.demo.traffic import (
    FIRST_NAMES,
    INJECTION_PROMPTS,
    LAST_NAMES,
    OVERSIZE_MIN_CHARS,
    luhn_valid,
)
from flywheel.schemas import RequestRecord
from flywheel.settings import DemoParams

APP = "support-assistant"
FILES = ("knowledge.jsonl", "eval.jsonl", "history.jsonl", "manifest.json")

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
CARD = re.compile(r"(?<!\d)\d(?:[ -]?\d){12,18}(?!\d)")
IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d)")
PHONE = re.compile(r"(?:\+\d{1,3}[ .-]?)?\(?\d{2,3}\)?[ .-]?\d{3,4}[ .-]?\d{3,6}")
NAME = re.compile(rf"\b(?:{'|'.join(FIRST_NAMES)}) (?:{'|'.join(re.escape(n) for n in LAST_NAMES)})\b")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _lines(demo: Path) -> list[bytes]:
    data = (demo / "history.jsonl").read_bytes()
    assert data.endswith(b"\n"), "history.jsonl should end with a newline"
    return data[:-1].split(b"\n")


def _train_texts(eval_paraphrases: int) -> set[str]:
    train, _ = split_questions(load_knowledge(), eval_paraphrases)
    return {q.text for q in train}


def _has_card(text: str) -> bool:
    return any(luhn_valid(re.sub(r"\D", "", m.group())) for m in CARD.finditer(text))


def _classify(line: bytes, seen: set[bytes], train_texts: set[str]) -> str:
    """The kind of one history line, judged only from what is in the file."""
    if line in seen:
        return "duplicate"
    seen.add(line)
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return "bad_encoding"
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return "malformed_json"
    try:
        record = RequestRecord.model_validate(data)
    except ValidationError as error:
        return "missing_field" if all(e["type"] == "missing" for e in error.errors()) else "wrong_type"
    content = record.messages[-1].content
    if not content.strip():
        return "empty"
    if len(content) > OVERSIZE_MIN_CHARS:
        return "oversize"
    if content in INJECTION_PROMPTS:
        return "injection"
    if record.status == "error":
        return "upstream_error"
    if EMAIL.search(content):
        return "pii_email"
    if _has_card(content):
        return "pii_card"
    if IPV4.search(content):
        return "pii_ip"
    if PHONE.search(content):
        return "pii_phone"
    if NAME.search(content):
        return "pii_name"
    return "normal" if content in train_texts else "near_duplicate"


@pytest.fixture(scope="module")
def demo_300(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DemoManifest]:
    out = tmp_path_factory.mktemp("demo300")
    return out, write_demo(DemoParams(n_records=300), APP, out)


# -- knowledge base --------------------------------------------------------------------


def test_knowledge_base_has_enough_sound_facts() -> None:
    # given the shipped knowledge base
    facts = load_knowledge()
    # then it is large enough, each fact has six paraphrases, and nothing repeats
    assert len(facts) >= 60, f"need at least 60 facts, have {len(facts)}"
    assert all(len(f.paraphrases) == 6 for f in facts), "every fact should have exactly 6 paraphrases"
    assert knowledge_problems(facts) == [], "knowledge base has structural problems"
    questions = [normalize_question(p) for f in facts for p in f.paraphrases]
    assert len(set(questions)) == len(questions), "paraphrases must be unique after normalisation"


@pytest.mark.parametrize("eval_paraphrases", [1, 2, 3, 4])
def test_split_holds_out_paraphrases_without_overlap(eval_paraphrases: int) -> None:
    # given the knowledge base / when split with k held-out paraphrases per fact
    facts = load_knowledge()
    train, held_out = split_questions(facts, eval_paraphrases)
    # then the sizes are right and no normalised question is on both sides
    assert len(held_out) == eval_paraphrases * len(facts), "k eval questions per fact"
    assert len(train) == (6 - eval_paraphrases) * len(facts), "the rest go to training"
    overlap = {normalize_question(q.text) for q in train} & {normalize_question(q.text) for q in held_out}
    assert not overlap, f"eval questions leak into the training pool: {sorted(overlap)[:3]}"


@pytest.mark.parametrize("eval_paraphrases", [0, 6, -1])
def test_split_rejects_a_holdout_that_leaves_no_training_data(eval_paraphrases: int) -> None:
    with pytest.raises(ValueError, match="eval_paraphrases"):
        split_questions(load_knowledge(), eval_paraphrases)


# -- determinism -----------------------------------------------------------------------


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    # given the same params written twice into two folders
    params = DemoParams(seed=11, n_records=500)
    first = write_demo(params, APP, tmp_path / "a")
    second = write_demo(params, APP, tmp_path / "b")
    # then every file is byte-identical, the manifest included
    for name in FILES:
        assert _sha256(tmp_path / "a" / name) == _sha256(tmp_path / "b" / name), f"{name} differs"
    assert first == second, "manifests should be equal"
    assert first.files["history"].sha256 == _sha256(tmp_path / "a" / "history.jsonl"), (
        "manifest sha256 should match the file"
    )


def test_different_seed_changes_history_but_not_the_eval_suite(tmp_path: Path) -> None:
    # given two seeds
    a = write_demo(DemoParams(seed=1, n_records=300), APP, tmp_path / "a")
    b = write_demo(DemoParams(seed=2, n_records=300), APP, tmp_path / "b")
    # then the logs differ while knowledge and eval suite (seed-independent) stay put
    assert a.files["history"].sha256 != b.files["history"].sha256, "history should depend on the seed"
    assert a.files["eval"].sha256 == b.files["eval"].sha256, "the eval suite must not depend on the seed"
    assert a.files["knowledge"].sha256 == b.files["knowledge"].sha256, "knowledge must not depend on seed"


def test_a_generator_iterated_twice_yields_the_same_lines() -> None:
    generator = HistoryGenerator(DemoParams(n_records=200, seed=4), APP)
    first = list(generator)
    assert first == list(generator), "re-iterating a generator should replay the same log"


def test_generate_history_yields_the_lines_write_demo_writes(demo_300: tuple[Path, DemoManifest]) -> None:
    # given the written demo / when the same params are generated in memory
    out, _ = demo_300
    lines = list(generate_history(DemoParams(n_records=300), APP))
    # then, encoded the way the writer does it, they are the file's bytes
    data = ("\n".join(lines) + "\n").encode("utf-8", errors="surrogateescape")
    assert data == (out / "history.jsonl").read_bytes(), "generator and file disagree"


# -- leakage ---------------------------------------------------------------------------


def test_eval_file_holds_the_held_out_questions(demo_300: tuple[Path, DemoManifest]) -> None:
    out, manifest = demo_300
    cases = [EvalCase.model_validate_json(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    _, held_out = split_questions(load_knowledge(), manifest.eval_paraphrases)
    assert [c.question for c in cases] == [q.text for q in held_out], "eval.jsonl is the held-out split"
    assert len({c.id for c in cases}) == len(cases), "eval case ids should be unique"
    assert {(c.suite, c.version) for c in cases} == {(manifest.eval_suite, manifest.eval_suite_version)}, (
        "every case carries the suite name and version"
    )


def test_regression_file_asks_every_fact_once_in_its_training_phrasing(
    demo_300: tuple[Path, DemoManifest],
) -> None:
    # given the written regression suite and the split of questions
    out, manifest = demo_300
    lines = (out / "regression.jsonl").read_text().splitlines()
    cases = [EvalCase.model_validate_json(line) for line in lines]
    train, held_out = split_questions(load_knowledge(), manifest.eval_paraphrases)
    # then every fact is asked once, in a phrasing from the training pool, never a held-out one
    assert sorted(c.fact_id for c in cases) == sorted(f.id for f in load_knowledge()), "one case per fact"
    assert {c.question for c in cases} <= {q.text for q in train}, (
        "regression questions are training questions"
    )
    assert not {c.question for c in cases} & {q.text for q in held_out}, "no held-out question is replayed"
    suites = {(c.suite, c.version) for c in cases}
    assert suites == {("quillbox-support-regression", manifest.knowledge_version)}, (
        "every case carries the regression suite's id and the knowledge version"
    )
    assert manifest.files["regression"].lines == len(cases), "the manifest digests the regression file"


def test_history_never_contains_an_eval_question(demo_300: tuple[Path, DemoManifest]) -> None:
    # given the eval questions (normalised) and every line of the log
    out, _ = demo_300
    eval_keys = {
        f" {normalize_question(c.question)} "
        for c in (EvalCase.model_validate_json(x) for x in (out / "eval.jsonl").read_text().splitlines())
    }
    # when each line is normalised as text (bad bytes replaced, JSON or not)
    for number, line in enumerate(_lines(out), start=1):
        text = f" {normalize_question(line.decode('utf-8', errors='replace'))} "
        # then no eval question appears anywhere in it
        leaked = [key for key in eval_keys if key in text]
        assert not leaked, f"line {number} contains eval question {leaked[0].strip()!r}"


def test_knowledge_file_lists_only_training_questions(demo_300: tuple[Path, DemoManifest]) -> None:
    out, manifest = demo_300
    rows = [json.loads(line) for line in (out / "knowledge.jsonl").read_text().splitlines()]
    listed = {normalize_question(q) for row in rows for q in row["train_questions"]}
    _, held_out = split_questions(load_knowledge(), manifest.eval_paraphrases)
    assert not listed & {normalize_question(q.text) for q in held_out}, "knowledge.jsonl leaks eval questions"
    assert len(rows) == manifest.n_facts, "one knowledge row per fact"


# -- record kinds ----------------------------------------------------------------------


@pytest.mark.parametrize(("n_records", "seed"), [(MIN_RECORDS_FOR_ALL_KINDS, 3), (300, 42), (300, 7)])
def test_every_kind_appears_and_the_manifest_matches_a_scan(
    tmp_path: Path, n_records: int, seed: int
) -> None:
    # given a small demo
    manifest = write_demo(DemoParams(n_records=n_records, seed=seed), APP, tmp_path)
    # when every line is classified from the outside
    seen: set[bytes] = set()
    train = _train_texts(manifest.eval_paraphrases)
    found = Counter(_classify(line, seen, train) for line in _lines(tmp_path))
    # then every kind is there, and the scan agrees with the manifest kind by kind
    missing = [kind for kind in KINDS if manifest.counts.get(kind, 0) < 1]
    assert not missing, f"kinds missing from the manifest: {missing}"
    assert dict(found) == {k: v for k, v in manifest.counts.items() if v}, "scan and manifest disagree"
    assert sum(manifest.counts.values()) == n_records, "one kind per record"


def test_valid_lines_validate_and_invalid_ones_do_not(demo_300: tuple[Path, DemoManifest]) -> None:
    # given every line of a 300-record log
    out, manifest = demo_300
    valid = 0
    for line in _lines(out):
        try:
            record = RequestRecord.model_validate_json(line)
        except ValidationError:
            continue
        valid += 1
        # then each valid record is a plausible answer from the earlier production model
        assert record.application == APP, "application should be the one asked for"
        assert record.model_name == "quillbox-gpt-large", "history comes from the earlier model"
        assert record.user_hash and record.session_hash, "user and session ids are hashed, not absent"
        assert (record.status == "ok") == (record.response is not None), "ok records carry a response"
    assert valid == manifest.n_valid_lines, "valid line count should match the manifest"
    assert manifest.n_invalid_lines == sum(manifest.counts[k] for k in INVALID_KINDS), "invalid count"
    assert set(VALID_KINDS) | set(INVALID_KINDS) == set(KINDS), "kinds are either valid or invalid"


def test_bad_encoding_lines_are_not_utf8_but_are_json_underneath(
    demo_300: tuple[Path, DemoManifest],
) -> None:
    out, manifest = demo_300
    bad = []
    for line in _lines(out):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(line)
    assert len(bad) == manifest.counts["bad_encoding"], "bad_encoding count"
    for line in bad:
        record = RequestRecord.model_validate_json(line.decode("cp1252"))
        assert record.messages, "a mis-encoded line is a record in the wrong code page"


def test_near_duplicates_are_small_edits_of_training_questions(tmp_path: Path) -> None:
    manifest = write_demo(DemoParams(n_records=2000, seed=5), APP, tmp_path)
    train = sorted(_train_texts(manifest.eval_paraphrases))
    seen: set[bytes] = set()
    near = [
        RequestRecord.model_validate_json(line).messages[-1].content
        for line in _lines(tmp_path)
        if _classify(line, seen, set(train)) == "near_duplicate"
    ]
    assert len(near) == manifest.counts["near_duplicate"], "near-duplicate count"
    for question in near:
        close = difflib.get_close_matches(question, train, n=1, cutoff=0.75)
        assert close, f"{question!r} is not a small edit of any training question"


def test_timestamps_span_the_history_window_before_the_fixed_end(
    demo_300: tuple[Path, DemoManifest],
) -> None:
    out, manifest = demo_300
    stamps = []
    for line in _lines(out):
        try:
            stamps.append(RequestRecord.model_validate_json(line).timestamp)
        except ValidationError:
            continue
    start = REFERENCE_END - timedelta(days=manifest.history_days)
    assert all(start <= t < REFERENCE_END for t in stamps), "timestamps outside the history window"
    assert max(stamps) - min(stamps) > timedelta(days=manifest.history_days / 2), "history is spread out"


# -- answer quality and feedback -------------------------------------------------------


def test_feedback_correlates_with_answer_correctness(tmp_path: Path) -> None:
    # given a 3000-record log and the reference answer of every training question
    manifest = write_demo(DemoParams(n_records=3000, seed=9), APP, tmp_path)
    facts = {f.id: f for f in load_knowledge()}
    train, _ = split_questions(load_knowledge(), manifest.eval_paraphrases)
    reference = {q.text: facts[q.fact_id].answer for q in train}
    ratings: dict[bool, Counter[int | None]] = {True: Counter(), False: Counter()}
    # when each normal record is judged right iff it contains its reference answer
    for line in _lines(tmp_path):
        try:
            record = RequestRecord.model_validate_json(line)
        except ValidationError:
            continue
        question = record.messages[-1].content
        if record.status != "ok" or question not in reference or record.response is None:
            continue
        right = reference[question] in record.response
        ratings[right][record.feedback.score if record.feedback else None] += 1
    n_right, n_wrong = sum(ratings[True].values()), sum(ratings[False].values())
    wrong_share = n_wrong / (n_right + n_wrong)
    down_if_right = ratings[True][-1] / n_right
    down_if_wrong = ratings[False][-1] / n_wrong
    up_if_right = ratings[True][1] / n_right
    up_if_wrong = ratings[False][1] / n_wrong
    # then the old model was mostly right, and thumbs follow correctness
    assert 0.05 < wrong_share < 0.3, f"about 15% of answers should be wrong, got {wrong_share:.2f}"
    assert down_if_wrong > 3 * down_if_right, (
        f"thumbs down should be far likelier on wrong answers ({down_if_wrong:.2f} vs {down_if_right:.2f})"
    )
    assert up_if_right > 3 * up_if_wrong, (
        f"thumbs up should be far likelier on right answers ({up_if_right:.2f} vs {up_if_wrong:.2f})"
    )
    assert sum(manifest.feedback["wrong"].values()) > 0, "the manifest counts wrong answers too"
