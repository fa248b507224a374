"""Routing from the registry with a fake fetch: defaults, canary mapping, atomic swaps, degraded mode."""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable

import pytest

from flywheel.settings import ModelParams, ProjectParams
from gateway.contracts import RouteTable
from gateway.routing import RegistryRouteProvider, parse_canary_weight, system_prompt_of
from registry import (
    CANARY_WEIGHT_TAG,
    ModelVersionInfo,
    PromptVersionInfo,
    RegistryUnavailableError,
    RoutingSnapshot,
)

PROJECT = ProjectParams(registered_model="support-model", prompt_name="support-prompt")
MODEL = ModelParams(system_prompt="You are the default assistant.")


def version(number: str, weight: str | None = None) -> ModelVersionInfo:
    """A registered model version, optionally with a canary weight tag."""
    tags = {CANARY_WEIGHT_TAG: weight} if weight is not None else {}
    return ModelVersionInfo(
        name=PROJECT.registered_model,
        version=number,
        source=f"runs:/run{number}/adapter",
        run_id=f"run{number}",
        aliases=(),
        tags=tags,
    )


def prompt(number: str, system: str) -> PromptVersionInfo:
    """A chat prompt version whose system message is `system`."""
    template = [{"role": "system", "content": system}, {"role": "user", "content": "{{question}}"}]
    return PromptVersionInfo(name=PROJECT.prompt_name, version=number, template=template, tags={})


def provider_for(fetch: Callable[[str, str], RoutingSnapshot]) -> RegistryRouteProvider:
    """A provider that never polls on its own (tests call refresh_now)."""
    return RegistryRouteProvider(PROJECT, MODEL, poll_seconds=3600, fetch=fetch)


def fixed(snapshot: RoutingSnapshot) -> Callable[[str, str], RoutingSnapshot]:
    """A fetch that always answers `snapshot`."""
    return lambda model, prompt_name: snapshot


def test_default_table_before_anything_is_registered() -> None:
    # given a registry with nothing under any alias
    provider = provider_for(fixed(RoutingSnapshot()))

    # when the provider starts and after it has read the registry
    before = provider.current()
    provider.refresh_now()
    after = provider.current()

    # then both serve the base model with the params' system prompt
    for table in (before, after):
        assert table.source == "default", f"nothing registered, so the default table: {table}"
        assert table.champion.model_version is None, f"the base model has no version: {table.champion}"
        assert table.champion.adapter_uri is None, f"the base model has no adapter: {table.champion}"
        assert table.champion.system_prompt == MODEL.system_prompt, f"params' prompt: {table.champion}"
        assert table.challenger is None, f"no challenger before registration: {table}"
    assert after.champion.model_name == "SmolLM2-135M-Instruct.Q4_1", f"base model name: {after.champion}"
    assert provider.health()["registry"] == "ok", f"reachable registry: {provider.health()}"


def test_health_says_starting_before_the_first_read() -> None:
    # given a provider that has not read the registry yet
    provider = provider_for(fixed(RoutingSnapshot()))

    # when asked for its health
    health = provider.health()

    # then it says it is starting and has no success yet
    assert health["registry"] == "starting", f"no read yet: {health}"
    assert health["last_success"] is None, f"no read yet: {health}"


def test_champion_challenger_and_canary_weight_map_to_routes() -> None:
    # given v1 as champion, v2 as challenger at 25%, and champion/challenger prompts
    snapshot = RoutingSnapshot(
        champion=version("1"),
        challenger=version("2", weight="0.25"),
        champion_prompt=prompt("3", "Answer briefly."),
        challenger_prompt=prompt("4", "Answer with steps."),
    )
    provider = provider_for(fixed(snapshot))

    # when the provider reads the registry
    table = provider.refresh_now()

    # then each arm carries its model version, adapter and prompt, and the weight is the tag's
    assert table.source == "registry", f"registered versions: {table}"
    assert table.champion.arm == "champion", f"champion arm: {table.champion}"
    assert table.champion.model_version == "1", f"champion is v1: {table.champion}"
    assert table.champion.adapter_uri == "models:/support-model/1", f"adapter by version: {table.champion}"
    assert table.champion.prompt_version == "3", f"champion prompt v3: {table.champion}"
    assert table.champion.system_prompt == "Answer briefly.", f"system message: {table.champion}"
    assert table.challenger is not None, f"a challenger is registered: {table}"
    assert table.challenger.arm == "challenger", f"challenger arm: {table.challenger}"
    assert table.challenger.model_version == "2", f"challenger is v2: {table.challenger}"
    assert table.challenger.prompt_version == "4", f"challenger prompt v4: {table.challenger}"
    assert table.challenger.system_prompt == "Answer with steps.", f"system message: {table.challenger}"
    assert table.canary_weight == 0.25, f"weight from the tag: {table.canary_weight}"
    assert provider.current() is table, "refresh_now publishes the table it returns"


