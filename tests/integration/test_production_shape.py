"""The production shape without containers: compose.yaml's servers on the machine's PostgreSQL and Redis.

Containers cannot run on this machine, so the embedded stack stands in for them, pointed
where production points: Prefect's and MLflow's servers and the gateway's request log on
PostgreSQL databases of their own (made for this module, dropped after it), the gateway's
rate limits and exact cache on Redis. A flywheel turn then runs through its deployment
against that stack, harvesting the request log on PostgreSQL.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis
import sqlalchemy as sa
import yaml

from flywheel.requestlog import open_request_log
from flywheel.schemas import RequestRecord
from flywheel.settings import DEFAULT_PARAMS_PATH, Environment, load_params
from flywheel.stack import launcher
from flywheel.stack.ports import free_port
from flywheel.stack.services import embedded_services
from tests.conftest import skip_or_fail
from tests.helpers.postgres import create_database, database_url, drop_database, postgres_engine, table_names
from tests.helpers.prefect_cli import prefect as _prefect

pytestmark = [pytest.mark.integration, pytest.mark.services]

REDIS_URL = "redis://127.0.0.1:6379/0"
# The gateway's Redis keys sit under this fixed prefix (gateway/limits.py, gateway/cache.py): this module
# keeps to its own by limiting a caller of its own and asking a question no one else asks.
GATEWAY_PREFIX = "flywheel:gateway:"
DEMO_SEED = 11
DEMO_RECORDS = 600


@dataclass
class ProductionStack:
    """The running stack, its databases, and the Redis keys this module made (deleted after it)."""

    env: Environment
    databases: dict[str, str]  # role (prefect, mlflow, requestlog) -> database name
    redis: redis.Redis
    caller: str  # the API key's name: the rate-limit key in Redis is named after it
    api_key: str
    redis_keys: set[bytes] = field(default_factory=set)


@pytest.fixture(scope="module")
def redis_client() -> Iterator[redis.Redis]:
    """The machine's Redis, or a skip (a failure in CI)."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        client.close()
        skip_or_fail("Redis not reachable at 127.0.0.1:6379")
    yield client
    client.close()


@pytest.fixture(scope="module")
def databases() -> Iterator[dict[str, str]]:
    """Three fresh databases (Prefect, MLflow, request log), dropped after the module."""
    postgres_engine().dispose()  # skip (or fail in CI) before anything is made
    tag = uuid.uuid4().hex[:10]
    names = {role: f"flywheel_shape_{tag}_{role}" for role in ("prefect", "mlflow", "requestlog")}
    created: list[str] = []
    try:
        for name in names.values():
            create_database(name)
            created.append(name)
        yield names
    finally:
        for name in created:
            drop_database(name)


@pytest.fixture(scope="module")
def production(
    tmp_path_factory: pytest.TempPathFactory,
    databases: dict[str, str],
    redis_client: redis.Redis,
    own_mlflow: None,
) -> Iterator[ProductionStack]:
    """Prefect, MLflow, the runner and the gateway, on PostgreSQL and Redis; stopped by pid after."""
    root = tmp_path_factory.mktemp("production-shape")
    caller = f"production-shape-{uuid.uuid4().hex[:12]}"
    api_key = f"sk-{uuid.uuid4().hex}"
    keys_file = root / "gateway-keys"
    keys_file.write_text(f"{caller}:{api_key}\n")
    # The project's params, made smaller where only time is spent: this module checks where things run.
    params = yaml.safe_load(DEFAULT_PARAMS_PATH.read_text())
    params["flywheel"]["candidates"] = ["adapter"]
    params["train"].update(batch_size=2, max_seq_length=128)
    params["evaluate"]["max_new_tokens"] = 16
    params_path = root / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))
    variables = {
        "FLYWHEEL_HOME": str(root / "home"),
        "FLYWHEEL_DATA_DIR": str(root / "data"),
        "FLYWHEEL_PARAMS": str(params_path),
        "FLYWHEEL_PREFECT_PORT": str(free_port()),
        "FLYWHEEL_MLFLOW_PORT": str(free_port()),
        "FLYWHEEL_RUNNER_PORT": str(free_port()),
        "FLYWHEEL_GATEWAY_PORT": str(free_port()),
        "FLYWHEEL_PREFECT_DATABASE_URL": database_url(databases["prefect"], "asyncpg"),
        # explicit driver: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, which is not installed
        "FLYWHEEL_MLFLOW_BACKEND_URI": database_url(databases["mlflow"]),
        "FLYWHEEL_REQUEST_LOG_URL": database_url(databases["requestlog"]),
        "FLYWHEEL_REDIS_URL": REDIS_URL,
        "FLYWHEEL_GATEWAY_KEYS_FILE": str(keys_file),
    }
    # Set before `up`, so every child (servers, runner, the flow runs it starts) inherits them.
    saved = {key: os.environ.get(key) for key in [*variables, "PREFECT_API_URL", "MLFLOW_TRACKING_URI"]}
    os.environ.update(variables)
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
        os.environ.pop(key, None)
    env = Environment()
    specs = embedded_services(env)
    stack = ProductionStack(env, databases, redis_client, caller, api_key)
    stack.redis_keys.add(f"{GATEWAY_PREFIX}ratelimit:{caller}".encode())
    try:
        launcher.up(env, specs)
        states = [launcher.read_state(env, spec.name) for spec in specs]
        try:
            yield stack
        finally:
            launcher.down(env, specs)
            leftovers = [s.name for s in states if s is not None and launcher.pid_alive(s.pid)]
            assert not leftovers, f"flywheel down left processes behind: {leftovers}"
    finally:
        redis_client.delete(*stack.redis_keys)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _rows(database: str, query: str, **bound: Any) -> list[sa.Row[Any]]:
    """Rows of a query on one of this module's databases, read directly (not through the servers)."""
    engine = sa.create_engine(database_url(database), connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(query), bound).all())
    finally:
        engine.dispose()


