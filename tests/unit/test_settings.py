"""Settings: read from `<data dir>/env`, exported variables win, placeholders refused in prod."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from choreo.state import write_env_file
from shared.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("CHOREO_"):
            monkeypatch.delenv(key)


def test_reads_the_env_file_the_stack_writes(tmp_path: Path) -> None:
    write_env_file(
        tmp_path,
        {
            "CHOREO_NATS_URL": "nats://127.0.0.1:4999",
            "CHOREO_NATS_PASSWORD": 'p"a\\ss',
            "CHOREO_DATABASE_URL": "postgresql://u:p@127.0.0.1:5999/choreo",
        },
    )
    settings = Settings.load(tmp_path)
    assert settings.nats_url == "nats://127.0.0.1:4999"
    assert settings.nats_password is not None
    assert settings.nats_password.get_secret_value() == 'p"a\\ss'
    assert settings.database_url is not None
    assert settings.database_url.get_secret_value().endswith(":5999/choreo")
    assert (tmp_path / "env").stat().st_mode & 0o777 == 0o600


def test_exported_variables_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_env_file(tmp_path, {"CHOREO_NATS_URL": "nats://from-file:1"})
    monkeypatch.setenv("CHOREO_NATS_URL", "nats://exported:2")
    assert Settings.load(tmp_path).nats_url == "nats://exported:2"


def test_data_dir_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_env_file(tmp_path, {"CHOREO_S3_REGION": "eu-west-3"})
    monkeypatch.setenv("CHOREO_DATA_DIR", str(tmp_path))
    assert Settings.load().s3_region == "eu-west-3"


def test_missing_env_file_means_defaults(tmp_path: Path) -> None:
    assert Settings.load(tmp_path / "nowhere").nats_url == "nats://127.0.0.1:4222"


def test_require_names_every_missing_setting(tmp_path: Path) -> None:
    settings = Settings.load(tmp_path)
    with pytest.raises(ValueError, match="CHOREO_DATABASE_URL, CHOREO_S3_ENDPOINT_URL"):
        settings.require("database_url", "s3_endpoint_url")


def test_placeholder_secrets_are_refused_in_prod() -> None:
    with pytest.raises(ValidationError, match="CHOREO_NATS_PASSWORD"):
        Settings(environment="prod", nats_password="changeme")
    Settings(environment="dev", nats_password="changeme")


@pytest.mark.parametrize(("attempt", "delay"), [(1, 0.5), (2, 1.0), (6, 30.0), (50, 30.0)])
def test_backoff_steps_then_stays_at_the_last(attempt: int, delay: float) -> None:
    assert Settings().backoff(attempt) == delay


def test_ingest_api_keys_are_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.ingest.settings import IngestSettings

    monkeypatch.setenv("CHOREO_INGEST_API_KEYS", "k1, k2,,")
    keys = IngestSettings().ingest_api_keys
    assert [k.get_secret_value() for k in keys] == ["k1", "k2"]
    monkeypatch.setenv("CHOREO_INGEST_API_KEYS", "")
    assert IngestSettings().ingest_api_keys == ()
