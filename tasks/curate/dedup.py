"""Exact and near-duplicate removal: one training example per question.

A training example is a (question, answer); two rows are duplicates when their
questions are. Questions are compared by their normalised prompt (lower-case,
punctuation dropped, whitespace collapsed):

1. **Exact**: rows whose normalised prompts are equal share a key. Only the
   distinct raw prompts are normalised, and only the distinct keys go on.
2. **Near**: keys whose character-shingle sets (`shingles`: k-grams of the
   key padded with a space each side) have Jaccard >= `threshold`. Candidates
   come from MinHash LSH in numpy: one-permutation hashing with densification
   (one hash per shingle, whatever the number of permutations), then band
   hashes sorted per band. Candidates whose signatures agree far too little
   are dropped; the rest are checked with the exact Jaccard of their shingle
   sets, so LSH decides what is compared, not what is merged. (Only when both
   keys have over 1,000 shingles does the MinHash estimate decide.)
3. Verified pairs are united into clusters (transitively: a chain of near
   duplicates is one cluster). A cluster's id is the smallest 63-bit xxh3_64 of
   its members' keys: the same questions give the same id in every run, which
   lets a later split keep a cluster on one side.
4. Each cluster keeps its best row: an answered row before a failed one, then
   the best rating, then the latest timestamp, then the smallest request id.

Ratings rank thumbs up > unrated > neutral > thumbs down. Unrated sits above
neutral because most users rate nothing, so an unrated answer is usually a
fine one, while an explicit "0" is a user saying it was not good enough.

Defaults (3-character shingles, Jaccard 0.7, 128 permutations) were tuned on
the demo's planted near duplicates (typos, case, punctuation, a word added):
about 97% land with their original, and no two knowledge-base questions
merge. Short questions are hard: one typo in "do you support sso" gives
Jaccard 0.5, while two different facts' questions ("does quillbox integrate
with slack" / "... ms teams") reach 0.67.

Everything is integer arithmetic, sorts of unique values and seeded draws:
the same input and seed give the same bytes, and shuffling the rows changes
neither the cluster ids nor which rows are kept.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xxhash

from tasks.curate.steps import StepResult

_PUNCTUATION = re.compile(r"[\W_]+")
# ASCII bytes to lower-case letters and digits, everything else to a space.
_ASCII_TABLE = bytes(c + 32 if 65 <= c <= 90 else c if chr(c).isalnum() else 32 for c in range(256))
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
# Odd multiplier of the rolling polynomial hash over a shingle's code points.
_POLY = np.uint64(0x100000001B3)
_ID_MASK = (1 << 63) - 1
_MASK64 = (1 << 64) - 1
# A chunk of distinct keys holds at most this many characters (bounds memory).
_CHUNK_CHARS = 1 << 20
# Signature agreement of candidate pairs is counted this many pairs at a time.
_PAIR_BATCH = 1 << 16
_EMPTY = np.uint32(0xFFFFFFFF)
# Pairs of keys longer than this many shingles are judged by their MinHash estimate.
_EXACT_MAX_SHINGLES = 1000
# Keys that share a band hash are compared with at most this many neighbours in
# that band: a huge bucket is not worth n^2 comparisons.
_MAX_BUCKET_NEIGHBOURS = 64
# LSH bands are chosen so that a pair at the threshold becomes a candidate at least this often.
_MIN_CANDIDATE_RECALL = 0.98


@dataclass(frozen=True)
class DedupResult:
    """The deduplicated frame, every row with its cluster, and what was removed.

    `frame` keeps one row per cluster; `clustered` is the input with a
    `cluster` column on every row (what preference pairs are mined from).
    `dropped` names the request ids removed: `exact_duplicate` for rows whose
    normalised prompt another row also has (all but the best row of each
    key), `near_duplicate` for the best row of each key that lost to another
    key of its cluster.
    """

    frame: pd.DataFrame
    clustered: pd.DataFrame
    n_in: int
    exact_removed: int
    near_removed: int
    n_clusters: int
    dropped: dict[str, list[str]]

    @property
    def n_out(self) -> int:
        """Rows kept: one per cluster."""
        return self.n_in - self.exact_removed - self.near_removed

    @property
    def step(self) -> StepResult:
        """The funnel's view: kept rows, dropped ids by reason, and the cluster count."""
        stats = {"clusters": self.n_clusters, "distinct_prompts": self.n_clusters + self.near_removed}
        return StepResult("dedup", self.frame, self.dropped, stats)


@dataclass(frozen=True)
class _Clusters:
    """Rows mapped to distinct normalised keys, and keys to cluster ids."""

    row_key: np.ndarray  # int64 per row: index into keys
    key_cluster: np.ndarray  # int64 per key: the cluster id
    n_keys: int