def _ask(stack: ProductionStack, question: str) -> httpx.Response:
    body = {
        "model": load_params().project.application,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 8,
        "temperature": 0,
    }
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    return httpx.post(f"{stack.env.gateway_url}/v1/chat/completions", json=body, headers=headers, timeout=120)


def _new_keys(client: redis.Redis, pattern: str, before: set[bytes], timeout_s: float = 10) -> set[bytes]:
    """Keys matching `pattern` that were not there before (the gateway writes its cache in the background)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = set(client.scan_iter(match=pattern)) - before
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_each_server_keeps_its_state_in_its_own_postgres_database(production: ProductionStack) -> None:
    # given the stack up on three fresh databases
    # when their tables are listed straight from PostgreSQL
    tables = {role: table_names(name) for role, name in production.databases.items()}
    # then each server created its schema in its own database, and nothing went to SQLite
    assert {"flow", "flow_run", "deployment"} <= tables["prefect"], f"Prefect's tables: {tables['prefect']}"
    assert {"registered_models", "model_versions", "runs"} <= tables["mlflow"], (
        f"MLflow's tables: {tables['mlflow']}"
    )
    assert {"requests", "feedback"} <= tables["requestlog"], (
        f"the request log's tables: {tables['requestlog']}"
    )
    home = production.env.home
    leftovers = [p for p in (home / "prefect" / "prefect.db", home / "mlflow" / "mlflow.db") if p.exists()]
    leftovers += list((home / "requestlog").glob("*.db"))
    assert not leftovers, f"no SQLite database should be made when PostgreSQL is configured: {leftovers}"
    deployments = _rows(production.databases["prefect"], "SELECT name FROM deployment")
    assert {row.name for row in deployments} >= {"nightly", "on-demand"}, (
        f"the runner registered its deployments in Prefect's database: {deployments}"
    )


def test_a_gateway_request_is_logged_in_postgres_and_limited_and_cached_in_redis(
    production: ProductionStack,
) -> None:
    client = production.redis
    cache_pattern = f"{GATEWAY_PREFIX}cache:*"
    cached_before = set(client.scan_iter(match=cache_pattern))
    question = f"What are your opening hours? ({uuid.uuid4().hex[:8]})"
    # when a caller asks a question no one asked before (deterministic, so cacheable)
    answered = _ask(production, question)
    assert answered.status_code == 200, f"the gateway should answer: {answered.status_code} {answered.text}"
    request_id = answered.json()["id"]
    new_cache_keys = _new_keys(client, cache_pattern, cached_before)
    # then the request is in the request log's PostgreSQL table
    log = open_request_log(production.env.request_log_uri)
    try:
        deadline = time.monotonic() + 15
        while (logged := log.get(request_id)) is None and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        log.close()
    assert logged is not None, f"request {request_id} never reached the request log"
    assert logged.record.messages[-1].content == question, logged.record
    rows = _rows(
        production.databases["requestlog"],
        "SELECT user_hash FROM requests WHERE request_id = :id",
        id=request_id,
    )
    assert len(rows) == 1, f"one row for {request_id} in the PostgreSQL request log, found {rows}"
    # and the caller's token budget is counted in Redis, under its key name
    limit_key = f"{GATEWAY_PREFIX}ratelimit:{production.caller}"
    assert client.exists(limit_key), (
        f"the rate limit of {production.caller} should live in Redis at {limit_key}"
    )
    # and the answer is in the shared exact cache: asked again, it comes from there
    answer = answered.json()["choices"][0]["message"]["content"]
    cached = {key for key in new_cache_keys if json.loads(client.get(key) or b"{}").get("text") == answer}
    production.redis_keys.update(cached)
    assert cached, f"the answer should be cached in Redis; new cache keys: {new_cache_keys}"
    again = _ask(production, question)
    assert again.status_code == 200 and again.headers.get("x-flywheel-cache") == "exact", (
        f"the same question should be an exact cache hit: {again.headers} {again.text}"
    )
    assert again.json()["choices"][0]["message"]["content"] == answer, "the cached answer is the same"


@pytest.mark.timeout(2400)  # a turn retrains and gates the real model: slow on two shared cores
def test_a_flywheel_turn_runs_against_the_production_shaped_stack(production: ProductionStack) -> None:
    from mlflow import MlflowClient

    from tasks.demo.seed import inbox_path
    from tasks.harvest.quarantine import classify

    env, params = production.env, load_params()
    # given a small demo workload seeded through its deployment (knowledge base, eval set, history)
    seeded = _prefect(
        env, "deployment", "run", "seed-demo/on-demand", "-p", f"n_records={DEMO_RECORDS}",
        "-p", f"seed={DEMO_SEED}", "--watch", "--watch-timeout", "300", timeout=360,
    )  # fmt: skip
    assert seeded.returncode == 0 and "Completed" in seeded.stdout, f"seed-demo failed:\n{seeded.stdout}"
    # and its history in the PostgreSQL request log, as the gateway would have written it
    # (the seed writes it to the harvest inbox as JSONL; the turn harvests the request log)
    history = inbox_path(env.data_dir, params.harvest, DEMO_SEED).read_bytes().splitlines()
    records = [
        r
        for r in (classify(line, params.harvest.max_record_bytes) for line in history)
        if isinstance(r, RequestRecord)
    ]
    log = open_request_log(env.request_log_uri)
    try:
        inserted = log.append(records)
        logged = log.count()
    finally:
        log.close()
    unique = len({r.request_id for r in records})
    # the history replays some requests on purpose: the log keeps each id once
    assert inserted == unique > DEMO_RECORDS // 2, (
        f"{unique} distinct valid history records, {inserted} logged"
    )

    # when the nightly turn runs through its deployment (a small retrain and gate)
    turn = _prefect(
        env, "deployment", "run", "flywheel/nightly", "-p", "min_new_records=50", "-p", "max_steps=2",
        "-p", "max_items=4", "-p", "max_probes=2", "--watch", "--watch-timeout", "1500", timeout=1600,
    )  # fmt: skip
    assert turn.returncode == 0 and "Completed" in turn.stdout, (
        f"the turn failed:\n{turn.stdout}\n{turn.stderr}"
    )

    # then it harvested every row of the PostgreSQL request log (all valid) into raw partitions
    raw = [
        line
        for p in (env.data_dir / params.harvest.raw_dir).glob("part-*.jsonl")
        for line in p.read_bytes().splitlines()
    ]
    assert len(raw) == logged, f"every request-log row harvested once: {len(raw)} raw, {logged} logged"
    # and its model version is registered in the MLflow server, whose registry is in PostgreSQL
    state = json.loads((env.home / "flywheel" / "last_turn.json").read_text())
    run_id = state["retrain_run_id"]
    name = params.project.registered_model
    client = MlflowClient(env.tracking_uri, registry_uri=env.tracking_uri)
    versions = [v for v in client.search_model_versions(f"name = '{name}'") if v.run_id == run_id]
    assert len(versions) == 1, f"the turn's adapter is one version of {name}: {versions}"
    rows = _rows(
        production.databases["mlflow"],
        "SELECT version FROM model_versions WHERE name = :name AND run_id = :run_id",
        name=name, run_id=run_id,
    )  # fmt: skip
    assert [str(row.version) for row in rows] == [versions[0].version], (
        f"the version's row should be in MLflow's PostgreSQL database: {rows}"
    )
    # and the turn and each of its stages are flow runs in Prefect's PostgreSQL database
    runs = _rows(
        production.databases["prefect"],
        "SELECT f.name AS flow, CAST(r.state_type AS TEXT) AS state "
        "FROM flow_run r JOIN flow f ON f.id = r.flow_id",
    )
    completed = {row.flow for row in runs if row.state == "COMPLETED"}
    expected = {"seed-demo", "flywheel", "harvest", "curate", "retrain", "evaluate"}
    assert expected <= completed, (
        f"completed flow runs in Prefect's database: {sorted((r.flow, r.state) for r in runs)}"
    )
