"""`make run`: one whole turn of the loop on the embedded stack, the way a new user first meets it.

Every stage runs as what it is in production: a Prefect deployment picked up by the
runner, with its state in the Prefect UI and its records in MLflow and DVC. The job
only starts runs, watches them, plays the reviewer when `--auto-approve` says so, sends
simulated live traffic during the canary, and reports what the stack recorded.

1. the stack: Prefect, MLflow, the deployment runner, the gateway
2. seed-demo: knowledge base, held-out eval set, 14 days of history into the harvest inbox
3. harvest the history (source `files`): the backfill a team starts from
4. live traffic through the gateway: these requests land in the request log
5. the nightly turn (`flywheel/nightly`): harvest -> curate -> retrain -> gate
6. review: `--auto-approve` approves the challenger (printed loudly); without it, how to approve
7. the canary (`promote/scheduled` with the demo's short windows) under simulated traffic
8. the report
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rich.markup import escape

from flywheel.mainjob.report import DemoReport, GateFigures, canary_events, read_funnel, render
from flywheel.runtime.prefect_runs import RunView, start_deployment, watch
from flywheel.settings import Environment, Params

Say = Callable[[str], None]
AUTO_REVIEWER = "flywheel-demo (--auto-approve)"
STEPS = 8


class MainJobError(RuntimeError):
    """A stage of the main job did not complete; the message says which and where to look."""


@dataclass
class MainJob:
    """The demo's state: where the stack runs, params, output, and what the report collects."""

    env: Environment
    params: Params
    say: Say
    simulate: Callable[..., Any]  # the CLI's simulator with progress lines (requests=, concurrency=, ...)
    review: Callable[[str, str], str]  # (version, reviewer) -> version: record an approval
    auto_approve: bool = False
    report: DemoReport = field(default_factory=DemoReport)

    def plain(self, text: str) -> None:
        """Say text that may hold brackets (log lines, reasons) without reading them as markup."""
        self.say(escape(text))

    @property
    def ui(self) -> str:
        return self.env.api_url.removesuffix("/api")

    @contextmanager
    def step(self, n: int, title: str, timing: str) -> Iterator[None]:
        self.say(f"[bold]{n}/{STEPS}[/] {title}")
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.report.timings.append((timing, time.monotonic() - t0))

    def deployment(self, full_name: str, parameters: dict[str, Any], **watch_args: Any) -> RunView:
        """Run a deployment and watch it to the end; a run that does not complete stops the job."""
        run = start_deployment(full_name, parameters)
        self.plain(f"  {full_name} {parameters or ''} -> {self.ui}/runs/flow-run/{run.id}")
        view = watch(str(run.id), self.plain, **watch_args)
        if view.state != "Completed":
            raise MainJobError(
                f"{full_name} ended {view.state}; its logs are at {self.ui}/runs/flow-run/{run.id}"
            )
        self.plain(f"  {full_name}: Completed in {view.seconds or 0:.0f}s")
        return view

    def turn_parameters(self) -> dict[str, Any]:
        demo = self.params.demo
        given = {
            "max_steps": demo.turn_max_steps,
            "max_items": demo.turn_max_items,
            "candidates": list(demo.turn_candidates) if demo.turn_candidates else None,
        }
        return {key: value for key, value in given.items() if value is not None}

    def canary_parameters(self) -> dict[str, Any]:
        demo = self.params.demo
        return {
            "kind": "model",
            "analysis_window_seconds": demo.canary_window_seconds,
            "canary_steps": list(demo.canary_steps),
            "min_requests_per_arm": demo.canary_min_requests_per_arm,
            "min_feedback_per_arm": demo.canary_min_feedback_per_arm,
        }


def run_main_job(job: MainJob, bring_up: Callable[[], None]) -> bool:
    """The eight steps; True when a better model was promoted. Raises MainJobError on a failed stage."""
    from registry import Subject, configure_tracking, read_aliases

    started = time.monotonic()
    demo, project = job.params.demo, job.params.project
    subject = Subject("model", project.registered_model)
    job.report.links = [
        ("Prefect UI (flow runs)", f"{job.ui}/runs"),
        ("Prefect UI (deployments)", f"{job.ui}/deployments"),
        ("MLflow UI (model versions)", f"{job.env.tracking_uri}/#/models/{project.registered_model}"),
        ("MLflow UI (experiment runs)", f"{job.env.tracking_uri}/#/experiments"),
        ("Gateway (any OpenAI client)", f"{job.env.gateway_url}/v1"),
    ]
    try:
        with job.step(1, "the embedded stack: Prefect, MLflow, deployment runner, gateway", "stack up"):
            bring_up()
        configure_tracking(job.env.tracking_uri)
        with job.step(2, "seed-demo: knowledge base, eval set, historical request logs", "seed-demo"):
            job.deployment("seed-demo/on-demand", {})
        with job.step(3, "harvest the seeded history (the backfill a team starts from)", "harvest history"):
            job.deployment("harvest/on-demand", {"source": "files"})
        with job.step(4, f"live traffic: {demo.live_requests} requests through the gateway", "live traffic"):
            job.simulate(requests=demo.live_requests, concurrency=demo.canary_concurrency)
        before = read_aliases(subject)
        job.report.champion_before = f"v{before.champion.version}" if before.champion else None
        with job.step(5, "the nightly turn: harvest -> curate -> retrain -> gate", "flywheel turn"):
            view = job.deployment("flywheel/nightly", job.turn_parameters(), heartbeat_seconds=60)
        _turn_details(job, view)
        state = read_aliases(subject)
        challenger = state.challenger
        if challenger is None or (before.challenger and before.challenger.version == challenger.version):
            job.report.notes.append(
                "No new challenger: the turn had nothing to learn or its candidate failed the gate "
                "(see the gate above and the flywheel run in the Prefect UI). `make clean` starts over."
            )
            return False
        job.report.version = challenger.version
        with job.step(6, f"review: challenger v{challenger.version} waits for approval", "review"):
            if not job.auto_approve:
                _how_to_approve(job, challenger.version)
                return False
            job.say(
                "[bold yellow]!! --auto-approve: the demo approves challenger "
                f"v{challenger.version} as {AUTO_REVIEWER!r}. In production a reviewer does this "
                "in the MLflow UI; no unattended run should ever pass this flag.[/]"
            )
            job.review(challenger.version, AUTO_REVIEWER)
        with job.step(7, f"canary of v{challenger.version} under simulated live traffic", "canary"):
            outcome = _canary(job, subject, challenger.version)
        after = read_aliases(subject)
        job.report.champion_after = f"v{after.champion.version}" if after.champion else None
        promoted = after.champion is not None and after.champion.version == challenger.version
        if not promoted:
            job.report.notes.append(f"The canary did not promote v{challenger.version}: {outcome}")
        return promoted
    finally:
        job.report.total_seconds = time.monotonic() - started
        job.say(f"[bold]{STEPS}/{STEPS}[/] report")
        for line in render(job.report):
            job.plain(line)


