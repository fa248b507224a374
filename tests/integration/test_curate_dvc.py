"""DVC around curation, for real: a copy of this repo, the demo seeded, harvested, curated, committed.

Then `dvc status` must be clean, and `dvc repro` on a checkout without the
curated files must rebuild them with the same md5s.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from flywheel.dvcdata import commit_stage, lock_hashes, track_data
from flywheel.settings import Environment, load_params
from tasks.curate.run import CurationPaths, minilm_embed, run_curation
from tasks.demo.seed import write_workload
from tasks.harvest import run_harvest
from tasks.harvest.sources import FilesSource
from tests.helpers.repo_copy import BIN, copy_repo
from tests.helpers.repo_copy import run as _run

pytestmark = pytest.mark.integration


@pytest.fixture()
def repo_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, str]]:
    """This repo's files (tracked and new, not ignored) in a fresh git repo with a private DVC remote."""
    repo, env = copy_repo(tmp_path)
    for key in ("FLYWHEEL_HOME", "FLYWHEEL_DATA_DIR", "FLYWHEEL_PARAMS", "DVC_NO_ANALYTICS"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.chdir(repo)
    return repo, env


def test_flow_steps_leave_dvc_clean_and_dvc_repro_rebuilds_the_same_bytes(
    repo_copy: tuple[Path, dict[str, str]],
) -> None:
    repo, env = repo_copy
    params = load_params()
    data = Environment().data_dir
    # given the demo seeded and harvested as the flows do it, each recorded with DVC
    write_workload(params.demo, params.project.application, data, params.harvest)
    commit_stage(data, "seed_demo")
    run_harvest(FilesSource(str(data / "incoming")), data / "raw", repo / ".state", max_malformed_share=0.5)
    raw = track_data([data / "raw"])
    assert raw.hashes and raw.pushed, f"data/raw should be added and pushed: {raw}"
    # when curation runs as the flow runs it, then commits its stage
    paths = CurationPaths.from_settings(Environment(), params.harvest, params.curate)
    run = run_curation(paths, params.curate, minilm_embed())
    recorded = commit_stage(paths.out_dir, "curate")
    # then dvc.lock names every output with the md5 the run wrote, and dvc status is clean
    assert {Path(p).name: md5 for p, md5 in recorded.hashes.items()} == run.files, (
        f"dvc.lock should record what the run wrote: {recorded.hashes} vs {run.files}"
    )
    status = _run([str(BIN / "dvc"), "status"], repo, env)
    assert status.returncode == 0 and "up to date" in status.stdout, f"dvc status not clean:\n{status.stdout}"
    # when the curated files are gone (a clean checkout of the data) and dvc repro runs
    shutil.rmtree(paths.out_dir)
    repro = _run([str(BIN / "dvc"), "repro", "curate"], repo, env)
    assert repro.returncode == 0, f"dvc repro failed:\n{repro.stdout}\n{repro.stderr}"
    # then it rebuilt every output byte for byte
    assert lock_hashes(repo, "curate") == recorded.hashes, "dvc repro should reproduce the same md5s"
    status = _run([str(BIN / "dvc"), "status"], repo, env)
    assert "up to date" in status.stdout, f"dvc status after repro:\n{status.stdout}"