def normalize(text: str) -> str:
    """The dedup key of a prompt: lower-case, punctuation dropped, whitespace collapsed.

    Unicode letters and digits are kept (so non-English text keeps its words);
    for ASCII text this is `flywheel.demo.knowledge.normalize_question`.
    """
    if text.isascii():  # the common case, about ten times faster than the regex
        return b" ".join(text.encode().translate(_ASCII_TABLE).split()).decode()
    return _PUNCTUATION.sub(" ", text.lower()).strip()


def key_hash(key: str) -> int:
    """The 63-bit xxh3_64 of a normalised key: the cluster id of a key with no near duplicate."""
    return xxhash.xxh3_64_intdigest(key.encode("utf-8", "surrogatepass")) & _ID_MASK


def lsh_bands(threshold: float, permutations: int) -> tuple[int, int]:
    """(bands, rows per band) for MinHash LSH at `threshold`.

    The most rows per band (fewest false candidates) for which a pair exactly
    at the threshold still becomes a candidate with probability >= 0.98.
    """
    best = (permutations, 1)
    for rows in range(1, permutations + 1):
        bands = permutations // rows
        if 1.0 - (1.0 - threshold**rows) ** bands >= _MIN_CANDIDATE_RECALL:
            best = (bands, rows)
    return best


def cluster_ids(
    prompts: Sequence[str] | pd.Series,
    threshold: float = 0.7,
    permutations: int = 128,
    shingle_chars: int = 3,
    seed: int = 7,
) -> np.ndarray:
    """The cluster id (int64) of every prompt; equal ids are exact or near duplicates."""
    clusters = _cluster(prompts, threshold, permutations, shingle_chars, seed)
    return clusters.key_cluster[clusters.row_key]


def dedup_frame(
    frame: pd.DataFrame,
    *,
    threshold: float = 0.7,
    permutations: int = 128,
    shingle_chars: int = 3,
    seed: int = 7,
) -> DedupResult:
    """Keep the best row of every cluster of exact or near-duplicate prompts.

    The kept rows stay in frame order (with a fresh index) and gain an int64
    `cluster` column. Reads `prompt`, `response`, `feedback`, `timestamp`
    and `request_id`.
    """
    n_in = len(frame)
    clusters = _cluster(frame["prompt"], threshold, permutations, shingle_chars, seed)
    row_cluster = clusters.key_cluster[clusters.row_key]
    # A shallow copy plus the new column: assign() would deep-copy every column (~1 s on 1M rows),
    # and the clustered frame is only read from here on.
    clustered = frame.copy(deep=False)
    clustered["cluster"] = row_cluster
    # The ranking is a total order, so a cluster's best row is the best of its keys' best rows:
    # ranking those (thousands) finds it without ranking every row again.
    key_best = best_rows(frame, clusters.row_key)
    keep = key_best[best_rows(frame.iloc[key_best], row_cluster[key_best])]
    request_ids = frame["request_id"].to_numpy(dtype=object)
    exact = np.ones(n_in, dtype=bool)
    exact[key_best] = False
    near = np.zeros(n_in, dtype=bool)
    near[np.setdiff1d(key_best, keep, assume_unique=True)] = True
    dropped = {
        reason: request_ids[mask].tolist()
        for reason, mask in (("exact_duplicate", exact), ("near_duplicate", near))
        if mask.any()
    }
    return DedupResult(
        frame=clustered.iloc[keep].reset_index(drop=True),
        clustered=clustered,
        n_in=n_in,
        exact_removed=n_in - clusters.n_keys,
        near_removed=clusters.n_keys - len(keep),
        n_clusters=len(keep),
        dropped=dropped,
    )


# -- rows to keys to clusters -------------------------------------------------------


