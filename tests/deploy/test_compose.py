"""docker-compose.yml: valid for Docker Compose, fails fast without its secrets, and runs each
service's own module with a healthcheck."""

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from shared.subjects import SERVICES
from tests.deploy.support import ROOT, tool

ENV_EXAMPLE = ROOT / ".env.example"
# One-shot jobs: they exit 0, and what needs them waits for service_completed_successfully.
ONE_SHOT = {"minio-init"}


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
