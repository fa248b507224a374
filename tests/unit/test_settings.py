"""Params loading: the shipped file is valid, and bad files fail naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flywheel.settings import (
    DEFAULT_PARAMS_PATH,
    PROJECT_ROOT,
    Environment,
    Params,
    ParamsError,
    load_params,
    override,
    params_schema,
)


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_params_file_is_valid_and_frozen() -> None:
    # given the repository's params.yaml / when loaded
    params = load_params(DEFAULT_PARAMS_PATH)
    # then every stage section exists and the object is immutable
    for section in (
        "harvest",
        "curate",
        "train",
        "evaluate",
        "promote",
        "drift",
        "regression",
        "gateway",
        "demo",
    ):
        assert hasattr(params, section), f"params has no {section} section"
    with pytest.raises(Exception, match="frozen"):
        params.demo.seed = 1  # type: ignore[misc]


def test_shipped_params_match_the_model_defaults_where_documented() -> None:
    params = load_params(DEFAULT_PARAMS_PATH)
    assert params.promote.canary_steps == (5, 25, 100), "canary steps should default to 5 -> 25 -> 100"


@pytest.mark.parametrize(
    ("data", "key_path", "reason"),
    [
        ({"demo": {"seeed": 1}}, "demo.seeed", "unknown key"),
        ({"bogus": {}}, "bogus", "unknown key"),
        ({"demo": {"n_records": "many"}}, "demo.n_records", "valid integer"),
        ({"train": {"learning_rate": -1}}, "train.learning_rate", "greater than 0"),
        ({"promote": {"canary_steps": [50, 25]}}, "promote.canary_steps", "strictly increasing"),
        ({"drift": {"schedule": "every hour"}}, "drift.schedule", "cron"),
        ({"model": {"dtype": "int3"}}, "model.dtype", "float32"),
    ],
)
def test_invalid_params_name_the_key_and_reason(
    tmp_path: Path, data: dict, key_path: str, reason: str
) -> None:
    # given a params file with one bad entry
    path = _write(tmp_path, data)
    # when it is loaded / then the error names the key path and says why
    with pytest.raises(ParamsError) as caught:
        load_params(path)
    message = str(caught.value)
    assert key_path in message, f"error should name {key_path!r}: {message}"
    assert reason in message, f"error should say {reason!r}: {message}"
    assert str(path) in message, f"error should name the file: {message}"


def test_non_mapping_and_non_yaml_files_fail_clearly(tmp_path: Path) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("demo: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad_yaml)
    with pytest.raises(ParamsError, match="top level must be a mapping"):
        load_params(_write(tmp_path, [1, 2]))
    with pytest.raises(ParamsError, match="cannot read"):
        load_params(tmp_path / "missing.yaml")


def test_empty_file_means_all_defaults(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("")
    assert load_params(path) == Params(), "an empty params file should give the defaults"


def test_override_validates_like_the_file() -> None:
    demo = Params().demo
    assert override(demo, seed=7, n_records=None).seed == 7, "override should apply non-None values"
    assert override(demo, n_records=None) is demo, "no updates should return the same section"
    with pytest.raises(ParamsError, match="n_records"):
        override(demo, n_records=0)


def test_schema_describes_every_section() -> None:
    schema = params_schema()
    assert set(schema["properties"]) >= {"harvest", "gateway", "demo"}, "schema lacks sections"
    assert schema["additionalProperties"] is False, "schema should forbid unknown top-level keys"


def test_environment_reads_locations_from_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path))
    monkeypatch.setenv("FLYWHEEL_MLFLOW_PORT", "5999")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    env = Environment()
    assert env.home == tmp_path, "FLYWHEEL_HOME should set the home folder"
    assert env.tracking_uri == "http://127.0.0.1:5999", "the embedded MLflow URL should follow the port"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:80")
    assert Environment().tracking_uri == "http://mlflow.internal:80", "MLFLOW_TRACKING_URI should win"


def test_generic_variables_do_not_leak_into_locations(monkeypatch: pytest.MonkeyPatch) -> None:
    # given the shell's own HOME and HOST (not Flywheel's variables)
    for var in ("FLYWHEEL_HOME", "FLYWHEEL_HOST", "FLYWHEEL_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", "/somewhere/else")
    monkeypatch.setenv("HOST", "example.org")
    env = Environment()
    # then the defaults hold: only FLYWHEEL_* variables move things
    assert env.home == PROJECT_ROOT / ".flywheel", f"HOME must not set FLYWHEEL_HOME: {env.home}"
    assert env.host == "127.0.0.1", f"HOST must not set the bind address: {env.host}"
