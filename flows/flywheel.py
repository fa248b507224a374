"""flywheel: one turn of the loop, nightly: harvest -> curate -> retrain -> gate -> challenger."""

from __future__ import annotations

from typing import Literal

from prefect import flow

from flows.curate import curate
from flows.evaluate import evaluate
from flows.harvest import harvest
from flows.retrain import retrain
from flywheel.settings import Environment, load_params, override
from tasks.flywheel.tasks import check_new_data, complete_turn, registered_version


@flow(name="flywheel", log_prints=True)
def flywheel(
    min_new_records: int | None = None,
    max_steps: int | None = None,
    max_items: int | None = None,
    max_probes: int | None = None,
    candidates: list[Literal["adapter", "prompt"]] | None = None,
) -> dict[str, object]:
    """One turn; each stage is a subflow with its own state in the Prefect UI.

    `max_steps`, `max_items` and `max_probes` shrink retraining and the gate for a smoke run;
    `candidates` overrides `flywheel.candidates`.
    A failed stage fails the turn; re-running it resumes: harvest goes on from its watermark,
    curation is deterministic, retraining finds its checkpoints (or its finished result) and a
    candidate already registered is not gated again.

    1. harvest new records from the request log (subflow `harvest`)
    2. fewer than `flywheel.min_new_records` new raw records since the last completed turn:
       end early, a success with a note
    3. curate (subflow `curate`), retrain (subflow `retrain`: the LoRA adapter and the prompt)
    4. gate each of `flywheel.candidates` (subflow `evaluate`); a passing one becomes `challenger`
       with `flywheel.approval=pending`, for a reviewer in the MLflow UI
    5. record the turn and publish its summary
    """
    params = load_params()
    settings = override(params.flywheel, min_new_records=min_new_records, candidates=candidates)
    env = Environment()
    state_dir = env.home / "flywheel"
    harvested = harvest()
    raw_records, reason = check_new_data(
        env.data_dir / params.harvest.raw_dir, state_dir, settings.min_new_records
    )
    if reason is not None:
        print(reason)
        return {"status": "nothing_to_learn", "reason": reason, "harvested": harvested["n_valid"]}
    curated = curate()
    trained = retrain(max_steps=max_steps)
    verdicts: dict[str, object] = {}
    for kind in settings.candidates:
        name = params.project.registered_model if kind == "adapter" else params.project.prompt_name
        done = registered_version(
            env.tracking_uri, name, str(trained["run_id"]), "prompt" if kind == "prompt" else "model"
        )
        if done is not None:
            print(f"{kind} candidate of run {trained['run_id']} is already registered as version {done}")
            verdicts[kind] = {"version": done, "resumed": True}
            continue
        verdicts[kind] = evaluate(str(trained["run_id"]), kind, max_items=max_items, max_probes=max_probes)
    summary = _summary(harvested, curated, trained, verdicts)
    complete_turn(state_dir, raw_records, str(trained["run_id"]), summary)
    return {"status": "completed", "run_id": trained["run_id"], "verdicts": verdicts}


def _summary(
    harvested: dict[str, object], curated: dict[str, object], trained: dict[str, object],
    verdicts: dict[str, object],
) -> str:  # fmt: skip
    metrics = curated.get("metrics")
    out = metrics.get("records_out") if isinstance(metrics, dict) else None
    lines = [
        "# Flywheel turn",
        "",
        f"- harvest: {harvested.get('n_valid')} new valid records",
        f"- curate: {out} records out",
        f"- retrain: run `{trained['run_id']}`, {trained.get('steps')} steps, "
        f"best validation loss {trained.get('best_val_loss')}",
    ]
    lines += [f"- gate ({kind}): {verdict}" for kind, verdict in verdicts.items()]
    return "\n".join(lines) + "\n"
