"""Benchmark: one flywheel turn, stage by stage, and the share of it that is orchestration overhead.

    python bench/bench_flywheel.py [--latest | --flow-run ID] [--json]
    python bench/bench_flywheel.py --run [--records N] [--max-steps 2 --max-items 4 --max-probes 2] [--json]

A turn is one run of the Prefect flow `flywheel` (flows/flywheel.py); its stages are its
subflow runs: harvest, curate, retrain, then one evaluate per candidate kind.

--latest (the default) reads the newest finished `flywheel` run from the Prefect API at
PREFECT_API_URL (else the embedded stack's, `flywheel up`); --flow-run ID reads that run.
--run starts a private embedded stack (Prefect, MLflow, the runner; no gateway) on free
loopback ports in a temporary FLYWHEEL_HOME, seeds the demo workload through
`seed-demo/on-demand`, runs one turn through `flywheel/nightly`, reports it and stops the
stack. Its params are a temporary copy of params.yaml with every cron schedule off (no
scheduled promote/drift run competes for the CPUs) and `harvest.source: files`, so the
turn's harvest reads the seeded history (a fresh stack's request log is empty).

What is measured, from the start and end times the Prefect API records:

- a stage's wall time: its subflow run's end - start; its share of the turn's wall time;
- time in tasks: the union of the intervals of the task runs inside it (tasks that run
  concurrently count once). A task run's own time runs from its Running to its final
  state, so it includes its work, its retries and the write of a persisted result;
- orchestration overhead: the time the turn spends inside no task run at all. That is,
  for each stage, its wall time minus its time in tasks (creating and transitioning the
  subflow run, API calls, task submission and state changes between tasks), plus the
  parent flow's own time outside its subflows and its own tasks (the same, for the
  parent). Target: under 5% of the turn's wall time. The parent's largest such gaps are
  listed with what ends and what starts around each.

Not in the turn's wall time, printed apart: the start latency (expected start -> Running:
the runner's poll, the flow's process start and imports). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flywheel.runtime.timing import Span, StageSpans, TurnOverhead, gaps, turn_overhead  # noqa: E402

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.objects import FlowRun, TaskRun

    from flywheel.settings import Environment

TARGET_SHARE = 0.05
TURN_FLOW = "flywheel"
TURN_DEPLOYMENT = "flywheel/nightly"
SEED_DEPLOYMENT = "seed-demo/on-demand"
PAGE = 200  # the Prefect server's default limit per filter call
_T0 = time.monotonic()


def _progress(message: str) -> None:
    """Progress on stderr, so that --json leaves one object on stdout."""
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass
class Stage:
    """One subflow run of the turn, with the spans of the task runs inside it (subflows of it too)."""

    label: str
    state: str
    span: Span
    tasks: list[Span] = field(default_factory=list)


@dataclass
class Turn:
    """What the Prefect API holds about one finished turn."""

    flow_run_id: str
    name: str
    state: str
    span: Span
    start_latency_s: float | None
    stages: list[Stage]
    own_tasks: list[tuple[str, Span]]  # the parent flow's own task runs, by name
    summary: list[str]


def _seconds(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _task_span(task_run: TaskRun, fallback_end: float) -> Span | None:
    """A task run's Running -> final interval; None when it never ran (e.g. its result came from cache)."""
    start = _seconds(task_run.start_time)
    if start is None:
        return None
    end = _seconds(task_run.end_time)
    return (start, end if end is not None else fallback_end)


def _read_task_runs(client: SyncPrefectClient, flow_run_id: UUID) -> list[TaskRun]:
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

    found: list[TaskRun] = []
    while True:
        page = client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id])),
            limit=PAGE,
            offset=len(found),
        )
        found += page
        if len(page) < PAGE:
            return found


