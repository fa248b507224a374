"""Drift signals: the current window against the baseline window, overall, per application and per version.

Each signal compares one statistic of the two windows with a threshold from
`DriftParams` and is "ok", "alert" or "insufficient_data" (fewer than
`min_requests` requests in either window, or too few rated ones for feedback:
a state, never an exception). The signals, and how each alerts:

| name | value | alerts when |
|---|---|---|
| embedding_centroid | cosine distance of the request-weighted centroids | > centroid_max_distance |
| embedding_mmd | unbiased MMD² (RBF kernel) on seeded samples | p < mmd_alpha and > mmd_min |
| prompt_tokens | mean prompt tokens per query | > baseline x (1 + increase) |
| completion_tokens | mean completion tokens per query | > baseline x (1 + increase) |
| ttft_p95 | p95 time to first token of ok requests | > baseline x (1 + increase) |
| latency_p95 | p95 end-to-end latency of ok requests | > baseline x (1 + increase) |
| error_rate | share of requests with status "error" | > error_rate_max |
| cost_per_query | mean cost_usd per query | > baseline x (1 + increase) |
| feedback_positive_rate | share of rated requests scored +1 | one-sided z-test p < alpha and drop >= min |
| new_topics (overall only) | share of current requests in far clusters | > topic_min_share |

The statistical tests carry an effect-size floor as well as a p-value: over
windows of a million requests a shift too small to matter is still
"significant", and an alert nobody can act on teaches people to ignore alerts.

Groups: "all" (the whole frame), each application, and each served
application/version. A version is compared with its own baseline when the
baseline holds at least `min_requests` of it, else with its application's
whole baseline (a version rolled out inside the current window is judged
against what served before it).

Messages are embedded once per distinct text across both windows (`embed`
takes the list of distinct texts), so repeated prompts cost nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
import pandas as pd

from flywheel.settings import DriftParams
from tasks.drift.frame import monitor_frame
from tasks.drift.topics import NewTopic, RedactFn, TopicScan, scan_topics

EmbedFn = Callable[[list[str]], np.ndarray]
Status = Literal["ok", "alert", "insufficient_data"]
Scope = Literal["all", "application", "model_version"]

EMBEDDING_CENTROID = "embedding_centroid"
EMBEDDING_MMD = "embedding_mmd"
PROMPT_TOKENS = "prompt_tokens"
COMPLETION_TOKENS = "completion_tokens"
TTFT_P95 = "ttft_p95"
LATENCY_P95 = "latency_p95"
ERROR_RATE = "error_rate"
COST_PER_QUERY = "cost_per_query"
FEEDBACK = "feedback_positive_rate"
NEW_TOPICS = "new_topics"
SIGNALS: tuple[str, ...] = (
    EMBEDDING_CENTROID,
    EMBEDDING_MMD,
    PROMPT_TOKENS,
    COMPLETION_TOKENS,
    TTFT_P95,
    LATENCY_P95,
    ERROR_RATE,
    COST_PER_QUERY,
    FEEDBACK,
    NEW_TOPICS,
)
# Signals about what users ask (not how the model served them): the ones that may trigger a flywheel run.
INPUT_SIGNALS: frozenset[str] = frozenset({EMBEDDING_CENTROID, EMBEDDING_MMD, NEW_TOPICS})
_PERMUTATION_BATCH = 100
_BANDWIDTH_PAIRS = 50_000


@dataclass(frozen=True)
class Signal:
    """One drift statistic: its current and baseline value, the threshold, and the verdict."""

    name: str
    value: float | None
    baseline: float | None
    threshold: float
    status: Status
    detail: str


@dataclass(frozen=True)
class GroupDrift:
    """The signals of one group (all requests, an application, or an application/version)."""

    scope: Scope
    key: str  # "all", the application, or "application/version"
    n_current: int
    n_baseline: int
    baseline_scope: str  # what the current rows were compared with
    signals: tuple[Signal, ...]

    @property
    def status(self) -> Status:
        """'alert' if any signal alerts, else 'insufficient_data' if every signal lacks data, else 'ok'."""
        statuses = {signal.status for signal in self.signals}
        if "alert" in statuses:
            return "alert"
        return "insufficient_data" if statuses == {"insufficient_data"} else "ok"

    def signal(self, name: str) -> Signal:
        """The signal called `name`; KeyError if this group has none."""
        for signal in self.signals:
            if signal.name == name:
                return signal
        raise KeyError(f"group {self.key} has no signal {name!r}")


@dataclass(frozen=True)
class Projection:
    """2-D PCA of sampled message embeddings (and new-topic centroids), for the report's scatter plot."""

    current: np.ndarray  # (n, 2)
    baseline: np.ndarray  # (m, 2)
    topics: np.ndarray  # (len(topics), 2)


