"""Start, health-check, inspect and stop the embedded stack's processes.

Each service runs in its own session (process group) so that `down` can stop
it together with the workers it spawned, and nothing else: the pid and the
process-group id are recorded in `$FLYWHEEL_HOME/run/<service>.json`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from flywheel.settings import Environment
from flywheel.stack.ports import ensure_port_free, port_is_free
from flywheel.stack.services import ServiceSpec


class ServiceStartError(RuntimeError):
    """A service exited or stayed unhealthy while starting."""


@dataclass(frozen=True)
class ServiceState:
    """What `up` recorded about a started service."""

    name: str
    pid: int
    pgid: int
    port: int
    url: str
    health_url: str
    log: str
    argv: list[str]
    started_at: float


@dataclass(frozen=True)
class ServiceStatus:
    """What `status` reports for one service."""

    name: str
    state: str  # running | stopped | dead (recorded but its process is gone)
    healthy: bool
    url: str
    health_url: str
    pid: int | None
    log: str
    detail: str = ""


def _state_path(env: Environment, name: str) -> Path:
    return env.run_dir / f"{name}.json"


def read_state(env: Environment, name: str) -> ServiceState | None:
    """The recorded state of a service, or None when it was never started."""
    path = _state_path(env, name)
    if not path.exists():
        return None
    return ServiceState(**json.loads(path.read_text()))


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # A zombie has exited; only its parent has not reaped it yet.
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def check_health(url: str, timeout_s: float = 2.0) -> tuple[bool, str]:
    """GET the health URL: (healthy, short detail)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (our own loopback URL)
            return 200 <= response.status < 300, f"HTTP {response.status}"
    except urllib.error.HTTPError as error:
        return False, f"HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        return False, f"unreachable ({reason})"


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _spawn(env: Environment, spec: ServiceSpec) -> ServiceState:
    env.logs_dir.mkdir(parents=True, exist_ok=True)
    env.run_dir.mkdir(parents=True, exist_ok=True)
    log_path = env.logs_dir / f"{spec.name}.log"
    with log_path.open("ab") as log:
        log.write(f"\n--- flywheel up {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(spec.argv)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            list(spec.argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **spec.env},
            cwd=spec.cwd,
            start_new_session=True,  # own process group: `down` stops it and its workers
        )
    state = ServiceState(
        name=spec.name,
        pid=process.pid,
        pgid=process.pid,
        port=spec.port,
        url=spec.url,
        health_url=spec.health_url,
        log=str(log_path),
        argv=list(spec.argv),
        started_at=time.time(),
    )
    _state_path(env, spec.name).write_text(json.dumps(asdict(state), indent=2))
    return state


def _wait_healthy(state: ServiceState, timeout_s: float, on_wait: Callable[[str], None]) -> None:
    deadline = time.monotonic() + timeout_s
    announced = 0.0
    while time.monotonic() < deadline:
        if not pid_alive(state.pid):
            raise ServiceStartError(
                f"{state.name} exited while starting. Last lines of {state.log}:\n{_tail(Path(state.log))}"
            )
        healthy, _ = check_health(state.health_url)
        if healthy:
            return
        waited = timeout_s - (deadline - time.monotonic())
        if waited - announced >= 10:
            announced = waited
            on_wait(f"still waiting for {state.name} ({waited:.0f}s)")
        time.sleep(0.5)
    raise ServiceStartError(
        f"{state.name} did not become healthy at {state.health_url} within {timeout_s:.0f}s. "
        f"Last lines of {state.log}:\n{_tail(Path(state.log))}"
    )