def _child_flow_runs(client: SyncPrefectClient, task_runs: list[TaskRun]) -> list[FlowRun]:
    """The subflow runs started from these task runs (each subflow's parent is a tracking task run)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentTaskRunId
    from prefect.client.schemas.sorting import FlowRunSort

    if not task_runs:
        return []
    return client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            parent_task_run_id=FlowRunFilterParentTaskRunId(any_=[t.id for t in task_runs])
        ),
        sort=FlowRunSort.START_TIME_ASC,
        limit=PAGE,
    )


def _tree(client: SyncPrefectClient, flow_run: FlowRun) -> tuple[list[TaskRun], list[FlowRun]]:
    """A flow run's own task runs (without the trackers of its subflows) and its subflow runs."""
    task_runs = _read_task_runs(client, flow_run.id)
    children = _child_flow_runs(client, task_runs)
    trackers = {child.parent_task_run_id for child in children}
    return [t for t in task_runs if t.id not in trackers], children


def _all_task_runs(client: SyncPrefectClient, flow_run: FlowRun) -> list[TaskRun]:
    """Every task run under a flow run, its subflows' included."""
    own, children = _tree(client, flow_run)
    for child in children:
        own += _all_task_runs(client, child)
    return own


def _flow_names(client: SyncPrefectClient, flow_runs: list[FlowRun]) -> dict[UUID, str]:
    from prefect.client.schemas.filters import FlowFilter, FlowFilterId

    ids = list({run.flow_id for run in flow_runs})
    flows = client.read_flows(flow_filter=FlowFilter(id=FlowFilterId(any_=ids)), limit=PAGE) if ids else []
    return {flow.id: flow.name for flow in flows}


def _label(flow_run: FlowRun, names: dict[UUID, str]) -> str:
    """A stage's name: its flow's, with the candidate kind for `evaluate`."""
    label = names.get(flow_run.flow_id, flow_run.name)
    candidate = flow_run.parameters.get("candidate")
    return f"{label} ({candidate})" if candidate else label


def _summary_lines(client: SyncPrefectClient, flow_run_id: UUID) -> list[str]:
    """The bullet lines of the turn's `flywheel-turn` artifact (counts per stage), if it published one."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            key=ArtifactFilterKey(any_=["flywheel-turn"]),
        ),
        limit=5,
    )
    if not artifacts or not isinstance(artifacts[0].data, str):
        return []
    return [line[2:] for line in artifacts[0].data.splitlines() if line.startswith("- ")]


def _settled(client: SyncPrefectClient, flow_run: FlowRun, wait_s: float) -> None:
    """Wait (up to wait_s) until every task run under the turn is final: the server records
    task runs from events, a moment after the flow run itself has finished."""
    deadline = time.monotonic() + wait_s
    while True:
        pending = [t.name for t in _all_task_runs(client, flow_run) if not (t.state and t.state.is_final())]
        if not pending or time.monotonic() > deadline:
            if pending:
                _progress(f"task runs still not final after {wait_s:.0f}s: {pending}")
            return
        time.sleep(1.0)


def read_turn(client: SyncPrefectClient, flow_run_id: UUID, settle_s: float = 30.0) -> Turn:
    """Read a finished turn, its stages and their task runs from the Prefect API."""
    parent = client.read_flow_run(flow_run_id)
    if parent.state is None or not parent.state.is_final():
        raise SystemExit(f"flow run {flow_run_id} has not finished ({parent.state_name}); nothing to report")
    _settled(client, parent, settle_s)
    parent = client.read_flow_run(flow_run_id)
    start, end = _seconds(parent.start_time), _seconds(parent.end_time)
    if start is None or end is None:
        raise SystemExit(f"flow run {flow_run_id} never ran ({parent.state_name})")
    own_runs, children = _tree(client, parent)
    names = _flow_names(client, [parent, *children])
    stages = []
    for child in children:
        label = _label(child, names)
        child_start = _seconds(child.start_time) or end
        child_end = _seconds(child.end_time) or end
        spans = [_task_span(t, child_end) for t in _all_task_runs(client, child)]
        stages.append(
            Stage(label, child.state_name or "?", (child_start, child_end), [s for s in spans if s])
        )
    own = [(t.name, _task_span(t, end)) for t in own_runs]
    expected = _seconds(parent.expected_start_time)
    return Turn(
        flow_run_id=str(parent.id),
        name=parent.name,
        state=parent.state_name or "?",
        span=(start, end),
        start_latency_s=start - expected if expected is not None else None,
        stages=stages,
        own_tasks=[(name, span) for name, span in own if span],
        summary=_summary_lines(client, parent.id),
    )


def latest_turn_id(client: SyncPrefectClient) -> UUID:
    """The newest finished top-level run of the `flywheel` flow."""
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterParentTaskRunId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    final = [StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED]
    runs = client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=[TURN_FLOW])),
        flow_run_filter=FlowRunFilter(
            parent_task_run_id=FlowRunFilterParentTaskRunId(is_null_=True),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=final)),
        ),
        sort=FlowRunSort.END_TIME_DESC,
        limit=1,
    )
    if not runs:
        raise SystemExit(f"no finished `{TURN_FLOW}` flow run at this Prefect API; try --run")
    return runs[0].id


def _parent_gaps(turn: Turn, top: int = 5) -> list[dict[str, Any]]:
    """The parent flow's largest stretches outside its stages and tasks, with what ends and starts there."""
    items = [(s.label, s.span) for s in turn.stages] + turn.own_tasks
    found = gaps(turn.span, [span for _, span in items])

    def ending(at: float) -> str:
        before = [(span[1], name) for name, span in items if span[1] <= at]
        return max(before)[1] if before else "start of the turn"

    def starting(at: float) -> str:
        after = [(span[0], name) for name, span in items if span[0] >= at]
        return min(after)[1] if after else "end of the turn"

    largest = sorted(found, key=lambda gap: gap[1] - gap[0], reverse=True)[:top]
    return [
        {
            "at_s": round(start - turn.span[0], 2),
            "seconds": round(end - start, 2),
            "after": ending(start),
            "before": starting(end),
        }
        for start, end in sorted(largest)
    ]