@dataclass(frozen=True)
class DriftResult:
    """Every group's signals, the new topics and a projection for plots; `groups[0]` is "all"."""

    groups: tuple[GroupDrift, ...]
    topics: tuple[NewTopic, ...]
    projection: Projection | None

    @property
    def overall(self) -> GroupDrift:
        """The group of all requests."""
        return self.groups[0]

    @property
    def status(self) -> Status:
        """'alert' if any group alerts, 'insufficient_data' if the whole windows are too small, else 'ok'."""
        if any(group.status == "alert" for group in self.groups):
            return "alert"
        return "insufficient_data" if self.overall.status == "insufficient_data" else "ok"

    def alerts(self) -> list[tuple[GroupDrift, Signal]]:
        """(group, signal) of every alerting signal, in group order."""
        return [(g, signal) for g in self.groups for signal in g.signals if signal.status == "alert"]

    @property
    def alerting(self) -> frozenset[str]:
        """Names of the signals that alert in any group."""
        return frozenset(signal.name for _, signal in self.alerts())

    @property
    def input_drift(self) -> bool:
        """Whether what users ask has drifted (an embedding or new-topic signal alerts)."""
        return bool(self.alerting & INPUT_SIGNALS)


@dataclass(frozen=True)
class _Window:
    """One window's columns as arrays; `codes` index the shared distinct-message embeddings."""

    prompt_tokens: np.ndarray
    completion_tokens: np.ndarray
    ttft_ms: np.ndarray
    latency_ms: np.ndarray
    cost_usd: np.ndarray
    error: np.ndarray
    feedback: np.ndarray
    codes: np.ndarray

    @classmethod
    def of(cls, frame: pd.DataFrame, codes: np.ndarray) -> _Window:
        return cls(
            prompt_tokens=frame["prompt_tokens"].to_numpy(np.float64),
            completion_tokens=frame["completion_tokens"].to_numpy(np.float64),
            ttft_ms=frame["ttft_ms"].to_numpy(np.float64),
            latency_ms=frame["latency_ms"].to_numpy(np.float64),
            cost_usd=frame["cost_usd"].to_numpy(np.float64),
            error=(frame["status"] == "error").to_numpy(bool),
            feedback=frame["feedback"].to_numpy(np.float64),
            codes=codes,
        )

    def take(self, rows: np.ndarray) -> _Window:
        return _Window(*(getattr(self, name)[rows] for name in self.__dataclass_fields__))

    def ok(self, values: np.ndarray) -> np.ndarray:
        """`values` of the requests that did not fail."""
        return values[~self.error]

    def __len__(self) -> int:
        return len(self.codes)