def test_challenger_model_uses_the_champion_prompt_when_no_challenger_prompt() -> None:
    # given a challenger model but only a champion prompt
    snapshot = RoutingSnapshot(
        champion=version("1"), challenger=version("2", weight="0.1"), champion_prompt=prompt("3", "Be kind.")
    )

    # when the table is built
    table = provider_for(fixed(snapshot)).refresh_now()

    # then the challenger runs the champion's prompt
    assert table.challenger is not None, f"a challenger is registered: {table}"
    assert table.challenger.prompt_version == "3", f"champion prompt on both arms: {table.challenger}"
    assert table.challenger.system_prompt == "Be kind.", f"champion prompt's text: {table.challenger}"


def test_prompt_only_candidate_runs_on_the_champion_model() -> None:
    # given a challenger prompt (with its own weight tag) and no challenger model
    candidate = PromptVersionInfo(
        name=PROJECT.prompt_name, version="5", template="Think first.", tags={CANARY_WEIGHT_TAG: "0.05"}
    )
    snapshot = RoutingSnapshot(
        champion=version("1"), champion_prompt=prompt("3", "Be kind."), challenger_prompt=candidate
    )

    # when the table is built
    table = provider_for(fixed(snapshot)).refresh_now()

    # then the challenger arm is the champion model with the candidate prompt (a text template)
    assert table.challenger is not None, f"a prompt candidate makes a challenger arm: {table}"
    assert table.challenger.model_version == "1", f"champion's model: {table.challenger}"
    assert table.challenger.system_prompt == "Think first.", (
        f"text template is the prompt: {table.challenger}"
    )
    assert table.canary_weight == 0.05, f"weight from the prompt's tag: {table.canary_weight}"


def test_challenger_identical_to_champion_is_dropped() -> None:
    # given both aliases on the same model version (e.g. just after a full promotion)
    snapshot = RoutingSnapshot(champion=version("2"), challenger=version("2", weight="1.0"))

    # when the table is built
    table = provider_for(fixed(snapshot)).refresh_now()

    # then there is nothing to split between
    assert table.challenger is None, f"identical arms collapse into the champion: {table}"
    assert table.canary_weight == 0.0, f"no canary without a distinct challenger: {table}"


@pytest.mark.parametrize(
    ("raw", "expected", "problem"),
    [
        (None, 0.0, False),
        ("", 0.0, False),
        ("0", 0.0, False),
        ("0.05", 0.05, False),
        ("1", 1.0, False),
        ("25", 0.0, True),  # a percentage by mistake: ignored, not clamped to 100%
        ("-0.1", 0.0, True),
        ("nan", 0.0, True),
        ("five percent", 0.0, True),
    ],
)
def test_canary_weight_parsing(raw: str | None, expected: float, problem: bool) -> None:
    # given a raw tag value; when it is parsed
    weight, reason = parse_canary_weight(raw)

    # then valid fractions pass and anything else means weight 0 with a reason
    assert weight == expected, f"{raw!r} should give weight {expected}, got {weight}"
    assert (reason is not None) == problem, f"{raw!r}: problem expected={problem}, got {reason!r}"


def test_invalid_weight_sends_nobody_to_the_challenger_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # given a challenger tagged with a percentage instead of a fraction
    provider = provider_for(
        fixed(RoutingSnapshot(champion=version("1"), challenger=version("2", weight="50")))
    )

    # when the registry is read twice
    with caplog.at_level(logging.WARNING, logger="gateway.routing"):
        provider.refresh_now()
        table = provider.refresh_now()

    # then the challenger is routed with weight 0 and the problem is logged once
    assert table.challenger is not None, f"the challenger stays known: {table}"
    assert table.canary_weight == 0.0, f"invalid weight is ignored: {table.canary_weight}"
    assert all(table.pick(f"user-{i}").arm == "champion" for i in range(200)), "nobody goes to the challenger"
    warnings = [r for r in caplog.records if "canary weight" in r.getMessage()]
    assert len(warnings) == 1, f"one warning per bad value, got {[r.getMessage() for r in warnings]}"


