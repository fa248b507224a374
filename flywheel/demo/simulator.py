"""Live traffic for the demo: simulated customers ask Quillbox questions through the gateway.

Each simulated user has a stable id (so canary arms stay sticky), asks questions
from the training pool (never the held-out eval paraphrases, which would leak
into the next harvest), and rates some answers the way a customer who knows the
facts would, through `POST /v1/feedback`.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import numpy as np

from flywheel.demo.knowledge import Question, load_knowledge, split_questions
from flywheel.demo.simulated_user import SimulatedUser


@dataclass
class ArmSummary:
    """What one arm served during a simulation."""

    requests: int = 0
    feedback: Counter[int] = field(default_factory=Counter)
    scores: list[float] = field(default_factory=list)

    @property
    def positive_rate(self) -> float | None:
        rated = sum(self.feedback.values())
        return self.feedback[1] / rated if rated else None


@dataclass
class SimulationSummary:
    """Counts, latencies and feedback of one simulation run."""

    requests: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    wall_s: float = 0.0
    arms: dict[str, ArmSummary] = field(default_factory=lambda: defaultdict(ArmSummary))
    feedback_sent: int = 0

    def percentile(self, q: float) -> float | None:
        """Latency percentile in seconds (q in 0..100)."""
        return float(np.percentile(self.latencies_s, q)) if self.latencies_s else None

    def lines(self) -> list[str]:
        """A short human summary."""
        out = [
            f"requests {self.requests}: ok {self.ok}, "
            f"errors {sum(self.errors.values())} {dict(self.errors) or ''}",
            f"wall {self.wall_s:.1f}s, {self.ok / self.wall_s if self.wall_s else 0:.2f} req/s, "
            f"{self.completion_tokens / self.wall_s if self.wall_s else 0:.1f} completion tokens/s",
        ]
        if self.latencies_s:
            out.append(
                f"latency p50 {self.percentile(50):.2f}s p95 {self.percentile(95):.2f}s "
                f"mean {statistics.fmean(self.latencies_s):.2f}s"
            )
        for arm, s in sorted(self.arms.items()):
            rate = s.positive_rate
            mean_score = statistics.fmean(s.scores) if s.scores else float("nan")
            out.append(
                f"arm {arm}: {s.requests} requests, feedback {dict(s.feedback)}, "
                f"positive rate {'-' if rate is None else f'{rate:.0%}'}, mean quality {mean_score:.2f}"
            )
        out.append(f"feedback sent: {self.feedback_sent}")
        return out


def training_questions(eval_paraphrases: int) -> tuple[Question, ...]:
    """The questions live users ask: the training pool only."""
    train, _held_out = split_questions(load_knowledge(), eval_paraphrases)
    return train


async def simulate(
    base_url: str,
    api_key: str,
    *,
    requests: int,
    concurrency: int,
    model: str,
    user: SimulatedUser,
    questions: tuple[Question, ...],
    users: int = 200,
    feedback_rate: float = 0.6,
    max_tokens: int = 64,
    seed: int = 0,
    timeout_s: float = 120.0,
    on_progress: Callable[[int, int], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> SimulationSummary:
    """Send `requests` chat requests with `concurrency` in flight; rate `feedback_rate` of the answers.

    With `stop`, traffic ends early once it returns True (checked before each request), so
    `requests` is a cap: live traffic for as long as something else (a canary) runs.
    """
    from openai import APIStatusError, AsyncOpenAI

    rng = np.random.default_rng(seed)
    plan = [
        (
            int(rng.integers(users)),
            questions[int(rng.integers(len(questions)))],
            bool(rng.random() < feedback_rate),
        )
        for _ in range(requests)
    ]
    summary = SimulationSummary(requests=0)
    client = AsyncOpenAI(
        base_url=base_url.rstrip("/") + "/v1", api_key=api_key, max_retries=0, timeout=timeout_s
    )
    http = httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
    semaphore = asyncio.Semaphore(concurrency)
    done = 0

    async def one(user_index: int, question: Question, rate_it: bool) -> None:
        nonlocal done
        async with semaphore:
            if stop is not None and stop():
                return
            summary.requests += 1
            t0 = time.perf_counter()
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model=model,
                    messages=[{"role": "user", "content": question.text}],
                    max_tokens=max_tokens,
                    temperature=0.0,
                    user=f"sim-user-{user_index}",
                )
            except APIStatusError as error:
                summary.errors[f"HTTP {error.status_code}"] += 1
                return
            except Exception as error:  # count any client failure by kind, keep the run going
                summary.errors[type(error).__name__] += 1
                return
            finally:
                done += 1
                if on_progress:
                    on_progress(done, requests)
            completion = raw.parse()
            summary.latencies_s.append(time.perf_counter() - t0)
            summary.ok += 1
            answer = completion.choices[0].message.content or ""
            summary.completion_tokens += completion.usage.completion_tokens if completion.usage else 0
            arm = raw.headers.get("x-flywheel-arm", "unknown")
            arm_summary = summary.arms[arm]
            arm_summary.requests += 1
            # Rating embeds the answer (MiniLM): keep it off the event loop.
            score = await asyncio.to_thread(user.score, question.text, answer)
            arm_summary.scores.append(score)
            if rate_it:
                rating = await asyncio.to_thread(user.rate, question.text, answer)
                arm_summary.feedback[rating] += 1
                response = await http.post(
                    "/v1/feedback", json={"request_id": completion.id, "score": rating}
                )
                if response.status_code < 300:
                    summary.feedback_sent += 1
                else:
                    summary.errors[f"feedback HTTP {response.status_code}"] += 1

    started = time.perf_counter()
    try:
        await asyncio.gather(*(one(u, q, r) for u, q, r in plan))
    finally:
        summary.wall_s = time.perf_counter() - started
        await client.close()
        await http.aclose()
    return summary