def compute_drift(
    current: pd.DataFrame,
    baseline: pd.DataFrame,
    embed: EmbedFn,
    params: DriftParams,
    *,
    redact: RedactFn | None = None,
) -> DriftResult:
    """All drift signals of `current` against `baseline`, overall, per application and per version.

    Args:
        current, baseline: monitoring frames (`tasks.drift.frame`), e.g. from `load_window`.
        embed: distinct texts -> L2-normalised float32 rows (e.g. `minilm_embed(cache)`);
            called once, with the distinct messages of both windows.
        redact: masks PII in new-topic examples (default: the curation redactor).
    """
    current, baseline = monitor_frame(current), monitor_frame(baseline)
    if min(len(current), len(baseline)) < params.min_requests:
        group = _insufficient("all", "all", len(current), len(baseline), "all", params)
        return DriftResult((group,), (), None)
    texts, vectors, current_codes, baseline_codes = _embed_windows(current, baseline, embed)
    cur, base = _Window.of(current, current_codes), _Window.of(baseline, baseline_codes)
    scan = scan_topics(vectors, texts, current_codes, baseline_codes, params, redact)
    overall, sample = _group("all", "all", cur, base, "all requests", vectors, params, scan)
    groups = [overall]
    none = np.zeros(0, dtype=np.int64)
    base_apps = _indices(baseline, ["application"])
    base_versions = _indices(baseline, ["application", "model_version"])
    for app_key, rows in _indices(current, ["application"]).items():
        app = str(app_key)
        base_rows = base_apps.get(app_key, none)
        groups.append(
            _group("application", app, cur.take(rows), base.take(base_rows), app, vectors, params)[0]
        )
    for pair, rows in _indices(current, ["application", "model_version"]).items():
        app_key, version = cast("tuple[object, object]", pair)  # groupby on two keys: (app, version)
        key = f"{app_key}/{version or '(unversioned)'}"
        same = base_versions.get(pair, none)
        if len(same) >= params.min_requests:
            base_rows, scope = same, "same version"
        else:
            base_rows, scope = base_apps.get(app_key, none), f"all of {app_key}"
        drift, _ = _group("model_version", key, cur.take(rows), base.take(base_rows), scope, vectors, params)
        groups.append(drift)
    return DriftResult(tuple(groups), scan.topics, _project(sample, scan.topics))


def _indices(frame: pd.DataFrame, keys: list[str]) -> dict[object, np.ndarray]:
    if frame.empty:
        return {}
    by = keys[0] if len(keys) == 1 else keys
    return dict(frame.groupby(by, observed=True, sort=True).indices)


def _embed_windows(
    current: pd.DataFrame, baseline: pd.DataFrame, embed: EmbedFn
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Distinct messages of both windows, their unit vectors, and each request's code into them."""
    cur_cat, base_cat = current["message"].cat, baseline["message"].cat
    # Only categories some request uses: a filtered frame may keep categories of rows it dropped.
    used_cur = cur_cat.categories[np.bincount(cur_cat.codes, minlength=len(cur_cat.categories)) > 0]
    used_base = base_cat.categories[np.bincount(base_cat.codes, minlength=len(base_cat.categories)) > 0]
    distinct = pd.Index(used_cur).append(pd.Index(used_base)).unique()
    texts = [str(text) for text in distinct]
    vectors = np.asarray(embed(texts), dtype=np.float32)
    if vectors.shape[0] != len(texts):
        raise ValueError(f"embed returned {vectors.shape[0]} vectors for {len(texts)} texts")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)  # cosine = dot product below
    cur_codes = distinct.get_indexer(cur_cat.categories)[cur_cat.codes.to_numpy()]
    base_codes = distinct.get_indexer(base_cat.categories)[base_cat.codes.to_numpy()]
    return texts, vectors, cur_codes.astype(np.int64), base_codes.astype(np.int64)


def _insufficient(
    scope: Scope, key: str, n_current: int, n_baseline: int, baseline_scope: str, params: DriftParams
) -> GroupDrift:
    detail = (
        f"not enough data: {n_current} current and {n_baseline} baseline requests "
        f"(need {params.min_requests} in each)"
    )
    names = SIGNALS if scope == "all" else SIGNALS[:-1]
    signals = tuple(Signal(name, None, None, math.nan, "insufficient_data", detail) for name in names)
    return GroupDrift(scope, key, n_current, n_baseline, baseline_scope, signals)


