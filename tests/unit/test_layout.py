"""Services never import one another; shared/ imports no service and no CLI
(docs/reference/subjects-and-streams.md)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "__init__.py").exists())
# The CLI may use a service's pure domain modules, nothing else of it.
# All pure (model.py reads the shipped model file, nothing else).
CLI_MAY_IMPORT = {
    f"services.fraud.{module}"
    for module in ("domain", "feedback", "model", "records", "rules", "windows")
}


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


# -- one template for the five services (ARCHITECTURE.md, "A service") ----------------------

EVENT_SERVICES = ["audit", "fraud", "ingest", "store", "transform"]
TEMPLATE = {"__main__.py", "app.py", "settings.py", "steps.py"}


@pytest.mark.parametrize("service", EVENT_SERVICES)
def test_every_service_has_the_files_of_the_template(service: str) -> None:
    present = {p.name for p in (ROOT / "services" / service).iterdir()}
    assert present >= TEMPLATE, TEMPLATE - present


@pytest.mark.parametrize("service", EVENT_SERVICES)
def test_app_only_wires(service: str) -> None:
    """app.py defines create_app and nothing else; no handler (`on_*`), no subscription
    (those live with their consumer), no edited keyword dict; the settings narrowed with
    `<Service>Settings.narrow`, the subclass of services/<name>/settings.py."""
    tree = ast.parse((ROOT / "services" / service / "app.py").read_text())
    functions = [n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    assert functions == ["create_app"]
    nested = [
        n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
    ]
    assert not [name for name in nested if name.startswith("on_")]
    calls = [n.func for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert not [c for c in calls if isinstance(c, ast.Attribute) and c.attr == "subscriber"]
    # A subscription's keyword dict (shared/consumer.py) is used as built, never edited.
    assigns = [n for n in ast.walk(tree) if isinstance(n, ast.Assign)]
    built = {
        t.id
        for n in assigns
        if isinstance(n.value, ast.Call) and ast.unparse(n.value.func).endswith("_subscription")
        for t in n.targets
        if isinstance(t, ast.Name)
    }
    edited = [
        ast.unparse(t)
        for n in assigns
        for t in n.targets
        if isinstance(t, ast.Subscript | ast.Attribute)
        and {x.id for x in ast.walk(t) if isinstance(x, ast.Name)} & built
    ]
    assert edited == []
    settings = ast.parse((ROOT / "services" / service / "settings.py").read_text())
    (own,) = [n.name for n in settings.body if isinstance(n, ast.ClassDef)]
    narrowed = [
        c.value.id
        for c in calls
        if isinstance(c, ast.Attribute) and c.attr == "narrow" and isinstance(c.value, ast.Name)
    ]
    assert narrowed == [own]


@pytest.mark.parametrize("service", EVENT_SERVICES)
def test_main_serves_create_app(service: str) -> None:
    text = (ROOT / "services" / service / "__main__.py").read_text()
    assert f"from services.{service}.app import create_app" in text
    assert "run(create_app)" in text
