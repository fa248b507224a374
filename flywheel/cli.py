"""`flywheel`: the command line on top of everything (nothing imports this module).

flywheel up | down | status [--json]     the embedded stack
flywheel run FLOW [-p key=value]...      run a flow's deployment, as the Prefect UI would
flywheel demo [--auto-approve]           the main job: one whole turn of the loop, with a report
flywheel simulate -n N -c C              live demo traffic through the gateway, with feedback
flywheel approve [--reject]              review the challenger (as in the MLflow UI)
flywheel rollback                        put the previous champion back
flywheel config [--schema]               validate and show params.yaml
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
import yaml
from rich.console import Console
from rich.table import Table

from flywheel.settings import (
    Environment,
    Params,
    ParamsError,
    apply_offline_environ,
    load_params,
    params_schema,
)
from flywheel.stack import launcher
from flywheel.stack.ports import PortInUseError
from flywheel.stack.services import embedded_services

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun, State

app = typer.Typer(
    help="Flywheel: the LLM data flywheel (harvest -> curate -> retrain -> gate -> canary) on Prefect, "
    "MLflow and DVC.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
demo_app = typer.Typer(
    help="The main job (`make run`): one whole turn of the loop on the embedded stack -- stack up, seed the "
    "demo workload, harvest the history, live traffic, the nightly turn (harvest, curate, retrain, gate), "
    "review, a canary under simulated traffic -- and a report read back from Prefect, MLflow and the "
    "audit log. Sizes come from the `demo` section of params.yaml; the stack keeps running afterwards. "
    "`flywheel demo seed` only writes the workload.",
    invoke_without_command=True,
)
app.add_typer(demo_app, name="demo")

console = Console(stderr=True)


def _fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _say(message: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {message}", highlight=False, soft_wrap=True)


def _environment() -> Environment:
    apply_offline_environ()
    return Environment()


def _params_or_exit() -> Params:
    try:
        return load_params()
    except ParamsError as error:
        raise _fail(str(error), code=2) from None


def _status_table(statuses: list[launcher.ServiceStatus]) -> Table:
    table = Table(title="Flywheel stack", title_justify="left")
    for column in ("service", "state", "health", "url", "pid", "log"):
        table.add_column(column)
    for s in statuses:
        health = "[green]healthy[/]" if s.healthy else f"[red]unhealthy[/] {s.detail}".strip()
        if s.state == "stopped":
            health = "-"
        table.add_row(s.name, s.state, health, s.url, str(s.pid or "-"), s.log)
    return table


@app.command()
def up(
    timeout: Annotated[
        float | None,
        typer.Option(help="Seconds to wait for each service to be healthy (default: 180; gateway 300)."),
    ] = None,
) -> None:
    """Start the embedded stack: Prefect server, MLflow server and the deployment runner.

    State, databases and logs live under $FLYWHEEL_HOME (default ./.flywheel). Ports come from
    FLYWHEEL_PREFECT_PORT (4200), FLYWHEEL_MLFLOW_PORT (5000) and FLYWHEEL_RUNNER_PORT (8765).
    Already-running services are left as they are.
    """
    env = _environment()
    _params_or_exit()  # a bad params file must fail here, not inside the runner
    specs = embedded_services(env)
    if timeout is not None:
        specs = [replace(spec, start_timeout_s=timeout) for spec in specs]
    try:
        statuses = launcher.up(env, specs, on_event=_say)
    except PortInUseError as error:
        raise _fail(str(error)) from None
    except launcher.ServiceStartError as error:
        raise _fail(str(error)) from None
    console.print(_status_table(statuses))
    console.print(
        f"Prefect UI: {env.api_url.removesuffix('/api')}   MLflow UI: {env.tracking_uri}   "
        f"Gateway (OpenAI API): {env.gateway_url}/v1"
    )


@app.command()
def down() -> None:
    """Stop exactly the processes `flywheel up` started (recorded by pid under $FLYWHEEL_HOME/run)."""
    env = _environment()
    stopped = launcher.down(env, embedded_services(env), on_event=_say)
    console.print(f"stopped {len(stopped)} service(s)" if stopped else "nothing was running")


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Show each service of the embedded stack, its URL and health. Exit 1 if any is unhealthy."""
    env = _environment()
    statuses = launcher.status(env, embedded_services(env))
    if as_json:
        payload = {
            "healthy": all(s.healthy for s in statuses),
            "services": [s.__dict__ for s in statuses],
        }
        typer.echo(json.dumps(payload, indent=2))
    else:
        console.print(_status_table(statuses))
    if not all(s.healthy for s in statuses):
        raise typer.Exit(1)