def _group(
    scope: Scope,
    key: str,
    cur: _Window,
    base: _Window,
    baseline_scope: str,
    vectors: np.ndarray,
    params: DriftParams,
    scan: TopicScan | None = None,
) -> tuple[GroupDrift, tuple[np.ndarray, np.ndarray] | None]:
    """One group's signals, and the embedding samples its MMD test drew (for the projection)."""
    if min(len(cur), len(base)) < params.min_requests:
        return _insufficient(scope, key, len(cur), len(base), baseline_scope, params), None
    mmd, sample = _mmd_signal(cur, base, vectors, params)
    signals = [
        _centroid_signal(cur, base, vectors, params),
        mmd,
        _increase(PROMPT_TOKENS, cur.prompt_tokens, base.prompt_tokens, params.prompt_tokens_max_increase),
        _increase(
            COMPLETION_TOKENS,
            cur.completion_tokens,
            base.completion_tokens,
            params.completion_tokens_max_increase,
        ),
        _p95_signal(
            TTFT_P95, cur.ok(cur.ttft_ms), base.ok(base.ttft_ms), params.ttft_p95_max_increase, params
        ),
        _p95_signal(
            LATENCY_P95,
            cur.ok(cur.latency_ms),
            base.ok(base.latency_ms),
            params.latency_p95_max_increase,
            params,
        ),
        _error_signal(cur, base, params),
        _increase(COST_PER_QUERY, cur.cost_usd, base.cost_usd, params.cost_per_query_max_increase),
        _feedback_signal(cur, base, params),
    ]
    if scan is not None:
        signals.append(_topics_signal(scan, params))
    return GroupDrift(scope, key, len(cur), len(base), baseline_scope, tuple(signals)), sample


def _centroid(vectors: np.ndarray, codes: np.ndarray) -> np.ndarray:
    # Request-weighted: a message asked a thousand times pulls a thousand times.
    counts = np.bincount(codes, minlength=len(vectors)).astype(np.float64)
    return (counts @ vectors) / max(counts.sum(), 1.0)


def _centroid_signal(cur: _Window, base: _Window, vectors: np.ndarray, params: DriftParams) -> Signal:
    a, b = _centroid(vectors, cur.codes), _centroid(vectors, base.codes)
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    distance = 1.0 - float(a @ b) / norms if norms > 0 else 0.0
    status: Status = "alert" if distance > params.centroid_max_distance else "ok"
    detail = f"cosine distance of the message centroids (alert above {params.centroid_max_distance})"
    return Signal(EMBEDDING_CENTROID, distance, None, params.centroid_max_distance, status, detail)


