from pathlib import Path

import pytest

from custintel.settings import Settings


def test_env_prefix_sets_home_and_derived_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CUSTINTEL_HOME", str(tmp_path / "h"))
    s = Settings()
    assert s.home_dir == (tmp_path / "h").resolve()
    assert s.lake_dir == s.home_dir / "lake"
    assert s.quarantine_dir == s.home_dir / "quarantine"
    assert s.reports_dir == s.home_dir / "reports"
    assert s.tracking_uri == f"sqlite:///{s.home_dir / 'mlflow.db'}"


def test_explicit_tracking_uri_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTINTEL_MLFLOW_TRACKING_URI", "postgresql://postgres@127.0.0.1/test")
    assert Settings().tracking_uri == "postgresql://postgres@127.0.0.1/test"


def test_building_settings_touches_no_disk(tmp_path: Path) -> None:
    home = tmp_path / "not-yet"
    s = Settings(home=home)
    _ = (s.lake_dir, s.quarantine_dir, s.reports_dir, s.tracking_uri)
    assert not home.exists()


def test_invalid_setting_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTINTEL_INGEST_BATCH_ROWS", "zero")
    with pytest.raises(ValueError, match="ingest_batch_rows"):
        Settings()
    monkeypatch.setenv("CUSTINTEL_INGEST_BATCH_ROWS", "10")
    with pytest.raises(ValueError, match="greater than or equal to 1000"):
        Settings()


def test_ingest_memory_limit_must_be_a_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTINTEL_INGEST_MEMORY_LIMIT", "lots")
    with pytest.raises(ValueError, match="ingest_memory_limit"):
        Settings()
    monkeypatch.setenv("CUSTINTEL_INGEST_MEMORY_LIMIT", "512MB")
    assert Settings().ingest_memory_limit == "512MB"


def test_settings_travel_to_a_flow_whole_without_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """What a command hands a flow: every non-secret value, paths absolute; secrets come from the runner's env."""
    import json

    monkeypatch.chdir(tmp_path)
    given = Settings(
        home=Path("rel-home"),
        training_config=Path("configs/training.yaml"),
        redis_url="redis://127.0.0.1:6379/3",
        serving_api_keys="k1,k2",
        serving_log_salt="pepper",
        identity_hash_salt="salt",  # type: ignore[arg-type]
        retention_calls_per_week=42,
    )
    passed = given.to_flow()
    text = json.dumps(passed)  # a Prefect parameter: JSON
    assert "k1" not in text and "pepper" not in text and '"salt"' not in text
    values = passed["values"]
    assert values["home"] == str(tmp_path / "rel-home") and values["training_config"] == str(
        tmp_path / "configs" / "training.yaml"
    )
    monkeypatch.chdir(tmp_path.parent)  # the worker runs elsewhere
    monkeypatch.setenv("CUSTINTEL_SERVING_API_KEYS", "worker-key")
    got = Settings.from_flow(json.loads(text))
    assert got.home_dir == tmp_path / "rel-home" and got.training_config == tmp_path / "configs" / "training.yaml"
    assert got.redis_url == "redis://127.0.0.1:6379/3" and got.retention_calls_per_week == 42
    assert got.api_keys == ["worker-key"] and got.serving_log_salt is None  # secrets: the runner's own


def test_a_url_with_a_password_is_taken_from_the_runner_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql+psycopg://ml:s3cret@db.internal:5432/mlflow"
    passed = Settings(mlflow_tracking_uri=url).to_flow()
    assert "s3cret" not in str(passed) and passed["from_environment"] == ["mlflow_tracking_uri"]
    monkeypatch.delenv("CUSTINTEL_MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ValueError, match="CUSTINTEL_MLFLOW_TRACKING_URI"):
        Settings.from_flow(passed)
    monkeypatch.setenv("CUSTINTEL_MLFLOW_TRACKING_URI", url)
    assert Settings.from_flow(passed).tracking_uri == url
    assert Settings.from_flow(None).home == Settings().home  # no settings given: this process's environment
