"""The curate split: whole clusters per split, stable shares, protected questions held out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

from tasks.curate.preferences import preference_pairs
from tasks.curate.split import (
    HELD_OUT_LEAK,
    SPLITS,
    canonical_key,
    cluster_splits,
    load_protected_keys,
    split_frame,
    split_pairs,
)

T0 = pd.Timestamp("2026-01-01T00:00:00Z")
TRAIN, VALIDATION, SEED = 0.8, 0.1, 7


def _frame(n_rows: int, n_clusters: int, start: int = 0, offset_s: int = 0) -> pd.DataFrame:
    """`n_rows` rows in `n_clusters` clusters; a cluster's rows ask one question, spelled differently."""
    ids = np.arange(start, start + n_rows)
    cluster = ids % n_clusters
    spelling = ["{}", "{}?", "{}!", "  {}  ".upper()]
    prompts = [
        spelling[i % 4].format(f"how do I reset password number {c}")
        for i, c in zip(ids, cluster, strict=True)
    ]
    return pd.DataFrame(
        {
            "request_id": [f"req-{i:07d}" for i in ids],
            "timestamp": T0 + pd.to_timedelta(ids + offset_s, unit="s"),
            "prompt": prompts,
            "response": [f"Answer {i}." for i in ids],
            "cluster": cluster.astype("int64"),
        }
    )


def _split(frame: pd.DataFrame, **kwargs: object) -> pd.DataFrame:
    return split_frame(frame, TRAIN, VALIDATION, SEED, **kwargs).kept  # type: ignore[arg-type]  # test kwargs


def test_no_cluster_straddles_splits() -> None:
    # given 3000 rows in 700 clusters of near-duplicate questions
    frame = _frame(3000, 700)
    # when split
    out = _split(frame)
    # then every cluster sits in exactly one split
    per_cluster = out.groupby("cluster")["split"].nunique()
    assert (per_cluster == 1).all(), f"clusters in two splits: {per_cluster[per_cluster > 1].index.tolist()}"
    assert set(out["split"]) <= set(SPLITS), f"only the three splits expected: {set(out['split'])}"


def test_shares_are_close_to_the_params_on_10k_rows() -> None:
    # given 10k rows, one cluster each
    frame = _frame(10_000, 10_000)
    # when split 80/10/10
    result = split_frame(frame, TRAIN, VALIDATION, SEED)
    # then each split's share of clusters is within 2 points of its param
    shares = result.kept["split"].value_counts(normalize=True)
    for name, want in (("train", 0.8), ("validation", 0.1), ("eval", 0.1)):
        assert abs(shares[name] - want) < 0.02, f"{name}: share {shares[name]:.3f}, want {want}"
    assert sum(result.stats[f"rows_{name}"] for name in SPLITS) == 10_000, f"stats: {result.stats}"


def test_old_clusters_keep_their_split_when_data_grows() -> None:
    # given a first run's split
    old = _frame(2000, 500)
    before = _split(old).set_index("request_id")["split"]
    # when later rows arrive (joining old questions and asking new ones) and dedup renumbers clusters
    new = _frame(2000, 800, start=2000, offset_s=10_000)
    grown = pd.concat([old, new], ignore_index=True)
    grown["cluster"] = grown["prompt"].map(canonical_key).factorize(sort=True)[0].astype("int64") * 3 + 11
    after = _split(grown).set_index("request_id")["split"]
    # then every old row keeps the split it had
    moved = (after.loc[before.index] != before).sum()
    assert moved == 0, f"{moved} old rows moved to another split when data was added"


def test_protected_questions_are_never_in_train_or_validation() -> None:
    # given protected eval questions written differently from the harvested ones
    frame = _frame(3000, 600)
    protected = {"How do I reset password number 5?", "how do i reset PASSWORD number 77"}
    # when split with them protected
    result = split_frame(frame, TRAIN, VALIDATION, SEED, protected_keys=protected)
    # then their clusters are dropped as held-out leaks and counted
    kept_clusters = set(result.kept["cluster"])
    assert not {5, 77} & kept_clusters, "protected questions must not reach any training split"
    leaked = set(result.dropped[HELD_OUT_LEAK])
    assert leaked == set(frame.loc[frame["cluster"].isin([5, 77]), "request_id"]), (
        "every row of them is dropped"
    )
    assert result.stats["clusters_held_out_leak"] == 2, f"two clusters held out: {result.stats}"
    assert result.stats[f"rows_{HELD_OUT_LEAK}"] == 10, f"ten rows held out: {result.stats}"


def test_a_protected_question_anywhere_in_a_cluster_holds_out_the_whole_cluster() -> None:
    # given a cluster whose oldest row is not the protected question but a later member is
    frame = _frame(6, 2)
    frame.loc[4, "prompt"] = "What is the refund window?"  # cluster 0, not its oldest row
    # when split with that question protected
    splits = cluster_splits(frame, TRAIN, VALIDATION, SEED, protected_keys={"what is the refund window"})
    # then the whole cluster is held out
    assert splits[0] == HELD_OUT_LEAK, f"cluster 0 should be held out: {splits.to_dict()}"
    assert splits[1] in SPLITS, f"cluster 1 is not protected: {splits.to_dict()}"


