"""The seed-demo task's plain function: where it writes and what it reports."""

from __future__ import annotations

import json
from pathlib import Path

from flywheel.demo import read_manifest
from flywheel.settings import DemoParams, HarvestParams
from tasks.demo.seed import summary_markdown, write_workload


def test_history_lands_in_the_harvest_inbox_and_the_manifest_points_at_it(tmp_path: Path) -> None:
    # given small demo params and a harvest inbox named in params
    demo, harvest = DemoParams(seed=3, n_records=200), HarvestParams(incoming_dir="inbox")
    # when the workload is written
    summary = write_workload(demo, "support-assistant", tmp_path, harvest)
    # then the history is in the inbox, complete, with no partial file left behind
    history = tmp_path / "inbox" / "demo-history-seed3.jsonl"
    assert summary["history"] == str(history), f"summary should name the inbox file: {summary}"
    assert len(history.read_bytes().splitlines()) == 200, "history should hold one line per record"
    assert not list((tmp_path / "inbox").glob("*.partial")), "no partial file should remain"
    # and the manifest in data/demo records it by a path relative to itself
    manifest = read_manifest(tmp_path / "demo")
    assert (tmp_path / "demo" / manifest.files["history"].path).resolve() == history.resolve(), manifest.files
    assert sum(summary["counts"].values()) == 200, f"counts should cover every record: {summary['counts']}"
    json.dumps(summary)  # JSON-able: it is a flow result and a CLI output


def test_summary_markdown_lists_every_kind(tmp_path: Path) -> None:
    summary = write_workload(DemoParams(n_records=100), "app", tmp_path, HarvestParams())
    markdown = summary_markdown(summary)
    for kind in summary["counts"]:
        assert f"| {kind} |" in markdown, f"{kind} missing from the artifact table"
