"""PII redaction: recall on the demo's planted PII, false flags on clean text, JSON-safe history."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter

import orjson
import pandas as pd
import pytest

from flywheel.demo import traffic
from flywheel.demo.history import HistoryGenerator, Planted
from flywheel.demo.knowledge import load_knowledge
from flywheel.settings import CurateParams, DemoParams
from tasks.curate import pii
from tasks.curate.pii import ENTITIES, luhn_valid, redact_frame, redact_texts

ENTITY_OF_KIND = {
    "pii_email": "EMAIL_ADDRESS",
    "pii_phone": "PHONE_NUMBER",
    "pii_card": "CREDIT_CARD",
    "pii_ip": "IP_ADDRESS",
    "pii_name": "PERSON",
}


class Demo:
    """One generated log: the planted PII and every PII-free text of the other records."""

    def __init__(self, seed: int, n_records: int) -> None:
        gen = HistoryGenerator(DemoParams(seed=seed, n_records=n_records), "support-assistant")
        lines = [line for chunk in gen.chunks() for line in chunk]
        self.pii: list[Planted] = [p for p in gen.planted if p.kind in ENTITY_OF_KIND]
        pii_ids = {p.request_id for p in self.pii}
        self.clean: list[str] = []
        for line in lines:
            try:
                record = orjson.loads(line.encode("utf-8", "surrogateescape"))
            except orjson.JSONDecodeError:
                continue  # junk and truncated lines never reach curation
            messages = record.get("messages")
            if record.get("request_id") in pii_ids or not isinstance(messages, list):
                continue
            self.clean.extend(m["content"] for m in messages if isinstance(m, dict) and "content" in m)
            if isinstance(record.get("response"), str):
                self.clean.append(record["response"])


@pytest.fixture(scope="module")
def demo() -> Demo:
    return Demo(seed=20, n_records=20_000)


def test_every_planted_value_is_redacted(demo: Demo) -> None:
    # given every message the generator planted personal data in
    texts = [p.text for p in demo.pii]
    # when redacted with every entity
    result = redact_texts(texts, ENTITIES)
    # then no planted value is left anywhere
    missed = Counter(p.kind for p, out in zip(demo.pii, result.texts, strict=True) if p.value in (out or ""))
    recall = 1 - sum(missed.values()) / len(demo.pii)
    assert len(demo.pii) > 300, f"the demo should plant a few hundred PII values, got {len(demo.pii)}"
    assert recall >= 0.995, f"recall {recall:.4f} below 99.5%; missed by kind: {dict(missed)}"
    assert not missed, f"planted values survived redaction: {dict(missed)}"
    assert result.changed.all(), f"{int((~result.changed).sum())} PII texts were reported unchanged"


def test_counts_per_entity_match_what_was_planted(demo: Demo) -> None:
    # given one planted value per message
    result = redact_texts([p.text for p in demo.pii], ENTITIES)
    # then each entity was redacted exactly as often as its kind was planted
    planted = Counter(ENTITY_OF_KIND[p.kind] for p in demo.pii)
    assert dict(result.counts) == dict(planted), f"counts {dict(result.counts)} != planted {dict(planted)}"


def test_placeholders_are_typed(demo: Demo) -> None:
    # given one planted message of each kind
    firsts = {p.kind: p for p in reversed(demo.pii)}
    result = redact_texts([p.text for p in firsts.values()], ENTITIES)
    # then each carries its entity's placeholder
    for planted, out in zip(firsts.values(), result.texts, strict=True):
        placeholder = f"<{ENTITY_OF_KIND[planted.kind]}>"
        assert out is not None and placeholder in out, f"{planted.kind}: no {placeholder} in {out!r}"


def test_pii_free_records_are_not_flagged(demo: Demo) -> None:
    # given the prompts and answers of every record without planted PII
    result = redact_texts(demo.clean, ENTITIES)
    # then (almost) none is changed
    share = result.changed.mean()
    flagged = [demo.clean[i][:120] for i in result.changed.nonzero()[0][:5]]
    assert len(demo.clean) > 30_000, f"expected tens of thousands of clean texts, got {len(demo.clean)}"
    assert share < 0.001, f"{share:.4%} of PII-free texts flagged ({dict(result.counts)}), e.g. {flagged}"


def test_knowledge_base_is_not_flagged() -> None:
    # given every reference answer and question paraphrase (prices, sizes, versions, limits)
    texts = [text for fact in load_knowledge() for text in (fact.answer, *fact.paraphrases)]
    # then none is changed
    result = redact_texts(texts, ENTITIES)
    flagged = [texts[i] for i in result.changed.nonzero()[0]]
    assert not flagged, f"knowledge-base texts flagged as PII ({dict(result.counts)}): {flagged[:5]}"


def test_every_demo_phone_format_is_found() -> None:
    # given a hundred phone numbers from the generator (five national formats)
    rnd = random.Random(5)  # test data, not secrets
    phones = [traffic.make_phone(rnd) for _ in range(100)]
    # when redacted in a sentence
    result = redact_texts([f"You can call me at {phone}." for phone in phones], ["PHONE_NUMBER"])
    # then every one is gone
    left = [phone for phone, out in zip(phones, result.texts, strict=True) if phone in (out or "")]
    assert not left, f"phone numbers not redacted: {left}"
    assert result.counts == Counter({"PHONE_NUMBER": 100}), f"counts {dict(result.counts)}"


@pytest.mark.parametrize(
    ("text", "entity"),
    [
        ("Reach me at jose.garcia+notes@contoso.co.uk thanks", "EMAIL_ADDRESS"),
        ("My number is +1 (415) 555-0100.", "PHONE_NUMBER"),
        ("call me at 4155550100", "PHONE_NUMBER"),
        ("Ring 030 90181234 any time", "PHONE_NUMBER"),
        ("Card 4111-1111-1111-1111 was charged", "CREDIT_CARD"),
        ("Amex 3782 822463 10005 declined", "CREDIT_CARD"),
        ("charged on 5555555555554444 twice", "CREDIT_CARD"),
        ("login from 2001:db8::8a2e:370:7334 failed", "IP_ADDRESS"),
        ("login from 81.2.69.160 failed", "IP_ADDRESS"),
        ("Hi, I'm Priya Patel. Can I sync?", "PERSON"),
        ("Can I sync? Regards, Sean O'Brien", "PERSON"),
        ("Thanks, Anne-Marie van der Berg", "PERSON"),
        ("Can I sync? — Kwame", "PERSON"),
        ("Can I sync?\n- Anne-Marie van der Berg", "PERSON"),
        ("Best, Olivia", "PERSON"),
        ("Yuki Tanaka here, quick question", "PERSON"),
        ("My name is Zbigniew Brzezinski and I need help", "PERSON"),
    ],
)
def test_recognises_common_shapes(text: str, entity: str) -> None:
    result = redact_texts([text], ENTITIES)
    assert result.counts == Counter({entity: 1}), f"{text!r}: counts {dict(result.counts)}, want one {entity}"
    assert f"<{entity}>" in (result.texts[0] or ""), f"{text!r} -> {result.texts[0]!r}"


@pytest.mark.parametrize(
    "text",
    [
        "Pro costs $8 per user per month, or $72 a year.",
        "Upgrade to version 4.2.1 of the desktop app (build 20250520).",
        "Order 12345678 shipped on 2025-05-20 at 10:30:00.",
        "Pro includes 20 GB per user; Business has 100 GB and up to 5,000 members.",
        "The API allows 600 requests per minute and returns HTTP 429 with a Retry-After header.",
        "Press Ctrl+Alt+1, 2 or 3 (Cmd+Option+1 on Mac) to make a heading.",
        "Invoice INV-2025-000123 for 1 234 567 credits",
        "Click here to open Quillbox Pro.",
        "This is Quillbox Business, the best plan for teams.",
        "Is Business the best Olivia can get? No: this is Pro.",  # "best" signs off only with a comma
        "Thanks, Quillbox Support",
        "Card used: 4111 1111 1111 1112",  # fails Luhn: not a card
        "TLS 1.2 and AES-256, ISO 27001 certified, SOC 2 Type II.",
    ],
)
def test_ordinary_numbers_and_words_are_not_pii(text: str) -> None:
    result = redact_texts([text], ENTITIES)
    assert result.texts == [text], f"false flag {dict(result.counts)}: {text!r} -> {result.texts[0]!r}"


def test_luhn_failing_card_numbers_are_not_cards() -> None:
    # given valid card numbers and the same numbers with the last digit changed
    rnd = random.Random(7)  # test data, not secrets
    valid = [traffic.make_card(rnd) for _ in range(50)]
    broken = [card[:-1] + str((int(card[-1]) + 1) % 10) for card in valid]
    # then only the valid ones are cards
    assert all(luhn_valid(card) for card in valid), "make_card should give Luhn-valid numbers"
    assert not any(luhn_valid(card) for card in broken), "a changed check digit must fail Luhn"
    result = redact_texts([f"Card used: {card}" for card in broken], ["CREDIT_CARD"])
    assert not result.changed.any(), f"Luhn-failing numbers flagged as cards: {dict(result.counts)}"


def test_only_requested_entities_are_redacted() -> None:
    text = "Mail olivia.smith@gmail.com or call +1 415-555-0100."
    result = redact_texts([text], ["EMAIL_ADDRESS"])
    assert result.texts == ["Mail <EMAIL_ADDRESS> or call +1 415-555-0100."], f"got {result.texts}"
    assert redact_texts([text], []).texts == [text], "no entities should mean no redaction"


def test_none_passes_through() -> None:
    result = redact_texts([None, "call me at +1 415-555-0100", None, "fine"], ENTITIES)
    assert result.texts == [None, "call me at <PHONE_NUMBER>", None, "fine"], f"got {result.texts}"
    assert result.changed.tolist() == [False, True, False, False], f"changed {result.changed.tolist()}"


def test_unknown_entity_is_rejected() -> None:
    with pytest.raises(ValueError, match="US_SSN"):
        redact_texts(["x"], ["US_SSN"])


def test_repeated_texts_are_counted_per_row() -> None:
    # given a column long enough to take the once-per-distinct-value path
    texts: list[str | None] = ["Thanks, Olivia Smith", "How do I export?", None] * 5_000
    result = redact_texts(texts, ENTITIES)
    # then every copy is redacted and counted
    assert result.counts == Counter({"PERSON": 5_000}), f"counts {dict(result.counts)}"
    assert result.changed.sum() == 5_000, f"{int(result.changed.sum())} rows changed, want 5000"
    assert result.texts[:3] == ["Thanks, <PERSON>", "How do I export?", None], f"got {result.texts[:3]}"


def test_history_stays_valid_json() -> None:
    # given earlier turns with PII next to quotes, backslashes and non-ASCII text
    turns = [
        {"role": "user", "content": 'Hi, this is Olivia O\'Brien. Path "C:\\notes\\" fails — ça?'},
        {"role": "assistant", "content": 'Try "export".'},
        {"role": "user", "content": 'Mail "olivia.obrien@gmail.com" or call (212) 555-0199\n\\n'},
    ]
    frame = pd.DataFrame(
        {
            "system": ["Be brief.", "Be brief."],
            "history": [orjson.dumps(turns).decode(), "[]"],
            "prompt": ["Thanks, Amara Okafor", "How?"],
            "response": [None, "Card 4111 1111 1111 1111?"],
            "status": ["error", "ok"],
        }
    )
    # when the frame is redacted
    out, counts = redact_frame(frame, CurateParams().pii_entities)
    # then history is still the same JSON list of turns, minus the PII
    redacted = orjson.loads(out.loc[0, "history"])
    assert [t["role"] for t in redacted] == ["user", "assistant", "user"], f"turns changed: {redacted}"
    assert redacted[0]["content"] == 'Hi, this is <PERSON>. Path "C:\\notes\\" fails — ça?', f"{redacted[0]}"
    assert redacted[1] == turns[1], f"a turn without PII changed: {redacted[1]}"
    assert redacted[2]["content"] == 'Mail "<EMAIL_ADDRESS>" or call <PHONE_NUMBER>\n\\n', f"{redacted[2]}"
    assert out.loc[1, "history"] == "[]", "an empty history must stay '[]'"
    assert out["prompt"].tolist() == ["Thanks, <PERSON>", "How?"], f"prompt {out['prompt'].tolist()}"
    assert out["response"].tolist() == [None, "Card <CREDIT_CARD>?"], f"response {out['response'].tolist()}"
    assert out["status"].tolist() == ["error", "ok"], "non-text columns must not change"
    assert counts == {
        "EMAIL_ADDRESS": 1,
        "PHONE_NUMBER": 1,
        "CREDIT_CARD": 1,
        "IP_ADDRESS": 0,
        "PERSON": 2,
    }, f"counts {counts}"
    assert frame.loc[1, "response"] == "Card 4111 1111 1111 1111?", "the input frame must not be modified"
    assert frame.loc[0, "prompt"] == "Thanks, Amara Okafor", "the input frame must not be modified"
    assert frame.loc[0, "history"] == orjson.dumps(turns).decode(), "the input frame must not be modified"


def test_presidio_loads_without_importing_torch_or_transformers() -> None:
    # a fresh interpreter: this test process may have imported either already
    code = (
        "import sys\n"
        "from tasks.curate.pii import redact_texts\n"
        "result = redact_texts(['write to ana@example.com'], ['EMAIL_ADDRESS'])\n"
        "assert result.texts == ['write to <EMAIL_ADDRESS>'], result.texts\n"
        "print(sorted(name for name in ('torch', 'transformers') if name in sys.modules))\n"
        "import torch\n"  # hidden only while Presidio imported: importable again afterwards
        "print(torch.__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["[]", "torch"], done.stdout


def test_hiding_probed_packages_leaves_loaded_ones_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pii, "_PROBED_BY_PRESIDIO", ("json", "flywheel_not_a_module_yet"))
    with pii._presidio_without_ml():
        import json  # loaded before: still importable

        assert json.dumps([1]) == "[1]"
        with pytest.raises(ImportError):
            import flywheel_not_a_module_yet  # noqa: F401
    assert "flywheel_not_a_module_yet" not in sys.modules
    assert sys.modules["json"] is json