def test_the_pre_dedup_assignment_applies_to_deduplicated_rows_and_pairs() -> None:
    # given the assignment of the full frame with one question protected
    frame = _frame(1000, 200)
    frame["feedback"] = np.where((np.arange(1000) // 200) % 2, 1.0, -1.0)  # 2 up, 3 down per cluster
    frame["system"], frame["history"] = "", "[]"
    splits = cluster_splits(
        frame, TRAIN, VALIDATION, SEED, protected_keys={"how do i reset password number 3"}
    )
    # when applied to one row per cluster and to the preference pairs
    kept = split_frame(frame.drop_duplicates("cluster"), TRAIN, VALIDATION, SEED, splits=splits)
    pairs, _ = preference_pairs(frame)
    paired = split_pairs(pairs, splits)
    # then both agree with the assignment, and the protected cluster is in neither
    assert (kept.kept["split"] == kept.kept["cluster"].map(splits)).all(), (
        "rows should take their cluster's split"
    )
    assert (paired.kept["split"] == paired.kept["cluster"].map(splits)).all(), (
        "pairs take their cluster's split"
    )
    assert 3 not in set(kept.kept["cluster"]) | set(paired.kept["cluster"]), (
        "the protected cluster is held out"
    )
    assert len(paired.dropped[HELD_OUT_LEAK]) == 4, f"its 4 pairs are dropped: {paired.dropped}"
    assert paired.stats["pairs_held_out_leak"] == 4, f"pair stats: {paired.stats}"


def test_split_is_deterministic_and_independent_of_row_order() -> None:
    # given a frame and the same rows shuffled
    frame = _frame(2000, 400)
    shuffled = frame.sample(frac=1.0, random_state=1)
    # when split twice and with another seed
    a = _split(frame).set_index("request_id")["split"]
    b = _split(shuffled).set_index("request_id")["split"].loc[a.index]
    c = split_frame(frame, TRAIN, VALIDATION, SEED + 1).kept.set_index("request_id")["split"]
    # then equal inputs give equal splits, and the seed reshuffles
    assert (a == b).all(), "the split should not depend on row order"
    assert (a != c.loc[a.index]).any(), "another seed should give another assignment"


def test_an_assignment_from_another_frame_must_cover_every_cluster() -> None:
    splits = cluster_splits(_frame(10, 5), TRAIN, VALIDATION, SEED)
    with pytest.raises(KeyError, match="without a split"):
        split_frame(_frame(20, 10), TRAIN, VALIDATION, SEED, splits=splits)


def test_empty_frames_split_to_nothing() -> None:
    # given no rows and no pairs
    empty = _frame(0, 1)
    # when split
    result = split_frame(empty, TRAIN, VALIDATION, SEED)
    pairs, _ = preference_pairs(empty.assign(system="", history="[]", feedback=np.nan))
    paired = split_pairs(pairs, cluster_splits(empty, TRAIN, VALIDATION, SEED))
    # then no rows, a split column, and zero counts
    assert result.kept.empty and "split" in result.kept.columns, f"empty split: {result.kept}"
    assert all(v == 0 for v in result.stats.values()), f"all counts zero: {result.stats}"
    assert paired.kept.empty and "split" in paired.kept.columns, f"empty pair split: {paired.kept}"


@pytest.mark.parametrize(("train", "validation"), [(0.0, 0.1), (0.9, 0.1), (0.8, -0.1), (1.0, 0.0)], ids=str)
def test_shares_must_leave_room_for_eval(train: float, validation: float) -> None:
    with pytest.raises(ValueError, match="train"):
        cluster_splits(_frame(4, 2), train, validation, SEED)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("  How do I RESET my password?! ", "how do i reset my password"),
        ("Wie spät ist es?", "wie sp t ist es"),
        ("パスワードを リセット", "パスワードを リセット"),
    ],
)
def test_canonical_key(text: str, key: str) -> None:
    assert canonical_key(text) == key, f"canonical key of {text!r}"


def test_load_protected_keys_reads_eval_suites(tmp_path: Path) -> None:
    # given an eval suite in the demo's eval.jsonl shape
    path = tmp_path / "eval.jsonl"
    path.write_bytes(
        b"\n".join(orjson.dumps({"id": str(i), "question": q}) for i, q in enumerate(["A b?", "C, d!"]))
    )
    # when its keys are loaded
    keys = load_protected_keys([path])
    # then they are the canonical keys of its questions
    assert keys == frozenset({"a b", "c d"}), f"protected keys: {keys}"


def test_expected_split_shares_band_the_configured_shares_wider_for_small_curations() -> None:
    from flywheel.settings import CurateParams
    from tasks.curate.run import expected_split_shares

    # Given the default 90 / 5 / 5 split
    params = CurateParams()
    # When the bands are computed for a small and a large curation
    small, large = expected_split_shares(params, 276), expected_split_shares(params, 1_000_000)
    # Then each band holds its configured share, the small one is wider, and a split
    # that swallowed everything (train 1.0) or nothing (train 0.5) falls outside both
    for name, share in (("train", 0.9), ("validation", 0.05), ("eval", 0.05)):
        for bands in (small, large):
            low, high = bands[name]
            assert 0.0 <= low < share < high <= 1.0, f"{name}: {share} not inside {bands[name]}"
        assert small[name][1] - small[name][0] > large[name][1] - large[name][0], f"{name}: small not wider"
    assert large["train"] == pytest.approx((0.8888, 0.9112), abs=1e-3), large["train"]
    assert small["train"][0] > 0.5 and small["train"][1] < 1.0, f"train band too loose: {small['train']}"
