"""Scale-out: the `execution` settings, the task runner they name, and sharding that changes no byte."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import pytest

from flywheel.demo import write_demo
from flywheel.demo.simulated_user import HashingEmbedder
from flywheel.runtime.execution import RunnerMap, shard_count, task_runner
from flywheel.settings import (
    DEFAULT_PARAMS_PATH,
    CurateParams,
    DemoParams,
    ExecutionParams,
    ParamsError,
    load_params,
    parse_params,
)
from tasks.curate.curate import curate_frame
from tasks.curate.filters import length_and_language
from tasks.curate.frame import raw_partitions, read_partitions
from tasks.curate.outputs import funnel_metrics, write_curated
from tasks.curate.shards import concat_rows, row_shards, serial_map
from tasks.curate.split import load_protected_keys
from tasks.curate.steps import StepResult
from tasks.harvest import run_harvest
from tasks.harvest.sources import FilesSource

T = TypeVar("T")


def test_shipped_params_run_on_threads_by_default() -> None:
    execution = load_params(DEFAULT_PARAMS_PATH).execution
    assert execution.task_runner == "thread", "the shipped params should keep the default thread runner"
    assert shard_count(execution) == 1, "the default runner curates in one shard, as before scale-out"


def test_an_unknown_task_runner_is_rejected_naming_the_key() -> None:
    with pytest.raises(ParamsError, match=r"execution\.task_runner"):
        parse_params({"execution": {"task_runner": "spark"}}, Path("params.yaml"))


@pytest.mark.parametrize(
    ("execution", "shards"),
    [
        (ExecutionParams(), 1),
        (ExecutionParams(task_runner="thread", shards=4), 4),
        (ExecutionParams(task_runner="dask"), 2),
        (ExecutionParams(task_runner="dask", dask_workers=3, dask_threads_per_worker=2), 6),
        (ExecutionParams(task_runner="dask", shards=8), 8),
    ],
)
def test_shard_count_follows_the_runner_unless_set(execution: ExecutionParams, shards: int) -> None:
    assert shard_count(execution) == shards, f"{execution} should cut {shards} shards"


def test_the_thread_runner_gets_one_thread_per_shard() -> None:
    from prefect.task_runners import ThreadPoolTaskRunner

    runner = task_runner(ExecutionParams(task_runner="thread", shards=3))
    assert isinstance(runner, ThreadPoolTaskRunner), f"expected Prefect's thread pool, got {runner!r}"
    assert runner._max_workers == 3, "one thread per shard"


def test_the_dask_runner_starts_a_local_cluster_of_processes_sized_by_params() -> None:
    from prefect_dask import DaskTaskRunner

    runner = task_runner(ExecutionParams(task_runner="dask", dask_workers=3, dask_threads_per_worker=2))
    assert isinstance(runner, DaskTaskRunner), f"expected the Dask runner, got {runner!r}"
    assert runner.address is None, "no address: a LocalCluster of its own"
    kwargs = runner.cluster_kwargs
    assert (kwargs["n_workers"], kwargs["threads_per_worker"], kwargs["processes"]) == (3, 2, True), kwargs
    assert kwargs["dashboard_address"] == ":0", "no fixed dashboard port shared by concurrent runs"


def test_a_dask_address_from_the_environment_joins_that_cluster() -> None:
    runner = task_runner(ExecutionParams(task_runner="dask"), address="tcp://10.0.0.5:8786")
    assert runner.address == "tcp://10.0.0.5:8786", "the runner should connect to the given scheduler"  # type: ignore[attr-defined]
    assert not runner.cluster_kwargs, "no LocalCluster when joining a cluster"  # type: ignore[attr-defined]


class _FakeFuture:
    def __init__(self, future: Future[Any]) -> None:
        self._future = future

    def result(self) -> Any:
        return self._future.result()


class _FakeRunner:
    """Runs each piece on its own thread: later pieces finish first when they sleep less."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=4)

    def submit(self, task: object, parameters: dict[str, Any]) -> _FakeFuture:
        return _FakeFuture(self.pool.submit(parameters["work"]))


def _sleepy(index: int) -> int:
    time.sleep(0.05 * (4 - index))
    return index


