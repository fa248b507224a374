"""The leakage-safe split: whole clusters to train, validation or eval, by a seeded hash.

Two kinds of leakage are ruled out by construction:

1. **Near-duplicates across splits.** The unit of the split is the dedup
   cluster, never the row: every row of a cluster gets the cluster's split, so
   a paraphrase of an eval question cannot sit in train.
2. **The regression suite in training data.** A fixed, versioned eval suite
   (the demo's `eval.jsonl`) must keep measuring what the model never saw. A
   cluster with any row whose normalised prompt is a protected question is
   held out of every split (`held_out_leak`): not trained on, and not added to
   the harvested eval split either, so the suite stays the only judge of it.
   The match is on `normalize_question` (case, punctuation and spacing aside);
   a paraphrase of a protected question is caught only when dedup put it into
   the same cluster as a row that matches exactly.

**Stable as data grows.** A cluster's split is a function of (seed, its
canonical key) alone: the key is the normalised prompt of the cluster's oldest
row (by timestamp, then request id). Cluster ids, row positions and which row
dedup keeps all change when new data arrives; the oldest row of a cluster does
not, since new data is newer. So an old cluster keeps its split when new rows
join it or new clusters appear, and a model's eval set never moves into the
next model's training set. Two exceptions, both by design: a new row that
bridges two old clusters merges them (the merged cluster takes the older
one's split), and changing the seed or the shares reshuffles. A new
protected question only holds out its own clusters; the others stay put. Shares move
monotonically: the hash is mapped to [0, 1) and cut at `train` and
`train + validation`, so raising `train` only moves clusters from validation
into train.

Compute the assignment on the frame before dedup (`cluster_splits`), so every
row of a cluster counts for its key and the leak check, then apply it to the
deduplicated rows (`split_frame(..., splits=...)`) and to the preference pairs
(`split_pairs`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from flywheel.demo.knowledge import normalize_question
from tasks.curate.steps import StepResult

SPLITS: tuple[str, ...] = ("train", "validation", "eval")
HELD_OUT_LEAK = "held_out_leak"
_HASH_SCALE = float(1 << 64)


def canonical_key(text: str) -> str:
    """The identity of a question: `normalize_question`, or the case-folded text where that is empty.

    `normalize_question` keeps only [0-9a-z], so a question in another script
    would normalise to "" and every such cluster would share one key (one split).
    """
    return normalize_question(text) or " ".join(text.casefold().split())


def load_protected_keys(paths: Iterable[Path], field: str = "question") -> frozenset[str]:
    """The canonical keys of the questions in eval suites (JSON lines with a `field` each)."""
    keys: set[str] = set()
    for path in paths:
        with path.open("rb") as handle:
            keys.update(canonical_key(orjson.loads(line)[field]) for line in handle if line.strip())
    return frozenset(keys)


def hash_share(key: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, key): where the cluster falls among the shares."""
    digest = hashlib.sha256(f"{seed}\n{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _HASH_SCALE


def _check_shares(train: float, validation: float) -> None:
    if not (0.0 < train < 1.0 and 0.0 <= validation < 1.0 and train + validation < 1.0):
        raise ValueError(
            f"need 0 < train < 1, 0 <= validation and train + validation < 1; got {train}, {validation}"
        )


def cluster_splits(
    frame: pd.DataFrame,
    train: float,
    validation: float,
    seed: int,
    protected_keys: Iterable[str] = frozenset(),
) -> pd.Series:
    """Each cluster's split (`SPLITS` or `HELD_OUT_LEAK`), indexed by cluster id.

    Args:
        frame: rows with `cluster`, `prompt`, `timestamp`, `request_id`; best the
            frame before dedup, so every member counts for the key and the leak check.
        train, validation: shares of clusters; the rest is eval.
        seed: reshuffles the assignment when changed.
        protected_keys: questions of fixed eval/regression suites (raw or normalised).
    """
    _check_shares(train, validation)
    if frame.empty:
        return pd.Series([], index=pd.Index([], dtype="int64", name="cluster"), dtype=object, name="split")
    protected = {key for key in map(canonical_key, protected_keys) if key}
    # Keys per distinct prompt, and the oldest row per cluster from integer sorts:
    # sorting a million rows by a string column costs seconds, this a fraction.
    codes, uniques = pd.factorize(frame["prompt"].astype(str))
    unique_keys = np.array([canonical_key(text) for text in uniques], dtype=object)
    cluster = frame["cluster"].to_numpy()
    stamps = frame["timestamp"].to_numpy("datetime64[ns]").view("int64")
    order = np.lexsort((stamps, cluster))
    starts = np.r_[True, cluster[order][1:] != cluster[order][:-1]]
    first = order[starts]
    min_stamp = pd.Series(stamps[first], index=cluster[first])
    # rows at their cluster's earliest time; ties there are broken by the smallest request id
    tied = np.flatnonzero(stamps == min_stamp.reindex(cluster).to_numpy())
    candidates = pd.DataFrame(
        {"cluster": cluster[tied], "request_id": frame["request_id"].to_numpy()[tied], "row": tied}
    ).sort_values(["cluster", "request_id"], kind="stable")
    oldest_rows = candidates.drop_duplicates("cluster")
    oldest = pd.Series(
        unique_keys[codes[oldest_rows["row"].to_numpy()]],
        index=oldest_rows["cluster"].to_numpy(),
        name="_key",
    )
    oldest.index.name = "cluster"
    share = np.fromiter((hash_share(key, seed) for key in oldest), dtype=float, count=len(oldest))
    split = np.where(share < train, "train", np.where(share < train + validation, "validation", "eval"))
    splits = pd.Series(split.astype(object), index=oldest.index, name="split")
    if protected:
        is_protected = np.array([key in protected for key in unique_keys], dtype=bool)
        leaked = np.unique(cluster[is_protected[codes]])
        splits[splits.index.isin(leaked)] = HELD_OUT_LEAK
    return splits


def _stats(split: pd.Series, cluster: pd.Series, unit: str) -> dict[str, int]:
    stats: dict[str, int] = {}
    for name in (*SPLITS, HELD_OUT_LEAK):
        mine = (split == name).to_numpy()
        stats[f"{unit}_{name}"] = int(mine.sum())
        stats[f"clusters_{name}"] = int(cluster[mine].nunique())
    return stats


def _lookup(frame: pd.DataFrame, splits: pd.Series) -> pd.Series:
    split = frame["cluster"].map(splits)
    if split.isna().any():
        missing = frame.loc[split.isna(), "cluster"].unique()[:5].tolist()
        raise KeyError(f"clusters without a split (assignment from another frame?): {missing}")
    return split


def split_frame(
    frame: pd.DataFrame,
    train: float,
    validation: float,
    seed: int,
    protected_keys: Iterable[str] = frozenset(),
    splits: pd.Series | None = None,
) -> StepResult:
    """Rows with a `split` column; rows of clusters matching a protected question dropped as `held_out_leak`.

    `splits` is an assignment from `cluster_splits` on a larger frame (the one
    before dedup); without it the assignment is computed from `frame` itself
    (then `train`, `validation`, `seed` and `protected_keys` apply).
    Stats: `rows_<split>` and `clusters_<split>` for each split and `held_out_leak`.
    """
    if splits is None:
        splits = cluster_splits(frame, train, validation, seed, protected_keys)
    out = frame.assign(split=_lookup(frame, splits) if len(frame) else pd.Series(dtype=object))
    stats = _stats(out["split"], out["cluster"], "rows")
    return StepResult.split("split", out, {HELD_OUT_LEAK: (out["split"] == HELD_OUT_LEAK).to_numpy()}, stats)


def split_pairs(pairs: pd.DataFrame, splits: pd.Series) -> StepResult:
    """Preference pairs with their cluster's `split`; pairs of held-out clusters dropped as `held_out_leak`.

    `dropped` lists pair ids (not request ids). Stats: `pairs_<split>`, `clusters_<split>`.
    """
    out = pairs.assign(split=_lookup(pairs, splits) if len(pairs) else pd.Series(dtype=object))
    leak = (out["split"] == HELD_OUT_LEAK).to_numpy()
    kept = out.loc[~leak].reset_index(drop=True)
    dropped = {HELD_OUT_LEAK: out.loc[leak, "id"].tolist()} if leak.any() else {}
    return StepResult("split_pairs", kept, dropped, _stats(out["split"], out["cluster"], "pairs"))
