"""The gateway as a process: registry routing, canary split, MLflow outage, fallback, crash and restart.

These run the real `python -m gateway` against a real MLflow server of their own
(so stopping it harms no other test) and an instant OpenAI-compatible stub as the
backend (so routing, not generation speed, is what is measured). The real
SmolLM2 behind the gateway is covered by test_gateway_serving.py.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import yaml

import registry
from flywheel.requestlog import open_request_log
from flywheel.settings import DEFAULT_PARAMS_PATH, Environment
from flywheel.stack import launcher
from flywheel.stack.ports import free_port
from flywheel.stack.services import embedded_services

pytestmark = pytest.mark.integration

MODEL = "flywheel-live-test"
POLL_S = 1.0


@pytest.fixture(scope="module")
def live_env(tmp_path_factory: pytest.TempPathFactory, own_mlflow: None) -> Iterator[Environment]:
    """A private home, ports and params for a gateway on the stub (dead backend first, cache off)."""
    root = tmp_path_factory.mktemp("gateway-live")
    params = yaml.safe_load(DEFAULT_PARAMS_PATH.read_text())
    params["project"]["registered_model"] = MODEL
    params["project"]["prompt_name"] = "flywheel-live-test-prompt"
    params["gateway"].update(
        registry_poll_seconds=POLL_S,
        backends=[
            {"name": "dead", "kind": "openai", "base_url_env": "FLYWHEEL_TEST_DEAD_URL", "model": "x"},
            {"name": "stub", "kind": "openai", "base_url_env": "FLYWHEEL_TEST_STUB_URL", "model": "stub"},
        ],
        fallback=["dead", "stub"],
        retries=1,
        retry_backoff_seconds=0.01,
        cache={"exact": False, "semantic": False},
        # auth is off here, so every request shares one budget: keep it out of these tests' way
        rate_limit_tokens_per_minute=1_000_000_000,
    )
    params_path = root / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))
    yield Environment(
        FLYWHEEL_HOME=root / "home",
        FLYWHEEL_PARAMS=params_path,
        FLYWHEEL_MLFLOW_PORT=free_port(),
        FLYWHEEL_GATEWAY_PORT=free_port(),
    )


def _specs(env: Environment, stub_url: str) -> list:  # type: ignore[type-arg]
    specs = {s.name: s for s in embedded_services(env)}
    gateway = replace(
        specs["gateway"],
        env={
            **specs["gateway"].env,
            "FLYWHEEL_TEST_STUB_URL": stub_url,
            "FLYWHEEL_TEST_DEAD_URL": f"http://127.0.0.1:{free_port()}/v1",  # nothing listens there
            "FLYWHEEL_HOME": str(env.home),
        },
        start_timeout_s=120,
    )
    return [specs["mlflow"], gateway]


@pytest.fixture(scope="module")
def live(live_env: Environment, stub_url: str) -> Iterator[Environment]:
    """MLflow and a gateway on the stub, both really running; stopped by pid after."""
    import mlflow

    specs = _specs(live_env, stub_url)
    launcher.up(live_env, specs)
    previous = mlflow.get_tracking_uri()
    registry.configure_tracking(live_env.tracking_uri, experiment="gateway-live")
    try:
        yield live_env
    finally:
        launcher.down(live_env, specs)
        mlflow.set_tracking_uri(previous)  # other modules share this process's MLflow client
        mlflow.set_registry_uri(previous)


def _register(tmp_path: Path, tag_weight: str | None = None) -> str:
    import mlflow

    folder = tmp_path / f"artifact-{time.monotonic_ns()}"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(folder), artifact_path="adapter")
    tags = {"canary_weight": tag_weight} if tag_weight is not None else {}
    version = registry.register_model_version(
        MODEL, f"runs:/{run.info.run_id}/adapter", run_id=run.info.run_id, tags=tags
    )
    return version.version


def _chat(client: httpx.Client, user: str) -> httpx.Response:
    return client.post(
        "/v1/chat/completions",
        json={"model": "support-assistant", "messages": [{"role": "user", "content": "hi"}], "user": user},
    )


def _wait_for(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}")


def test_alias_move_is_served_within_a_poll_with_no_failed_request(live: Environment, tmp_path: Path) -> None:
    # given a champion v1 being served
    v1, v2 = _register(tmp_path), _register(tmp_path)
    registry.set_alias(MODEL, "champion", v1)
    client = httpx.Client(base_url=live.gateway_url, timeout=30)
    _wait_for(lambda: _chat(client, "u").headers.get("x-flywheel-model-version") == v1, 10 * POLL_S, "v1")

    # when the champion alias moves to v2 while 8 clients keep sending requests
    failures: list[str] = []
    served: list[tuple[float, str]] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        with httpx.Client(base_url=live.gateway_url, timeout=30) as c:
            n = 0
            while not stop.is_set():
                sent_at = time.monotonic()
                response = _chat(c, f"user-{worker}-{n}")
                n += 1
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:200]}")
                else:
                    served.append((sent_at, response.headers["x-flywheel-model-version"]))
                time.sleep(0.005)  # steady load, not a CPU-starving spin on 2 cores

    threads = [threading.Thread(target=load, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    moved_at = time.monotonic()
    registry.set_alias(MODEL, "champion", v2)
    time.sleep(3 * POLL_S + 3.0)
    stop.set()
    for thread in threads:
        thread.join()

    # then no request failed, and every request sent one poll interval after the move got v2
    # (plus the registry read itself, which takes up to ~2 s when this load starves the 2 cores)
    assert not failures, f"{len(failures)} requests failed during the move: {failures[:3]}"
    late = [version for at, version in served if at > moved_at + POLL_S + 2.0]
    assert late, "some requests should have been served after the move"
    assert set(late) == {v2}, f"after one poll interval only v2 should be served, got {set(late)}"
    assert any(version == v1 for at, version in served if at < moved_at), "v1 should have served before"


def test_canary_weight_sends_a_sticky_quarter_of_users_to_the_challenger(
    live: Environment, tmp_path: Path
) -> None:
    # given champion and a challenger tagged with canary weight 0.25
    champion, challenger = _register(tmp_path), _register(tmp_path, tag_weight="0.25")
    registry.set_alias(MODEL, "champion", champion)
    registry.set_alias(MODEL, "challenger", challenger)
    client = httpx.Client(base_url=live.gateway_url, timeout=30)
    _wait_for(
        lambda: client.get("/healthz").json()["routes"].get("canary_weight") == 0.25,
        10 * POLL_S,
        "canary 0.25",
    )
    # when 400 users each send two requests
    arms: dict[str, set[str]] = {}
    for i in range(400):
        for _ in range(2):
            response = _chat(client, f"canary-user-{i}")
            assert response.status_code == 200, response.text
            arms.setdefault(f"canary-user-{i}", set()).add(response.headers["x-flywheel-arm"])
    # then each user always got the same arm, and about a quarter got the challenger
    assert all(len(seen) == 1 for seen in arms.values()), "a user must not switch arms between requests"
    share = sum("challenger" in seen for seen in arms.values()) / len(arms)
    assert 0.18 <= share <= 0.32, f"challenger share {share:.2f} should be about 0.25"
    registry.set_alias(MODEL, "champion", champion)
    from mlflow import MlflowClient

    MlflowClient().delete_registered_model_alias(MODEL, "challenger")


def test_fallback_serves_through_a_dead_first_backend(live: Environment) -> None:
    client = httpx.Client(base_url=live.gateway_url, timeout=30)
    response = _chat(client, "fallback-user")
    assert response.status_code == 200, f"the chain should fall through to the stub: {response.text}"
    assert response.json()["choices"][0]["message"]["content"] == "This is the stub's fixed answer."


def test_bad_input_gets_clear_4xx_and_the_gateway_keeps_serving(live: Environment) -> None:
    client = httpx.Client(base_url=live.gateway_url, timeout=30)
    cases = [
        (
            client.post(
                "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
            ),
            400,
        ),
        (client.post("/v1/chat/completions", json={"model": "support-assistant", "messages": "hi"}), 400),
        (
            client.post(
                "/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]}
            ),
            404,
        ),
        (
            client.post(
                "/v1/chat/completions",
                json={"model": "support-assistant", "messages": [{"role": "user", "content": "x" * 20_000}]},
            ),
            413,
        ),
        (
            client.post(
                "/v1/chat/completions",
                json={
                    "model": "support-assistant",
                    "messages": [{"role": "user", "content": "x"}],
                    "max_tokens": 10**6,
                },
            ),
            400,
        ),
    ]
    for response, status in cases:
        assert response.status_code == status, f"expected {status}: {response.status_code} {response.text}"
        assert response.json()["error"]["message"], f"the error should say why: {response.text}"
    assert _chat(client, "after-bad-input").status_code == 200, "the gateway should keep serving"


def test_kill_during_load_loses_at_most_the_unflushed_window(live: Environment, stub_url: str) -> None:
    # given clients sending requests and noting each acknowledged request id with its time
    acknowledged: list[tuple[float, str]] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        with httpx.Client(base_url=live.gateway_url, timeout=5) as c:
            n = 0
            while not stop.is_set():
                try:
                    response = _chat(c, f"crash-{worker}-{n}")
                except httpx.HTTPError:
                    return
                n += 1
                if response.status_code == 200:
                    acknowledged.append((time.monotonic(), response.headers["x-request-id"]))

    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(3.0)
    # when the gateway is killed without warning mid-load
    state = launcher.read_state(live, "gateway")
    assert state is not None
    killed_at = time.monotonic()
    os.killpg(state.pgid, signal.SIGKILL)
    stop.set()
    for thread in threads:
        thread.join()
    launcher.down(live, _specs(live, stub_url)[1:])
    # and restarted
    launcher.up(live, _specs(live, stub_url))
    # then every request acknowledged before the unflushed window is in the log, none twice
    log = open_request_log(live.request_log_uri)
    try:
        stored: list[str] = []
        watermark = 0
        while batch := log.read_since(watermark, 5000):
            stored.extend(item.record.request_id for item in batch)
            watermark = batch[-1].seq
    finally:
        log.close()
    assert len(stored) == len(set(stored)), "no request may be logged twice"
    window_s = 1.0  # flush_seconds 0.2 plus the batch being written, with slack for a loaded machine
    must_have = {rid for at, rid in acknowledged if at < killed_at - window_s}
    missing = must_have - set(stored)
    assert len(acknowledged) > 50, f"the load should have been real: {len(acknowledged)} requests"
    assert not missing, (
        f"{len(missing)} of {len(must_have)} acknowledged requests older than {window_s}s are lost"
    )
    assert _chat(httpx.Client(base_url=live.gateway_url, timeout=30), "after-restart").status_code == 200


def test_mlflow_stopped_gateway_keeps_serving_and_says_degraded(live: Environment, stub_url: str) -> None:
    # given a serving gateway (this test runs last in the module: it stops the module's MLflow)
    client = httpx.Client(base_url=live.gateway_url, timeout=30)
    assert _chat(client, "before-outage").status_code == 200
    # when MLflow goes away
    launcher.down(live, _specs(live, stub_url)[:1])
    # then within a few polls /healthz says degraded, and requests are still served from the last good routes
    _wait_for(lambda: client.get("/healthz").json()["status"] == "degraded", 15 * POLL_S + 10, "degraded")
    health = client.get("/healthz")
    assert health.status_code == 200, "healthz answers 200 with a degraded body, so probes can read it"
    for i in range(5):
        response = _chat(client, f"during-outage-{i}")
        assert response.status_code == 200, f"requests should still be served: {response.text}"
