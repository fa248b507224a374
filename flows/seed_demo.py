"""seed-demo: write the demo workload where the harvest stage reads it."""

from __future__ import annotations

from prefect import flow

from flywheel.settings import Environment, load_params, override
from tasks.demo import publish_seed_summary, record_demo_with_dvc, write_demo_workload


@flow(name="seed-demo", log_prints=True)
def seed_demo(seed: int | None = None, n_records: int | None = None) -> dict[str, object]:
    """Seed the demo: knowledge base, held-out eval set and historical request logs.

    1. read params (flow parameters override the `demo` section)
    2. write the workload under the data dir (history into the harvest inbox)
    3. record the outputs with DVC (`dvc commit seed_demo`, push) when params were not overridden
    4. publish a summary artifact (counts of every kind of record)
    """
    params = load_params()
    demo = override(params.demo, seed=seed, n_records=n_records)
    data_dir = Environment().data_dir
    summary = write_demo_workload(demo, params.project.application, data_dir, params.harvest)
    versioned = record_demo_with_dvc(data_dir, record=demo == params.demo)
    print(versioned.note or f"recorded in dvc.lock: {versioned.hashes}")
    publish_seed_summary(summary)
    return {**summary, "dvc": versioned.hashes}