def _turn_details(job: MainJob, view: RunView) -> None:
    """Subflow timings of the turn, the funnel and the gate's figures, read back from the stack."""
    from flywheel.runtime.prefect_runs import read_run
    from registry import configure_tracking

    _run, children = read_run(view.id)
    job.report.timings += [(f"  {c.flow}", c.seconds or 0.0) for c in children]
    job.report.funnel = read_funnel(job.env.data_dir / job.params.curate.curated_dir)
    configure_tracking(job.env.tracking_uri)
    figures = _gate_figures(job)
    if figures is not None:
        job.report.gate = figures


def _gate_figures(job: MainJob) -> GateFigures | None:
    """The gate's numbers from the newest retrain run that the adapter gate logged into."""
    from mlflow import MlflowClient

    client = MlflowClient(job.env.tracking_uri)
    experiment = client.get_experiment_by_name(job.params.project.experiment)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string="metrics.`gate/n_items` > 0",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return None
    return GateFigures.from_metrics(job.params.evaluate.primary_metric, runs[0].data.metrics)


def _how_to_approve(job: MainJob, version: str) -> None:
    name = job.params.project.registered_model
    job.report.notes += [
        f"Challenger v{version} passed the gate and waits for a reviewer. To approve it:",
        f"  - MLflow UI: {job.env.tracking_uri}/#/models/{name}/versions/{version} -> tags: set "
        "flywheel.approval=approved and flywheel.approved_by=<your name> (not the identity that trained it)",
        "  - or: flywheel approve --reviewer <your name>",
        "Then `flywheel run promote` starts the canary (or wait for the promote/scheduled run), "
        "or run the whole demo with `make run ARGS=--auto-approve`.",
    ]


def _canary(job: MainJob, subject: Any, version: str) -> str:
    """Run the promote deployment with the demo's windows while simulated users send traffic."""
    from prefect.client.orchestration import get_client

    from tasks.promote.audit import AuditTrail, default_audit_path

    demo = job.params.demo
    audit = AuditTrail(default_audit_path(job.env.home), who="flywheel-demo")
    shown = len(audit.entries(str(subject), version))
    done = threading.Event()
    outcome: dict[str, str] = {"state": "not started"}

    def tail_audit() -> None:
        nonlocal shown
        entries = audit.entries(str(subject), version)
        for entry in entries[shown:]:
            job.plain(f"  audit: {entry.event}: {entry.why}")
        shown = len(entries)

    with get_client(sync_client=True) as client:
        # The scheduled promote run would pick the approved challenger up with production
        # windows (5 min each); the demo runs its own short canary, so it pauses that schedule.
        scheduled = client.read_deployment_by_name("promote/scheduled")
        client.pause_deployment(scheduled.id)
    try:
        run = start_deployment("promote/scheduled", job.canary_parameters())
        job.plain(f"  promote {job.canary_parameters()} -> {job.ui}/runs/flow-run/{run.id}")

        def watcher() -> None:
            try:
                view = watch(str(run.id), job.plain, on_tick=tail_audit, heartbeat_seconds=120)
                outcome["state"] = view.state
            finally:
                done.set()

        thread = threading.Thread(target=watcher, name="canary-watch", daemon=True)
        thread.start()
        # A cap well above what the canary can use (even cache hits take ~0.1 s); `stop` ends it.
        windows = len(demo.canary_steps) * (job.params.promote.max_holds + 1)
        cap = int(windows * demo.canary_window_seconds * 20)
        summary = job.simulate(
            requests=cap, concurrency=demo.canary_concurrency, seed=demo.seed + 1, stop=done.is_set,
            progress_every=50,
        )  # fmt: skip
        done.wait()
        thread.join(timeout=10)
        for line in summary.lines():
            job.plain(f"  traffic: {line}")
    finally:
        with get_client(sync_client=True) as client:
            client.resume_deployment(scheduled.id)
    entries = audit.entries(str(subject), version)
    job.report.canary = canary_events(e for e in entries if e.event not in ("approval_needed",))
    last = entries[-1].why if entries else "no audit entry"
    return f"promote run {outcome['state']}: {last}"