def figures(turn: Turn) -> dict[str, Any]:
    """The report as plain data (what --json prints)."""
    spans = [StageSpans(s.label, s.span, s.tasks) for s in turn.stages]
    own = [span for _, span in turn.own_tasks]
    overhead: TurnOverhead = turn_overhead(turn.span, spans, own)
    wall = overhead.wall

    def share(seconds: float) -> float | None:
        return round(seconds / wall, 4) if wall > 0 else None

    stages = [
        {
            "stage": stage.label,
            "state": stage.state,
            "wall_s": round(spans[i].wall, 2),
            "share": share(spans[i].wall),
            "task_runs": len(stage.tasks),
            "in_tasks_s": round(spans[i].in_tasks, 2),
            "overhead_s": round(overhead.stages[i], 2),
        }
        for i, stage in enumerate(turn.stages)
    ]
    parent_wall = wall - sum(s.wall for s in spans)
    return {
        "flow_run_id": turn.flow_run_id,
        "flow_run": turn.name,
        "state": turn.state,
        "wall_s": round(wall, 2),
        "stages": stages,
        "parent": {
            "stage": f"{TURN_FLOW} (own)",
            "wall_s": round(parent_wall, 2),
            "share": share(parent_wall),
            "task_runs": len(turn.own_tasks),
            "in_tasks_s": round(parent_wall - overhead.parent, 2),
            "overhead_s": round(overhead.parent, 2),
        },
        "parent_gaps": _parent_gaps(turn),
        "overhead_s": round(overhead.total, 2),
        "overhead_share": round(overhead.share, 4),
        "target_share": TARGET_SHARE,
        "start_latency_s": round(turn.start_latency_s, 2) if turn.start_latency_s is not None else None,
        "summary": turn.summary,
    }


