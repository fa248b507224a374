"""The historical request log of Quillbox support, generated fast and deterministically.

The log reads as if an earlier, larger production model had answered every
request: mostly right, sometimes a neighbouring fact's answer, a stale number
or a vague deflection, with thumbs up/down that follow answer quality. Mixed in
at small rates is what real logs contain: re-delivered duplicates, near-
duplicate questions, personal data, prompt injections, empty and oversize
messages, upstream errors and lines that are not valid records at all.

Output depends on the seed only (no wall clock, no hash randomisation), and
the hot path pastes pre-serialised JSON pieces, so a million records take
seconds. Historical questions come from the training pool only.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson

from flywheel.demo import traffic
from flywheel.demo.knowledge import load_knowledge, normalize_question, split_questions
from flywheel.settings import DemoParams

# History ends here, never at "now": the same seed must give the same bytes.
REFERENCE_END = datetime(2025, 6, 2, tzinfo=UTC)

HISTORY_MODEL_NAME = "quillbox-gpt-large"
HISTORY_MODEL_VERSION = "1"
HISTORY_PROMPT_NAME = "quillbox-support-system"
HISTORY_PROMPT_VERSION = "1"
HISTORY_SYSTEM_PROMPT = (
    "You are the support assistant for Quillbox, a note-taking and document collaboration app. "
    "Answer the customer's question in one or two short, factual sentences."
)
# Share of the earlier model's answers that were wrong (per fact it varies).
WRONG_SHARE = 0.15
# The earlier gateway rejected requests above this many characters outright.
GATEWAY_MAX_CHARS = 32_000
# A large hosted model's list prices, per token.
INPUT_PRICE_USD = 2.5e-6
OUTPUT_PRICE_USD = 1.0e-5

# Share of records of each kind; "normal" takes the rest (about 92%).
KIND_RATES: dict[str, float] = {
    "duplicate": 0.010,
    "near_duplicate": 0.030,
    "pii_email": 0.004,
    "pii_phone": 0.004,
    "pii_card": 0.002,
    "pii_ip": 0.002,
    "pii_name": 0.006,
    "injection": 0.004,
    "empty": 0.003,
    "oversize": 0.001,
    "upstream_error": 0.004,
    "malformed_json": 0.002,
    "missing_field": 0.001,
    "wrong_type": 0.001,
    "bad_encoding": 0.001,
}
KINDS: tuple[str, ...] = ("normal", *KIND_RATES)
INVALID_KINDS: tuple[str, ...] = ("malformed_json", "missing_field", "wrong_type", "bad_encoding")
VALID_KINDS: tuple[str, ...] = tuple(kind for kind in KINDS if kind not in INVALID_KINDS)
PII_KINDS: tuple[str, ...] = tuple(kind for kind in KINDS if kind.startswith("pii_"))
# Kinds whose record answers a knowledge-base question and may carry a rating.
ANSWERING_KINDS: tuple[str, ...] = ("normal", "duplicate", "near_duplicate", *PII_KINDS)
_NORMAL = KINDS.index("normal")
_DUPLICATE = KINDS.index("duplicate")
# Every kind appears at least once from this many records up (one slot per kind).
MIN_RECORDS_FOR_ALL_KINDS = len(KINDS)

FEEDBACK_STATES: tuple[str, ...] = ("none", "up", "neutral", "down")
# P(no rating, thumbs up, neutral, thumbs down) given a right or a wrong answer.
_FEEDBACK_IF_RIGHT = (0.62, 0.30, 0.04, 0.04)
_FEEDBACK_IF_WRONG = (0.45, 0.04, 0.06, 0.45)
_COMMENT_RATE = 0.3
_COMMENTS: tuple[tuple[str, ...], ...] = (
    (),
    ("thanks!", "perfect, exactly what I needed", "helpful"),
    ("ok I guess",),
    ("wrong", "that's not what I asked", "this is outdated", "not helpful"),
)
_SCORES = (0, 1, 0, -1)

_REQUIRED_FIELDS: tuple[str, ...] = (
    "request_id",
    "timestamp",
    "application",
    "model_name",
    "messages",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "cost_usd",
)
# Values pydantic's lax mode still rejects (it would coerce "12" to 12).
_WRONG_TYPES: tuple[tuple[str, Any], ...] = (
    ("prompt_tokens", "twelve"),
    ("latency_ms", "fast"),
    ("messages", "How do I export my notes?"),
    ("timestamp", "yesterday"),
    ("cache_hit", "maybe"),
    ("feedback", {"score": "thumbs_up"}),
    ("request_id", 12345),
    ("completion_tokens", [12]),
)
_MISENCODED_MARK = "@@MISENCODED@@"
_REQUEST_ID_END = len('{"request_id":"') + 32 + 1

_CHUNK = 16_384
_CACHE_HIT_RATE = 0.02
_INJECTION_LEAK_RATE = 0.15
_SESSION_MS = 4 * 3600 * 1000
_DAY_MS = 86_400_000
# Traffic by UTC hour: quiet at night, peaks when Europe and the US overlap.
_HOURLY = np.array([2, 1.5, 1, 1, 1, 1.5, 2.5, 4, 6, 7, 7.5, 7.5, 8, 9, 10, 10, 9.5, 9, 8, 6.5, 5, 4, 3, 2.5])
_WEEKEND_SHARE = 0.45

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix64(values: np.ndarray, salt: np.uint64) -> np.ndarray:
    """splitmix64 finaliser: a fast, seeded pseudonym for integer ids (vectorised)."""
    x = values.astype(np.uint64) ^ salt
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


def _hex64(values: np.ndarray) -> str:
    """All values as one string of 16 hex digits each (sliced per record later)."""
    return values.astype(">u8").tobytes().hex()


def _tokens(text: str) -> int:
    """Token count estimate: about four characters a token, plus per-message overhead."""
    return (len(text) + 3) // 4 + 4


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _user_messages(text: str) -> str:
    """The client's messages; the gateway adds the system prompt from the prompt registry."""
    return _json([{"role": "user", "content": text}])


