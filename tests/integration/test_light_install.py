"""A light install: Choreo without extras pulls no Pathway, matplotlib or server wheel, and
every service that needs none of them starts from it.

One venv for the module, from requirements/runtime.lock (what the image installs), then
Choreo itself; the services run from that venv against the session's servers, from a
directory outside the checkout so that they import the installed copy. That the lock is
what `pip install .` resolves (pip-compile of pyproject.toml's dependencies) and holds
none of the extras is checked by tests/deploy/test_images.py."""

import json
import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

from choreo.servers.ports import free_port
from choreo.stack import ServiceProcess
from shared.settings import Settings
from tests.deploy.test_images import PATHWAY, PLOT, SERVERS
from tests.support import settings_env, start_process, stop_process

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# Everything but transform, which runs Pathway (the `pathway` extra, its own image).
LIGHT_SERVICES = ("ingest", "store", "audit", "fraud")


def pip(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


@pytest.fixture(scope="module")
def light(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The interpreter of a venv with requirements/runtime.lock and Choreo, no extras."""
    home = tmp_path_factory.mktemp("light")
    venv.create(home / "venv", with_pip=True)
    python = home / "venv" / "bin" / "python"
    # --no-compile: bytecode is written on first import; compiling every file takes minutes
    # on a loaded machine.
    lock = pip(
        python, "install", "-q", "--no-compile", "-r", str(ROOT / "requirements/runtime.lock")
    )
    assert lock.returncode == 0, lock.stderr[-3000:]
    # A regular install (as the image does): the venv holds the code. From a copy of what
    # the image copies: pip builds in the source tree, which would leave build/ behind.
    source = home / "source"
    for name in ("pyproject.toml", "README.md"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    for package in ("shared", "services", "choreo"):
        shutil.copytree(
            ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    own = pip(python, "install", "-q", "--no-compile", "--no-deps", str(source))
    assert own.returncode == 0, own.stderr[-3000:]
    return python


def installed(python: Path) -> set[str]:
    listing = pip(python, "list", "--format", "json")
    assert listing.returncode == 0, listing.stderr
    return {p["name"].lower().replace("_", "-") for p in json.loads(listing.stdout)}


def test_no_extra_is_installed(light: Path, tmp_path: Path) -> None:
    found = installed(light)
    assert "choreo" in found
    assert not (PATHWAY | PLOT | SERVERS) & found
    location = subprocess.run(
        [str(light), "-c", "import services.ingest as m; print(m.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert location.startswith(str(light.parent.parent))  # the venv's copy, not the checkout


async def test_the_services_without_pathway_start_from_it(
    light: Path, settings: Settings, tmp_path: Path
) -> None:
    env = {**os.environ, **settings_env(settings), "CHOREO_LOG_FORMAT": "json"}
    env.pop("PYTHONPATH", None)
    processes = []
    try:
        for name in LIGHT_SERVICES:
            port = free_port()
            process = ServiceProcess(
                name,
                port,
                {**env, "CHOREO_HTTP_PORT": str(port)},
                tmp_path / f"{name}.log",
                python=str(light),
                cwd=tmp_path,
            )
            processes.append(process)
            await start_process(process)  # returns once /readyz answers 200
    finally:
        for process in processes:
            await stop_process(process)
