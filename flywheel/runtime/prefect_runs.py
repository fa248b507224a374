"""Flow runs from outside a flow: start a deployment's run, watch it with progress, read its subflows.

The CLI and the demo drive the stack the way the Prefect UI does: through
deployments on the server, picked up by the runner. These helpers keep that
plumbing (and its sync client) in one place.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

Say = Callable[[str], None]


@dataclass(frozen=True)
class RunView:
    """A flow run as progress output shows it."""

    id: str
    name: str
    flow: str
    state: str
    final: bool
    start: datetime | None
    end: datetime | None

    @property
    def seconds(self) -> float | None:
        """Wall seconds (so far, for a running one)."""
        if self.start is None:
            return None
        end = self.end or datetime.now(self.start.tzinfo)
        return (end - self.start).total_seconds()


def use_api(api_url: str) -> None:
    """Point this process's Prefect client at the stack's API (unless the environment already does)."""
    os.environ.setdefault("PREFECT_API_URL", api_url)


def start_deployment(full_name: str, parameters: dict[str, Any]) -> FlowRun:
    """Create a run of a deployment (it starts when the runner picks it up); returns at once."""
    from prefect.deployments import run_deployment

    # run_deployment is sync/async dual; called outside an event loop it returns the FlowRun
    return cast("FlowRun", run_deployment(name=full_name, parameters=parameters, timeout=0))


def _view(client: Any, run: Any, flows: dict[Any, str]) -> RunView:
    if run.flow_id not in flows:
        flows[run.flow_id] = client.read_flow(run.flow_id).name
    state = run.state
    return RunView(
        id=str(run.id),
        name=run.name,
        flow=flows[run.flow_id],
        state=state.name if state is not None else "Unknown",
        final=bool(state is not None and state.is_final()),
        start=run.start_time,
        end=run.end_time,
    )


def read_run(flow_run_id: str) -> tuple[RunView, list[RunView]]:
    """A flow run and its subflow runs (in start order)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort

    flows: dict[Any, str] = {}
    with get_client(sync_client=True) as client:
        run = _view(client, client.read_flow_run(UUID(flow_run_id)), flows)
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[UUID(flow_run_id)])
            ),
            sort=FlowRunSort.START_TIME_ASC,
        )
        return run, [_view(client, child, flows) for child in children]


def last_log_line(flow_run_ids: list[str]) -> str | None:
    """The newest informative log line of any of these flow runs (their task runs included)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(i) for i in flow_run_ids])),
            sort=LogSort.TIMESTAMP_DESC,
            limit=10,
        )
    for log in logs:  # Prefect's own state lines ("Finished in state Completed()") say nothing new
        line = (log.message or "").splitlines()[0][:160] if log.message else ""
        if line and not line.startswith(("Finished in state", "Beginning ", "View at ")):
            return line
    return None


def watch(
    flow_run_id: str,
    say: Say,
    *,
    poll_seconds: float = 3.0,
    heartbeat_seconds: float = 60.0,
    timeout: float | None = None,
    on_tick: Callable[[], None] | None = None,
) -> RunView:
    """Wait for a flow run to end, printing each subflow's start and end and a heartbeat line.

    `on_tick` runs on every poll (the demo tails the audit log there). Returns the final view;
    on `timeout` returns the last (non-final) view.
    """
    started = time.monotonic()
    seen: dict[str, str] = {}
    last_beat = started
    while True:
        run, children = read_run(flow_run_id)
        for child in children:
            if seen.get(child.id) != child.state:
                seen[child.id] = child.state
                took = f" in {child.seconds:.0f}s" if child.final and child.seconds is not None else ""
                say(f"  {child.flow}: {child.state}{took}")
        if on_tick is not None:
            on_tick()
        if run.final:
            return run
        now = time.monotonic()
        if timeout is not None and now - started > timeout:
            return run
        if now - last_beat >= heartbeat_seconds:
            last_beat = now
            running = [c for c in children if not c.final]
            where = running[-1].flow if running else run.flow
            line = last_log_line([run.id, *(c.id for c in running)])
            say(f"  ... {where} running, {now - started:.0f}s so far" + (f": {line}" if line else ""))
        time.sleep(poll_seconds)
