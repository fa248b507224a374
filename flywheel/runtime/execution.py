"""Where fan-out work runs: the Prefect task runner `params.yaml`'s `execution` names.

`shard_map(execution)` opens that runner (Prefect's thread pool, or Dask: a
LocalCluster of worker processes, or the cluster at `FLYWHEEL_DASK_ADDRESS`)
for the duration of a `with` block and yields a `ShardMap` (see
`tasks.curate.shards`) that submits each piece of work as a `shard` task run
and collects the results in submission order, never in completion order. A
flow opens it itself, so a deployment run, a subflow call and a direct call
all fan out the same way; the cluster closes when the block ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flywheel.settings import ExecutionParams

if TYPE_CHECKING:
    from prefect.task_runners import TaskRunner

T = TypeVar("T")


def shard_count(params: ExecutionParams) -> int:
    """Row shards per fan-out: `shards`, else 1 on threads and one per Dask worker thread."""
    if params.shards is not None:
        return params.shards
    if params.task_runner == "dask":
        return params.dask_workers * params.dask_threads_per_worker
    return 1


def task_runner(params: ExecutionParams, address: str | None = None) -> TaskRunner[Any]:
    """A fresh (not yet started) task runner for `params`; `address`: an existing Dask scheduler."""
    if params.task_runner == "thread":
        return ThreadPoolTaskRunner(max_workers=shard_count(params))
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": params.dask_workers,
            "threads_per_worker": params.dask_threads_per_worker,
            "processes": True,  # pandas/regex work holds the GIL: threads would not add cores
            "dashboard_address": ":0",  # the scheduler's web server on a free port, not 8787
        }
    )


@task(name="shard", task_run_name="{step}-{index}", cache_policy=NO_CACHE)
def run_shard(step: str, index: int, work: Callable[[], T]) -> T:
    """Prefect task: one piece of fan-out work (a picklable zero-argument callable)."""
    return work()


@dataclass(frozen=True)
class RunnerMap:
    """A `ShardMap` over a started task runner."""

    runner: TaskRunner[Any]

    def __call__(self, step: str, work: Sequence[Callable[[], T]]) -> list[T]:
        futures = [
            self.runner.submit(run_shard, {"step": step, "index": index, "work": piece})
            for index, piece in enumerate(work)
        ]
        return [future.result() for future in futures]  # in shard order, whatever finished first


@contextmanager
def shard_map(params: ExecutionParams, address: str | None = None) -> Iterator[RunnerMap]:
    """The runner `params` names, started for the block, as a `ShardMap`; stopped (cluster closed) after."""
    with task_runner(params, address) as runner:
        yield RunnerMap(runner)