def _parse_parameters(pairs: list[str]) -> dict[str, Any]:
    parameters: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise _fail(f"bad parameter {pair!r}: use -p key=value", code=2)
        # YAML typing, as in params.yaml: 42 -> int, true -> bool, [1,2] -> list
        parameters[key.strip()] = yaml.safe_load(raw)
    return parameters


@app.command("run")
def run_flow(
    flow: Annotated[str, typer.Argument(help="Flow name, e.g. seed-demo (see `flywheel run --list`).")] = "",
    param: Annotated[
        list[str] | None, typer.Option("-p", "--param", help="Flow parameter key=value (repeatable).")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the run to finish and exit with its state.")] = True,
    timeout: Annotated[float | None, typer.Option(help="Seconds to wait (default: until done).")] = None,
    list_flows: Annotated[bool, typer.Option("--list", help="List the deployments and exit.")] = False,
) -> None:
    """Run a flow through its deployment on the Prefect server, as the Prefect UI would.

    The runner started by `flywheel up` picks the run up; its logs are in the Prefect UI.
    """
    from flows.deployments import DEPLOYMENTS, find

    params = _params_or_exit()
    if list_flows or not flow:
        for spec in DEPLOYMENTS:
            typer.echo(
                f"{spec.full_name:32} schedule={spec.schedule(params) or 'on demand'}  {spec.description}"
            )
        return
    try:
        spec = find(flow)
    except KeyError as error:
        raise _fail(str(error.args[0]), code=2) from None
    state = _run_deployment(_environment(), spec.full_name, _parse_parameters(param or []), wait, timeout)
    if wait and not state.is_completed():
        raise typer.Exit(1)


@app.command("rollback")
def rollback(
    kind: Annotated[str, typer.Option(help="What to roll back: model or prompt.")] = "model",
    reason: Annotated[
        str, typer.Option(help="Why, for the audit log and the version's tags.")
    ] = "manual rollback",
) -> None:
    """Put the `previous` champion back at once; the gateway serves it within one registry poll.

    Straight to MLflow, not through Prefect, so it works when the runner is down. The demoted
    version becomes `previous`; the move is audited (`$FLYWHEEL_HOME/audit/promotion.jsonl`
    and the versions' MLflow tags) and sent to the webhook. The `rollback/on-demand`
    deployment does the same from the Prefect UI.
    """
    if kind not in ("model", "prompt"):
        raise _fail(f"--kind must be model or prompt, not {kind!r}", code=2)
    from registry import NothingToRollBackError, RegistryError, Subject, configure_tracking, current_identity
    from tasks.promote.audit import default_audit_path
    from tasks.promote.rollback import roll_back
    from tasks.promote.tasks import registry_audit, webhook_notifier

    env = _environment()
    params = _params_or_exit()
    name = params.project.registered_model if kind == "model" else params.project.prompt_name
    subject = Subject(kind, name)  # type: ignore[arg-type]  # checked above
    configure_tracking(env.tracking_uri)
    from registry import rollback_champion

    try:
        restored = roll_back(
            str(subject), reason, lambda why: rollback_champion(subject, why),
            registry_audit(default_audit_path(env.home), current_identity(), subject), webhook_notifier,
        )  # fmt: skip
    except NothingToRollBackError as error:
        raise _fail(str(error)) from None
    except RegistryError as error:
        raise _fail(f"rollback failed: {error}") from None
    _say(f"{subject}: v{restored} is champion again; the gateway follows within one poll")


@app.command("approve")
def approve(
    kind: Annotated[str, typer.Option(help="What to review: model or prompt.")] = "model",
    version: Annotated[
        str | None, typer.Option(help="The version you reviewed (must be the challenger; default: it).")
    ] = None,
    reviewer: Annotated[
        str | None,
        typer.Option(envvar="FLYWHEEL_REVIEWER", help="Your name for the audit trail (default: user@host)."),
    ] = None,
    reject: Annotated[bool, typer.Option("--reject", help="Reject the challenger instead.")] = False,
    note: Annotated[str, typer.Option(help="Why, for the audit log.")] = "",
) -> None:
    """Approve (or --reject) the challenger, as a reviewer does in the MLflow UI by setting its tags.

    Sets `flywheel.approval=approved|rejected` and `flywheel.approved_by` on the challenger
    version and audits the decision. The next `promote` run starts the canary of an approved
    challenger; it refuses an approval by the identity that produced the candidate.
    """
    _review(_environment(), _params_or_exit(), kind, version, reviewer, approved=not reject, note=note)


def _review(
    env: Environment, params: Params, kind: str, version: str | None, reviewer: str | None,
    *, approved: bool, note: str,
) -> str:  # fmt: skip
    """Record a reviewer's decision on the challenger of a model or prompt; returns its version."""
    if kind not in ("model", "prompt"):
        raise _fail(f"--kind must be model or prompt, not {kind!r}", code=2)
    from registry import RegistryError, Subject, configure_tracking, current_identity, read_aliases
    from registry import record_review as set_review
    from tasks.promote.audit import default_audit_path
    from tasks.promote.review import ReviewError, record_reviewer_decision
    from tasks.promote.tasks import registry_audit

    name = params.project.registered_model if kind == "model" else params.project.prompt_name
    subject = Subject(kind, name)  # type: ignore[arg-type]  # checked above
    who = reviewer or current_identity()
    configure_tracking(env.tracking_uri)
    try:
        done = record_reviewer_decision(
            read_aliases(subject), version, approved, who,
            registry_audit(default_audit_path(env.home), who, subject),
            lambda v, ok, by: set_review(subject, v, ok, by), note,
        )  # fmt: skip
    except ReviewError as error:
        raise _fail(f"{subject}: {error}") from None
    except RegistryError as error:
        raise _fail(f"could not record the review in MLflow ({env.tracking_uri}): {error}") from None
    _say(f"{subject}: v{done} {'approved' if approved else 'rejected'} by {who}")
    return done


def _run_deployment(
    env: Environment, full_name: str, parameters: dict[str, Any], wait: bool, timeout: float | None
) -> State:
    """Create a flow run of a deployment on the Prefect server; wait for it unless told not to."""
    os.environ.setdefault("PREFECT_API_URL", env.api_url)
    from prefect.deployments import run_deployment

    ui = env.api_url.removesuffix("/api")
    _say(f"running deployment {full_name} with {parameters or 'default parameters'}")
    try:
        # run_deployment is sync/async dual; called outside an event loop it returns the FlowRun
        flow_run = cast(
            "FlowRun",
            run_deployment(
                name=full_name, parameters=parameters, timeout=(timeout if wait else 0), poll_interval=2
            ),
        )
    except Exception as error:  # the API client raises many kinds; name the cause for the user
        raise _fail(
            f"could not run {full_name} via {env.api_url}: {error}. Is the stack up (`flywheel status`)?"
        ) from None
    state = flow_run.state
    if state is None:
        raise _fail(f"the Prefect server returned no state for flow run {flow_run.id}")
    _say(f"flow run {flow_run.name}: {state.name}  {ui}/runs/flow-run/{flow_run.id}")
    return state


@demo_app.callback()
def demo(
    ctx: typer.Context,
    auto_approve: Annotated[
        bool,
        typer.Option(
            "--auto-approve",
            help="Approve the challenger as the demo's reviewer and run its canary. Without it the demo "
            "stops at the review and says how to approve in the MLflow UI.",
        ),
    ] = False,
) -> None:
    """The main job: one whole turn of the loop on the embedded stack, with a report.

    Stack up -> seed the demo workload -> harvest the history -> live traffic -> the nightly
    turn (harvest, curate, retrain, gate) -> review -> canary under simulated traffic ->
    report. Each stage runs through its Prefect deployment (watch it in the Prefect UI);
    sizes come from the `demo` section of params.yaml. The stack keeps running afterwards
    (`flywheel down` stops it).
    """
    if ctx.invoked_subcommand is not None:
        return
    from flywheel.mainjob.job import MainJob, MainJobError, run_main_job
    from flywheel.runtime.prefect_runs import use_api

    env = _environment()
    params = _params_or_exit()
    use_api(env.api_url)

    def bring_up() -> None:
        try:
            launcher.up(env, embedded_services(env), on_event=_say)
        except (PortInUseError, launcher.ServiceStartError) as error:
            raise _fail(str(error)) from None

    job = MainJob(
        env,
        params,
        _say,
        simulate=lambda **kw: _simulate(env, params, **kw),
        review=lambda version, reviewer: _review(
            env, params, "model", version, reviewer, approved=True, note="the demo's --auto-approve"
        ),
        auto_approve=auto_approve,
    )
    try:
        promoted = run_main_job(job, bring_up)
    except MainJobError as error:
        raise _fail(str(error)) from None
    if promoted:
        _say("[bold green]done: a better model is champion[/]; stop the stack with `flywheel down`")
    elif not auto_approve and job.report.version is not None:
        _say("[bold]stopped at the review[/] (no --auto-approve); see above how to approve")
    else:
        raise _fail("the loop did not promote a new champion; see the report above")


@demo_app.command("seed")
def demo_seed(
    out: Annotated[Path | None, typer.Option(help="Output folder (default: <data dir>/demo).")] = None,
    seed: Annotated[int | None, typer.Option(help="Override demo.seed.")] = None,
    n_records: Annotated[int | None, typer.Option(help="Override demo.n_records.")] = None,
) -> None:
    """Write the demo workload without Prefect (the `seed_demo` DVC stage runs this)."""
    from flywheel.settings import override
    from tasks.demo.seed import write_workload

    params = _params_or_exit()
    env = _environment()
    demo_params = override(params.demo, seed=seed, n_records=n_records)
    summary = write_workload(demo_params, params.project.application, out or env.data_dir, params.harvest)
    typer.echo(json.dumps(summary, indent=2))


@app.command()
def simulate(
    requests: Annotated[
        int, typer.Option("--requests", "-n", help="How many chat requests to send.", min=1)
    ] = 100,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", help="Requests in flight.", min=1)] = 4,
    users: Annotated[
        int, typer.Option(help="Distinct simulated users (canary arms are sticky per user).")
    ] = 200,
    feedback_rate: Annotated[float, typer.Option(help="Share of answers the users rate (0..1).")] = 0.6,
    max_tokens: Annotated[int, typer.Option(help="max_tokens of each request.")] = 64,
    seed: Annotated[int | None, typer.Option(help="Traffic seed (default: demo.seed).")] = None,
    url: Annotated[str | None, typer.Option(help="Gateway base URL (default: the embedded gateway).")] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="FLYWHEEL_API_KEY", help="Gateway API key (or $FLYWHEEL_API_KEY).")
    ] = None,
) -> None:
    """Drive the demo workload through the gateway with the openai client, rating answers like real users.

    Questions come from the training pool (never the held-out eval set); each answer is scored by the
    simulated user against the knowledge base, and `--feedback-rate` of them are sent as feedback.
    """
    params = _params_or_exit()
    summary = _simulate(
        _environment(),
        params,
        requests=requests,
        concurrency=concurrency,
        users=users,
        feedback_rate=feedback_rate,
        max_tokens=max_tokens,
        seed=seed,
        url=url,
        api_key=api_key,
    )
    for line in summary.lines():
        console.print(line, highlight=False)
    if summary.ok == 0:
        raise _fail("no request succeeded; is the gateway up (`flywheel status`)?")