def _cluster(
    prompts: Sequence[str] | pd.Series, threshold: float, permutations: int, shingle_chars: int, seed: int
) -> _Clusters:
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if permutations < 1 or shingle_chars < 1:
        raise ValueError(f"permutations and shingle_chars must be >= 1, got {permutations}, {shingle_chars}")
    values = prompts.to_numpy(dtype=object) if isinstance(prompts, pd.Series) else np.asarray(prompts, object)
    if values.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return _Clusters(row_key=empty, key_cluster=empty, n_keys=0)
    # Normalise each distinct raw prompt once, then group raw prompts by key.
    raw_codes, raw_uniques = pd.factorize(values, use_na_sentinel=False)
    normalised = [normalize(p) if isinstance(p, str) else "" for p in raw_uniques]
    key_of_raw, key_values = pd.factorize(np.asarray(normalised, dtype=object))
    hashes = np.fromiter((key_hash(k) for k in key_values), dtype=np.int64, count=len(key_values))
    # Keys in hash order, not first-seen order: every later step then sees the
    # same keys in the same order however the rows were ordered.
    by_hash = np.argsort(hashes, kind="stable")
    rank = np.empty_like(by_hash)
    rank[by_hash] = np.arange(len(by_hash))
    keys: list[str] = key_values[by_hash].tolist()
    hashes = hashes[by_hash]
    row_key = rank[key_of_raw[raw_codes]].astype(np.int64)

    signatures = _signatures(keys, permutations, shingle_chars, seed)
    bands, rows = lsh_bands(threshold, permutations)
    first, second = _candidate_pairs(signatures, bands, rows)
    first, second, estimate = _likely_pairs(signatures, first, second, threshold)
    root = _components(keys, first, second, estimate, threshold, shingle_chars)
    # A cluster's id: the smallest key hash among its members (order-free, stable).
    smallest = np.full(len(keys), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(smallest, root, hashes)
    return _Clusters(row_key=row_key, key_cluster=smallest[root], n_keys=len(keys))


# -- MinHash ------------------------------------------------------------------------


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place on a uint64 array (returned for chaining)."""
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


def _key_chunks(keys: list[str]) -> Iterator[tuple[int, int]]:
    """[start, stop) ranges of keys with at most _CHUNK_CHARS characters (at least one key)."""
    start = 0
    size = 0
    for i, key in enumerate(keys):
        if size and size + len(key) > _CHUNK_CHARS:
            yield start, i
            start, size = i, 0
        size += len(key)
    yield start, len(keys)


def _shingle_hashes(keys: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of the shingles of each key (see `shingles`), and how many each key has.

    Padded keys are laid end to end with k NULs after each (normalised keys
    never contain NUL), so every window of k code points that starts inside a
    padded key is one of its shingles, and a padded key shorter than k is one
    window: itself.
    """
    pad = "\0" * k
    text = f" {pad} ".join(keys)
    text = f" {text} {pad}"
    points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)
    n_windows = points.size - k + 1
    rolling = points[:n_windows].copy()
    for j in range(1, k):
        rolling *= _POLY
        rolling += points[j : j + n_windows]
    lengths = np.fromiter(map(len, keys), dtype=np.int64, count=len(keys)) + 2
    counts = np.maximum(lengths - k + 1, 1)
    key_start = np.concatenate(([0], np.cumsum(lengths + k)[:-1]))
    shingle_start = np.concatenate(([0], np.cumsum(counts)[:-1]))
    windows = np.arange(int(counts.sum()), dtype=np.int64) + np.repeat(key_start - shingle_start, counts)
    return _mix64(rolling[windows]), counts


def _signatures(keys: list[str], permutations: int, k: int, seed: int) -> np.ndarray:
    """MinHash signatures, (n_keys, permutations) uint32, by one-permutation hashing.

    Each shingle's seeded 64-bit hash picks a bin (its high half) and a value
    (its low half); a key's signature is the smallest value in each bin. Bins
    no shingle fell into borrow from another bin by optimal densification
    (Shrivastava, ICML 2017): empty bin j probes bins h(j, 1), h(j, 2), ... with
    one probe sequence shared by all keys, and copies the first non-empty one.
    Two keys then agree on a bin with probability equal to their Jaccard, as
    with `permutations` independent hash functions, at the cost of one.
    """
    salt = np.random.default_rng(seed).integers(0, 1 << 63, size=2, dtype=np.uint64)
    signatures = np.empty((len(keys), permutations), dtype=np.uint32)
    width = np.uint64(permutations)
    for start, stop in _key_chunks(keys):
        hashes, counts = _shingle_hashes(keys[start:stop], k)
        hashes ^= salt[0]
        _mix64(hashes)
        slot = np.repeat(np.arange(stop - start, dtype=np.uint64) * width, counts)
        slot += ((hashes >> np.uint64(32)) * width) >> np.uint64(32)
        # 31-bit values, so the all-ones word can mark an empty bin.
        values = ((hashes & np.uint64(0xFFFFFFFF)) >> np.uint64(1)).astype(np.uint32)
        block = np.full((stop - start) * permutations, _EMPTY, dtype=np.uint32)
        np.minimum.at(block, slot.astype(np.int64), values)
        _densify(block, permutations, salt[1])
        signatures[start:stop] = block.reshape(stop - start, permutations)
    return signatures