def mmd_permutation_test(x: np.ndarray, y: np.ndarray, permutations: int, seed: int) -> tuple[float, float]:
    """Unbiased MMD² of two samples of unit vectors (RBF kernel) and its permutation p-value.

    The kernel's bandwidth is the median squared distance of distinct pairs.

    p = (1 + #{permuted MMD² >= observed}) / (1 + permutations). The kernel
    matrix is computed once; each batch of permutations is one matrix product.
    """
    n, m = len(x), len(y)
    z = np.vstack([x, y]).astype(np.float32)
    kernel = z @ z.T  # cosine similarities; squared distance of unit vectors = 2 - 2 cos
    rng = np.random.default_rng(seed)
    # The median over a seeded sample of pairs: as good a bandwidth as all pairs, at a fraction of the cost.
    first, second = rng.integers(0, n + m, (2, _BANDWIDTH_PAIRS))
    distinct = first != second
    pairs = np.maximum(2.0 - 2.0 * kernel[first[distinct], second[distinct]], 0.0)
    positive = pairs[pairs > 1e-9]  # repeated messages give zero distances; they say nothing of scale
    if positive.size == 0:
        return 0.0, 1.0
    # exp(-(2 - 2 cos) / bandwidth), in place: the n x n matrix is the one big allocation.
    kernel -= 1.0
    kernel *= np.float32(2.0 / np.median(positive))
    np.exp(kernel, out=kernel)
    np.fill_diagonal(kernel, 0.0)  # unbiased: no pair of a point with itself
    total = float(kernel.sum(dtype=np.float64))

    def statistic(labels: np.ndarray) -> np.ndarray:
        product = kernel @ labels
        xx = (labels * product).sum(axis=0, dtype=np.float64)
        xy = ((1.0 - labels) * product).sum(axis=0, dtype=np.float64)
        yy = total - xx - 2.0 * xy
        return xx / (n * (n - 1)) + yy / (m * (m - 1)) - 2.0 * xy / (n * m)

    observed_labels = np.zeros((n + m, 1), dtype=np.float32)
    observed_labels[:n] = 1.0
    observed = float(statistic(observed_labels)[0])
    exceed = 0
    for start in range(0, permutations, _PERMUTATION_BATCH):
        batch = min(_PERMUTATION_BATCH, permutations - start)
        labels = np.zeros((n + m, batch), dtype=np.float32)
        for column in range(batch):
            labels[rng.permutation(n + m)[:n], column] = 1.0
        exceed += int((statistic(labels) >= observed - 1e-12).sum())
    return observed, (1 + exceed) / (1 + permutations)


def _mmd_signal(
    cur: _Window, base: _Window, vectors: np.ndarray, params: DriftParams
) -> tuple[Signal, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(params.seed)
    x = vectors[rng.choice(cur.codes, min(params.mmd_sample, len(cur)), replace=False)]
    y = vectors[rng.choice(base.codes, min(params.mmd_sample, len(base)), replace=False)]
    mmd2, p_value = mmd_permutation_test(x, y, params.mmd_permutations, params.seed)
    alert = p_value < params.mmd_alpha and mmd2 > params.mmd_min
    detail = (
        f"permutation p={p_value:.4f} (alert at p < {params.mmd_alpha} and MMD² > {params.mmd_min}); "
        f"{len(x)} vs {len(y)} sampled requests, {params.mmd_permutations} permutations"
    )
    return Signal(EMBEDDING_MMD, mmd2, None, params.mmd_min, "alert" if alert else "ok", detail), (x, y)


def _increase(name: str, current: np.ndarray, baseline: np.ndarray, max_increase: float) -> Signal:
    """Mean of `current` against mean of `baseline`: alert above baseline x (1 + max_increase)."""
    return _relative(name, float(current.mean()), float(baseline.mean()), max_increase, "mean")


def _relative(name: str, value: float, baseline: float, max_increase: float, what: str) -> Signal:
    threshold = baseline * (1.0 + max_increase)
    if baseline > 0:
        change = value / baseline - 1.0
        shown = f"{change:+.1%}"
    else:  # a zero baseline: any positive value is an unbounded increase
        change = math.inf if value > 0 else 0.0
        shown = "from zero" if value > 0 else "+0.0%"
    status: Status = "alert" if change > max_increase else "ok"
    detail = f"{what} {shown} vs baseline (alert above +{max_increase:.0%})"
    return Signal(name, value, baseline, threshold, status, detail)


def _p95_signal(
    name: str, current: np.ndarray, baseline: np.ndarray, max_increase: float, params: DriftParams
) -> Signal:
    # Failed requests are left out (a timeout is an error, counted there); so are unmeasured (NaN) TTFTs.
    current, baseline = current[~np.isnan(current)], baseline[~np.isnan(baseline)]
    if min(len(current), len(baseline)) < params.min_requests:
        detail = (
            f"not enough measured requests: {len(current)} current, {len(baseline)} baseline "
            f"(need {params.min_requests})"
        )
        return Signal(name, None, None, math.nan, "insufficient_data", detail)
    value, base = float(np.percentile(current, 95)), float(np.percentile(baseline, 95))
    return _relative(name, value, base, max_increase, "p95")


def _error_signal(cur: _Window, base: _Window, params: DriftParams) -> Signal:
    value, baseline = float(cur.error.mean()), float(base.error.mean())
    status: Status = "alert" if value > params.error_rate_max else "ok"
    detail = f"{int(cur.error.sum())} of {len(cur)} requests failed (alert above {params.error_rate_max:.1%})"
    return Signal(ERROR_RATE, value, baseline, params.error_rate_max, status, detail)


def two_proportion_z(successes_a: int, n_a: int, successes_b: int, n_b: int) -> tuple[float, float]:
    """z of rate a minus rate b (pooled standard error) and the one-sided p-value that a is lower."""
    pooled = (successes_a + successes_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n_a + 1.0 / n_b))
    if se == 0:  # both rates 0 or both 1: no difference to test
        return 0.0, 0.5
    z = (successes_a / n_a - successes_b / n_b) / se
    return z, 0.5 * math.erfc(-z / math.sqrt(2.0))


