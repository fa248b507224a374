"""The demo dataset on disk: knowledge, held-out eval suite, request-log history, manifest.

`write_demo` is the one call the demo, the tests and the benchmarks share; the
same seed gives the same bytes in every file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict

from flywheel.demo.history import (
    HISTORY_MODEL_NAME,
    HISTORY_MODEL_VERSION,
    INVALID_KINDS,
    REFERENCE_END,
    HistoryGenerator,
)
from flywheel.demo.knowledge import (
    EVAL_SUITE,
    KNOWLEDGE_VERSION,
    REGRESSION_SUITE,
    Fact,
    load_knowledge,
    split_questions,
)
from flywheel.settings import DemoParams

GENERATOR_VERSION = "1"


class FileDigest(BaseModel):
    """One written file: its name inside the demo folder, size, lines and sha256."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    bytes: int
    lines: int
    sha256: str


class EvalCase(BaseModel):
    """One held-out question with its reference answer: a line of eval.jsonl."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    suite: str
    version: str
    fact_id: str
    topic: str
    question: str
    reference: str
    key_tokens: tuple[str, ...]


class DemoManifest(BaseModel):
    """What `write_demo` wrote: parameters, counts per record kind and file digests."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    generator_version: str
    knowledge_version: str
    seed: int
    n_records: int
    eval_paraphrases: int
    history_days: int
    application: str
    reference_end: datetime
    history_model: str
    eval_suite: str
    eval_suite_version: str
    n_facts: int
    n_train_questions: int
    n_eval_questions: int
    counts: dict[str, int]
    n_valid_lines: int
    n_invalid_lines: int
    feedback: dict[str, dict[str, int]]
    files: dict[str, FileDigest]


def eval_suite(eval_paraphrases: int, facts: tuple[Fact, ...] | None = None) -> list[EvalCase]:
    """The held-out eval cases: the last `eval_paraphrases` paraphrases of every fact."""
    facts = load_knowledge() if facts is None else facts
    by_id = {fact.id: fact for fact in facts}
    _, held_out = split_questions(facts, eval_paraphrases)
    return [
        EvalCase(
            id=question.id,
            suite=EVAL_SUITE,
            version=KNOWLEDGE_VERSION,
            fact_id=question.fact_id,
            topic=by_id[question.fact_id].topic,
            question=question.text,
            reference=by_id[question.fact_id].answer,
            key_tokens=by_id[question.fact_id].key_tokens,
        )
        for question in held_out
    ]


def regression_suite(facts: tuple[Fact, ...] | None = None) -> list[EvalCase]:
    """The fixed regression cases: every fact asked in its first, FAQ-style phrasing.

    These are questions customers do ask (they are in the training pool), so a
    served version must keep answering them as well as when it passed its gate:
    the nightly regression run replays them. The suite changes only with the
    knowledge base, whose version it carries.
    """
    facts = load_knowledge() if facts is None else facts
    return [
        EvalCase(
            id=f"{fact.id}/q0",
            suite=REGRESSION_SUITE,
            version=KNOWLEDGE_VERSION,
            fact_id=fact.id,
            topic=fact.topic,
            question=fact.paraphrases[0],
            reference=fact.answer,
            key_tokens=fact.key_tokens,
        )
        for fact in facts
    ]


def generate_history(params: DemoParams, application: str) -> Iterator[str]:
    """The historical request log as JSONL lines (no newline), valid and bad ones mixed."""
    return iter(HistoryGenerator(params, application))


def _digest(path: Path, name: str) -> FileDigest:
    data = path.read_bytes()
    return FileDigest(
        path=name, bytes=len(data), lines=data.count(b"\n"), sha256=hashlib.sha256(data).hexdigest()
    )


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))


def write_history(generator: HistoryGenerator, path: Path) -> FileDigest:
    """Stream the generator's log to `path` (binary: a bad_encoding line is not UTF-8)."""
    sha = hashlib.sha256()
    size = 0
    lines = 0
    with path.open("wb") as out:
        for chunk in generator.chunks():
            data = ("\n".join(chunk) + "\n").encode("utf-8", errors="surrogateescape")
            out.write(data)
            sha.update(data)
            size += len(data)
            lines += len(chunk)
    return FileDigest(path=path.name, bytes=size, lines=lines, sha256=sha.hexdigest())


def write_demo(
    params: DemoParams, application: str, out_dir: Path, history_path: Path | None = None
) -> DemoManifest:
    """Write knowledge.jsonl, eval.jsonl, regression.jsonl, manifest.json into `out_dir` and the history log.

    The history goes to `history_path` (default `out_dir/history.jsonl`), e.g. the harvest
    inbox; it is written under a temporary name and renamed, so a reader never sees half a file.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    history_path = history_path or out_dir / "history.jsonl"
    history_path.parent.mkdir(parents=True, exist_ok=True)
    generator = HistoryGenerator(params, application)
    facts = generator.facts
    train_by_fact: dict[str, list[str]] = {fact.id: [] for fact in facts}
    for question in generator.train:
        train_by_fact[question.fact_id].append(question.text)
    _write_jsonl(
        out_dir / "knowledge.jsonl",
        [
            {
                "id": fact.id,
                "topic": fact.topic,
                "answer": fact.answer,
                "key_tokens": list(fact.key_tokens),
                "train_questions": train_by_fact[fact.id],
            }
            for fact in facts
        ],
    )
    cases = eval_suite(params.eval_paraphrases, facts)
    _write_jsonl(out_dir / "eval.jsonl", [case.model_dump(mode="json") for case in cases])
    regression = regression_suite(facts)
    _write_jsonl(out_dir / "regression.jsonl", [case.model_dump(mode="json") for case in regression])
    partial = history_path.with_name(history_path.name + ".partial")
    history = write_history(generator, partial)
    partial.replace(history_path)
    # relative to the manifest, so the manifest's bytes do not depend on where the data dir is
    history = history.model_copy(update={"path": os.path.relpath(history_path, out_dir)})

    counts = generator.counts
    n_invalid = sum(counts[kind] for kind in INVALID_KINDS)
    manifest = DemoManifest(
        generator_version=GENERATOR_VERSION,
        knowledge_version=KNOWLEDGE_VERSION,
        seed=params.seed,
        n_records=params.n_records,
        eval_paraphrases=params.eval_paraphrases,
        history_days=params.history_days,
        application=application,
        reference_end=REFERENCE_END,
        history_model=f"{HISTORY_MODEL_NAME}:{HISTORY_MODEL_VERSION}",
        eval_suite=EVAL_SUITE,
        eval_suite_version=KNOWLEDGE_VERSION,
        n_facts=len(facts),
        n_train_questions=len(generator.train),
        n_eval_questions=len(cases),
        counts=counts,
        n_valid_lines=params.n_records - n_invalid,
        n_invalid_lines=n_invalid,
        feedback=generator.feedback,
        files={
            "knowledge": _digest(out_dir / "knowledge.jsonl", "knowledge.jsonl"),
            "eval": _digest(out_dir / "eval.jsonl", "eval.jsonl"),
            "regression": _digest(out_dir / "regression.jsonl", "regression.jsonl"),
            "history": history,
        },
    )
    (out_dir / "manifest.json").write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return manifest


def read_manifest(out_dir: Path) -> DemoManifest:
    """The manifest `write_demo` left in `out_dir`."""
    return DemoManifest.model_validate_json((out_dir / "manifest.json").read_text(encoding="utf-8"))
