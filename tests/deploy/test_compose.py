"""docker-compose.yml: valid for Docker Compose, fails fast without its secrets, and runs each
service's own module with a healthcheck."""

import importlib.util
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from services.console.settings import ConsoleSettings
from services.fraud.settings import FraudSettings
from services.ingest.settings import IngestSettings
from services.store.settings import StoreSettings
from services.transform.settings import TransformSettings
from shared.access import CONSOLE
from shared.settings import Settings
from shared.subjects import SERVICES
from tests.deploy.support import ROOT, tool

ENV_EXAMPLE = ROOT / ".env.example"
# One-shot jobs: they exit 0, and what needs them waits for service_completed_successfully.
ONE_SHOT = {"minio-init", "secrets-check"}


def compose(
    tmp_path: Path, *args: str, env_file: Path = ENV_EXAMPLE
) -> subprocess.CompletedProcess[str]:
    """`docker compose ...` through the docker CLI when there is one (the plugin from the
    venv), else the same Compose binary standalone; no engine is needed for `config`."""
    plugin = tool("docker-compose")
    base = ["--project-directory", str(ROOT), "-f", str(ROOT / "docker-compose.yml")]
    base += ["--env-file", str(env_file)]
    docker = shutil.which("docker")
    env = {k: v for k, v in os.environ.items() if k not in _compose_variables()}
    if docker:
        plugins = tmp_path / "docker-config" / "cli-plugins"
        plugins.mkdir(parents=True, exist_ok=True)
        (plugins / "docker-compose").symlink_to(plugin)
        env["DOCKER_CONFIG"] = str(plugins.parent)
        command = [docker, "compose", *base, *args]
    else:
        command = [str(plugin), *base, *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, check=False)


