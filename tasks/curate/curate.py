"""The curation funnel: raw partitions in, split training data out, every drop accounted for.

Order matters, cheapest and broadest first:

1. `redelivered`: a request id seen again (at-least-once log shipping) is one record;
2. `normalise`: unicode, whitespace, turn order, empty turns; then `filler`
   cuts configured pleasantries ("Sure!", "Hope that helps!") off answers;
3. `failed`: requests that got no answer;
4. `length_language`: length bounds and the language heuristic (so a pasted
   30 kB log never reaches the regexes or MinHash);
5. `safety`: injection patterns and toxicity, on every row;
6. `dedup`: exact and near-duplicate questions form clusters; preference pairs
   are collected from each cluster's ratings; the best-rated member stays.
   Dedup reads the text before redaction: placeholders and the words around
   them ("call me back on <PHONE_NUMBER>") would otherwise merge different
   questions;
7. `pii`: typed placeholders for personal data in the kept rows and in the
   preference pairs, counted per entity (dropped duplicates leave curation
   with their request id only);
8. `quality`: answers rated down go; unrated ones by param (before the
   similarity check: a rule on a column costs nothing, and the check then
   embeds only questions that could become training data, 2,600 instead of
   4,100 on the 1M-record demo);
9. `injection_similarity`: MiniLM similarity to known attacks, on the distinct
   questions that are left (thousands, not millions);
10. `split`: whole clusters to train / validation / eval; questions of the
    protected eval and regression suites never reach train or validation.

Records in = records out + every drop; `Funnel.check` enforces it.

Steps 2-5 judge each record alone and step 7 redacts each row alone: they run
on row shards through a `ShardMap` (in this process, or as Prefect tasks on
threads or Dask workers) and are joined back in shard order. Re-deliveries,
dedup, pairs, injection similarity, quality and the split look across rows
and run once, on everything: any shard count gives the same bytes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd

from flywheel.settings import CurateParams
from tasks.curate.dedup import best_rows, dedup_frame, normalize
from tasks.curate.filters import (
    EmbedFn,
    failed_requests,
    injection_similarity,
    length_and_language,
    quality,
    safety_patterns,
)
from tasks.curate.normalise import normalise, strip_filler
from tasks.curate.pii import redact_frame
from tasks.curate.preferences import preference_pairs
from tasks.curate.shards import ShardMap, concat_rows, row_shards, serial_map
from tasks.curate.split import SPLITS, cluster_splits, split_frame, split_pairs
from tasks.curate.steps import Funnel, StepResult

# Text columns of preference pairs that may carry personal data.
PAIR_TEXT_COLUMNS = ("system", "history", "prompt", "chosen", "rejected")


@dataclass(frozen=True)
class Curated:
    """The curated rows (with `cluster` and `split`), preference pairs, and the funnel's books."""

    frame: pd.DataFrame
    pairs: pd.DataFrame
    funnel: Funnel
    pair_counts: dict[str, int]

    def split_frame(self, name: str) -> pd.DataFrame:
        return self.frame[self.frame["split"] == name].reset_index(drop=True)

    def split_counts(self) -> dict[str, int]:
        counts = self.frame["split"].value_counts()
        return {name: int(counts.get(name, 0)) for name in SPLITS}

    def redactions(self) -> dict[str, int]:
        return next((dict(step.stats) for step in self.funnel.steps if step.step == "pii"), {})


def redelivered(frame: pd.DataFrame) -> StepResult:
    """Drop re-deliveries: the same request id again (the first copy stays)."""
    return StepResult.split(
        "redelivered", frame, {"redelivered": frame["request_id"].duplicated().to_numpy()}
    )


def redacted_duplicates(frame: pd.DataFrame, stats: dict[str, int]) -> StepResult:
    """The PII step's result: questions that became equal once redacted keep their best row.

    "Reply to ann@x.io" and "Reply to bob@y.io" are one question after redaction;
    only exact equality counts here (no MinHash), since the placeholder's
    boilerplate would make near-duplicates of different questions.
    """
    keys, _ = pd.factorize(pd.Series([normalize(text) for text in frame["prompt"]], dtype=object))
    duplicate = np.ones(len(frame), dtype=bool)
    duplicate[best_rows(frame, keys)] = False
    return StepResult.split("pii", frame, {"redacted_duplicate": duplicate}, stats)


