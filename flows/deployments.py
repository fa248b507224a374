"""Every Flywheel deployment, declared once.

The embedded stack's runner serves this table (`python -m flows.deployments`);
`prefect.yaml` declares the same deployments for `prefect deploy` to a work pool,
and a test keeps the two in step. A later flow joins by adding one row.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from flywheel.settings import Params, apply_offline_environ, load_params

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment: which flow, its name, and the params section holding its schedule."""

    flow_name: str  # the @flow(name=...) shown in the Prefect UI
    name: str  # deployment name; the full name is "<flow_name>/<name>"
    # "module:function", as prefect.yaml spells it. A module path, not a file path:
    # Prefect registers a script loaded by path under its bare file name, so
    # flows/evaluate.py would shadow the `evaluate` library in the flow's process.
    entrypoint: str
    params_section: str | None  # its `schedule` (cron or null) lives in params.yaml here; None: on demand
    description: str
    concurrency_limit: int | None = None  # e.g. 1 for a flow whose runs must never overlap

    @property
    def full_name(self) -> str:
        return f"{self.flow_name}/{self.name}"

    def schedule(self, params: Params) -> str | None:
        """The cron schedule from params, or None for on-demand deployments."""
        if self.params_section is None:
            return None
        return getattr(params, self.params_section).schedule  # type: ignore[no-any-return]

    def load_flow(self) -> Flow[..., object]:
        """Import the flow object this deployment runs."""
        path, attr = self.entrypoint.split(":")
        module = importlib.import_module(path)
        return getattr(module, attr)  # type: ignore[no-any-return]


DEPLOYMENTS: tuple[DeploymentSpec, ...] = (
    DeploymentSpec(
        flow_name="seed-demo",
        name="on-demand",
        entrypoint="flows.seed_demo:seed_demo",
        params_section="demo",
        description="Write the demo workload (knowledge base, eval set, historical request logs).",
    ),
    DeploymentSpec(
        flow_name="harvest",
        name="on-demand",
        entrypoint="flows.harvest:harvest",
        params_section="harvest",
        description="Harvest new records by watermark (request log, JSONL/Parquet files, SQL) into data/raw.",
    ),
    DeploymentSpec(
        flow_name="curate",
        name="on-demand",
        entrypoint="flows.curate:curate",
        params_section="curate",
        description="Curate raw partitions into validated, PII-free, deduplicated training and eval splits.",
    ),
    DeploymentSpec(
        flow_name="retrain",
        name="on-demand",
        entrypoint="flows.retrain:retrain",
        params_section="train",
        description="Fine-tune a LoRA candidate on the curated splits (resumes from its last checkpoint).",
    ),
    DeploymentSpec(
        flow_name="evaluate",
        name="on-demand",
        entrypoint="flows.evaluate:evaluate",
        params_section="evaluate",
        description="Gate a retrain run's candidate against the champion; register it with the verdict.",
    ),
    DeploymentSpec(
        flow_name="flywheel",
        name="nightly",
        entrypoint="flows.flywheel:flywheel",
        params_section="flywheel",
        description="One turn: harvest, curate, retrain, gate; a passing candidate awaits approval.",
        concurrency_limit=1,  # a turn can run for longer than an hour on 2 cores; never two at once
    ),
    DeploymentSpec(
        flow_name="drift",
        name="hourly",
        entrypoint="flows.drift:drift",
        params_section="drift",
        description="Drift of inputs, tokens, latency, errors, cost and feedback in the request log; alert.",
    ),
    DeploymentSpec(
        flow_name="regression",
        name="nightly",
        entrypoint="flows.regression:regression",
        params_section="regression",
        description="Replay the fixed regression suite and safety probes on the champion; alert on a drop.",
    ),
    DeploymentSpec(
        flow_name="promote",
        name="scheduled",
        entrypoint="flows.promote:promote",
        params_section="promote",
        description="Run the staged canary of an approved challenger; promote it or roll it back.",
        concurrency_limit=1,  # one canary at a time: a run can outlast the schedule's interval
    ),
    DeploymentSpec(
        flow_name="rollback",
        name="on-demand",
        entrypoint="flows.rollback:rollback",
        params_section=None,
        description="Put the previous champion back at once (the gateway follows within one poll).",
    ),
)


def find(flow_name: str) -> DeploymentSpec:
    """The deployment of a flow, by flow name (e.g. `seed-demo`)."""
    for spec in DEPLOYMENTS:
        if flow_name in (spec.flow_name, spec.full_name):
            return spec
    known = ", ".join(spec.flow_name for spec in DEPLOYMENTS)
    raise KeyError(f"no deployment for flow {flow_name!r}; known flows: {known}")


def runner_deployments(params: Params) -> list[RunnerDeployment]:
    """The table as Prefect runner deployments with their schedules from params."""
    from prefect.deployments.runner import EntrypointType

    deployments = []
    for spec in DEPLOYMENTS:
        cron = spec.schedule(params)
        deployment = spec.load_flow().to_deployment(
            name=spec.name,
            cron=cron,
            description=spec.description,
            tags=["flywheel"],
            entrypoint_type=EntrypointType.MODULE_PATH,  # see DeploymentSpec.entrypoint
            concurrency_limit=spec.concurrency_limit,
        )
        # to_deployment is sync/async dual; called outside an event loop it returns the object
        deployments.append(cast("RunnerDeployment", deployment))
    return deployments


def main() -> None:
    """Serve every deployment from this process (the embedded stack's runner)."""
    from prefect import serve

    apply_offline_environ()
    deployments = runner_deployments(load_params())
    serve(*deployments, print_starting_message=True)


if __name__ == "__main__":
    main()