def print_report(data: dict[str, Any]) -> None:
    """Plain aligned lines: the stages, the total, the overhead against its target, the turn's counts."""

    def pct(value: float | None) -> str:
        return f"{value:6.1%}" if value is not None else "     -"

    print(f"turn {data['flow_run']} ({data['flow_run_id']}): {data['state']}")
    header = ("stage", "state", "wall s", "share", "tasks", "in tasks s", "overhead s")
    print("{:<20} {:<10} {:>8} {:>6} {:>5} {:>10} {:>10}".format(*header))
    rows = [*data["stages"], {**data["parent"], "state": ""}]
    for row in rows:
        print(
            f"{row['stage']:<20} {row['state']:<10} {row['wall_s']:8.1f} {pct(row['share'])} "
            f"{row['task_runs']:5d} {row['in_tasks_s']:10.1f} {row['overhead_s']:10.2f}"
        )
    in_tasks = sum(r["in_tasks_s"] for r in rows)
    tasks = sum(r["task_runs"] for r in rows)
    total_share = pct(1.0 if data["wall_s"] else None)
    print(
        f"{'total (turn)':<20} {data['state']:<10} {data['wall_s']:8.1f} {total_share} "
        f"{tasks:5d} {in_tasks:10.1f} {data['overhead_s']:10.2f}"
    )
    verdict = "meets" if data["overhead_share"] < TARGET_SHARE else "misses"
    print(
        f"\norchestration overhead: {data['overhead_s']:.2f} s of {data['wall_s']:.1f} s = "
        f"{data['overhead_share']:.2%} of the turn's wall time (target < {TARGET_SHARE:.0%}: {verdict})"
    )
    print("  (time inside no task run: flow/subflow state changes, API calls, task submission, scheduling)")
    if data["parent_gaps"]:
        print(f"largest gaps of {TURN_FLOW} (own), at seconds into the turn:")
        for gap in data["parent_gaps"]:
            where = f"between {gap['after']} and {gap['before']}"
            print(f"  +{gap['at_s']:7.1f} s  {gap['seconds']:6.2f} s  {where}")
    if data["start_latency_s"] is not None:
        print(
            f"start latency (not in the turn's wall): {data['start_latency_s']:.1f} s from expected start to "
            "Running (runner poll, process start, imports)"
        )
    if data["summary"]:
        print("\nturn summary (flywheel-turn artifact):")
        for line in data["summary"]:
            print(f"  {line}")


def api_reachable(api_url: str) -> bool:
    """True when a Prefect API answers its health check."""
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=3) as response:
            return bool(200 <= response.status < 300)
    except (urllib.error.URLError, OSError):
        return False


def _bench_params(path: Path) -> Path:
    """A copy of params.yaml with every cron schedule off and the harvest reading the inbox files."""
    data = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    for section in data.values():
        if isinstance(section, dict) and "schedule" in section:
            section["schedule"] = None
    data["harvest"]["source"] = "files"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@contextmanager
def private_stack(root: Path) -> Iterator[Environment]:
    """Prefect, MLflow and the runner on free loopback ports in `root`; stopped by pid on the way out."""
    from flywheel.settings import Environment
    from flywheel.stack import launcher
    from flywheel.stack.ports import free_port
    from flywheel.stack.services import embedded_services

    variables = {
        "FLYWHEEL_HOME": str(root / "home"),
        "FLYWHEEL_DATA_DIR": str(root / "data"),
        "FLYWHEEL_PARAMS": str(_bench_params(root / "params.yaml")),
        "FLYWHEEL_PREFECT_PORT": str(free_port()),
        "FLYWHEEL_MLFLOW_PORT": str(free_port()),
        "FLYWHEEL_RUNNER_PORT": str(free_port()),
        "FLYWHEEL_GATEWAY_PORT": str(free_port()),
    }
    os.environ.update(variables)
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
        os.environ.pop(key, None)
    env = Environment()
    specs = embedded_services(env, gateway=False)
    try:
        launcher.up(env, specs, on_event=_progress)
        # this process's Prefect client talks to the private server (set before prefect is imported)
        os.environ["PREFECT_API_URL"] = env.api_url
        os.environ["PREFECT_HOME"] = str(env.home / "prefect")
        yield env
    finally:
        _progress("stopping the private stack")
        launcher.down(env, specs, on_event=_progress)


