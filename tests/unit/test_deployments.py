"""The deployment table: one place, in step with prefect.yaml and params.yaml."""

from __future__ import annotations

import pytest
import yaml

from flows.deployments import DEPLOYMENTS, find
from flywheel.settings import PROJECT_ROOT, load_params


def test_prefect_yaml_declares_the_same_deployments() -> None:
    # given prefect.yaml, for `prefect deploy` to a work pool
    declared = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]
    by_key = {(d["entrypoint"], d["name"]): d for d in declared}
    params = load_params()
    for spec in DEPLOYMENTS:
        # then each row of the table is there with the schedule params.yaml gives it
        entry = by_key.get((spec.entrypoint, spec.name))
        assert entry is not None, f"prefect.yaml lacks {spec.full_name} ({spec.entrypoint})"
        crons = [s["cron"] for s in entry.get("schedules") or []]
        expected = [spec.schedule(params)] if spec.schedule(params) else []
        assert crons == expected, f"{spec.full_name}: prefect.yaml schedules {crons} != params {expected}"
        assert entry.get("concurrency_limit") == spec.concurrency_limit, (
            f"{spec.full_name}: prefect.yaml concurrency_limit {entry.get('concurrency_limit')} "
            f"!= {spec.concurrency_limit}"
        )
    assert len(declared) == len(DEPLOYMENTS), (
        "prefect.yaml and flows/deployments.py list different deployments"
    )


@pytest.mark.parametrize("spec", DEPLOYMENTS, ids=lambda s: s.full_name)
def test_each_entrypoint_loads_the_named_flow(spec) -> None:  # type: ignore[no-untyped-def]
    flow = spec.load_flow()
    assert flow.name == spec.flow_name, f"{spec.entrypoint} is flow {flow.name!r}, not {spec.flow_name!r}"
    assert flow.__doc__, f"{spec.flow_name} should have a docstring listing its steps"


def test_find_by_flow_name_and_unknown_flow() -> None:
    assert find("seed-demo").full_name == "seed-demo/on-demand", "find by flow name"
    with pytest.raises(KeyError, match="known flows: seed-demo"):
        find("no-such-flow")
