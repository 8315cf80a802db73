"""Credentials: generated once, completed when a newer Choreo needs more, never rotated."""

import json
from pathlib import Path

from choreo.credentials import DATABASES, Credentials
from shared.subjects import SERVICES


def test_created_complete_and_private(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    creds = Credentials.load_or_create(path)
    assert set(creds.nats) == {"admin", *SERVICES, "console", "workers"}
    assert set(creds.postgres) == {"postgres", *DATABASES}
    assert path.stat().st_mode & 0o777 == 0o600
    assert Credentials.load_or_create(path) == creds  # read back, not regenerated


def test_an_older_file_gains_the_new_roles_and_keeps_the_old_secrets(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    creds = Credentials.load_or_create(path)
    raw = json.loads(path.read_text())
    del raw["postgres"]["choreo_sources"]
    path.write_text(json.dumps(raw))
    again = Credentials.load_or_create(path)
    assert "choreo_sources" in again.postgres
    assert again.postgres["choreo_audit"] == creds.postgres["choreo_audit"]
    assert "choreo_sources" in json.loads(path.read_text())["postgres"]
