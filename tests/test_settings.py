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
