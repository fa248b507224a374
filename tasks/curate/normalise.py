"""Normalisation: the same text for the same words, turns in the order a chat has them.

Vectorised with pyarrow compute (RE2 and ICU-free unicode kernels in C++), so a
million records take about a second rather than the ~17 s a Python loop needs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from tasks.curate.steps import StepResult
from tasks.curate.text import arrow_strings, lengths, matches, per_distinct

# Zero-width and BOM characters users paste in from other apps; they make equal
# questions look different to dedup and carry no meaning.
_INVISIBLE = "[\u200b\u200c\u200d\u2060\ufeff]"
# What a request a model can learn from looks like: optional system prompt, then
# user/assistant turns alternating, ending with the user's question.
ROLE_ORDER = r"^(system,)?(user,assistant,)*user$"


# What `\s+ -> " "` changes, without matching every single space between two words (most
# of the text, and a regex match each): a run of whitespace that is not one lone space.
_WHITESPACE_TO_COLLAPSE = r"[\t\n\f\r]\s*| \s+"


def _normalise_distinct(texts: pd.Series) -> np.ndarray:
    array = arrow_strings(texts)
    # NFKC and the invisible characters concern non-ASCII text only: ASCII is its own NFKC.
    non_ascii = pc.invert(pc.string_is_ascii(array))
    if pc.any(non_ascii).as_py():
        unicode = pc.utf8_normalize(array.filter(non_ascii), form="NFKC")
        unicode = pc.replace_substring_regex(unicode, pattern=_INVISIBLE, replacement="")
        array = pc.replace_with_mask(array, non_ascii, unicode)
    array = pc.replace_substring_regex(array, pattern=_WHITESPACE_TO_COLLAPSE, replacement=" ")
    return np.asarray(pc.utf8_trim_whitespace(array).to_numpy(zero_copy_only=False), dtype=object)


def normalise_text(texts: pd.Series) -> pd.Series:
    """NFKC, no invisible characters, runs of whitespace as one space, trimmed; None stays None."""
    return pd.Series(per_distinct(texts, _normalise_distinct, None), index=texts.index, dtype=object)


def _normalise_history(history: str) -> str:
    """Normalise the contents of a JSON list of earlier turns (rare: multi-turn records)."""
    import orjson  # local: only multi-turn rows pay for it

    turns = orjson.loads(history)
    texts = normalise_text(pd.Series([turn["content"] for turn in turns], dtype=object))
    return orjson.dumps(
        [{"role": turn["role"], "content": text} for turn, text in zip(turns, texts, strict=True)]
    ).decode()


def normalise(frame: pd.DataFrame) -> StepResult:
    """Normalise every text column; drop records with bad turn order or an empty turn.

    Dropped by reason: `role_order` (turns not `[system,] (user, assistant)* user`),
    `empty_prompt` (nothing left of the question), `empty_response` (an answered
    request whose answer is blank). Failed requests (no response) pass through
    untouched here; the failed-request filter counts them.
    """
    out = frame.copy(deep=False)
    for column in ("system", "prompt", "response"):
        out[column] = normalise_text(out[column])
    multi = out["history"] != "[]"
    if multi.any():
        out.loc[multi, "history"] = out.loc[multi, "history"].map(_normalise_history)
    bad_order = ~matches(out["roles"], ROLE_ORDER, ignore_case=False)
    empty_prompt = lengths(out["prompt"]) == 0
    empty_response = out["response"].notna().to_numpy() & (lengths(out["response"]) == 0)
    return StepResult.split(
        "normalise",
        out,
        {
            "role_order": bad_order,
            "empty_prompt": empty_prompt & ~bad_order,
            "empty_response": empty_response & ~bad_order & ~empty_prompt,
        },
    )


def _filler_patterns(openers: Sequence[str], closers: Sequence[str]) -> list[str]:
    """RE2 patterns (no lookarounds in RE2) for a leading opener and a trailing closer, each
    only next to other text: group 1 is the character kept from that text."""
    patterns = []
    if openers:
        patterns.append(r"(?i)^(?:" + "|".join(re.escape(o.strip()) for o in openers) + r")\s+(\S)")
    if closers:
        patterns.append(r"(?i)(\S)\s+(?:" + "|".join(re.escape(c.strip()) for c in closers) + r")$")
    return patterns


def strip_filler(frame: pd.DataFrame, openers: Sequence[str], closers: Sequence[str]) -> StepResult:
    """Cut configured pleasantries ("Sure!", "Hope that helps!") from the start and end of answers.

    A model learns an answer's wording along with its fact: trained on "Sure!
    The Pro plan costs $8..." it opens with "Sure!" a share of the time, which
    the served prompt ("one or two short, factual sentences") does not ask for
    and which costs tokens on every reply. Only whole phrases next to other
    text go; an answer that is nothing but a pleasantry stays as it is. Drops
    nothing; `stripped` counts the answers changed.
    """
    patterns = _filler_patterns(openers, closers)
    if not patterns or frame.empty:
        return StepResult("filler", frame, {}, {"stripped": 0})
    before = frame["response"]

    def cut(texts: pd.Series) -> np.ndarray:
        array = arrow_strings(texts)
        for pattern in patterns:
            array = pc.replace_substring_regex(array, pattern=pattern, replacement=r"\1")
        return np.asarray(array.to_numpy(zero_copy_only=False), dtype=object)

    after = pd.Series(per_distinct(before, cut, None), index=before.index, dtype=object)
    changed = int((after.fillna("") != before.fillna("")).sum())  # a null answer stays null
    if not changed:
        return StepResult("filler", frame, {}, {"stripped": 0})
    out = frame.copy(deep=False)
    out["response"] = after
    return StepResult("filler", out, {}, {"stripped": changed})