def test_runner_map_returns_results_in_shard_order_not_completion_order() -> None:
    from functools import partial

    # given pieces where the last submitted finishes first
    runner = _FakeRunner()
    # when mapped through the runner
    results = RunnerMap(runner)("test", [partial(_sleepy, index) for index in range(4)])  # type: ignore[arg-type]
    runner.pool.shutdown()
    # then the results come back in submission order
    assert results == [0, 1, 2, 3], f"results should follow the shards, got {results}"


@pytest.mark.parametrize(
    ("rows", "shards", "lengths"), [(10, 3, [3, 3, 4]), (2, 5, [1, 1]), (0, 4, [0]), (7, 1, [7])]
)
def test_row_shards_cover_every_row_once_in_order(rows: int, shards: int, lengths: list[int]) -> None:
    frame = pd.DataFrame({"request_id": [f"r{i}" for i in range(rows)], "n": range(rows)})
    parts = row_shards(frame, shards)
    assert [len(part) for part in parts] == lengths, "near-equal contiguous pieces"
    joined = concat_rows(parts)
    pd.testing.assert_frame_equal(joined, frame, obj="shards joined back")


def test_row_shards_refuse_zero() -> None:
    with pytest.raises(ValueError, match="shards"):
        row_shards(pd.DataFrame({"a": [1]}), 0)


def test_a_step_on_shards_concatenates_to_the_step_on_everything_reasons_in_step_order() -> None:
    # given rows where the first shard drops only for language and the second only for length
    frame = pd.DataFrame(
        {
            "request_id": ["a", "b", "c", "d"],
            "prompt": ["Привет, как дела?", "how do I export?", "?", "where is sync?"],
            "response": ["ok", "ok", "ok", "ok"],
        }
    )

    def step(part: pd.DataFrame) -> StepResult:
        return length_and_language(part, 2, 100, 1, 100, 0.5)

    # when the step runs on two shards and the results are concatenated
    merged = StepResult.concat([step(part) for part in row_shards(frame, 2)])
    whole = step(frame)
    # then rows, dropped ids and the order of reasons are those of one pass
    pd.testing.assert_frame_equal(merged.kept, whole.kept, obj="kept rows")
    assert list(merged.dropped.items()) == list(whole.dropped.items()), f"{merged.dropped} vs {whole.dropped}"


def _reversed_map(step: str, work: Sequence[Callable[[], T]]) -> list[T]:
    """Runs the last piece first (as a busy cluster might) and returns results in the given order."""
    done = {index: work[index]() for index in reversed(range(len(work)))}
    return [done[index] for index in range(len(work))]


@pytest.fixture(scope="module")
def demo_raw(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, frozenset[str]]:
    root = tmp_path_factory.mktemp("shards")
    write_demo(
        DemoParams(n_records=3000, seed=5), "support-assistant", root / "demo",
        history_path=root / "incoming" / "history.jsonl",
    )  # fmt: skip
    run_harvest(FilesSource(str(root / "incoming")), root / "raw", root / "state", max_malformed_share=0.5)
    return read_partitions(raw_partitions(root / "raw")), load_protected_keys([root / "demo" / "eval.jsonl"])


@pytest.mark.parametrize(("shards", "mapper"), [(3, serial_map), (4, _reversed_map)])
def test_curation_in_shards_writes_the_same_bytes_as_one_pass(
    demo_raw: tuple[pd.DataFrame, frozenset[str]], tmp_path: Path, shards: int, mapper: Any
) -> None:
    raw, protected = demo_raw
    params = CurateParams()
    # given the demo curated in one pass
    one = curate_frame(raw, params, HashingEmbedder(), protected)
    # when it is curated again in row shards, run in any order
    sharded = curate_frame(raw, params, HashingEmbedder(), protected, shards=shards, mapper=mapper)
    # then every output file has the same bytes, and the funnel the same counts
    assert funnel_metrics(sharded) == funnel_metrics(one), "funnel metrics differ"
    written = write_curated(sharded, tmp_path / "sharded", params.format, funnel_metrics(sharded))
    expected = write_curated(one, tmp_path / "one", params.format, funnel_metrics(one))
    assert written == expected, f"curated files differ: {written} vs {expected}"
