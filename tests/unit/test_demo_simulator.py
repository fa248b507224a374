"""The traffic simulator against a real HTTP gateway over fakes: requests, arms and feedback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from flywheel.demo import HashingEmbedder, SimulatedUser, load_knowledge
from flywheel.demo.simulator import simulate, training_questions
from flywheel.settings import GatewayParams
from flywheel.stack.ports import free_port
from gateway.app import GatewayDeps, create_app
from gateway.auth import ApiKeys
from gateway.contracts import RouteTable
from gateway.ports import MemorySink
from tests.helpers.fake_gateway import EchoBackend, StaticRoutes, route
from tests.helpers.servers import serve_in_thread

KEY = "sim-test-key"


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[str, MemorySink]]:
    """A gateway on fakes (echo backend, 50/50 canary), under uvicorn on a free loopback port."""
    sink = MemorySink()
    table = RouteTable(
        champion=route("champion", "1"), challenger=route("challenger", "2"), canary_weight=0.5
    )
    deps = GatewayDeps(
        routes=StaticRoutes(table),
        backend=EchoBackend(),
        sink=sink,
        application="support-assistant",
        keys=ApiKeys.from_pairs([("sim", KEY)]),
    )
    app = create_app(GatewayParams(), deps, tune_gc=False)
    with serve_in_thread(app) as base_url:
        yield base_url, sink


def test_simulation_sends_requests_as_sticky_users_and_rates_answers(gateway: tuple[str, MemorySink]) -> None:
    # given the simulated customers of the demo (cheap embedder, no noise)
    base_url, sink = gateway
    user = SimulatedUser(load_knowledge(), noise=0.0, embedder=HashingEmbedder())
    questions = training_questions(eval_paraphrases=2)
    # when 60 requests go through the gateway, 4 at a time, with every answer rated
    summary = asyncio.run(
        simulate(
            base_url,
            KEY,
            requests=60,
            concurrency=4,
            model="support-assistant",
            user=user,
            questions=questions,
            users=20,
            feedback_rate=1.0,
            seed=3,
        )
    )
    # then every request succeeded, both arms served, and each answer's rating reached the gateway
    assert summary.ok == 60 and not summary.errors, f"all requests should succeed: {summary.errors}"
    assert set(summary.arms) == {"champion", "challenger"}, f"a 50/50 canary serves both: {set(summary.arms)}"
    assert summary.feedback_sent == 60 and len(sink.feedback) == 60, "every rated answer sends feedback"
    logged_ids = {record.request_id for record in sink.records}
    assert {entry.request_id for entry in sink.feedback} <= logged_ids, "feedback refers to logged requests"
    # and the questions came from the training pool only (never the held-out eval set)
    asked = {record.messages[-1].content for record in sink.records}
    assert asked <= {q.text for q in questions}, "live traffic must not ask held-out eval questions"
    assert len({r.user_hash for r in sink.records}) <= 20, "requests come from the 20 simulated users"


def test_failed_requests_are_counted_not_raised() -> None:
    user = SimulatedUser(load_knowledge(), noise=0.0, embedder=HashingEmbedder())
    summary = asyncio.run(
        simulate(
            f"http://127.0.0.1:{free_port()}",
            KEY,
            requests=3,
            concurrency=1,
            model="m",
            user=user,
            questions=training_questions(2),
            timeout_s=2,
        )
    )
    assert summary.ok == 0 and sum(summary.errors.values()) == 3, f"errors counted by kind: {summary.errors}"
