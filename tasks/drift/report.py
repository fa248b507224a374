"""Drift reports: a markdown table of signals (for a Prefect artifact) and a self-contained HTML page.

The HTML page embeds its plots as base64 PNG (matplotlib, Agg canvas, no
pyplot global state), so it is one file to log to MLflow and open anywhere.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.drift.drift import DriftResult, GroupDrift, Signal
from tasks.drift.frame import Windows

_STATUS_MARK = {"ok": "ok", "alert": "**ALERT**", "insufficient_data": "not enough data"}
_PROPORTIONS = {"error_rate", "feedback_positive_rate", "new_topics"}


def _number(value: float | None, name: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if name in _PROPORTIONS:
        return f"{value:.2%}"
    if name == "cost_per_query":
        return f"${value:.3g}"
    return f"{value:.4g}"


def _windows_line(windows: Windows) -> str:
    stamp = "%Y-%m-%d %H:%M"
    return (
        f"Current window {windows.current_start:{stamp}} to {windows.end:{stamp}} UTC, "
        f"baseline {windows.baseline_start:{stamp}} to {windows.current_start:{stamp}} UTC."
    )


def _cell(text: str) -> str:
    # A pipe or newline inside a cell would break the markdown table.
    return text.replace("|", "\\|").replace("\n", " ")


def _rows(group: GroupDrift) -> list[tuple[str, Signal]]:
    where = "all" if group.scope == "all" else f"{group.scope}: {group.key}"
    if group.scope == "model_version" and group.baseline_scope != "same version":
        where += f" (vs {group.baseline_scope})"  # a version new in the current window
    return [(where, signal) for signal in group.signals]


def markdown_report(result: DriftResult, windows: Windows | None = None) -> str:
    """The signals of every group as one markdown table, then the new topics with redacted examples."""
    lines = ["# Drift report", ""]
    if windows is not None:
        lines += [_windows_line(windows), ""]
    overall = result.overall
    lines += [
        f"**Status: {result.status}** ({overall.n_current:,} current, {overall.n_baseline:,} baseline "
        f"requests; {len(result.alerts())} alerting signals)",
        "",
        "| group | signal | value | baseline | threshold | status | detail |",
        "|---|---|---|---|---|---|---|",
    ]
    for group in result.groups:
        for where, signal in _rows(group):
            lines.append(
                f"| {_cell(where)} | {signal.name} | {_number(signal.value, signal.name)} | "
                f"{_number(signal.baseline, signal.name)} | {_number(signal.threshold, signal.name)} | "
                f"{_STATUS_MARK[signal.status]} | {_cell(signal.detail)} |"
            )
    lines += ["", "## New topics", ""]
    if not result.topics:
        lines.append("No current cluster is far from every baseline cluster.")
    for number, topic in enumerate(result.topics, start=1):
        lines.append(
            f"{number}. {topic.size:,} requests ({topic.share:.1%}), mean cosine distance "
            f"{topic.distance:.3f} to the nearest baseline message; examples (redacted):"
        )
        lines += [f"   - {_cell(example)}" for example in topic.examples]
    return "\n".join(lines) + "\n"


def _png(figure: object) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)  # type: ignore[arg-type]  # a matplotlib Figure
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _histograms(current: pd.DataFrame, baseline: pd.DataFrame) -> str:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 7), layout="constrained")
    panels = (
        ("prompt_tokens", "prompt tokens", False),
        ("completion_tokens", "completion tokens", False),
        ("ttft_ms", "time to first token (ms, ok requests)", True),
        ("latency_ms", "end-to-end latency (ms, ok requests)", True),
    )
    for axis, (column, title, ok_only) in zip(figure.subplots(2, 2).ravel(), panels, strict=True):
        values = []
        for frame in (baseline, current):
            data = frame.loc[frame["status"] != "error", column] if ok_only else frame[column]
            values.append(data.dropna().to_numpy(np.float64))
        pooled = np.concatenate(values)
        if pooled.size == 0:
            axis.set_title(f"{title}: no data")
            continue
        # Shared bins clipped at the pooled 99.5th percentile: one outlier must not flatten the plot.
        top = float(np.percentile(pooled, 99.5))
        bins = np.linspace(float(pooled.min()), max(top, float(pooled.min()) + 1.0), 40)
        for data, label in zip(values, ("baseline", "current"), strict=True):
            if data.size:
                axis.hist(np.clip(data, None, bins[-1]), bins=bins, density=True, alpha=0.5, label=label)
        axis.set_title(title)
        axis.legend()
    return _png(figure)


def _scatter(result: DriftResult) -> str | None:
    from matplotlib.figure import Figure

    projection = result.projection
    if projection is None:
        return None
    figure = Figure(figsize=(7, 6), layout="constrained")
    axis = figure.subplots()
    axis.scatter(projection.baseline[:, 0], projection.baseline[:, 1], s=6, alpha=0.4, label="baseline")
    axis.scatter(projection.current[:, 0], projection.current[:, 1], s=6, alpha=0.4, label="current")
    if len(projection.topics):
        topics = projection.topics
        axis.scatter(topics[:, 0], topics[:, 1], s=120, marker="X", color="black", label="new-topic centroid")
    axis.set_title("user messages, sampled embeddings (PCA)")
    axis.legend()
    return _png(figure)


def _signals_table(result: DriftResult) -> str:
    rows = []
    for group in result.groups:
        for where, signal in _rows(group):
            rows.append(
                f'<tr class="{signal.status}"><td>{html.escape(where)}</td><td>{signal.name}</td>'
                f"<td>{_number(signal.value, signal.name)}</td>"
                f"<td>{_number(signal.baseline, signal.name)}</td>"
                f"<td>{_number(signal.threshold, signal.name)}</td><td>{signal.status}</td>"
                f"<td>{html.escape(signal.detail)}</td></tr>"
            )
    head = "<tr><th>group</th><th>signal</th><th>value</th><th>baseline</th><th>threshold</th>"
    return f"<table>{head}<th>status</th><th>detail</th></tr>{''.join(rows)}</table>"


def _topics_html(result: DriftResult) -> str:
    if not result.topics:
        return "<p>No current cluster is far from every baseline cluster.</p>"
    items = []
    for topic in result.topics:
        examples = "".join(f"<li>{html.escape(example)}</li>" for example in topic.examples)
        items.append(
            f"<li>{topic.size:,} requests ({topic.share:.1%}), mean cosine distance {topic.distance:.3f} "
            "to the nearest baseline message"
            f"<ul>{examples}</ul></li>"
        )
    return f"<ol>{''.join(items)}</ol>"


_STYLE = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
    "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}tr.alert{background:#fdd}"
    "tr.insufficient_data{color:#888}img{max-width:100%}"
)


def write_html_report(
    result: DriftResult,
    current: pd.DataFrame,
    baseline: pd.DataFrame,
    path: Path,
    windows: Windows | None = None,
) -> Path:
    """Write the self-contained HTML report (signals, new topics, histograms, PCA scatter) to `path`."""
    when = "" if windows is None else f"<p>{html.escape(_windows_line(windows))}</p>"
    overall = result.overall
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Drift report</title>",
        f"<style>{_STYLE}</style></head><body><h1>Drift report</h1>",
        when,
        f"<p><b>Status: {result.status}</b>: {overall.n_current:,} current and {overall.n_baseline:,} "
        "baseline requests.</p>",
        _signals_table(result),
        "<h2>New topics</h2>",
        _topics_html(result),
    ]
    if len(current) and len(baseline):
        parts += [
            "<h2>Tokens and latency, current vs baseline</h2>",
            f"<img alt='histograms' src='data:image/png;base64,{_histograms(current, baseline)}'>",
        ]
    scatter = _scatter(result)
    if scatter is not None:
        parts += [
            "<h2>Message embeddings</h2>",
            f"<img alt='embedding scatter' src='data:image/png;base64,{scatter}'>",
        ]
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
