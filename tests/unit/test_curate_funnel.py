"""The whole curation funnel on the demo workload: what was planted must not come out."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest

from flywheel.demo import HistoryGenerator, normalize_question, write_demo
from flywheel.demo.simulated_user import HashingEmbedder
from flywheel.demo.traffic import INJECTION_PROMPTS
from flywheel.settings import CurateParams, DemoParams
from tasks.curate.curate import Curated, curate_frame
from tasks.curate.dedup import normalize
from tasks.curate.frame import raw_partitions, read_partitions
from tasks.curate.outputs import funnel_metrics, output_files, write_curated
from tasks.curate.split import load_protected_keys
from tasks.harvest import run_harvest
from tasks.harvest.sources import FilesSource

N_RECORDS = 20_000
APPLICATION = "support-assistant"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Harvest and curate a 20k-record demo log once for every test here."""
    root = tmp_path_factory.mktemp("curate")
    params = DemoParams(n_records=N_RECORDS, seed=11)
    write_demo(params, APPLICATION, root / "demo", history_path=root / "incoming" / "history.jsonl")
    harvest = run_harvest(
        FilesSource(str(root / "incoming")), root / "raw", root / "state", max_malformed_share=0.5
    )
    raw = read_partitions(raw_partitions(root / "raw"))
    protected = load_protected_keys([root / "demo" / "eval.jsonl"])
    curated = curate_frame(raw, CurateParams(), HashingEmbedder(), protected)
    generator = HistoryGenerator(params, APPLICATION)
    for _ in generator.chunks():  # fills `planted`
        pass
    return {"root": root, "harvest": harvest, "raw": raw, "curated": curated, "planted": generator.planted}


def output_texts(curated: Curated) -> list[str]:
    """Every text curation hands on: all splits' turns and every preference pair."""
    frame, pairs = curated.frame, curated.pairs
    texts = [*frame["system"], *frame["history"], *frame["prompt"], *frame["response"]]
    texts += [*pairs["system"], *pairs["history"], *pairs["prompt"], *pairs["chosen"], *pairs["rejected"]]
    return [str(text) for text in texts]


def test_funnel_counts_add_up_exactly(demo: dict) -> None:
    curated: Curated = demo["curated"]
    harvest = demo["harvest"]
    dropped = sum(curated.funnel.dropped_by_reason().values())
    assert harvest.n_read == N_RECORDS, "harvest read every line"
    assert harvest.n_valid + harvest.n_quarantined == N_RECORDS, "harvest: read = valid + quarantined"
    assert len(demo["raw"]) == harvest.n_valid, "curation starts from every valid record"
    assert curated.funnel.n_in == curated.funnel.n_out + dropped, "curate: in = out + every drop"
    assert sum(curated.split_counts().values()) == curated.funnel.n_out, "every kept record is in one split"


def test_every_planted_pii_value_is_gone(demo: dict) -> None:
    planted = [p for p in demo["planted"] if p.kind.startswith("pii_")]
    assert len(planted) > 200, f"the workload plants PII ({len(planted)})"
    blob = "\n".join(output_texts(demo["curated"]))
    leaked = [(p.kind, p.value) for p in planted if p.value in blob]
    assert not leaked, f"{len(leaked)} planted PII values survived curation, e.g. {leaked[:5]}"
    redacted = demo["curated"].redactions()
    assert all(redacted[entity] > 0 for entity in CurateParams().pii_entities), (
        f"each entity found: {redacted}"
    )


def test_every_planted_injection_is_filtered(demo: dict) -> None:
    injections = {p.request_id for p in demo["planted"] if p.kind == "injection"}
    assert injections, "the workload plants injection attempts"
    frame = demo["curated"].frame
    assert not injections & set(frame["request_id"]), "an injection attempt reached the training data"
    attacks = {normalize_question(text) for text in INJECTION_PROMPTS}
    kept = {normalize_question(text) for text in frame["prompt"]} | {
        normalize_question(text) for text in demo["curated"].pairs["prompt"]
    }
    assert not attacks & kept, "an attack text reached the training data or the preference pairs"


def test_duplicates_are_removed(demo: dict) -> None:
    frame = demo["curated"].frame
    assert frame["request_id"].is_unique, "no request id twice"
    assert frame["cluster"].is_unique, "one record per cluster of exact or near-duplicate questions"
    keys = Counter(normalize(text) for text in frame["prompt"])
    repeated = [key for key, n in keys.items() if n > 1]
    assert not repeated, f"normalised prompts kept more than once: {repeated[:5]}"


def test_planted_near_duplicates_join_their_original(demo: dict) -> None:
    curated: Curated = demo["curated"]
    dedup = next(step for step in curated.funnel.steps if step.step == "dedup")
    removed = set(dedup.dropped.get("near_duplicate", [])) | set(dedup.dropped.get("exact_duplicate", []))
    steps = [step.step for step in curated.funnel.steps]
    after_dedup = curated.funnel.steps[steps.index("dedup") + 1 :]
    # kept as its cluster's best-rated member: in the output, or dropped by a later step (e.g. unrated)
    kept = set(curated.frame["request_id"]) | {
        request_id for step in after_dedup for ids in step.dropped.values() for request_id in ids
    }
    variants = [p for p in demo["planted"] if p.kind == "near_duplicate"]
    # a variant leaves as a duplicate, or is kept as its cluster's best-rated member
    accounted = [p for p in variants if p.request_id in removed or p.request_id in kept]
    assert len(accounted) == len(variants), (
        "every near-duplicate variant reached dedup (none filtered earlier)"
    )
    as_duplicate = [p for p in variants if p.request_id in removed]
    assert len(as_duplicate) / len(variants) >= 0.85, (
        f"only {len(as_duplicate)} of {len(variants)} planted near-duplicates were merged into a cluster"
    )


def test_protected_eval_questions_never_reach_train_or_validation(demo: dict) -> None:
    protected = load_protected_keys([demo["root"] / "demo" / "eval.jsonl"])
    frame = demo["curated"].frame
    training = frame[frame["split"].isin(["train", "validation"])]
    leaked = {normalize_question(text) for text in training["prompt"]} & protected
    assert not leaked, f"eval questions in training data: {sorted(leaked)[:5]}"


def test_outputs_are_written_and_deterministic(demo: dict, tmp_path: Path) -> None:
    curated: Curated = demo["curated"]
    metrics = funnel_metrics(curated)
    first = write_curated(curated, tmp_path / "a", "chatml", metrics)
    again = curate_frame(
        demo["raw"],
        CurateParams(),
        HashingEmbedder(),
        load_protected_keys([demo["root"] / "demo" / "eval.jsonl"]),
    )
    second = write_curated(again, tmp_path / "b", "chatml", funnel_metrics(again))
    assert set(first) == set(output_files()), "every declared output is written"
    assert first == second, "the same input gives byte-identical outputs"
    train = [orjson.loads(line) for line in (tmp_path / "a" / "train.jsonl").read_bytes().splitlines()]
    assert train and all(row["messages"][-1]["role"] == "assistant" for row in train), (
        "ChatML ends with the answer"
    )
    dropped = (tmp_path / "a" / "dropped.jsonl").read_bytes().splitlines()
    assert dropped == [
        orjson.dumps({"request_id": request_id, "step": step.step, "reason": reason})
        for step in curated.funnel.steps
        for reason, ids in step.dropped.items()
        for request_id in ids
    ], "every drop has a line with its step and reason, in funnel order"
    assert len(dropped) == sum(curated.funnel.dropped_by_reason().values())
