"""Secrets stay out of what the CLI prints unless asked: `choreo env` masks them,
`--show-secrets` prints them, and prod refuses every published placeholder."""

import json
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from choreo.cli import app
from choreo.state import write_env_file
from services.ingest.settings import IngestSettings
from services.transform.settings import TransformSettings
from shared.redact import MASK, redact_env, redact_text
from shared.secrets_check import weak_variables
from shared.settings import Settings

PASSWORD = "s3cr3t-Pa55_word"
ENV = {
    "CHOREO_NATS_URL": "nats://127.0.0.1:4222",
    "CHOREO_NATS_USER": "admin",
    "CHOREO_NATS_PASSWORD": PASSWORD,
    "CHOREO_S3_ACCESS_KEY": "CHOREOKEY",
    "CHOREO_S3_SECRET_KEY": PASSWORD + "-s3",
    "CHOREO_DATABASE_URL": f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/choreo",
    "CHOREO_INGEST_SOURCES": json.dumps({"sales": f"postgresql://r:{PASSWORD}@h:1/sales"}),
    "CHOREO_INGEST_API_KEYS": "key-one,key-two",
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://u:pw@h:5432/db", f"postgresql://u:{MASK}@h:5432/db"),
        ('{"a": "postgresql://u:p%40w@h/db"}', f'{{"a": "postgresql://u:{MASK}@h/db"}}'),
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("http://host:80/path@x", "http://host:80/path@x"),
        ("failed: postgresql://u:pw@h/db refused", f"failed: postgresql://u:{MASK}@h/db refused"),
    ],
)
def test_redact_text_masks_the_password_of_every_url(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_redact_env_masks_secrets_by_name_and_in_urls() -> None:
    shown = redact_env(ENV)
    assert PASSWORD not in json.dumps(shown)
    assert "CHOREOKEY" not in json.dumps(shown)
    assert shown["CHOREO_NATS_URL"] == ENV["CHOREO_NATS_URL"]
    assert shown["CHOREO_NATS_USER"] == "admin"
    assert shown["CHOREO_DATABASE_URL"] == f"postgresql://postgres:{MASK}@127.0.0.1:5432/choreo"


def test_choreo_env_masks_unless_asked(tmp_path: Path) -> None:
    write_env_file(tmp_path, ENV)
    runner = CliRunner()
    masked = runner.invoke(app, ["env", "--data-dir", str(tmp_path)])
    masked_json = runner.invoke(app, ["env", "--json", "--data-dir", str(tmp_path)])
    shown = runner.invoke(app, ["env", "--show-secrets", "--json", "--data-dir", str(tmp_path)])
    assert masked.exit_code == masked_json.exit_code == shown.exit_code == 0, masked.output
    for output in (masked.stdout, masked_json.stdout):
        assert PASSWORD not in output
        assert "key-one" not in output
        assert "CHOREO_NATS_URL" in output
    assert json.loads(shown.stdout) == ENV


def test_choreo_env_lines_export_in_a_shell(tmp_path: Path) -> None:
    env = {**ENV, "CHOREO_NATS_PASSWORD": "it's $HOME `id`"}
    write_env_file(tmp_path, env)
    lines = CliRunner().invoke(app, ["env", "--show-secrets", "--data-dir", str(tmp_path)])
    script = 'set -a; eval "$1"; printf %s "$CHOREO_NATS_PASSWORD"'
    got = subprocess.run(
        ["/bin/bash", "-c", script, "-", lines.stdout], capture_output=True, text=True, check=True
    )
    assert got.stdout == env["CHOREO_NATS_PASSWORD"]


def test_choreo_env_without_a_stack_says_what_to_do(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["env", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "choreo up" in result.stderr


@pytest.mark.parametrize(
    "placeholder", ["replace-me-admin", "REPLACE-ME-x", "changeme", "change-me", "minioadmin", ""]
)
def test_prod_refuses_placeholders_of_every_kind_of_secret(placeholder: str) -> None:
    cases: list[tuple[str, dict[str, object], type[Settings]]] = [
        ("CHOREO_NATS_PASSWORD", {"nats_password": placeholder}, Settings),
        ("CHOREO_S3_SECRET_KEY", {"s3_secret_key": placeholder}, Settings),
        (
            "CHOREO_DATABASE_URL",
            {"database_url": f"postgresql://u:{placeholder}@h/db"},
            Settings,
        ),
        (
            "CHOREO_INGEST_API_KEYS",
            {"ingest_api_keys": f"fine-key-123,{placeholder}"},
            IngestSettings,
        ),
        (
            "CHOREO_INGEST_SOURCES[sales]",
            {"ingest_sources": {"sales": f"postgresql://r:{placeholder}@h/sales"}},
            IngestSettings,
        ),
        (
            "CHOREO_TRANSFORM_DATABASE_URL",
            {"transform_database_url": f"postgresql://t:{placeholder}@h/analytics"},
            TransformSettings,
        ),
    ]
    for name, values, kind in cases:
        if placeholder == "" and name == "CHOREO_INGEST_API_KEYS":
            continue  # an empty item of the list is dropped, not a key
        with pytest.raises(ValidationError, match=name.replace("[", r"\[").replace("]", r"\]")):
            kind(environment="prod", **values)  # type: ignore[arg-type]
        kind(environment="dev", **values)  # type: ignore[arg-type]


def test_prod_takes_real_secrets() -> None:
    real = "9f8e7d6c5b4a39281706f5e4d3c2b1a0"
    Settings(
        environment="prod",
        nats_password=real,
        s3_secret_key=real,
        database_url=f"postgresql://u:{real}@h/db",
    )


def test_the_placeholder_check_judges_secrets_by_name_and_urls() -> None:
    env = {
        "GRAFANA_ADMIN_PASSWORD": "replace-me-grafana",
        "MINIO_ROOT_USER": "choreo-root",  # a user name, not a secret
        "S3_FRAUD_SECRET_KEY": "9f8e7d6c5b4a3928",
        "SOME_DSN": "postgresql://u:changeme@h/db",
        "PATH": "/usr/bin",
    }
    assert weak_variables(env) == ["GRAFANA_ADMIN_PASSWORD", "SOME_DSN"]
