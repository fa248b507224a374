"""Scale-out: the curate flow on a Dask LocalCluster writes exactly what the default thread runner writes.

The real `curate` flow runs twice under a Prefect test server on one seeded demo
workload: once with `execution.task_runner: thread` (the default), once with
`dask` (2 worker processes). Only its two sinks, DVC and MLflow, are stand-ins:
they do not touch the fan-out.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from prefect import task

from flywheel.dvcdata import Versioned
from flywheel.settings import DEFAULT_PARAMS_PATH, DemoParams, load_params
from tasks.demo.seed import write_workload
from tasks.harvest import run_harvest
from tasks.harvest.sources import FilesSource

pytestmark = pytest.mark.integration

N_RECORDS = 3000


@dataclass(frozen=True)
class Run:
    """One flow run: what it returned, the bytes of every file it wrote, its runner, and its seconds."""

    result: dict[str, Any]
    files: dict[str, str]  # file name -> sha256
    runners: list[Any]
    seconds: float


@task(name="dvc-commit-curate")
def _no_dvc(out_dir: Path, record: bool) -> Versioned:
    return Versioned(None, note="test: not recorded")


@task(name="log-curate-run")
def _no_mlflow(*args: object) -> str:
    return "no-mlflow-run"


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A seeded demo workload harvested into raw partitions, under a Prefect test server."""
    from prefect.testing.utilities import prefect_test_harness

    root = tmp_path_factory.mktemp("curate-dask")
    params = load_params(DEFAULT_PARAMS_PATH)
    demo = DemoParams(n_records=N_RECORDS, seed=11)
    write_workload(demo, params.project.application, root / "data", params.harvest)
    run_harvest(
        FilesSource(str(root / "data" / "incoming")),
        root / "data" / "raw",
        root / "state",
        max_malformed_share=0.5,
    )
    with prefect_test_harness(server_startup_timeout=120):
        yield root


def _curate(root: Path, execution: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> Run:
    """The curate flow with `execution` in its params file; the curated dir's files hashed after."""
    import flows.curate
    from flywheel.runtime import execution as runtime

    params = yaml.safe_load(DEFAULT_PARAMS_PATH.read_text())
    params["execution"] = execution
    params_path = root / f"params-{execution['task_runner']}.yaml"
    params_path.write_text(yaml.safe_dump(params))
    monkeypatch.setenv("FLYWHEEL_PARAMS", str(params_path))
    monkeypatch.setenv("FLYWHEEL_DATA_DIR", str(root / "data"))
    monkeypatch.setenv("FLYWHEEL_HOME", str(root / "home"))
    monkeypatch.delenv("FLYWHEEL_DASK_ADDRESS", raising=False)
    monkeypatch.setattr(flows.curate, "record_with_dvc", _no_dvc)
    monkeypatch.setattr(flows.curate, "log_to_mlflow", _no_mlflow)
    runners: list[Any] = []
    factory = runtime.task_runner

    def spy(*args: Any, **kwargs: Any) -> Any:
        runners.append(factory(*args, **kwargs))
        return runners[-1]

    monkeypatch.setattr(runtime, "task_runner", spy)
    out_dir = root / "data" / params["curate"]["curated_dir"]
    started = time.perf_counter()
    result = flows.curate.curate()
    seconds = time.perf_counter() - started
    files = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(out_dir.iterdir())}
    return Run(result, files, runners, seconds)


def _children() -> set[int]:
    """This process's descendants, less multiprocessing's resource tracker (one per parent, for good)."""
    return {
        child.pid
        for child in psutil.Process(os.getpid()).children(recursive=True)
        if "multiprocessing.resource_tracker" not in _cmdline(child.pid)
    }


def _cmdline(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return str(pid)


def test_a_dask_cluster_curates_the_same_bytes_as_the_default_runner(
    workload: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # given the seeded workload, curated with the default thread runner
    before = _children()
    default = _curate(workload, {"task_runner": "thread"}, monkeypatch)
    assert default.result["metrics"]["records_in"] > 0.9 * N_RECORDS, "curation read the workload"
    # when the same flow runs with the Dask runner on a LocalCluster of 2 worker processes
    dask = _curate(
        workload, {"task_runner": "dask", "dask_workers": 2, "dask_threads_per_worker": 1}, monkeypatch
    )
    # then it ran on a Dask cluster, which is closed now, leaving no worker process behind
    (runner,) = dask.runners
    assert type(runner).__name__ == "DaskTaskRunner", f"expected the Dask runner, got {runner!r}"
    cluster = runner._cluster  # the LocalCluster the runner started for this run
    assert cluster is not None and type(cluster).__name__ == "LocalCluster", f"no LocalCluster: {cluster!r}"
    assert cluster.status.name == "closed", f"the cluster should be closed after the flow: {cluster.status}"
    leftover = _children() - before
    for _ in range(50):
        leftover = {pid for pid in leftover if psutil.pid_exists(pid)}
        if not leftover:
            break
        time.sleep(0.2)
    assert not leftover, f"processes left behind: {[_cmdline(pid) for pid in sorted(leftover)]}"
    # and every curated file is byte-identical, and so are the funnel counts
    assert dask.files == default.files, f"curated files differ:\n{default.files}\n{dask.files}"
    assert dask.result["metrics"] == default.result["metrics"], "funnel metrics differ"
    with capsys.disabled():
        print(
            f"\ncurate flow on {N_RECORDS} records: thread {default.seconds:.1f} s, dask {dask.seconds:.1f} s"
        )
