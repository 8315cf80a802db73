"""The files deploy/render.py derives from the code are current, and nats-server accepts them."""

import subprocess
from pathlib import Path

import pytest

from deploy.render import NATS_USERS, main, password_variable
from tests.deploy.support import ROOT, tool

NATS_CONFIGS = [
    ROOT / "deploy" / "nats" / "nats.conf",
    ROOT / "k8s" / "base" / "nats" / "nats.conf",
    ROOT / "deploy" / "nats" / "nats-cluster.conf",
]


def test_generated_files_are_current() -> None:
    assert main(["--check"]) == 0, "regenerate: python deploy/render.py"


@pytest.mark.parametrize("config", NATS_CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_nats_server_accepts_the_config_with_every_password_set(config: Path) -> None:
    users = ["admin", *NATS_USERS]
    env = {password_variable(u): f"pw-{u}" for u in users} | {
        "POD_NAME": "nats-0",
        "NATS_SERVER_NAME": "nats-2",
    }
    server = tool("nats-server")
    ok = subprocess.run(
        [str(server), "-c", str(config), "-t"], env=env, capture_output=True, text=True, check=False
    )
    assert ok.returncode == 0, ok.stderr
    # A password left unset is an error naming it, not an open door.
    del env[password_variable("audit")]
    unset = subprocess.run(
        [str(server), "-c", str(config), "-t"], env=env, capture_output=True, text=True, check=False
    )
    assert unset.returncode != 0
    assert password_variable("audit") in unset.stderr + unset.stdout


def test_the_console_has_its_own_nats_user_in_every_config() -> None:
    for config in NATS_CONFIGS:
        assert '{user: "console", password: $NATS_CONSOLE_PASSWORD,' in config.read_text()
