"""New topics: clusters of the current window's user messages that sit far from everything the baseline asked.

The current window's distinct messages are clustered with seeded spherical
k-means (each weighted by how often it was asked). Each message's novelty is
its cosine distance to the nearest baseline message (0 when the very text was
asked in the baseline); a cluster whose request-weighted mean novelty exceeds
`topic_max_distance` is a new topic. Averaging over a cluster is what keeps a
stray odd message from counting as a topic. Its most asked messages are shown
as examples, redacted with the curation PII redactor so a report never leaks
what users typed about themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from flywheel.settings import DriftParams

RedactFn = Callable[[list[str]], list[str]]
# k-means fits on at most this many distinct messages (drawn by frequency); all are assigned after.
_MAX_FIT_POINTS = 20_000
# Novelty compares at most this many current messages with at most this many baseline ones
# (drawn by frequency): a 10k x 10k similarity matrix is a few seconds on two cores.
_MAX_NOVELTY_QUERIES = 10_000
_MAX_NOVELTY_REFERENCE = 10_000
_CHUNK = 2048
_ITERATIONS = 50


@dataclass(frozen=True)
class NewTopic:
    """A cluster of current messages far from every baseline cluster, with redacted examples."""

    size: int  # current requests in the cluster
    share: float  # of all current requests
    distance: float  # mean cosine distance of its messages to their nearest baseline message
    examples: tuple[str, ...]
    centroid: np.ndarray = field(
        repr=False, compare=False
    )  # request-weighted mean of its messages, for plots


@dataclass(frozen=True)
class TopicScan:
    """Every current cluster's distance to the baseline, and those that count as new topics."""

    topics: tuple[NewTopic, ...]
    new_share: float  # share of current requests in new-topic clusters
    max_distance: float  # the most novel current cluster's distance (0.0 without clusters)


