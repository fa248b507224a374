"""Promotion against a real MLflow server and a real request log, with the real gateway in the loop.

The module starts its own MLflow and `python -m gateway` (on the instant OpenAI
stub, polling the registry every second), like test_gateway_live.py. A good
challenger is approved exactly as the MLflow UI does it (`set_model_version_tag`)
and walks 5 -> 25 -> 100 % under continuous load through the gateway, then is
rolled back, with zero failed requests. A bad one (20% errors, simulated traffic
written to its own SQLite request log) is aborted at the first step; unapproved,
rejected and gate-failed challengers never get a canary weight.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import yaml

import registry
from flywheel.requestlog import open_request_log
from flywheel.schemas import ChatMessage, RequestRecord
from flywheel.settings import DEFAULT_PARAMS_PATH, Environment, PromoteParams
from flywheel.stack import launcher
from flywheel.stack.ports import free_port
from flywheel.stack.services import embedded_services
from registry import CANARY_WEIGHT_TAG, Subject
from tasks.promote.audit import AuditTrail
from tasks.promote.canary import CanaryOutcome, CanaryPlan, RegistryPort, run_canary
from tasks.promote.policy import Approved, Refusal, check_approval
from tasks.promote.review import review_challenger
from tasks.promote.rollback import roll_back
from tasks.promote.window import SqlWindowReader

pytestmark = pytest.mark.integration

MODEL = "flywheel-promotion-test"  # the gateway follows this one
POLL_S = 1.0
# How long the gateway may take to follow an alias move under this test's load on 2 cores: a
# poll whose registry read was in flight at the move returns the old state, the next poll (one
# POLL_S later) reads the new one, and each read is several MLflow calls (one CI run needed >3 s).
SWITCH_S = 2 * POLL_S + 4.0


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, stub_url: str, own_mlflow: None) -> Iterator[Environment]:
    """MLflow and a gateway on the stub (cache off, 1 s registry poll), really running; stopped after."""
    import mlflow

    root = tmp_path_factory.mktemp("promotion")
    params = yaml.safe_load(DEFAULT_PARAMS_PATH.read_text())
    params["project"]["registered_model"] = MODEL
    params["project"]["prompt_name"] = "flywheel-promotion-test-prompt"
    params["gateway"].update(
        registry_poll_seconds=POLL_S,
        backends=[
            {"name": "stub", "kind": "openai", "base_url_env": "FLYWHEEL_TEST_STUB_URL", "model": "stub"}
        ],
        fallback=["stub"],
        cache={"exact": False, "semantic": False},
        rate_limit_tokens_per_minute=1_000_000_000,
    )
    params_path = root / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))
    env = Environment(
        FLYWHEEL_HOME=root / "home",
        FLYWHEEL_PARAMS=params_path,
        FLYWHEEL_MLFLOW_PORT=free_port(),
        FLYWHEEL_GATEWAY_PORT=free_port(),
    )
    specs = {s.name: s for s in embedded_services(env)}
    gateway = replace(
        specs["gateway"],
        env={**specs["gateway"].env, "FLYWHEEL_TEST_STUB_URL": stub_url, "FLYWHEEL_HOME": str(env.home)},
        start_timeout_s=120,
    )
    chosen = [specs["mlflow"], gateway]
    launcher.up(env, chosen)
    previous = mlflow.get_tracking_uri()
    registry.configure_tracking(env.tracking_uri, experiment="promotion-test")
    try:
        yield env
    finally:
        launcher.down(env, chosen)
        mlflow.set_tracking_uri(previous)  # other modules share this process's MLflow client
        mlflow.set_registry_uri(previous)


def _register(model: str, tmp_path: Path, *, candidate: bool = False, passed: bool = True) -> str:
    """A new version of `model` with a logged (empty) adapter; a candidate goes through register_candidate."""
    import mlflow

    folder = tmp_path / f"adapter-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(folder), artifact_path="adapter")
        if candidate:  # as the evaluate flow leaves it
            mlflow.log_text("# test candidate\n\nGate: passed.\n", "evaluation/model_card.md")
    source = f"runs:/{run.info.run_id}/adapter"
    if not candidate:
        return registry.register_model_version(model, source, run_id=run.info.run_id).version
    version = registry.register_candidate(
        model, source, run.info.run_id, passed=passed, failed_rules=[] if passed else ["rougeL"],
        lineage={}, scores={"rougeL.mean": 0.5}, description="test candidate", produced_by="trainer",
    )  # fmt: skip
    return version.version


def _approve_in_the_ui(model: str, version: str, decision: str = "approved", who: str = "alice") -> None:
    """Exactly what a reviewer does in the MLflow UI: edit two tags on the version."""
    from mlflow import MlflowClient

    client = MlflowClient()
    client.set_model_version_tag(model, version, "flywheel.approval", decision)
    client.set_model_version_tag(model, version, "flywheel.approved_by", who)


def _promote_once(
    subject: Subject, params: PromoteParams, request_log_url: str, audit: AuditTrail
) -> Approved | Refusal | CanaryOutcome | None:
    """What flows/promote.py does, without Prefect: read aliases, review, run the canary if approved."""
    state = registry.read_aliases(subject)
    verdict = review_challenger(
        state, params, audit, lambda *_: None, datetime.now(UTC), lambda version: None
    )
    if not isinstance(verdict, Approved):
        return verdict
    champion = state.champion.version if state.champion is not None else None
    reader = SqlWindowReader(request_log_url)
    try:
        return run_canary(
            CanaryPlan(subject, verdict.version, champion), params, RegistryPort(subject), reader, audit
        )
    finally:
        reader.close()


def _tags(model: str, version: str) -> dict[str, str]:
    from mlflow import MlflowClient

    return dict(MlflowClient().get_model_version(model, version).tags)


class Load:
    """Clients sending requests through the gateway, each request a new user, recording what was served."""

    def __init__(self, url: str, workers: int = 4) -> None:
        self.url = url
        self.failures: list[str] = []
        self.served: list[tuple[float, str, str]] = []  # (sent at, arm, model version)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(workers)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self, worker: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            n = 0
            while not self._stop.is_set():
                sent = time.monotonic()
                body = {
                    "model": "support-assistant",
                    "messages": [{"role": "user", "content": f"question {n}"}],
                    "user": f"user-{worker}-{n}",
                }
                n += 1
                try:
                    response = client.post("/v1/chat/completions", json=body)
                except httpx.HTTPError as error:
                    self.failures.append(f"{type(error).__name__}: {error}")
                    continue
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code} {response.text[:200]}")
                else:
                    headers = response.headers
                    self.served.append((sent, headers["x-flywheel-arm"], headers["x-flywheel-model-version"]))
                time.sleep(0.01)  # steady load that leaves the 2 cores to the gateway and MLflow

    def versions_after(self, moment: float) -> set[str]:
        """Model versions served to requests sent after `moment`."""
        return {version for sent, _, version in self.served if sent > moment}


def _wait_for_champion(url: str, version: str) -> None:
    deadline = time.monotonic() + 15 * POLL_S
    while time.monotonic() < deadline:
        if f"@{version}" in str(httpx.get(f"{url}/healthz", timeout=10).json()["routes"]["champion"]):
            return
        time.sleep(0.2)
    pytest.fail(f"the gateway did not serve v{version} as champion within {15 * POLL_S}s")


def test_good_challenger_goes_5_25_100_then_rollback_under_load_with_no_failed_request(
    live: Environment, tmp_path: Path
) -> None:
    # given v1 champion being served, and v2 a candidate that passed the gate, approved in the UI
    v1 = _register(MODEL, tmp_path)
    registry.set_alias(MODEL, "champion", v1)
    v2 = _register(MODEL, tmp_path, candidate=True)
    _approve_in_the_ui(MODEL, v2)
    _wait_for_champion(live.gateway_url, v1)
    subject = Subject("model", MODEL)
    audit_path = tmp_path / "audit.jsonl"
    audit = AuditTrail(
        audit_path, "promote-flow", mirror=lambda _s, v, e, t, h: registry.mirror_audit(subject, v, e, t, h)
    )
    params = PromoteParams(
        analysis_window_seconds=4, min_requests_per_arm=5, max_holds=4, min_latency_delta_ms=500
    )

    # when the promotion runs while clients keep sending requests through the gateway
    with Load(live.gateway_url) as load:
        time.sleep(1.0)
        outcome = _promote_once(subject, params, live.request_log_uri, audit)
        promoted_at = time.monotonic()
        time.sleep(SWITCH_S + 3)
        # and then `previous` is rolled back in, still under load. Its first call moves `champion`;
        # the audit mirroring after it takes seconds on a loaded machine, while v1 is served again.
        rollback_started_at = time.monotonic()
        restored = roll_back(
            str(subject),
            "test rollback",
            lambda why: registry.rollback_champion(subject, why),
            audit,
            lambda *_: None,
        )
        rolled_back_at = time.monotonic()
        time.sleep(SWITCH_S + 3)

    # then v2 walked 5 -> 25 -> 100 and became champion with previous = v1
    assert isinstance(outcome, CanaryOutcome) and outcome.promoted, f"promoted: {outcome}"
    assert [step.percent for step in outcome.steps] == [5, 25, 100], f"steps: {outcome.steps}"
    assert outcome.previous == v1, f"previous is the old champion: {outcome}"
    entries = [json.loads(line) for line in audit_path.read_text().splitlines()]
    events = [entry["event"] for entry in entries if entry["version"] == v2]
    assert events[0] == "approval_seen" and entries[0]["who"] == "alice", f"approval first: {entries[0]}"
    assert events.count("step_started") == 3 and "promoted" in events, f"{events}"
    # and the rollback put v1 back with v2 as previous
    assert restored == v1, f"rollback restores v1: {restored}"
    assert registry.get_version_by_alias(MODEL, "champion").version == v1, "v1 champion again"
    assert registry.get_version_by_alias(MODEL, "previous").version == v2, "v2 is previous"
    with pytest.raises(registry.AliasNotFoundError):
        registry.get_version_by_alias(MODEL, "challenger")
    tags = _tags(MODEL, v2)
    assert CANARY_WEIGHT_TAG not in tags, f"canary tags cleared: {tags}"
    assert json.loads(tags["flywheel.audit.last"])["event"] == "rolled_back", f"audit mirrored: {tags}"
    import mlflow

    run_id = registry.get_version(subject, v2).run_id
    history = mlflow.artifacts.load_text(f"runs:/{run_id}/promotion/history.md")
    assert "## Promotion history" in history and "| alice | approval_seen |" in history, history
    card = mlflow.artifacts.load_text(f"runs:/{run_id}/evaluation/model_card.md")
    assert card.startswith("# test candidate") and card.count("## Promotion history") == 1, card
    assert "| promoted |" in card and "| rolled_back |" in card, f"the card's history is complete: {card}"
    # and under load: nothing failed, only v1/v2 ever served, v2 after promotion, v1 after rollback
    assert not load.failures, f"{len(load.failures)} requests failed: {load.failures[:3]}"
    served = {version for _, _, version in load.served}
    assert served == {v1, v2}, f"only champion/challenger served: {served}"
    assert any(arm == "challenger" for _, arm, _ in load.served), "the canary sent some users to v2"
    slack = SWITCH_S
    assert load.versions_after(promoted_at + slack) - {v1} <= {v2}, "after promotion"
    after_promotion = {v for sent, _, v in load.served if promoted_at + slack < sent < rollback_started_at}
    assert after_promotion == {v2}, f"v2 only after promotion: {after_promotion}"
    assert load.versions_after(rolled_back_at + slack) == {v1}, "v1 only after the rollback"


def _simulate_traffic(
    model: str, log_url: str, stop: threading.Event, weights: list[float], error_share: float
) -> None:
    """Write requests to the log as a gateway would: users split by the live canary weight."""
    log = open_request_log(log_url)
    rng = random.Random(7)
    try:
        while not stop.is_set():
            snapshot = registry.read_routing(model, "flywheel-promotion-no-prompt")
            weight = float(snapshot.canary_weight_tag or 0) if snapshot.challenger is not None else 0.0
            weights.append(weight)
            batch = []
            for _ in range(40):
                challenger = snapshot.challenger is not None and rng.random() < weight
                version = snapshot.challenger if challenger else snapshot.champion
                failed = challenger and rng.random() < error_share
                batch.append(
                    RequestRecord(
                        request_id=uuid.uuid4().hex,
                        timestamp=datetime.now(UTC),
                        application="support-assistant",
                        arm="challenger" if challenger else "champion",
                        model_name=model,
                        model_version=version.version if version else None,
                        messages=[ChatMessage(role="user", content="hi")],
                        response=None if failed else "ok",
                        prompt_tokens=5,
                        completion_tokens=0 if failed else 20,
                        ttft_ms=20.0,
                        latency_ms=200.0,
                        cost_usd=0.0 if failed else 0.0001,
                        status="error" if failed else "ok",
                    )
                )
            log.append(batch)
            time.sleep(0.1)
    finally:
        log.close()


def test_bad_challenger_with_20_percent_errors_is_aborted_at_the_first_step(
    live: Environment, tmp_path: Path
) -> None:
    # given v1 champion and an approved v2 whose simulated traffic fails 20% of the time
    model = "flywheel-promotion-bad"
    v1 = _register(model, tmp_path)
    registry.set_alias(model, "champion", v1)
    v2 = _register(model, tmp_path, candidate=True)
    _approve_in_the_ui(model, v2)
    log_url = f"sqlite:///{tmp_path / 'requests.db'}"
    subject = Subject("model", model)
    audit = AuditTrail(
        tmp_path / "audit.jsonl",
        "promote-flow",
        mirror=lambda _s, v, e, t, h: registry.mirror_audit(subject, v, e, t, h),
    )
    params = PromoteParams(analysis_window_seconds=3, min_requests_per_arm=20, max_holds=3)
    stop, weights = threading.Event(), []
    simulator = threading.Thread(
        target=_simulate_traffic, args=(model, log_url, stop, weights, 0.2), daemon=True
    )
    simulator.start()

    # when the promotion runs
    try:
        outcome = _promote_once(subject, params, log_url, audit)
        time.sleep(1.0)
    finally:
        stop.set()
        simulator.join(timeout=30)

    # then it was aborted at 5%, naming error_rate with its numbers in the audit log
    assert isinstance(outcome, CanaryOutcome) and not outcome.promoted, f"aborted: {outcome}"
    assert [step.percent for step in outcome.steps] == [5], f"stopped at the first step: {outcome.steps}"
    assert "error_rate" in outcome.failed_metrics, f"error_rate failed: {outcome}"
    aborted = [e for e in audit.entries(str(subject), v2) if e.event == "aborted"]
    assert aborted and "error_rate" in aborted[0].why and " vs " in aborted[0].why, f"{aborted}"
    # and traffic is back on the champion: weight 0, rolled_back with the reason, no challenger alias
    tags = _tags(model, v2)
    assert tags[CANARY_WEIGHT_TAG] == "0" and tags["flywheel.canary_state"] == "rolled_back", f"{tags}"
    assert "error_rate" in tags["flywheel.canary_reason"], f"the reason is on the version: {tags}"
    with pytest.raises(registry.AliasNotFoundError):
        registry.get_version_by_alias(model, "challenger")
    assert registry.get_version_by_alias(model, "champion").version == v1, "v1 still champion"
    assert max(weights) <= 0.05 and weights[-1] == 0.0, (
        f"never above 5%, 0 at the end: {sorted(set(weights))}"
    )


def test_an_abort_under_load_returns_every_user_to_the_champion_with_no_failed_request(
    live: Environment, tmp_path: Path
) -> None:
    # given v1 champion and v2 in its canary at 25%, both served through the gateway under load
    v1 = _register(MODEL, tmp_path)
    registry.set_alias(MODEL, "champion", v1)
    v2 = _register(MODEL, tmp_path, candidate=True)
    subject = Subject("model", MODEL)
    registry.set_canary_weight(subject, v2, 0.25)
    _wait_for_champion(live.gateway_url, v1)
    with Load(live.gateway_url) as load:
        time.sleep(3 * POLL_S + 2)
        # when the canary is aborted, as a failed analysis does it
        registry.abort_canary(subject, v2, "test abort: error_rate 0.2 vs 0.0")
        aborted_at = time.monotonic()
        time.sleep(SWITCH_S + 3)
    # then nothing failed, v2 had users before the abort and none after it (within SWITCH_S)
    assert not load.failures, f"{len(load.failures)} requests failed: {load.failures[:3]}"
    before = {v for sent, _, v in load.served if sent < aborted_at}
    assert before == {v1, v2}, f"both versions served during the canary: {before}"
    assert load.versions_after(aborted_at + SWITCH_S) == {v1}, "only the champion after the abort"
    with pytest.raises(registry.AliasNotFoundError):
        registry.get_version_by_alias(MODEL, "challenger")


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("pending", "pending"),
        ("rejected", "rejected"),
        ("gate_failed", "gate_failed"),
        ("self", "same_approver"),
    ],
)
def test_unapproved_rejected_and_gate_failed_challengers_get_no_canary_weight(
    live: Environment, tmp_path: Path, case: str, code: str
) -> None:
    # given a challenger in one of the states that must never get traffic
    model = f"flywheel-promotion-refused-{case}"
    v1 = _register(model, tmp_path)
    registry.set_alias(model, "champion", v1)
    v2 = _register(model, tmp_path, candidate=True, passed=case != "gate_failed")
    if case == "gate_failed":
        registry.set_alias(model, "challenger", v2)  # put there by hand: the gate itself never would
        _approve_in_the_ui(model, v2)
    elif case == "rejected":
        _approve_in_the_ui(model, v2, "rejected", "bob")
    elif case == "self":
        _approve_in_the_ui(model, v2, "approved", "trainer")
    audit = AuditTrail(tmp_path / "audit.jsonl", "promote-flow")

    # when the promotion runs
    verdict = _promote_once(
        Subject("model", model), PromoteParams(analysis_window_seconds=1), "sqlite://", audit
    )

    # then it is refused with the reason, and the version never got a canary weight
    assert isinstance(verdict, Refusal) and verdict.code == code, f"refused as {code}: {verdict}"
    assert CANARY_WEIGHT_TAG not in _tags(model, v2), f"no canary weight: {_tags(model, v2)}"
    assert registry.get_version_by_alias(model, "champion").version == v1, "the champion is untouched"


def test_prompt_versions_take_the_same_path(live: Environment) -> None:
    # given prompt v1 champion and v2 challenger
    name = f"flywheel-promotion-prompt-{uuid.uuid4().hex[:6]}"
    p1 = registry.register_prompt(name, "Answer briefly.", commit_message="v1")
    p2 = registry.register_prompt(name, "Answer with steps.", commit_message="v2")
    registry.set_prompt_alias(name, "champion", p1.version)
    registry.set_prompt_alias(name, "challenger", p2.version)
    subject = Subject("prompt", name)

    # when the canary weight is set, then v2 promoted, then rolled back
    registry.set_canary_weight(subject, p2.version, 0.25)
    weight = registry.read_routing("flywheel-promotion-none", name).canary_weight_tag
    old = registry.promote_challenger(subject, p2.version)
    after = registry.read_aliases(subject)
    restored, demoted = registry.rollback_champion(subject, "test")
    final = registry.read_aliases(subject)

    # then the gateway's view followed each move
    assert weight == "0.25", f"the gateway reads the prompt's canary weight: {weight}"
    assert old == p1.version and after.champion and after.champion.version == p2.version, f"{after}"
    assert after.challenger is None and after.previous and after.previous.version == p1.version, f"{after}"
    assert CANARY_WEIGHT_TAG not in after.champion.tags, f"canary tags cleared: {after.champion.tags}"
    assert (restored, demoted) == (p1.version, p2.version), f"{restored} {demoted}"
    assert final.champion and final.champion.version == p1.version, f"{final}"

    # and a prompt canary aborts the same way: weight 0, rolled_back with the reason, no challenger
    p3 = registry.register_prompt(name, "Answer in French.", commit_message="v3")
    registry.set_prompt_alias(name, "challenger", p3.version)
    registry.set_canary_weight(subject, p3.version, 0.05)
    registry.abort_canary(subject, p3.version, "feedback_positive_rate failed")
    aborted = registry.read_aliases(subject)
    tags = registry.get_version(subject, p3.version).tags
    assert aborted.challenger is None, f"no prompt challenger after the abort: {aborted}"
    assert tags[CANARY_WEIGHT_TAG] == "0" and tags["flywheel.canary_state"] == "rolled_back", f"{tags}"


def _webhook_app(received: list[dict[str, object]]):  # type: ignore[no-untyped-def]
    """A webhook receiver that keeps every JSON body it is sent."""

    async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        received.append(json.loads(body))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


def test_the_promote_and_rollback_flows_under_prefect(
    live: Environment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.testing.utilities import prefect_test_harness

    from flows.promote import promote
    from flows.rollback import rollback
    from tests.helpers.servers import serve_in_thread

    # given the flows pointed at this module's stack, small windows, a webhook, and v1 champion, v2 pending
    params = yaml.safe_load(live.params_path.read_text())
    params["promote"].update(
        analysis_window_seconds=3, min_requests_per_arm=5, max_holds=4, min_latency_delta_ms=500
    )
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))
    audit_path = tmp_path / "audit.jsonl"
    for key, value in {
        "FLYWHEEL_HOME": str(live.home),
        "FLYWHEEL_PARAMS": str(params_path),
        "FLYWHEEL_MLFLOW_PORT": str(live.mlflow_port),
        "FLYWHEEL_GATEWAY_PORT": str(live.gateway_port),
        "FLYWHEEL_AUDIT_LOG": str(audit_path),
        "FLYWHEEL_IDENTITY": "promote-flow",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    v1 = _register(MODEL, tmp_path)
    registry.set_alias(MODEL, "champion", v1)
    v2 = _register(MODEL, tmp_path, candidate=True)
    received: list[dict[str, object]] = []

    with serve_in_thread(_webhook_app(received)) as hook, prefect_test_harness(server_startup_timeout=120):
        monkeypatch.setenv("FLYWHEEL_WEBHOOK_URL", hook)
        # when the scheduled flow finds it pending
        pending = promote()
        # and, once approved in the UI, runs again under load, then the rollback flow runs
        _approve_in_the_ui(MODEL, v2)
        _wait_for_champion(live.gateway_url, v1)
        with Load(live.gateway_url) as load:
            promoted = promote()
            restored = rollback(reason="flow test")
            time.sleep(3 * POLL_S + 2)

    # then: refused while pending (and "approval needed" sent once), promoted, then rolled back
    assert pending["promoted"] is False and "waiting for a reviewer" in str(pending["reason"]), f"{pending}"
    assert promoted["promoted"] is True and promoted["version"] == v2, f"{promoted}"
    assert restored == v1, f"rollback restores v1: {restored}"
    assert registry.get_version_by_alias(MODEL, "champion").version == v1, "v1 champion again"
    assert [body["event"] for body in received] == ["approval_needed", "promoted", "rolled_back"], (
        f"{received}"
    )
    events = [json.loads(line)["event"] for line in audit_path.read_text().splitlines()]
    assert events[0] == "approval_needed" and "promoted" in events and events[-1] == "rolled_back", (
        f"{events}"
    )
    assert not load.failures, f"{len(load.failures)} requests failed: {load.failures[:3]}"
    assert {version for _, _, version in load.served} <= {v1, v2}, "only champion/challenger served"


def test_flywheel_rollback_restores_the_previous_champion_within_one_poll(
    live: Environment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from flywheel.cli import app

    # given v2 serving as champion with v1 as previous
    v1 = _register(MODEL, tmp_path)
    v2 = _register(MODEL, tmp_path)
    registry.set_alias(MODEL, "previous", v1)
    registry.set_alias(MODEL, "champion", v2)
    _wait_for_champion(live.gateway_url, v2)
    # when an engineer runs `flywheel rollback` against this stack
    for key, value in {
        "FLYWHEEL_PARAMS": str(live.params_path),
        "FLYWHEEL_HOME": str(live.home),
        "FLYWHEEL_MLFLOW_PORT": str(live.mlflow_port),
        "FLYWHEEL_WEBHOOK_URL": "",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(app, ["rollback", "--reason", "cli test"])
    rolled_back_at = time.monotonic()
    # then it says so, the aliases swapped, and the gateway serves v1 within one poll (plus a read)
    assert result.exit_code == 0, f"flywheel rollback failed: {result.output}"
    assert f"v{v1} is champion again" in result.output, result.output
    assert registry.get_version_by_alias(MODEL, "champion").version == v1, "v1 is champion again"
    assert registry.get_version_by_alias(MODEL, "previous").version == v2, "v2 is previous"
    _wait_for_champion(live.gateway_url, v1)
    took = time.monotonic() - rolled_back_at
    assert took <= POLL_S + 2.0, f"the gateway took {took:.1f}s to follow, more than one {POLL_S}s poll"
    # and the audit log has the rollback with its reason
    audit = (live.home / "audit" / "promotion.jsonl").read_text().splitlines()
    assert any('"rolled_back"' in line and "cli test" in line for line in audit), audit[-2:]


def test_flywheel_rollback_without_a_previous_version_fails_clearly(
    live: Environment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from flywheel.cli import app

    # given a model with a champion and no previous version
    name = f"rollback-none-{uuid.uuid4().hex[:8]}"
    registry.set_alias(name, "champion", _register(name, tmp_path))
    params = yaml.safe_load(live.params_path.read_text())
    params["project"]["registered_model"] = name
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("FLYWHEEL_PARAMS", str(tmp_path / "params.yaml"))
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FLYWHEEL_MLFLOW_PORT", str(live.mlflow_port))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # when `flywheel rollback` runs, then it fails with the reason and leaves the champion alone
    result = CliRunner().invoke(app, ["rollback"])
    assert result.exit_code == 1, f"expected a clean failure: {result.output}"
    assert "no `previous` version" in result.output, result.output
    assert registry.get_version_by_alias(name, "champion").version == "1", "the champion is untouched"


def test_flywheel_approve_sets_the_reviewers_tags_and_audits_them(
    live: Environment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from flywheel.cli import app

    # given a gate-passed challenger waiting for a reviewer, under its own model name
    name = f"approve-{uuid.uuid4().hex[:8]}"
    version = _register(name, tmp_path, candidate=True)
    params = yaml.safe_load(live.params_path.read_text())
    params["project"]["registered_model"] = name
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for key, value in {
        "FLYWHEEL_PARAMS": str(tmp_path / "params.yaml"),
        "FLYWHEEL_HOME": str(tmp_path / "home"),
        "FLYWHEEL_MLFLOW_PORT": str(live.mlflow_port),
        "FLYWHEEL_WEBHOOK_URL": "",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # when a reviewer names a version that is not the challenger, nothing changes
    wrong = CliRunner().invoke(app, ["approve", "--version", "99", "--reviewer", "alice"])
    assert wrong.exit_code == 1 and "v99 is not the challenger" in wrong.output, wrong.output
    assert registry.get_version_by_alias(name, "challenger").tags["flywheel.approval"] == "pending"
    # when alice approves it from the CLI
    result = CliRunner().invoke(app, ["approve", "--reviewer", "alice", "--note", "read the card"])
    assert result.exit_code == 0, f"flywheel approve failed: {result.output}"
    # then the version carries the tags a reviewer sets in the MLflow UI, and promotion accepts them
    challenger = registry.get_version_by_alias(name, "challenger")
    assert challenger.version == version, challenger
    assert challenger.tags["flywheel.approval"] == "approved", challenger.tags
    assert challenger.tags["flywheel.approved_by"] == "alice", challenger.tags
    state = registry.read_aliases(Subject("model", name))
    assert state.challenger is not None
    verdict = check_approval(state.challenger, state.champion, PromoteParams())
    assert isinstance(verdict, Approved) and verdict.approved_by == "alice", verdict
    # and the audit log has alice's decision with her note
    audit = (tmp_path / "home" / "audit" / "promotion.jsonl").read_text().splitlines()
    assert any('"reviewed"' in line and "approved by alice: read the card" in line for line in audit), audit
