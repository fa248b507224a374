"""The launcher on small real processes: start, health, status, stop by pid, busy ports."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flywheel.settings import Environment
from flywheel.stack import launcher
from flywheel.stack.ports import PortInUseError, free_port
from flywheel.stack.services import ServiceSpec


@pytest.fixture
def env(tmp_path: Path) -> Environment:
    return Environment(FLYWHEEL_HOME=tmp_path / "home")


def _http_service(name: str, port: int, tmp_path: Path, depends_on: tuple[str, ...] = ()) -> ServiceSpec:
    url = f"http://127.0.0.1:{port}"
    return ServiceSpec(
        name=name,
        argv=(
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(tmp_path),
        ),
        port=port,
        port_env_var=f"TEST_{name.upper()}_PORT",
        url=url,
        health_url=url + "/",
        start_timeout_s=20,
        depends_on=depends_on,
    )


@pytest.fixture
def listener() -> Iterator[int]:
    """A port held busy by a socket that is not ours to stop."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_up_status_down_round_trip(env: Environment, tmp_path: Path) -> None:
    # given two services, the second depending on the first
    specs = [
        _http_service("alpha", free_port(), tmp_path),
        _http_service("beta", free_port(), tmp_path, depends_on=("alpha",)),
    ]
    events: list[str] = []
    try:
        # when the stack comes up
        statuses = launcher.up(env, specs, on_event=events.append)
        # then both are running, healthy, recorded by pid, logging to FLYWHEEL_HOME/logs
        assert [s.healthy for s in statuses] == [True, True], f"both should be healthy: {statuses}"
        pids = [s.pid for s in statuses]
        assert all(pid and launcher.pid_alive(pid) for pid in pids), f"processes should be alive: {pids}"
        assert (env.logs_dir / "alpha.log").exists(), "each service should log under FLYWHEEL_HOME/logs"
        # and a second `up` leaves them as they are
        again = launcher.up(env, specs, on_event=events.append)
        assert [s.pid for s in again] == pids, "up on a running stack should not restart anything"
        assert any("already running" in e for e in events), f"up should say it found them running: {events}"
    finally:
        stopped = launcher.down(env, specs)
    # then down stopped exactly those and left no process behind
    assert sorted(stopped) == ["alpha", "beta"], f"down should stop both: {stopped}"
    assert not any(launcher.pid_alive(pid) for pid in pids if pid), "no process should be left"
    assert [s.state for s in launcher.status(env, specs)] == ["stopped", "stopped"], "status after down"


def test_busy_port_names_the_port_and_the_variable(env: Environment, tmp_path: Path, listener: int) -> None:
    spec = _http_service("alpha", listener, tmp_path)
    with pytest.raises(PortInUseError) as caught:
        launcher.up(env, [spec])
    message = str(caught.value)
    assert f"port {listener}" in message, f"the error should name the port: {message}"
    assert "TEST_ALPHA_PORT" in message, f"the error should say how to move it: {message}"


def test_service_that_dies_reports_its_log_and_is_cleaned_up(env: Environment, tmp_path: Path) -> None:
    port = free_port()
    good = _http_service("good", free_port(), tmp_path)
    bad = ServiceSpec(
        name="bad",
        argv=(sys.executable, "-c", "import sys; print('boom: bad config'); sys.exit(3)"),
        port=port,
        port_env_var="TEST_BAD_PORT",
        url=f"http://127.0.0.1:{port}",
        health_url=f"http://127.0.0.1:{port}/",
        start_timeout_s=20,
    )
    with pytest.raises(launcher.ServiceStartError, match="boom: bad config"):
        launcher.up(env, [good, bad])
    # then the service this call started is stopped again
    assert launcher.read_state(env, "good") is None, "a failed up should stop what it started"


def test_status_reports_a_dead_process(env: Environment, tmp_path: Path) -> None:
    spec = _http_service("alpha", free_port(), tmp_path)
    launcher.up(env, [spec])
    state = launcher.read_state(env, "alpha")
    assert state is not None
    import os
    import signal

    os.killpg(state.pgid, signal.SIGKILL)
    import time

    for _ in range(50):
        if not launcher.pid_alive(state.pid):
            break
        time.sleep(0.1)
    [status] = launcher.status(env, [spec])
    assert status.state == "dead" and not status.healthy, f"a killed service should show dead: {status}"
    launcher.down(env, [spec])
    assert launcher.read_state(env, "alpha") is None, "down should remove the stale record"