def _wait(client: SyncPrefectClient, flow_run_id: UUID, what: str, timeout_s: float) -> FlowRun:
    """Poll a flow run until it is final, saying every 30 s which stage is running."""
    started = time.monotonic()
    said = started
    while True:
        flow_run = client.read_flow_run(flow_run_id)
        if flow_run.state is not None and flow_run.state.is_final():
            _progress(f"{what}: {flow_run.state_name} after {time.monotonic() - started:.0f}s")
            return flow_run
        if time.monotonic() - started > timeout_s:
            raise SystemExit(f"{what} did not finish within {timeout_s:.0f}s ({flow_run.state_name})")
        if time.monotonic() - said >= 30:
            said = time.monotonic()
            _, children = _tree(client, flow_run)
            running = [c for c in children if c.state and not c.state.is_final()]
            names = _flow_names(client, running)
            stage = ", ".join(_label(c, names) for c in running)
            _progress(f"{what}: {flow_run.state_name} for {time.monotonic() - started:.0f}s {stage}".rstrip())
        time.sleep(2.0)


def _start(deployment: str, parameters: dict[str, Any]) -> UUID:
    from prefect.deployments import run_deployment

    # outside an event loop run_deployment is synchronous; timeout=0 returns once the run is created
    flow_run = cast("FlowRun", run_deployment(name=deployment, parameters=parameters, timeout=0))
    _progress(f"{deployment}: flow run {flow_run.name} ({flow_run.id}) with {parameters or 'defaults'}")
    return flow_run.id


def run_one_turn(args: argparse.Namespace) -> dict[str, Any]:
    """A private stack: seed the demo, run one turn through its deployment, read it back, stop the stack."""
    from flywheel.settings import load_params

    records = args.records or load_params().demo.n_records
    with tempfile.TemporaryDirectory(prefix="bench-flywheel-") as tmp, private_stack(Path(tmp)) as env:
        from prefect.client.orchestration import get_client

        _progress(f"stack up: Prefect API {env.api_url}, MLflow {env.tracking_uri}")
        with get_client(sync_client=True) as client:
            seeded = _wait(client, _start(SEED_DEPLOYMENT, {"n_records": records}), "seed-demo", args.timeout)
            if not (seeded.state and seeded.state.is_completed()):
                raise SystemExit(f"seed-demo ended {seeded.state_name}; see {env.logs_dir}")
            parameters = {
                key: value
                for key, value in (
                    ("max_steps", args.max_steps),
                    ("max_items", args.max_items),
                    ("max_probes", args.max_probes),
                )
                if value is not None
            }
            turn_id = _start(TURN_DEPLOYMENT, parameters)
            _wait(client, turn_id, "turn", args.timeout)
            data = figures(read_turn(client, turn_id))
            data["records_seeded"] = records
            return data


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--latest", action="store_true", help="report the newest finished turn (default)")
    mode.add_argument("--flow-run", metavar="ID", type=UUID, help="report this `flywheel` flow run")
    mode.add_argument("--run", action="store_true", help="run one turn on a private stack, then report it")
    parser.add_argument(
        "--records", type=int, default=None, help="--run: demo records to seed (default demo.n_records)"
    )
    parser.add_argument("--max-steps", type=int, default=None, help="--run: the turn's max_steps (retrain)")
    parser.add_argument("--max-items", type=int, default=None, help="--run: the turn's max_items (gate)")
    parser.add_argument("--max-probes", type=int, default=None, help="--run: the turn's max_probes (gate)")
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="--run: seconds to wait per flow run (default 3600)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures."""
    args = _parse_args(argv)
    from flywheel.settings import Environment, apply_offline_environ

    apply_offline_environ()
    if args.run:
        data = run_one_turn(args)
    else:
        api_url = Environment().api_url
        if not api_reachable(api_url):
            print(f"no Prefect API answers at {api_url}: start the stack (`flywheel up`) or use --run")
            return 2
        os.environ.setdefault("PREFECT_API_URL", api_url)
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            flow_run_id = args.flow_run or latest_turn_id(client)
            data = figures(read_turn(client, flow_run_id))
    if args.json:
        print(json.dumps(data))
    else:
        print_report(data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
