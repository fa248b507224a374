"""The demo's closing report: stage timings, the curation funnel, the gate, the canary, where to look.

Every number is read back from where the product keeps it (the Prefect API, the MLflow
run and registry, `funnel.json`, the audit log), never from the demo's own memory, so
the report says what the UIs show. `render` is pure; `gather_*` do the reading.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class GateFigures:
    """The gate's numbers for one candidate, from its retrain run's metrics."""

    metric: str
    baseline: float | None
    candidate: float | None
    diff: float | None
    diff_low: float | None
    diff_high: float | None
    win_rate: float | None
    win_low: float | None
    win_high: float | None
    n_items: int | None
    passed: bool | None
    failed_rules: tuple[str, ...] = ()

    @classmethod
    def from_metrics(cls, metric: str, metrics: Mapping[str, float], prefix: str = "") -> GateFigures:
        """Read `gate/*` and `eval/*` metrics (under `prefix`, e.g. `prompt/`) of a retrain run."""

        def get(key: str) -> float | None:
            value = metrics.get(prefix + key)
            return None if value is None else float(value)

        n_items, passed = get("gate/n_items"), get("gate/passed")
        return cls(
            metric=metric,
            baseline=get(f"eval/baseline/{metric}"),
            candidate=get(f"eval/candidate/{metric}"),
            diff=get(f"gate/diff/{metric}"),
            diff_low=get(f"gate/diff/{metric}/low"),
            diff_high=get(f"gate/diff/{metric}/high"),
            win_rate=get("gate/win_rate"),
            win_low=get("gate/win_rate/low"),
            win_high=get("gate/win_rate/high"),
            n_items=None if n_items is None else int(n_items),
            passed=None if passed is None else passed >= 0.5,
            failed_rules=tuple(
                sorted(
                    key.removeprefix(prefix + "gate/rule/").removesuffix("/passed")
                    for key, value in metrics.items()
                    if key.startswith(prefix + "gate/rule/") and key.endswith("/passed") and value < 0.5
                )
            ),
        )


@dataclass(frozen=True)
class CanaryEvent:
    """One audit entry of the canary, as the report shows it."""

    at: str
    event: str
    who: str
    why: str
    percent: int | None = None


@dataclass
class DemoReport:
    """Everything the closing report prints."""

    timings: list[tuple[str, float]] = field(default_factory=list)
    total_seconds: float = 0.0
    funnel: Mapping[str, Any] = field(default_factory=dict)
    gate: GateFigures | None = None
    version: str | None = None
    champion_before: str | None = None
    champion_after: str | None = None
    canary: list[CanaryEvent] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _num(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def render(report: DemoReport) -> list[str]:
    """The report as plain lines (markdown-ish, readable in a terminal and a CI log)."""
    lines = ["Stage timings"]
    lines += [f"  {name:<28} {seconds:7.1f}s" for name, seconds in report.timings]
    lines.append(f"  {'total':<28} {report.total_seconds:7.1f}s")
    if report.funnel:
        f = report.funnel
        dropped = f.get("dropped") or {}
        splits = f.get("splits") or {}
        lines += [
            "",
            "Curation funnel",
            f"  raw records in {f.get('records_in')}, curated out {f.get('records_out')}, "
            f"harvest quarantined {f.get('harvest_quarantined', 0)}",
            "  dropped: " + (", ".join(f"{k} {v}" for k, v in dropped.items()) or "none"),
            "  splits: " + ", ".join(f"{k} {v}" for k, v in splits.items()),
            f"  preference pairs {f.get('preference_pairs', 0)}",
        ]
    if report.gate is not None:
        g = report.gate
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[g.passed]
        lines += [
            "",
            f"Eval gate ({g.n_items} paired held-out items, 95% bootstrap intervals): {verdict}",
            f"  {g.metric}: base {_num(g.baseline, '.3f')} -> candidate {_num(g.candidate, '.3f')}, "
            f"gain {_num(g.diff, '+.3f')} [{_num(g.diff_low, '+.3f')}, {_num(g.diff_high, '+.3f')}]",
            f"  win rate {_num(g.win_rate, '.1%')} [{_num(g.win_low, '.1%')}, {_num(g.win_high, '.1%')}]",
        ]
        if g.failed_rules:
            lines.append(
                f"  failed rules: {', '.join(g.failed_rules)} (the gate's table is in the MLflow run)"
            )
    if report.canary:
        lines += ["", "Canary decisions (audit log)"]
        for e in report.canary:
            step = f"{e.percent:>3}% " if e.percent is not None else "     "
            lines.append(f"  {e.at[11:19]} {step}{e.event:<14} {_headline(e.why)}  [{e.who}]")
    if report.version is not None:
        lines += [
            "",
            f"Champion: {report.champion_before or 'base model'} -> {report.champion_after or 'unchanged'}"
            f" (candidate v{report.version})",
        ]
    if report.notes:
        lines += ["", *report.notes]
    if report.links:
        lines += ["", "Where to look"]
        lines += [f"  {name:<28} {url}" for name, url in report.links]
    return lines


def _headline(why: str, limit: int = 120) -> str:
    """A reason's headline: an analysis reads "all checks passed: <every figure>"; the figures
    are in the audit log and the MLflow tags, the report keeps the verdict."""
    if len(why) <= limit:
        return why
    head = why.split(": ", 1)[0]
    return head if len(head) <= limit else why[: limit - 3] + "..."


def read_funnel(curated_dir: Path) -> dict[str, Any]:
    """The curate stage's `funnel.json` ({} when it has not run)."""
    path = curated_dir / "funnel.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}


def canary_events(entries: Iterable[Any]) -> list[CanaryEvent]:
    """Audit entries (`tasks.promote.audit.AuditEntry`) as report rows, oldest first."""
    events = []
    for entry in entries:
        data = entry.data if isinstance(entry.data, Mapping) else {}
        percent = data.get("percent")
        events.append(
            CanaryEvent(
                at=entry.at,
                event=entry.event,
                who=entry.who,
                why=entry.why,
                percent=int(percent) if isinstance(percent, int | float) else None,
            )
        )
    return events