def _feedback_signal(cur: _Window, base: _Window, params: DriftParams) -> Signal:
    cur_rated, base_rated = cur.feedback[~np.isnan(cur.feedback)], base.feedback[~np.isnan(base.feedback)]
    if min(len(cur_rated), len(base_rated)) < params.min_feedback:
        detail = (
            f"not enough feedback: {len(cur_rated)} current, {len(base_rated)} baseline rated requests "
            f"(need {params.min_feedback})"
        )
        return Signal(FEEDBACK, None, None, math.nan, "insufficient_data", detail)
    cur_pos, base_pos = int((cur_rated == 1).sum()), int((base_rated == 1).sum())
    value, baseline = cur_pos / len(cur_rated), base_pos / len(base_rated)
    z, p_value = two_proportion_z(cur_pos, len(cur_rated), base_pos, len(base_rated))
    threshold = baseline - params.feedback_min_drop
    alert = p_value < params.feedback_alpha and value <= threshold
    detail = (
        f"{(value - baseline) * 100:+.1f} points over {len(cur_rated)} vs {len(base_rated)} rated; "
        f"one-sided z={z:.2f}, "
        f"p={p_value:.2g} (alert at p < {params.feedback_alpha} and a drop of "
        f"{params.feedback_min_drop * 100:.0f} points)"
    )
    return Signal(FEEDBACK, value, baseline, threshold, "alert" if alert else "ok", detail)


def _topics_signal(scan: TopicScan, params: DriftParams) -> Signal:
    status: Status = "alert" if scan.new_share > params.topic_min_share else "ok"
    detail = (
        f"{len(scan.topics)} current clusters whose messages average more than {params.topic_max_distance} "
        f"(cosine) from the nearest baseline message; most novel {scan.max_distance:.3f} "
        f"(alert above {params.topic_min_share:.0%} of requests)"
    )
    return Signal(NEW_TOPICS, scan.new_share, None, params.topic_min_share, status, detail)


def _project(sample: tuple[np.ndarray, np.ndarray] | None, topics: tuple[NewTopic, ...]) -> Projection | None:
    """PCA of the overall MMD samples to 2-D; new-topic centroids on the same axes."""
    if sample is None:
        return None
    x, y = sample
    z = np.vstack([x, y]).astype(np.float64)
    mean = z.mean(axis=0)
    centred = z - mean
    # The top two principal axes by seeded subspace iteration: a few thin products instead of a full
    # eigendecomposition of the d x d covariance.
    basis = np.random.default_rng(0).normal(size=(z.shape[1], 4))
    for _ in range(10):
        basis, _ = np.linalg.qr(centred.T @ (centred @ basis))
    _, _, rotation = np.linalg.svd(centred @ basis, full_matrices=False)
    basis = basis @ rotation[:2].T
    centroids = np.array([topic.centroid for topic in topics]).reshape(-1, z.shape[1])
    return Projection((x - mean) @ basis, (y - mean) @ basis, (centroids - mean) @ basis)