def up(
    env: Environment,
    specs: Iterable[ServiceSpec],
    on_event: Callable[[str], None] = lambda _msg: None,
) -> list[ServiceStatus]:
    """Start every service that is not already running, wait until each is healthy.

    Services whose dependencies are satisfied start together; a dependent service
    (the runner) starts once what it depends on answers its health check. On any
    failure the services this call started are stopped again.
    """
    specs = list(specs)
    started: list[str] = []
    try:
        pending = list(specs)
        ready: set[str] = set()
        while pending:
            batch = [s for s in pending if set(s.depends_on) <= ready]
            if not batch:
                raise ServiceStartError(f"unsatisfiable dependencies among {[s.name for s in pending]}")
            waiting: list[tuple[ServiceSpec, ServiceState]] = []
            for spec in batch:
                existing = read_state(env, spec.name)
                if existing is not None and pid_alive(existing.pid):
                    on_event(f"{spec.name}: already running (pid {existing.pid})")
                    waiting.append((spec, existing))
                    continue
                ensure_port_free(spec.name, env.host, spec.port, spec.port_env_var)
                state = _spawn(env, spec)
                started.append(spec.name)
                on_event(f"{spec.name}: started pid {state.pid}, logs {state.log}")
                waiting.append((spec, state))
            for spec, state in waiting:
                t0 = time.monotonic()
                _wait_healthy(state, spec.start_timeout_s, on_event)
                on_event(f"{spec.name}: healthy at {spec.url} ({time.monotonic() - t0:.1f}s)")
                ready.add(spec.name)
            pending = [s for s in pending if s.name not in ready]
    except BaseException:
        if started:
            down(env, [s for s in specs if s.name in started])
        raise
    return status(env, specs)


def _reap(pid: int) -> None:
    """Collect the exit status when the service is our own child (e.g. in tests), so no zombie stays."""
    # ChildProcessError: started by another process (an earlier `flywheel up`); init reaps it.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _stop_one(state: ServiceState, host: str, grace_s: float) -> None:
    _signal_group(state, signal.SIGTERM)
    _wait_group_gone(state, grace_s)
    if _group_alive(state.pgid):
        _signal_group(state, signal.SIGKILL)
        _wait_group_gone(state, 5.0)
    _reap(state.pid)
    _wait_port_released(host, state.port, 5.0)


def _wait_port_released(host: str, port: int, timeout_s: float) -> None:
    """The kernel closes a dead process's sockets a moment after it exits: wait so a restart can bind."""
    deadline = time.monotonic() + timeout_s
    while not port_is_free(host, port) and time.monotonic() < deadline:
        time.sleep(0.05)


def _signal_group(state: ServiceState, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(state.pgid, sig)


def _wait_group_gone(state: ServiceState, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _reap(state.pid)
        if not _group_alive(state.pgid):
            return
        time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    """True while any live (non-zombie) process remains in the process group."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        # fields[0] is the state, fields[2] the process-group id
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def down(
    env: Environment,
    specs: Iterable[ServiceSpec],
    on_event: Callable[[str], None] = lambda _msg: None,
    grace_s: float = 15.0,
) -> list[str]:
    """Stop exactly the processes `up` recorded (dependents first); return the names stopped."""
    stopped: list[str] = []
    for spec in reversed(list(specs)):
        state = read_state(env, spec.name)
        if state is None:
            continue
        if _group_alive(state.pgid):
            _stop_one(state, env.host, grace_s)
            stopped.append(spec.name)
            on_event(f"{spec.name}: stopped (pid {state.pid})")
        else:
            _wait_port_released(env.host, state.port, 5.0)
            on_event(f"{spec.name}: was not running (stale record removed)")
        _state_path(env, spec.name).unlink(missing_ok=True)
    return stopped


def status(env: Environment, specs: Iterable[ServiceSpec]) -> list[ServiceStatus]:
    """Each service's process state and health."""
    result: list[ServiceStatus] = []
    for spec in specs:
        state = read_state(env, spec.name)
        log = str(env.logs_dir / f"{spec.name}.log")
        if state is None:
            result.append(ServiceStatus(spec.name, "stopped", False, spec.url, spec.health_url, None, log))
            continue
        if not pid_alive(state.pid):
            result.append(
                ServiceStatus(
                    spec.name,
                    "dead",
                    False,
                    state.url,
                    state.health_url,
                    state.pid,
                    state.log,
                    "process is gone; see its log",
                )
            )
            continue
        healthy, detail = check_health(state.health_url)
        result.append(
            ServiceStatus(
                spec.name, "running", healthy, state.url, state.health_url, state.pid, state.log, detail
            )
        )
    return result
