"""Services never import one another; shared/ imports no service and no CLI
(docs/reference/subjects-and-streams.md)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "__init__.py").exists())
# The CLI may use a service's pure domain modules, nothing else of it.
CLI_MAY_IMPORT = {"services.fraud.domain", "services.fraud.feedback"}  # both pure


def imports(package: Path) -> set[str]:
    found: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
    return found


def test_the_five_services_and_the_console_exist() -> None:
    assert SERVICES == ["audit", "console", "fraud", "ingest", "store", "transform"]


def test_shared_imports_no_service_and_no_cli() -> None:
    bad = {m for m in imports(ROOT / "shared") if m.split(".")[0] in {"services", "choreo"}}
    assert bad == set()


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_no_other_service_nor_the_cli(service: str) -> None:
    bad = {
        m
        for m in imports(ROOT / "services" / service)
        if m.split(".")[0] == "choreo"
        or (m.startswith("services.") and not m.startswith(f"services.{service}"))
    }
    assert bad == set()


def test_cli_imports_only_pure_domains_of_services() -> None:
    used = {m for m in imports(ROOT / "choreo") if m.startswith("services")}
    assert used <= CLI_MAY_IMPORT
