"""curate: raw partitions to validated, private, deduplicated train/validation/eval splits."""

from __future__ import annotations

from prefect import flow

from flywheel.settings import ChatFormat, CurateParams, Environment, load_params, override
from tasks.curate.outputs import funnel_markdown
from tasks.curate.run import CurationPaths
from tasks.curate.tasks import (
    load_raw_partitions,
    log_to_mlflow,
    publish_summary,
    record_with_dvc,
    run_funnel,
    validate_curated,
    validate_raw,
    write_outputs,
)


@flow(name="curate", log_prints=True)
def curate(format: ChatFormat | None = None, keep_unrated: bool | None = None) -> dict[str, object]:
    """Curate every raw partition into the splits under `data/curated/`.

    1. read params (`curate` section; flow parameters override it) and where things run
    2. load the raw partitions and validate them (GX raw suite): a failure stops the flow here
    3. run the funnel: normalise, filter, redact PII, dedup, pairs, split; the per-record steps
       fan out over row shards on the `execution` task runner (threads, or Dask workers)
    4. validate the curated rows (GX curated suite): a failure stops the flow before writing
    5. write splits, preference pairs, drops and funnel metrics
    6. record the outputs with DVC (`dvc commit curate`, push) and log the run to MLflow
    7. publish the funnel and links to the data docs as artifacts
    """
    all_params = load_params()
    params: CurateParams = override(all_params.curate, format=format, keep_unrated=keep_unrated)
    env = Environment()
    paths = CurationPaths.from_settings(env, all_params.harvest, params)
    raw, quarantined = load_raw_partitions(paths.raw_dir)
    raw_docs = validate_raw(raw, paths.docs_dir, params.validation_sample_rows)
    curated = run_funnel(raw, params, paths, all_params.execution, env.dask_address)
    curated_docs = validate_curated(curated, params, paths.docs_dir)
    written = write_outputs(curated, paths.out_dir, params, quarantined)
    versioned = record_with_dvc(paths.out_dir, record=params == all_params.curate)
    run_id = log_to_mlflow(
        env.tracking_uri, all_params.project.experiment, params, written["metrics"], versioned.hashes,
        [paths.out_dir / "funnel.json", paths.docs_dir],
    )  # fmt: skip
    publish_summary(
        funnel_markdown(written["metrics"], versioned.hashes, versioned.note),
        {"raw": raw_docs, "curated": curated_docs},
    )
    return {"metrics": written["metrics"], "dvc": versioned.hashes, "mlflow_run_id": run_id}