def _unit(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


def _init_centroids(points: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding, weighted: far and frequent messages are likelier seeds."""
    first = rng.choice(len(points), p=weights / weights.sum())
    chosen = [first]
    distance = np.maximum(1.0 - points @ points[first], 0.0)
    for _ in range(1, k):
        score = distance * weights
        total = score.sum()
        if total <= 0:  # every point sits on a centroid already: fewer real clusters than k
            break
        pick = int(rng.choice(len(points), p=score / total))
        chosen.append(pick)
        distance = np.minimum(distance, np.maximum(1.0 - points @ points[pick], 0.0))
    return points[chosen].copy()


def spherical_kmeans(
    points: np.ndarray, weights: np.ndarray, k: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Unit centroids (at most k) and each point's cluster, by weighted cosine k-means with a fixed seed."""
    if len(points) == 0:
        return np.zeros((0, points.shape[1]), dtype=np.float32), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    weights = weights.astype(np.float64)
    fit = np.arange(len(points))
    if len(points) > _MAX_FIT_POINTS:
        fit = np.sort(rng.choice(len(points), _MAX_FIT_POINTS, replace=False, p=weights / weights.sum()))
    sample, sample_weights = points[fit], weights[fit]
    centroids = _init_centroids(sample, sample_weights, min(k, len(sample)), rng)
    labels = np.full(len(sample), -1)
    for _ in range(_ITERATIONS):
        new_labels = np.argmax(sample @ centroids.T, axis=1)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
        # Weighted sums per cluster as one product with the one-hot assignment (np.add.at is far slower).
        onehot = np.zeros((len(sample), len(centroids)), dtype=np.float32)
        onehot[np.arange(len(sample)), labels] = sample_weights
        sums = (onehot.T @ sample).astype(np.float64)
        # An emptied cluster keeps its old centroid rather than vanishing mid-run.
        empty = np.linalg.norm(sums, axis=1) == 0
        sums[empty] = centroids[empty]
        centroids = _unit(sums).astype(np.float32)
    return centroids, np.argmax(points @ centroids.T, axis=1)


def _distinct(codes: np.ndarray, n_texts: int) -> tuple[np.ndarray, np.ndarray]:
    counts = np.bincount(codes, minlength=n_texts)
    present = np.flatnonzero(counts)
    return present, counts[present]


def _by_frequency(items: np.ndarray, counts: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """`items` if at most `cap`, else a seeded sample of `cap` of them, frequent ones likelier."""
    if len(items) <= cap:
        return items
    return np.sort(rng.choice(items, cap, replace=False, p=counts / counts.sum()))


def novelty(
    vectors: np.ndarray,
    current: np.ndarray,
    current_counts: np.ndarray,
    baseline: np.ndarray,
    baseline_counts: np.ndarray,
    seed: int,
) -> np.ndarray:
    """Each current distinct message's cosine distance to its nearest baseline message (NaN: not measured).

    `current`/`baseline` index `vectors`; a text asked in both windows is 0
    without a look. Above the caps, a seeded frequency-weighted sample is
    measured and the rest stay NaN.
    """
    out = np.full(len(current), np.nan)
    seen = np.isin(current, baseline)
    out[seen] = 0.0
    rng = np.random.default_rng(seed)
    unseen = np.flatnonzero(~seen)
    if len(unseen) == 0:
        return out
    queries = _by_frequency(unseen, current_counts[unseen], _MAX_NOVELTY_QUERIES, rng)
    picked = _by_frequency(np.arange(len(baseline)), baseline_counts, _MAX_NOVELTY_REFERENCE, rng)
    reference = vectors[baseline[picked]]
    for start in range(0, len(queries), _CHUNK):
        rows = queries[start : start + _CHUNK]
        out[rows] = 1.0 - np.max(vectors[current[rows]] @ reference.T, axis=1)
    return out


def scan_topics(
    vectors: np.ndarray,
    texts: Sequence[str],
    current_codes: np.ndarray,
    baseline_codes: np.ndarray,
    params: DriftParams,
    redact: RedactFn | None = None,
) -> TopicScan:
    """Cluster the current window's distinct messages and report the clusters far from the baseline.

    Args:
        vectors: one unit embedding per text in `texts`.
        texts: the distinct messages; `*_codes` index them, one code per request.
        redact: masks PII in example messages (default: the curation redactor with
            `params.pii_entities`).
    """
    if len(current_codes) == 0 or len(baseline_codes) == 0:
        return TopicScan((), 0.0, 0.0)
    current, current_counts = _distinct(current_codes, len(texts))
    baseline, baseline_counts = _distinct(baseline_codes, len(texts))
    distance = novelty(vectors, current, current_counts, baseline, baseline_counts, params.seed)
    centroids, labels = spherical_kmeans(vectors[current], current_counts, params.topic_clusters, params.seed)
    measured = ~np.isnan(distance)
    weights = np.where(measured, current_counts, 0).astype(np.float64)
    weighted = np.bincount(
        labels, weights=np.where(measured, distance, 0.0) * weights, minlength=len(centroids)
    )
    mass = np.bincount(labels, weights=weights, minlength=len(centroids))
    distances = np.divide(weighted, mass, out=np.zeros_like(weighted), where=mass > 0)
    total = float(current_counts.sum())
    sizes = np.bincount(labels, weights=current_counts, minlength=len(centroids))
    new = [
        cluster
        for cluster in np.argsort(-sizes, kind="stable")
        if sizes[cluster] > 0 and distances[cluster] > params.topic_max_distance
    ]
    examples = [
        _examples(cluster, labels, current, current_counts, distance, texts, params) for cluster in new
    ]
    flat = [text for group in examples for text in group]
    shown = iter((redact or _redactor(params))(flat) if flat else [])
    topics = tuple(
        NewTopic(
            size=int(sizes[cluster]),
            share=float(sizes[cluster] / total),
            distance=float(distances[cluster]),
            examples=tuple(next(shown) for _ in group),
            centroid=np.average(
                vectors[current[labels == cluster]], axis=0, weights=current_counts[labels == cluster]
            ),
        )
        for cluster, group in zip(new, examples, strict=True)
    )
    used = sizes > 0
    return TopicScan(
        topics=topics,
        new_share=float(sum(topic.size for topic in topics) / total),
        max_distance=float(distances[used].max()) if used.any() else 0.0,
    )


def _examples(
    cluster: int,
    labels: np.ndarray,
    present: np.ndarray,
    counts: np.ndarray,
    distance: np.ndarray,
    texts: Sequence[str],
    params: DriftParams,
) -> list[str]:
    """At most `topic_examples` of the cluster's messages: the furthest from the baseline, then most asked.

    A cluster can hold a few familiar messages beside the new ones; the new ones say what changed.
    """
    members = np.flatnonzero(labels == cluster)
    novel = np.nan_to_num(distance[members], nan=-1.0)
    ranked = members[np.lexsort((-counts[members], -novel))][: params.topic_examples]
    return [texts[present[i]] for i in ranked]


def _redactor(params: DriftParams) -> RedactFn:
    entities = params.pii_entities

    def redact(texts: list[str]) -> list[str]:
        # Imported here: Presidio takes seconds to import, and only runs with new topics to show.
        from tasks.curate.pii import redact_texts

        return [text or "" for text in redact_texts(texts, entities).texts]

    return redact