def row_steps(shard: pd.DataFrame, params: CurateParams) -> list[StepResult]:
    """Steps 2-5 (normalise and filler, failed, length and language, safety patterns) on one shard of rows."""
    results = [normalise(shard)]
    results.append(strip_filler(results[-1].kept, params.filler_openers, params.filler_closers))
    results.append(failed_requests(results[-1].kept))
    results.append(
        length_and_language(
            results[-1].kept,
            params.min_prompt_chars,
            params.max_prompt_chars,
            params.min_response_chars,
            params.max_response_chars,
            params.min_ascii_letter_share,
        )
    )
    results.append(safety_patterns(results[-1].kept))
    return results


def sharded_row_steps(
    frame: pd.DataFrame, params: CurateParams, shards: int, mapper: ShardMap
) -> list[StepResult]:
    """`row_steps` over row shards of `frame`, each step's shards joined back in shard order."""
    work = [partial(row_steps, shard, params) for shard in row_shards(frame, shards)]
    per_shard = mapper("row-steps", work)
    return [StepResult.concat(step) for step in zip(*per_shard, strict=True)]


def sharded_redaction(
    frame: pd.DataFrame, pairs: pd.DataFrame, entities: Sequence[str], shards: int, mapper: ShardMap
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """PII redaction of the kept rows (in row shards) and of the pairs; redactions per entity of both."""
    work = [partial(redact_frame, shard, entities) for shard in row_shards(frame, shards)]
    work.append(partial(redact_frame, pairs, entities, PAIR_TEXT_COLUMNS))
    *rows, (redacted_pairs, pair_counts) = mapper("pii", work)
    counts: Counter[str] = Counter()
    for _, shard_counts in rows:
        counts.update(shard_counts)
    # every shard's counts name each entity asked for, in the same order: the first gives it
    stats = {entity: counts[entity] + pair_counts.get(entity, 0) for entity in rows[0][1]}
    return concat_rows([shard for shard, _ in rows]), redacted_pairs, stats


def curate_frame(
    raw: pd.DataFrame,
    params: CurateParams,
    embed: EmbedFn,
    protected: set[str] | frozenset[str] = frozenset(),
    *,
    shards: int = 1,
    mapper: ShardMap = serial_map,
) -> Curated:
    """Run the funnel over a raw curation frame (see the module docstring for the steps).

    `mapper` runs the per-row work of each of `shards` row shards (default: here, in turn);
    the result does not depend on either.
    """
    funnel = Funnel(n_in=len(raw))
    frame = funnel.add(redelivered(raw))
    for step in sharded_row_steps(frame, params, shards, mapper):
        frame = funnel.add(step)
    deduped = dedup_frame(
        frame,
        threshold=params.near_dup_threshold,
        permutations=params.minhash_permutations,
        shingle_chars=params.shingle_chars,
        seed=params.seed,
    )
    # Pairs and splits come from every row of a cluster, before dedup keeps one: a
    # cluster's split then depends on its oldest question, not on which row won.
    pairs, pair_counts = preference_pairs(deduped.clustered)
    splits = cluster_splits(
        deduped.clustered, params.split.train, params.split.validation, params.seed, protected
    )
    frame = funnel.add(deduped.step)
    redacted, pairs, stats = sharded_redaction(frame, pairs, params.pii_entities, shards, mapper)
    frame = funnel.add(redacted_duplicates(redacted, stats))
    frame = funnel.add(quality(frame, params.keep_unrated))
    frame = funnel.add(injection_similarity(frame, embed, params.injection_similarity))
    frame = funnel.add(
        split_frame(frame, params.split.train, params.split.validation, params.seed, protected, splits=splits)
    )
    funnel.check()
    # pairs go where their question's cluster went; pairs of clusters filtered since go with them
    kept_clusters = set(frame["cluster"].tolist())
    pairs = split_pairs(pairs, splits).kept
    pairs = pairs[pairs["cluster"].isin(kept_clusters)].reset_index(drop=True)
    return Curated(frame, pairs, funnel, pair_counts)