def _compose_variables() -> set[str]:
    lines = ENV_EXAMPLE.read_text().splitlines()
    return {line.split("=", 1)[0] for line in lines if line and not line.startswith("#")}


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    result = compose(tmp_path_factory.mktemp("compose"), "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def test_compose_config_is_valid(tmp_path: Path) -> None:
    result = compose(tmp_path, "config", "-q")
    assert result.returncode == 0, result.stderr


def test_a_missing_secret_stops_compose_naming_it(tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    kept = [
        line
        for line in ENV_EXAMPLE.read_text().splitlines()
        if not line.startswith("POSTGRES_AUDIT_PASSWORD=")
    ]
    env_file.write_text("\n".join(kept) + "\n")
    result = compose(tmp_path, "config", "-q", env_file=env_file)
    assert result.returncode != 0
    assert "POSTGRES_AUDIT_PASSWORD" in result.stderr


def test_every_service_runs_its_own_module(config: dict[str, Any]) -> None:
    services = config["services"]
    for name in SERVICES:
        command = services[name]["command"]
        assert command == ["python", "-m", f"services.{name}"], name
        assert importlib.util.find_spec(f"services.{name}.__main__") is not None, name


def test_the_console_reads_the_services_as_its_own_user(config: dict[str, Any]) -> None:
    console = config["services"][CONSOLE]
    assert console["command"] == ["python", "-m", "services.console"]
    env = console["environment"]
    assert env["CHOREO_NATS_USER"] == CONSOLE
    assert (
        env["CHOREO_NATS_PASSWORD"]
        == config["services"]["nats"]["environment"]["NATS_CONSOLE_PASSWORD"]
    )
    for service in SERVICES:
        assert env[f"CHOREO_{service.upper()}_URL"] == f"http://{service}:8000"
    # Its key for ingest's run and dead-letter APIs is one ingest accepts.
    accepted = config["services"]["ingest"]["environment"]["CHOREO_INGEST_API_KEYS"]
    assert env["CHOREO_CONSOLE_INGEST_API_KEY"] in accepted.split(",")
    assert not {"CHOREO_S3_ACCESS_KEY", "CHOREO_S3_SECRET_KEY", "CHOREO_DATABASE_URL"} & set(env)
    # Published on the host's loopback only.
    assert [p["host_ip"] for p in console["ports"]] == ["127.0.0.1"]


def test_every_container_has_a_healthcheck_and_waits_for_healthy_dependencies(
    config: dict[str, Any],
) -> None:
    for name, service in config["services"].items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no", name
        else:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dependency, condition in service.get("depends_on", {}).items():
            expected = (
                "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            )
            assert condition["condition"] == expected, f"{name} -> {dependency}"


def test_each_service_gets_only_its_own_credentials(config: dict[str, Any]) -> None:
    for name in SERVICES:
        env = config["services"][name]["environment"]
        assert env["CHOREO_NATS_USER"] == name
        others = [k for k in env if any(f"_{o.upper()}_" in k for o in SERVICES if o != name)]
        assert others == [], f"{name} sees {others}"
    assert "CHOREO_S3_ACCESS_KEY" not in config["services"]["audit"]["environment"]


SETTINGS: dict[str, type[Settings]] = {
    "ingest": IngestSettings,
    "transform": TransformSettings,
    "store": StoreSettings,
    "fraud": FraudSettings,
    "audit": Settings,
    CONSOLE: ConsoleSettings,
}


def _published(env: dict[str, str]) -> set[str]:
    """The variables that carry a placeholder of .env.example (all are `replace-me-*`)."""
    return {name for name, value in env.items() if "replace-me" in str(value)}


@pytest.mark.parametrize("service", [*SERVICES, CONSOLE])
def test_a_service_refuses_every_published_placeholder_in_prod(
    config: dict[str, Any], service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {k: str(v) for k, v in config["services"][service]["environment"].items()}
    assert env["CHOREO_ENVIRONMENT"] == "prod"
    expected = _published(env)
    assert "CHOREO_NATS_PASSWORD" in expected
    for name in [n for n in os.environ if n.startswith("CHOREO_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as refused:
        SETTINGS[service]()
    named = {name for name in expected if name in str(refused.value)}
    assert named == expected, str(refused.value)
    assert "replace-me" not in str(refused.value)  # the message names, never shows, them


def test_nothing_holding_a_secret_starts_before_the_placeholder_check(
    config: dict[str, Any],
) -> None:
    services = config["services"]
    checked = services["secrets-check"]["environment"]
    secrets = {n for n in _compose_variables() if n.endswith(("PASSWORD", "SECRET_KEY", "_KEYS"))}
    assert secrets <= set(checked)
    for server in ("nats", "minio", "postgres", "grafana"):
        condition = services[server]["depends_on"]["secrets-check"]["condition"]
        assert condition == "service_completed_successfully", server


def test_the_placeholder_check_names_each_placeholder_and_passes_real_secrets(
    config: dict[str, Any],
) -> None:
    checked = {k: str(v) for k, v in config["services"]["secrets-check"]["environment"].items()}
    command = [sys.executable, "-m", "shared.secrets_check"]
    refused = subprocess.run(
        command, env=checked, cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert refused.returncode == 1
    named = {n for n in checked if re.search(rf"\b{n}\b", refused.stderr)}
    assert named == _published(checked), refused.stderr
    real = {name: secrets.token_hex(24) for name in checked}
    passed = subprocess.run(
        command, env=real, cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert passed.returncode == 0, passed.stderr


def test_the_cluster_profile_runs_three_nats_nodes_and_r3_streams(tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    cluster = [
        "NATS_CONF=nats-cluster.conf",
        "CHOREO_NATS_URL=nats://nats:4222,nats://nats-2:4222,nats://nats-3:4222",
        "CHOREO_STREAM_REPLICAS=3",
    ]
    env_file.write_text(ENV_EXAMPLE.read_text() + "\n".join(cluster) + "\n")
    result = compose(
        tmp_path / "cluster",
        "--profile",
        "cluster",
        "config",
        "--format",
        "json",
        env_file=env_file,
    )
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    nodes = ["nats", "nats-2", "nats-3"]
    names = [services[n]["environment"]["NATS_SERVER_NAME"] for n in nodes]
    assert names == ["nats-1", "nats-2", "nats-3"]
    for node in nodes:
        assert services[node]["command"] == ["-c", "/etc/nats/nats-cluster.conf"]
    stores = {v["source"] for n in nodes for v in services[n]["volumes"] if v["target"] == "/data"}
    assert len(stores) == 3, "each node keeps its own store"
    for name in SERVICES:
        env = services[name]["environment"]
        assert env["CHOREO_NATS_URL"].split(",") == [f"nats://{n}:4222" for n in nodes]
        assert env["CHOREO_STREAM_REPLICAS"] == "3"
    # Without the profile: one server, one replica.
    single = compose(tmp_path / "single", "config", "--format", "json")
    assert single.returncode == 0, single.stderr
    one = json.loads(single.stdout)["services"]
    assert "nats-2" not in one
    assert one["nats"]["command"] == ["-c", "/etc/nats/nats.conf"]
    assert one["ingest"]["environment"]["CHOREO_STREAM_REPLICAS"] == "1"