def stale_answer(answer: str, rnd: random.Random) -> str | None:
    """The answer with its first number changed: what an out-of-date model says."""
    match = re.search(r"\d+", answer)
    if match is None:
        return None
    value = int(match.group())
    changed = rnd.choice((value + 1, value + 2, value * 2 + 1))
    return answer[: match.start()] + str(changed) + answer[match.end() :]


@dataclass(frozen=True)
class Planted:
    """One record the generator planted something in, for tests that must find it again.

    `value` is the personal data (PII kinds), the original question (near
    duplicates) or the attack text (injections); `text` is the user message.
    """

    request_id: str
    kind: str
    value: str
    text: str


@dataclass(frozen=True)
class _Draws:
    """Per-record values drawn for one chunk, as Python lists ready for formatting."""

    request_hex: str  # 32 hex digits per record
    stamps: list[str]
    user_hex: str  # 16 hex digits per record
    session_hex: str
    question: list[int]
    response: list[int]
    feedback: list[int]
    wrong: list[bool]
    state: list[int]
    variant: list[int]
    prompt_tokens: list[int]
    completion_tokens: list[int]
    ttft: list[float]
    per_token: list[float]
    latency: list[float]
    cost: list[float]
    cache: list[str]


class HistoryGenerator:
    """A seeded request-log generator; iterate for lines, then read `feedback`.

    `counts` (records per kind) is known up front; `feedback` (right/wrong
    answers by rating) is complete once the lines have been consumed.
    """

    def __init__(self, params: DemoParams, application: str) -> None:
        self.params = params
        self.application = application
        self.facts = load_knowledge()
        self.train, self.held_out = split_questions(self.facts, params.eval_paraphrases)
        # Independent streams: the plan, the per-record draws, the rare-path draws and
        # the tables each get their own, so changing one never shifts the others.
        plan_seq, record_seq, rare_seq, table_seq, salt_seq = np.random.SeedSequence(params.seed).spawn(5)
        self._record_seq = record_seq
        self._rare_seed = int(rare_seq.generate_state(1)[0])
        salts = salt_seq.generate_state(2, dtype=np.uint64)
        self._user_salt, self._session_salt = np.uint64(salts[0]), np.uint64(salts[1])
        table_rnd = random.Random(int(table_seq.generate_state(1)[0]))  # noqa: S311  # test data, not secrets
        self._build_tables(table_rnd)
        self._plan(np.random.default_rng(plan_seq))
        # Duplicates repeat an earlier line's rating, so the loop counts those itself.
        drawn = [KINDS.index(kind) for kind in ANSWERING_KINDS if kind != "duplicate"]
        self._rated_from_draws = np.isin(np.arange(len(KINDS)), drawn)
        self.feedback: dict[str, dict[str, int]] = {
            side: dict.fromkeys(FEEDBACK_STATES, 0) for side in ("right", "wrong")
        }
        # What the last pass over `chunks` planted: PII, near duplicates, injections.
        self.planted: list[Planted] = []

    # -- tables: everything per fact, question and answer, serialised once ----------

    def _build_tables(self, rnd: random.Random) -> None:
        facts = self.facts
        n_facts = len(facts)
        fact_index = {fact.id: i for i, fact in enumerate(facts)}
        eval_keys = {normalize_question(q.text) for q in self.held_out}
        self._system_tokens = _tokens(HISTORY_SYSTEM_PROMPT)

        # Training questions, grouped by fact in knowledge-base order.
        self._q_text = [q.text for q in self.train]
        self._q_msgs = [_user_messages(text) for text in self._q_text]
        self._q_tokens = np.array([_tokens(text) for text in self._q_text])
        q_fact = np.array([fact_index[q.fact_id] for q in self.train])
        self._q_cnt = np.bincount(q_fact, minlength=n_facts)
        self._q_off = np.concatenate(([0], np.cumsum(self._q_cnt)[:-1]))

        # Near-duplicate variants of each training question; a variant that
        # normalises to a held-out question would leak it, so it is dropped.
        nd_text: list[str] = []
        nd_cnt: list[int] = []
        for text in self._q_text:
            variants = [
                v for v in traffic.near_duplicates(text, rnd) if normalize_question(v) not in eval_keys
            ]
            nd_text.extend(variants)
            nd_cnt.append(len(variants))
        self._nd_text = nd_text
        self._nd_cnt = np.array(nd_cnt)
        self._nd_off = np.concatenate(([0], np.cumsum(self._nd_cnt)[:-1]))

        # Answers: right ones are the reference in a few styles; wrong ones are a
        # same-topic neighbour's answer, a stale number or a deflection.
        by_topic: dict[str, list[int]] = {}
        for i, fact in enumerate(facts):
            by_topic.setdefault(fact.topic, []).append(i)
        responses: list[str] = []
        right_off, right_cnt, wrong_off, wrong_cnt = [], [], [], []
        for i, fact in enumerate(facts):
            right = [f"{pre}{fact.answer}{post}" for pre, post in traffic.RIGHT_STYLES]
            group = by_topic[fact.topic]
            at = group.index(i)
            neighbours = {group[(at + 1) % len(group)], group[(at - 1) % len(group)]} - {i}
            wrong = [facts[k].answer for k in sorted(neighbours)]
            stale = stale_answer(fact.answer, rnd)
            if stale is not None:
                wrong.append(stale)
            wrong.extend(traffic.DEFLECTIONS)
            right_off.append(len(responses))
            right_cnt.append(len(right))
            responses.extend(right)
            wrong_off.append(len(responses))
            wrong_cnt.append(len(wrong))
            responses.extend(wrong)
        self._responses = responses
        self._r_json = [_json(text) for text in responses]
        self._r_tokens = np.array([_tokens(text) for text in responses])
        self._right_off, self._right_cnt = np.array(right_off), np.array(right_cnt)
        self._wrong_off, self._wrong_cnt = np.array(wrong_off), np.array(wrong_cnt)

        # Which facts people ask about follows a Zipf-like law; which facts the old
        # model tends to get wrong varies, as it does for a real model.
        ranks = np.array(rnd.sample(range(n_facts), n_facts))
        popularity = 1.0 / (ranks + 1.0) ** 0.8
        self._popularity = popularity / popularity.sum()
        p_wrong = np.array([rnd.betavariate(1.2, 6.8) for _ in range(n_facts)])
        # Rescaled so the share of wrong answers in traffic is WRONG_SHARE for every seed.
        self._p_wrong = np.clip(p_wrong * WRONG_SHARE / float(self._popularity @ p_wrong), 0.0, 0.6)

        # Feedback JSON fragments: index = base[state] + comment slot.
        fragments = ["null"]
        base = [0]
        n_comments = [0]
        for state in (1, 2, 3):
            base.append(len(fragments))
            n_comments.append(len(_COMMENTS[state]))
            fragments.append(_json({"score": _SCORES[state], "comment": None}))
            fragments.extend(_json({"score": _SCORES[state], "comment": text}) for text in _COMMENTS[state])
        self._fb_json = fragments
        self._fb_base = np.array(base)
        self._fb_ncom = np.maximum(np.array(n_comments), 1)
        self._fb_right = np.cumsum(_FEEDBACK_IF_RIGHT)[:-1]
        self._fb_wrong = np.cumsum(_FEEDBACK_IF_WRONG)[:-1]

        self._head = (
            f',"application":{_json(self.application)},"arm":"champion",'
            f'"model_name":{_json(HISTORY_MODEL_NAME)},"model_version":{_json(HISTORY_MODEL_VERSION)},'
            f'"prompt_name":{_json(HISTORY_PROMPT_NAME)},'
            f'"prompt_version":{_json(HISTORY_PROMPT_VERSION)},"messages":'
        )

    # -- plan: the kind and time of every record ------------------------------------

    def _plan(self, rng: np.random.Generator) -> None:
        n = self.params.n_records
        kind_p = np.array([KIND_RATES[kind] for kind in KINDS[1:]])
        kinds = rng.choice(len(KINDS), size=n, p=np.concatenate(([1.0 - kind_p.sum()], kind_p)))
        kinds = kinds.astype(np.uint8)
        # A duplicate re-delivers an earlier normal line, so the log opens with one.
        kinds[0] = _NORMAL
        # Guarantee every kind at least once: a missing kind takes the slot of a
        # record whose kind occurs more than once (never slot 0).
        counts = np.bincount(kinds, minlength=len(KINDS))
        for kind in range(len(KINDS)):
            if counts[kind] == 0:
                spare = np.flatnonzero(counts[kinds[1:]] > 1) + 1
                if spare.size == 0:  # fewer records than kinds
                    break
                slot = rng.choice(spare)
                counts[kinds[slot]] -= 1
                counts[kind] += 1
                kinds[slot] = kind
        self._kinds = kinds
        self.counts = dict(zip(KINDS, np.bincount(kinds, minlength=len(KINDS)).tolist(), strict=True))

        days = self.params.history_days
        start = REFERENCE_END - timedelta(days=days)
        day_weight = np.array(
            [_WEEKEND_SHARE if (start + timedelta(days=d)).weekday() >= 5 else 1.0 for d in range(days)]
        )
        day = rng.choice(days, size=n, p=day_weight / day_weight.sum())
        hour = rng.choice(24, size=n, p=_HOURLY / _HOURLY.sum())
        offset = day * _DAY_MS + hour * 3_600_000 + rng.integers(0, 3_600_000, size=n)
        offset.sort()
        self._start_ms = int(start.timestamp() * 1000)
        self._times_ms = self._start_ms + offset
        self._n_users = max(10, n // 20)

    # -- lines ----------------------------------------------------------------------

    def __iter__(self) -> Iterator[str]:
        """Every line of the log, without its newline (see `chunks`)."""
        for chunk in self.chunks():
            yield from chunk

    def chunks(self) -> Iterator[list[str]]:
        """The log in lists of lines; a `bad_encoding` line holds lone surrogates.

        Encode with `errors="surrogateescape"` to get the bytes a cp1252 client
        wrote; every other line is plain UTF-8.
        """
        self.feedback = {side: dict.fromkeys(FEEDBACK_STATES, 0) for side in ("right", "wrong")}
        self.planted = []
        rng = np.random.default_rng(self._record_seq)
        rnd = random.Random(self._rare_seed)  # noqa: S311  # reproducible test data, not secrets
        last_normal = ""
        last_outcome = ("right", "none")
        n = self.params.n_records
        for start in range(0, n, _CHUNK):
            stop = min(n, start + _CHUNK)
            kinds = self._kinds[start:stop]
            draws = self._draw(rng, self._times_ms[start:stop])
            self._count_feedback(kinds, draws)
            lines: list[str] = []
            for j, kind in enumerate(kinds.tolist()):
                if kind == _NORMAL:  # the hot path: pre-serialised pieces only
                    line = last_normal = self._line(draws, j)
                    last_outcome = (
                        "wrong" if draws.wrong[j] else "right",
                        FEEDBACK_STATES[draws.state[j]],
                    )
                elif kind == _DUPLICATE:  # at-least-once log shipping re-delivers a line as is
                    line = last_normal
                    self.feedback[last_outcome[0]][last_outcome[1]] += 1
                else:
                    line = self._special(KINDS[kind], draws, j, rnd)
                lines.append(line)
            yield lines

    def _draw(self, rng: np.random.Generator, times_ms: np.ndarray) -> _Draws:
        """Draw everything about a chunk of records at once (vectorised)."""
        m = len(times_ms)
        fact = rng.choice(len(self.facts), size=m, p=self._popularity)
        pick = rng.integers(0, 1 << 30, size=(4, m))
        question = self._q_off[fact] + pick[0] % self._q_cnt[fact]
        wrong = rng.random(m) < self._p_wrong[fact]
        response = np.where(
            wrong,
            self._wrong_off[fact] + pick[1] % self._wrong_cnt[fact],
            self._right_off[fact] + pick[1] % self._right_cnt[fact],
        )
        u = rng.random(m)
        state = np.where(
            wrong, np.searchsorted(self._fb_wrong, u, "right"), np.searchsorted(self._fb_right, u, "right")
        )
        with_comment = (rng.random(m) < _COMMENT_RATE) & (state > 0)
        feedback = self._fb_base[state] + np.where(with_comment, 1 + pick[2] % self._fb_ncom[state], 0)
        # Few heavy users, many light ones; a session is a user's 4-hour window.
        users = (self._n_users * rng.random(m) ** 2).astype(np.int64)
        sessions = users * 100_003 + (times_ms - self._start_ms) // _SESSION_MS
        cache = rng.random(m) < _CACHE_HIT_RATE
        prompt_tokens = self._system_tokens + self._q_tokens[question]
        completion_tokens = self._r_tokens[response]
        ttft = np.where(cache, 1.0 + 4.0 * rng.random(m), rng.lognormal(np.log(320.0), 0.35, m))
        per_token = rng.lognormal(np.log(24.0), 0.2, m)
        latency = np.where(cache, ttft + 6.0 * rng.random(m), ttft + completion_tokens * per_token)
        cost = np.where(cache, 0.0, prompt_tokens * INPUT_PRICE_USD + completion_tokens * OUTPUT_PRICE_USD)
        return _Draws(
            request_hex=rng.bytes(16 * m).hex(),
            stamps=np.datetime_as_string(
                times_ms.astype("datetime64[ms]"), unit="ms", timezone="UTC"
            ).tolist(),
            user_hex=_hex64(_mix64(users, self._user_salt)),
            session_hex=_hex64(_mix64(sessions, self._session_salt)),
            question=question.tolist(),
            response=response.tolist(),
            feedback=feedback.tolist(),
            wrong=wrong.tolist(),
            state=state.tolist(),
            variant=pick[3].tolist(),
            prompt_tokens=prompt_tokens.tolist(),
            completion_tokens=completion_tokens.tolist(),
            ttft=np.round(ttft, 1).tolist(),
            per_token=per_token.tolist(),
            latency=np.round(latency, 1).tolist(),
            cost=np.round(cost, 8).tolist(),
            cache=np.where(cache, "true", "false").tolist(),
        )

    def _count_feedback(self, kinds: np.ndarray, draws: _Draws) -> None:
        """Add the ratings of this chunk's records that answer a knowledge-base question."""
        mask = self._rated_from_draws[kinds]
        wrong = np.array(draws.wrong)[mask]
        state = np.array(draws.state)[mask]
        outcome = np.bincount(wrong * 4 + state, minlength=8).tolist()
        for side, offset in (("right", 0), ("wrong", 4)):
            for s, name in enumerate(FEEDBACK_STATES):
                self.feedback[side][name] += outcome[offset + s]

    def _line(
        self,
        d: _Draws,
        j: int,
        messages: str | None = None,
        response: str | None = None,
        finish: str = '"stop"',
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        ttft: str | None = None,
        latency: float | None = None,
        cost: float | None = None,
        status: str = "ok",
        error: str = "null",
        feedback: str | None = None,
    ) -> str:
        """Record j of a chunk as one JSON line; each argument left out takes the drawn value.

        Arguments are JSON fragments (`response='null'`, `finish='"stop"'`), so
        the hot path only pastes strings that were serialised once.
        """
        messages = self._q_msgs[d.question[j]] if messages is None else messages
        response = self._r_json[d.response[j]] if response is None else response
        prompt_tokens = d.prompt_tokens[j] if prompt_tokens is None else prompt_tokens
        completion_tokens = d.completion_tokens[j] if completion_tokens is None else completion_tokens
        ttft = str(d.ttft[j]) if ttft is None else ttft
        latency = d.latency[j] if latency is None else latency
        cost = d.cost[j] if cost is None else cost
        feedback = self._fb_json[d.feedback[j]] if feedback is None else feedback
        return (
            f'{{"request_id":"{d.request_hex[32 * j : 32 * j + 32]}","timestamp":"{d.stamps[j]}"'
            f'{self._head}{messages},"response":{response},"finish_reason":{finish},'
            f'"prompt_tokens":{prompt_tokens},"completion_tokens":{completion_tokens},'
            f'"ttft_ms":{ttft},"latency_ms":{latency},"cost_usd":{cost},"status":"{status}",'
            f'"error":{error},"user_hash":"{d.user_hex[16 * j : 16 * j + 16]}",'
            f'"session_hash":"{d.session_hex[16 * j : 16 * j + 16]}",'
            f'"cache_hit":{d.cache[j]},"feedback":{feedback}}}'
        )

    def _answered(self, d: _Draws, j: int, text: str) -> str:
        """Record j answering its fact, but with the user's own wording `text`."""
        prompt_tokens = self._system_tokens + _tokens(text)
        cost = d.cost[j]
        if d.cache[j] == "false":
            cost = round(prompt_tokens * INPUT_PRICE_USD + d.completion_tokens[j] * OUTPUT_PRICE_USD, 8)
        return self._line(d, j, messages=_user_messages(text), prompt_tokens=prompt_tokens, cost=cost)

    def _replied(self, d: _Draws, j: int, text: str, reply: str) -> str:
        """Record j where the model answered `text` with `reply` and nobody rated it."""
        prompt_tokens = self._system_tokens + _tokens(text)
        completion_tokens = _tokens(reply)
        return self._line(
            d,
            j,
            messages=_user_messages(text),
            response=_json(reply),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency=round(d.ttft[j] + completion_tokens * d.per_token[j], 1),
            cost=round(prompt_tokens * INPUT_PRICE_USD + completion_tokens * OUTPUT_PRICE_USD, 8),
            feedback="null",
        )

    def _failed(self, d: _Draws, j: int, text: str, error: str, latency: float) -> str:
        """Record j that got no answer: the gateway or the model server failed it."""
        return self._line(
            d,
            j,
            messages=_user_messages(text),
            response="null",
            finish='"error"',
            prompt_tokens=self._system_tokens + _tokens(text),
            completion_tokens=0,
            ttft="null",
            latency=latency,
            cost=0.0,
            status="error",
            error=_json(error),
            feedback="null",
        )

    def _special(self, name: str, d: _Draws, j: int, rnd: random.Random) -> str:
        """Every kind but normal and duplicate (the rare path: a few % of records)."""
        question = self._q_text[d.question[j]]
        request_id = d.request_hex[32 * j : 32 * j + 32]
        if name == "near_duplicate":
            q = d.question[j]
            variant = self._nd_text[self._nd_off[q] + d.variant[j] % self._nd_cnt[q]]
            self.planted.append(Planted(request_id, name, question, variant))
            return self._answered(d, j, variant)
        if name in PII_KINDS:
            text, value = traffic.with_pii(name, question, rnd)
            self.planted.append(Planted(request_id, name, value, text))
            return self._answered(d, j, text)
        if name == "injection":
            # The old model mostly refused, but sometimes leaked its instructions.
            if rnd.random() < _INJECTION_LEAK_RATE:
                reply = traffic.INJECTION_LEAK_PREFIX + HISTORY_SYSTEM_PROMPT
            else:
                reply = rnd.choice(traffic.INJECTION_REFUSALS)
            attack = rnd.choice(traffic.INJECTION_PROMPTS)
            self.planted.append(Planted(request_id, name, attack, attack))
            return self._replied(d, j, attack, reply)
        if name == "empty":
            return self._replied(d, j, rnd.choice(traffic.EMPTY_CONTENTS), traffic.EMPTY_REPLY)
        if name == "oversize":
            text = traffic.oversize_message(question, rnd)
            if len(text) <= GATEWAY_MAX_CHARS:
                return self._answered(d, j, text)
            error = f"request too large: {len(text)} characters, the limit is {GATEWAY_MAX_CHARS}"
            return self._failed(d, j, text, error, round(2.0 + 8.0 * rnd.random(), 1))
        if name == "upstream_error":
            error = rnd.choice(traffic.UPSTREAM_ERRORS)
            return self._failed(d, j, question, error, 60_000.0 if "timeout" in error else d.ttft[j])
        if name == "bad_encoding":
            # A cp1252 client's text written as it came: the line is not UTF-8.
            line = self._answered(d, j, f"{question} {_MISENCODED_MARK}")
            return line.replace(_MISENCODED_MARK, traffic.misencode(rnd.choice(traffic.MISENCODED_SUFFIXES)))
        base = self._line(d, j)
        if name == "malformed_json":
            if rnd.random() < 0.5:
                return traffic.junk_line(rnd)
            # A writer killed mid-line; any strict prefix of an object is invalid JSON.
            # Cutting after the request id keeps two truncated lines from being equal.
            return base[: rnd.randint(_REQUEST_ID_END, len(base) - 2)]
        data = orjson.loads(base)
        if name == "missing_field":
            del data[rnd.choice(_REQUIRED_FIELDS)]
        else:  # wrong_type
            field, value = rnd.choice(_WRONG_TYPES)
            data[field] = value
        return _json(data)
