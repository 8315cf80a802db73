"""The workers identity: in the embedded stack's users and credentials, minted per worker by
`choreo credentials worker NAME`, and what `choreo worker` connects with."""

import json

from pydantic import SecretStr
from typer.testing import CliRunner

from choreo.cli import app
from choreo.client import ClientSettings
from choreo.credentials import Credentials
from choreo.stack import nats_users
from shared.access import WORKERS


def test_the_embedded_stack_has_a_workers_identity() -> None:
    creds = Credentials()
    creds.complete()
    (user,) = [u for u in nats_users(creds) if u.user == WORKERS]
    assert user.publish is not None
    assert "wf.>" in user.publish
    assert "$KV.choreo_steps.>" in user.publish
    assert not any(s.startswith("data.") for s in user.publish)
    assert WORKERS in creds.s3


def test_credentials_worker_mints_a_user_of_its_own() -> None:
    result = CliRunner().invoke(app, ["credentials", "worker", "acme", "--json"])
    assert result.exit_code == 0, result.output
    minted = json.loads(result.stdout)
    assert minted["user"] == "worker-acme"
    assert minted["env"]["CHOREO_NATS_PASSWORD"] == minted["password"]
    assert len(minted["password"]) >= 24
    assert "$JS.API.STREAM.DELETE.WORKFLOW" in minted["permissions"]["publish"]["deny"]
    text = CliRunner().invoke(app, ["credentials", "worker", "acme"]).stdout
    assert '{user: "worker-acme", password: "' in text
    bad = CliRunner().invoke(app, ["credentials", "worker", "Acme-1"])
    assert bad.exit_code == 2


def test_choreo_worker_connects_as_the_worker_identity() -> None:
    settings = ClientSettings(
        nats_user="admin",
        nats_password=SecretStr("a"),
        worker_nats_user=WORKERS,
        worker_nats_password=SecretStr("w"),
        worker_s3_access_key=SecretStr("key"),
        worker_s3_secret_key=SecretStr("secret"),
    ).for_worker()
    assert settings.nats_user == WORKERS
    assert settings.nats_password == SecretStr("w")
    assert settings.s3_access_key == SecretStr("key")
    assert ClientSettings(nats_user="admin").for_worker().nats_user == "admin"