def _simulate(
    env: Environment,
    params: Params,
    *,
    requests: int,
    concurrency: int,
    users: int = 200,
    feedback_rate: float = 0.6,
    max_tokens: int = 64,
    seed: int | None = None,
    url: str | None = None,
    api_key: str | None = None,
    stop: Callable[[], bool] | None = None,
    progress_every: int | None = None,
) -> Any:
    """Run the traffic simulator against the gateway with progress lines; return its summary.

    With `stop`, `requests` is a cap and traffic ends once `stop()` is true.
    """
    import asyncio

    from flywheel.demo.simulated_user import SimulatedUser
    from flywheel.demo.simulator import simulate as run_simulation
    from flywheel.demo.simulator import training_questions

    key = api_key or _first_gateway_key(env) or "no-key"
    base = url or env.gateway_url
    what = "requests" if stop is None else "requests at most, until told to stop"
    _say(f"simulating {requests} {what}, concurrency {concurrency}, {users} users -> {base}")
    step = progress_every or max(1, requests // 10)

    def progress(done: int, total: int) -> None:
        if done % step == 0 or (done == total and stop is None):
            _say(f"  {done}/{total} requests" if stop is None else f"  {done} requests sent")

    return asyncio.run(
        run_simulation(
            base,
            key,
            requests=requests,
            concurrency=concurrency,
            model=params.project.application,
            user=SimulatedUser.from_params(params.demo),
            questions=training_questions(params.demo.eval_paraphrases),
            users=users,
            feedback_rate=feedback_rate,
            max_tokens=max_tokens,
            seed=params.demo.seed if seed is None else seed,
            on_progress=progress,
            stop=stop,
        )
    )


def _first_gateway_key(env: Environment) -> str | None:
    """The first configured gateway key, so local simulations need no extra flag."""
    if env.gateway_api_keys:
        return env.gateway_api_keys.split(",")[0].strip() or None
    if env.gateway_keys_file and env.gateway_keys_file.exists():
        for line in env.gateway_keys_file.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                return line.split(":", 1)[-1].strip()
    return None


@app.command()
def config(
    schema: Annotated[bool, typer.Option("--schema", help="Print the JSON schema of params.yaml.")] = False,
) -> None:
    """Validate params.yaml ($FLYWHEEL_PARAMS) and print it resolved, with where things run."""
    if schema:
        typer.echo(json.dumps(params_schema(), indent=2))
        return
    params = _params_or_exit()
    env = _environment()
    typer.echo(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    where = env.model_dump(mode="json", exclude={"gateway_api_keys"})  # a secret: never printed
    where["tracking_uri"], where["api_url"] = env.tracking_uri, env.api_url
    typer.echo("# environment (where things run)\n" + yaml.safe_dump(where, sort_keys=False))


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