def _densify(flat: np.ndarray, permutations: int, salt: np.uint64) -> None:
    """Fill every empty bin of flat (n_keys * permutations) in place from a non-empty bin of its key."""
    source = flat.copy()
    todo = np.flatnonzero(flat == _EMPTY)
    column = todo % permutations
    row_base = todo - column
    columns = np.arange(permutations, dtype=np.uint64) * _M1
    width = np.uint64(permutations)
    attempt = 0
    while row_base.size:
        attempt += 1
        # The bin each column probes at this attempt: the same for every key.
        probe = columns + np.uint64((attempt * int(_M2) + int(salt)) & _MASK64)
        probed = ((_mix64(probe) >> np.uint64(32)) * width >> np.uint64(32)).astype(np.int64)
        found = source[row_base + probed[column]]
        hit = found != _EMPTY
        # Index arrays, not boolean masks: about twice as fast for these sizes.
        took = np.flatnonzero(hit)
        flat[row_base[took] + column[took]] = found[took]
        left = np.flatnonzero(~hit)
        row_base, column = row_base[left], column[left]


# -- LSH and verification -----------------------------------------------------------


def _candidate_pairs(signatures: np.ndarray, bands: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Key pairs (first < second) that agree on every row of at least one band."""
    n = len(signatures)
    shift = np.uint64(max(n - 1, 1).bit_length())
    mask = np.uint64((1 << int(shift)) - 1)
    index = np.arange(n, dtype=np.uint64)
    codes: list[np.ndarray] = []
    for band in range(bands):
        block = signatures[:, band * rows : (band + 1) * rows].astype(np.uint64)
        digest = np.full(n, band, dtype=np.uint64)
        for column in block.T:
            digest ^= column
            _mix64(digest)
        # Digest in the high bits, key index in the low ones: one plain sort groups
        # equal digests in key order (faster than a stable argsort).
        digest >>= shift
        digest <<= shift
        digest |= index
        digest.sort()
        order = (digest & mask).astype(np.int64)
        digest >>= shift
        same = digest[1:] == digest[:-1]
        if not same.any():
            continue
        # Only keys in buckets of two or more matter; number their buckets.
        in_bucket = np.zeros(n, dtype=bool)
        in_bucket[:-1] |= same
        in_bucket[1:] |= same
        bucket = np.cumsum(np.concatenate(([True], ~same)))[in_bucket]
        members = order[in_bucket]
        for distance in range(1, _MAX_BUCKET_NEIGHBOURS + 1):
            paired = bucket[distance:] == bucket[:-distance]
            if not paired.any():
                break
            left, right = members[:-distance][paired], members[distance:][paired]
            codes.append(np.minimum(left, right) * n + np.maximum(left, right))
    if not codes:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    # Sort-based unique: numpy's hash-based np.unique is several times slower here.
    ordered_codes = np.sort(np.concatenate(codes))
    unique = ordered_codes[np.concatenate(([True], ordered_codes[1:] != ordered_codes[:-1]))]
    return unique // n, unique % n


def _likely_pairs(
    signatures: np.ndarray, first: np.ndarray, second: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates whose signatures agree often enough to reach the threshold, most similar first.

    Returns the pairs and the share of bins each agrees on (the MinHash
    estimate of its Jaccard).

    A pair exactly at the threshold agrees on a share of bins with standard
    deviation sqrt(t (1 - t) / permutations); pairs more than 4.5 of those
    below it are dropped unverified (a miss rate under 1e-5).
    """
    permutations = signatures.shape[1]
    floor = threshold - 4.5 * math.sqrt(threshold * (1.0 - threshold) / permutations)
    agree = np.empty(len(first), dtype=np.int64)
    for at in range(0, len(first), _PAIR_BATCH):
        i, j = first[at : at + _PAIR_BATCH], second[at : at + _PAIR_BATCH]
        agree[at : at + _PAIR_BATCH] = np.count_nonzero(signatures[i] == signatures[j], axis=1)
    likely = agree >= floor * permutations
    first, second, agree = first[likely], second[likely], agree[likely]
    order = np.lexsort((second, first, -agree))
    return first[order], second[order], agree[order] / permutations


def shingles(key: str, k: int) -> frozenset[str]:
    """The character k-grams of a normalised key, padded with a space at each end.

    The padding makes the first and last word count as much as the middle ones
    (as pg_trgm does); a padded key shorter than k is one shingle, itself.
    """
    padded = f" {key} "
    return frozenset(padded[i : i + k] for i in range(max(len(padded) - k + 1, 1)))


def _union_roots(n: int, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Each node's smallest connected node under the edges (vectorised union-find)."""
    parent = np.arange(n, dtype=np.int64)
    while first.size:
        a, b = parent[first], parent[second]
        low, high = np.minimum(a, b), np.maximum(a, b)
        differ = low != high
        if not differ.any():
            break
        # Hook each root under the smallest root it touches, then compress paths fully.
        np.minimum.at(parent, high[differ], low[differ])
        while not np.array_equal(grand := parent[parent], parent):
            parent = grand
        first, second = first[differ], second[differ]
    return parent


def _components(
    keys: list[str],
    first: np.ndarray,
    second: np.ndarray,
    estimate: np.ndarray,
    threshold: float,
    k: int,
) -> np.ndarray:
    """Each key's component root under the candidate pairs whose Jaccard is >= threshold.

    The Jaccard is exact unless both keys have more than _EXACT_MAX_SHINGLES
    shingles: there the MinHash estimate decides, because exact checks cost
    time in proportion to length and templated dumps make many such pairs
    that sit near the threshold. Exact checks go most similar first; a pair
    already joined through others is not checked, which changes nothing about
    the components but saves most of the work in big clusters.
    """
    windows = np.fromiter(map(len, keys), dtype=np.int64, count=len(keys)) + 3 - k
    long_key = windows > _EXACT_MAX_SHINGLES
    by_estimate = long_key[first] & long_key[second]
    accepted = by_estimate & (estimate >= threshold)
    roots = _union_roots(len(keys), first[accepted], second[accepted])
    joined = np.flatnonzero(roots != np.arange(len(keys)))
    parent: dict[int, int] = dict(zip(joined.tolist(), roots[joined].tolist(), strict=True))

    def find(node: int) -> int:
        root = node
        while (up := parent.get(root, root)) != root:
            root = up
        while node != root:
            parent[node], node = root, parent[node]
        return root

    sets: dict[int, frozenset[str]] = {}
    exact = ~by_estimate
    for i, j in zip(first[exact].tolist(), second[exact].tolist(), strict=True):
        root_i, root_j = find(i), find(j)
        if root_i == root_j:
            continue
        a = sets.get(i)
        if a is None:
            a = sets[i] = shingles(keys[i], k)
        b = sets.get(j)
        if b is None:
            b = sets[j] = shingles(keys[j], k)
        common = len(a & b)
        if common / (len(a) + len(b) - common) >= threshold:
            parent[max(root_i, root_j)] = min(root_i, root_j)
    for node in list(parent):
        roots[node] = find(node)
    return roots


# -- choosing the row to keep -------------------------------------------------------


def _rating_rank(feedback: np.ndarray) -> np.ndarray:
    """3 thumbs up, 2 unrated, 1 neutral, 0 thumbs down."""
    rank = np.where(feedback > 0, 3, np.where(feedback < 0, 0, 1))
    return np.where(np.isnan(feedback), 2, rank).astype(np.int64)


def best_rows(frame: pd.DataFrame, row_cluster: np.ndarray) -> np.ndarray:
    """Positions of the best row of each group (`row_cluster` holds the groups), in frame order.

    Best: answered, then best rating, then latest, then smallest request id,
    then first in the frame.
    """
    if len(frame) == 0:
        return np.zeros(0, dtype=np.int64)
    answered = frame["response"].notna().to_numpy().astype(np.int64)
    rating = _rating_rank(frame["feedback"].to_numpy(dtype=np.float64, na_value=np.nan))
    # Nanoseconds since the epoch (UTC for aware stamps); a missing time counts as the oldest.
    time = frame["timestamp"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    time = np.maximum(time, np.iinfo(np.int64).min + 1)
    # Best first within each cluster: lexsort's last key is the primary one.
    order = np.lexsort((-time, -rating, -answered, row_cluster))
    ordered = row_cluster[order]
    head = np.concatenate(([True], ordered[1:] != ordered[:-1]))
    best = order[head]
    # Rows that tie with their cluster's best on everything but the request id.
    best_of_row = np.repeat(best, np.diff(np.append(np.flatnonzero(head), len(order))))
    ties = (
        (answered[order] == answered[best_of_row])
        & (rating[order] == rating[best_of_row])
        & (time[order] == time[best_of_row])
        & (order != best_of_row)
    )
    if ties.any():
        request_ids = frame["request_id"].to_numpy(dtype=object)
        chosen = {int(b): int(b) for b in best_of_row[ties]}
        for row, b in zip(order[ties].tolist(), best_of_row[ties].tolist(), strict=True):
            if str(request_ids[row]) < str(request_ids[chosen[b]]):
                chosen[b] = row
        best = np.array([chosen.get(int(b), int(b)) for b in best], dtype=np.int64)
    return np.sort(best)
