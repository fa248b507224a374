"""seed-demo: write the demo workload where the harvest stage reads it."""

from __future__ import annotations

from prefect import flow

from flywheel.settings import Environment, load_params, override
from tasks.demo import publish_seed_summary, write_demo_workload


@flow(name="seed-demo", log_prints=True)
def seed_demo(seed: int | None = None, n_records: int | None = None) -> dict[str, object]:
    """Seed the demo: knowledge base, held-out eval set and historical request logs.

    1. read params (flow parameters override the `demo` section)
    2. write the workload under the data dir (history into the harvest inbox)
    3. publish a summary artifact (counts of every kind of record)
    """
    params = load_params()
    demo = override(params.demo, seed=seed, n_records=n_records)
    summary = write_demo_workload(demo, params.project.application, Environment().data_dir, params.harvest)
    publish_seed_summary(summary)
    return summary