def test_unreachable_registry_keeps_the_last_good_table_and_reports_degraded() -> None:
    # given a registry that answers once, then goes away
    answers: list[RoutingSnapshot | Exception] = [
        RoutingSnapshot(champion=version("1")),
        RegistryUnavailableError("MLflow is not reachable at http://127.0.0.1:9"),
        RoutingSnapshot(champion=version("7")),
    ]

    def fetch(model: str, prompt_name: str) -> RoutingSnapshot:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    provider = provider_for(fetch)
    good = provider.refresh_now()
    good_health = dict(provider.health())

    # when the next read fails
    kept = provider.refresh_now()
    health = provider.health()

    # then the last good table is still served, and health says degraded with the error
    assert kept is good, f"the last good table is kept: {kept}"
    assert provider.current().champion.model_version == "1", f"still v1: {provider.current()}"
    assert health["registry"] == "degraded", f"degraded while unreachable: {health}"
    assert "127.0.0.1:9" in str(health["error"]), f"the error names the server: {health}"
    assert health["last_success"] == good_health["last_success"], f"last success unchanged: {health}"

    # and when the registry comes back, the provider recovers
    recovered = provider.refresh_now()
    assert recovered.champion.model_version == "7", f"new champion after recovery: {recovered}"
    assert provider.health()["registry"] == "ok", f"ok again: {provider.health()}"
    assert provider.health()["error"] is None, f"error cleared: {provider.health()}"


def test_unexpected_fetch_error_also_degrades_instead_of_crashing() -> None:
    # given a fetch that fails with something unforeseen
    def fetch(model: str, prompt_name: str) -> RoutingSnapshot:
        raise KeyError("surprise")

    provider = provider_for(fetch)

    # when the registry is read
    table = provider.refresh_now()

    # then the default table is served and health is degraded
    assert table.source == "default", f"default table kept: {table}"
    assert provider.health()["registry"] == "degraded", f"degraded: {provider.health()}"


def test_readers_always_see_a_consistent_table_while_it_is_swapped() -> None:
    # given a registry that alternates between two states where model and prompt versions go together
    states = itertools.cycle(
        [
            RoutingSnapshot(champion=version("1"), champion_prompt=prompt("1", "one")),
            RoutingSnapshot(champion=version("2"), champion_prompt=prompt("2", "two")),
        ]
    )
    lock = threading.Lock()

    def fetch(model: str, prompt_name: str) -> RoutingSnapshot:
        with lock:
            return next(states)

    provider = provider_for(fetch)
    provider.refresh_now()
    stop = threading.Event()
    mismatches: list[RouteTable] = []
    reads = [0, 0, 0, 0]

    def reader(slot: int) -> None:
        while not stop.is_set():
            table = provider.current()
            route = table.champion
            expected_prompt = {"1": "one", "2": "two"}[route.model_version or ""]
            if route.prompt_version != route.model_version or route.system_prompt != expected_prompt:
                mismatches.append(table)
            reads[slot] += 1

    # when four readers read while the table is swapped 2000 times
    threads = [threading.Thread(target=reader, args=(slot,)) for slot in range(len(reads))]
    for thread in threads:
        thread.start()
    for _ in range(2000):
        provider.refresh_now()
    stop.set()
    for thread in threads:
        thread.join()

    # then no reader ever saw a model version paired with the other state's prompt
    assert not mismatches, f"{len(mismatches)} inconsistent reads, e.g. {mismatches[:1]}"
    assert all(count > 0 for count in reads), f"every reader read: {reads}"


def test_poller_thread_refreshes_and_stops() -> None:
    # given a provider polling every millisecond, counting its fetches
    fetched = threading.Event()
    calls = []

    def fetch(model: str, prompt_name: str) -> RoutingSnapshot:
        calls.append(model)
        if len(calls) >= 3:
            fetched.set()
        return RoutingSnapshot(champion=version(str(len(calls))))

    provider = RegistryRouteProvider(PROJECT, MODEL, poll_seconds=0.001, fetch=fetch)

    # when it is started, has polled a few times, and is stopped
    provider.start()
    assert fetched.wait(30), f"the poller should fetch repeatedly, fetched {len(calls)} times"
    provider.stop()

    # then the table follows the registry and polling has ended
    assert provider.current().champion.model_version is not None, f"registry table: {provider.current()}"
    assert not provider.polling, "stop() ends and joins the poller thread"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("You are terse.", "You are terse."),
        ([{"role": "system", "content": "Be exact."}, {"role": "user", "content": "{{q}}"}], "Be exact."),
        ([{"role": "user", "content": "{{q}}"}], None),
        ("   ", None),
    ],
)
def test_system_prompt_extraction(template: str | list[dict[str, str]], expected: str | None) -> None:
    # given a prompt template; when its system prompt is extracted; then it is the system message or text
    assert system_prompt_of(template) == expected, f"{template!r} -> {expected!r}"
