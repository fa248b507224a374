"""Preference pairs: a liked and a disliked answer to the same question, for DPO.

Feedback gives pairs for free: when users rated one answer to a question up
(feedback 1) and another answer to the same question down (-1), the two make a
(prompt, chosen, rejected) triple. "The same question" is the dedup cluster
(exact and near-duplicate prompts), asked in the same conversation context (the
same earlier turns: a follow-up means something else after other turns).

This needs every rated row, so it runs before the quality filter drops the
answers rated down and before dedup keeps one row per cluster: it takes a frame
with `cluster` assigned to all rows.

Within a cluster and context, equal answer texts count as one answer whose
verdict is the sign of its summed ratings (an answer rated up and down equally
often is contested and on neither side). The liked answers and the disliked
ones, oldest first, are paired along the diagonals of their grid, (0, 0),
(0, 1), (1, 0), (0, 2), ..., so the first few pairs already mix different
answers; at most `max_pairs_per_cluster` are kept per cluster so a
popular question does not dominate training. The prompt of a pair is the
liked answer's (system prompt, earlier turns, question).

`preference_records` writes TRL's conversational preference format with an
explicit prompt, which `DPOTrainer` takes as is:
`{"prompt": [{"role": "system"|"user"|"assistant", ...}, ..., {"role": "user", ...}],
"chosen": [{"role": "assistant", ...}], "rejected": [{"role": "assistant", ...}]}`.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tasks.curate.formats import prompt_messages

DEFAULT_MAX_PAIRS_PER_CLUSTER = 4
PAIR_COLUMNS: tuple[str, ...] = (
    "id",
    "cluster",
    "system",
    "history",
    "prompt",
    "chosen",
    "rejected",
    "chosen_request_id",
    "rejected_request_id",
)


def pair_id(chosen_request_id: str, rejected_request_id: str) -> str:
    """A stable id of a pair: the same two requests always give the same id."""
    key = f"{chosen_request_id}\n{rejected_request_id}".encode()
    return "pair-" + hashlib.sha256(key).hexdigest()[:16]


def _empty_pairs() -> pd.DataFrame:
    frame = pd.DataFrame({column: pd.Series(dtype=object) for column in PAIR_COLUMNS})
    frame["cluster"] = frame["cluster"].astype("int64")
    return frame


def _sorted(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """`frame.sort_values(by)` (ascending, nulls last), with the order found by Arrow.

    pandas sorts text keys by factorizing them into sorted categories: 0.9 s for the
    350k rated rows of the 1M-record demo, mostly request ids. Arrow compares the
    UTF-8 bytes in C++ (0.2 s), and byte order is code point order, as Python's.
    """
    table = pa.table({name: pa.array(frame[name], from_pandas=True) for name in by})
    order = pc.sort_indices(table, sort_keys=[(name, "ascending", "at_end") for name in by])
    return frame.take(order.to_numpy())


def _answers(rated: pd.DataFrame, cluster_column: str) -> tuple[pd.DataFrame, int]:
    """Each distinct answer of a (cluster, context) with its verdict, and how many were contested.

    An answer's verdict is the sign of its summed ratings; it is represented by
    its oldest row rated that way (whose prompt a pair will use).
    """
    group = [cluster_column, "history", "response"]
    votes = rated.groupby(group, sort=False)["feedback"].transform("sum")
    sign = np.sign(votes)
    contested = rated.loc[sign.eq(0).to_numpy(), group].drop_duplicates()
    agreeing = rated[(np.sign(rated["feedback"]) == sign).to_numpy() & sign.ne(0).to_numpy()]
    answers = agreeing.drop_duplicates(group)  # rows are oldest first: keep the oldest
    return answers.assign(liked=answers["feedback"] > 0), len(contested)


def preference_pairs(
    frame: pd.DataFrame,
    max_pairs_per_cluster: int = DEFAULT_MAX_PAIRS_PER_CLUSTER,
    cluster_column: str = "cluster",
) -> tuple[pd.DataFrame, dict[str, int]]:
    """(prompt, chosen, rejected) pairs from clusters with both a liked and a disliked answer.

    Args:
        frame: a curation frame with a cluster id on every row (before dedup
            collapses clusters and before the quality filter drops rated-down rows).
        max_pairs_per_cluster: the most pairs one cluster contributes.
        cluster_column: the column holding the dedup cluster id.

    Returns:
        The pairs, one row each (columns `PAIR_COLUMNS`, `cluster` kept for the
        split), ordered by cluster, and counts: `rows_in`, `rated_up`,
        `rated_down`, `contested` (answers rated up and down equally often: on
        neither side), `over_cap` (candidate pairs beyond the cap),
        `clusters_out` (clusters with a liked and a disliked answer in one
        context), `pairs_out`.
    """
    if max_pairs_per_cluster < 1:
        raise ValueError(f"max_pairs_per_cluster must be >= 1, got {max_pairs_per_cluster}")
    if cluster_column not in frame.columns:
        raise KeyError(f"preference pairs need a {cluster_column!r} column (dedup assigns it)")
    answered = frame["response"].notna()
    up = answered & (frame["feedback"] > 0)
    down = answered & (frame["feedback"] < 0)
    counts = {"rows_in": len(frame), "rated_up": int(up.sum()), "rated_down": int(down.sum())}
    columns = [
        cluster_column,
        "request_id",
        "timestamp",
        "system",
        "history",
        "prompt",
        "response",
        "feedback",
    ]
    rated = _sorted(frame.loc[up | down, columns], [cluster_column, "history", "timestamp", "request_id"])
    answers, counts["contested"] = _answers(rated, cluster_column)

    context = [cluster_column, "history"]
    sides = answers.groupby(context, sort=False)["liked"].agg(n_liked="sum", n="size")
    sides["n_disliked"] = sides["n"] - sides["n_liked"]
    sides = sides[(sides["n_liked"] > 0) & (sides["n_disliked"] > 0)]
    n_candidates = int((sides["n_liked"] * sides["n_disliked"]).sum())

    # The k-th cell in diagonal order has both indices <= k, so ranks past the cap never make it.
    answers = answers.assign(rank=answers.groupby([*context, "liked"], sort=False).cumcount())
    answers = answers[answers["rank"] < max_pairs_per_cluster]
    liked, disliked = answers[answers["liked"]], answers[~answers["liked"]]
    cells = liked.merge(disliked, on=context, suffixes=("_c", "_r"))
    cells = cells.assign(diagonal=cells["rank_c"] + cells["rank_r"]).sort_values(
        [cluster_column, "history", "diagonal", "rank_c"], kind="stable"
    )
    cells = cells[cells.groupby(cluster_column, sort=False).cumcount() < max_pairs_per_cluster]
    counts["over_cap"] = n_candidates - len(cells)
    counts["clusters_out"] = cells[cluster_column].nunique()
    counts["pairs_out"] = len(cells)
    if cells.empty:
        return _empty_pairs(), counts
    pairs = pd.DataFrame(
        {
            "id": [pair_id(c, r) for c, r in zip(cells["request_id_c"], cells["request_id_r"], strict=True)],
            "cluster": cells[cluster_column].astype("int64").to_numpy(),
            "system": cells["system_c"].to_numpy(),
            "history": cells["history"].to_numpy(),
            "prompt": cells["prompt_c"].to_numpy(),
            "chosen": cells["response_c"].to_numpy(),
            "rejected": cells["response_r"].to_numpy(),
            "chosen_request_id": cells["request_id_c"].to_numpy(),
            "rejected_request_id": cells["request_id_r"].to_numpy(),
        },
        columns=list(PAIR_COLUMNS),
    )
    return pairs, counts


def preference_records(pairs: pd.DataFrame) -> list[dict[str, Any]]:
    """The pairs in TRL's conversational preference format (explicit prompt), in frame order."""
    columns = ["id", "system", "history", "prompt", "chosen", "rejected"]
    return [
        {
            "id": row["id"],
            "prompt": prompt_messages(row["system"], row["history"], row["prompt"]),
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}],
        }
        for row in pairs.loc[:, columns].to_dict("records")
    ]
