"""The web console in a real headless Chromium (Debian's `chromium`, driven through its
`chromium-driver` by Selenium) against one embedded stack started with `choreo up`.

One stack for the whole module: the machine running the tests is small and shared. The
README's screenshot of a run page (docs/images/console-run.png) is written here.
"""

import asyncio
import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import nats
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from choreo.runs import request_run
from shared.ids import uuid7
from shared.workflow.events import run_requested
from shared.workflow.validate import validate_workflow
from tests.server_support import stack_s3
from tests.support import choreo, stack_env

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "images" / "console-run.png"
CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")
WAIT_S = 90.0

if CHROMIUM is None or DRIVER is None:
    pytest.skip(
        "Debian's chromium and chromium-driver are not installed (scripts/test.sh installs "
        "them as root)",
        allow_module_level=True,
    )


def workflow(key: str, source: str | None = None, attempts: int = 1) -> dict[str, Any]:
    """land -> promote -> log; `source` makes promote read that object instead: while it
    is missing, promote fails (and is retried after 3 s while `attempts` last)."""
    document = {
        "name": "console-check",
        "steps": [
            {
                "id": "land",
                "uses": "store.put",
                # A write that fails on a loaded machine is tried again: the failure these
                # tests make is promote's, never land's.
                "retry": {"max_attempts": 3, "backoff_s": [1]},
                "with": {"layer": "raw", "key": f"console/{key}.json", "data": [{"n": 1}]},
            },
            {
                "id": "promote",
                "uses": "store.promote",
                "needs": ["land"],
                "retry": {"max_attempts": attempts, "backoff_s": [3]},
                "with": {
                    "from": source or "{{ steps.land.output.uri }}",
                    "layer": "curated",
                    "key": f"console/{key}.json",
                },
            },
            {
                "id": "log",
                "uses": "audit.log",
                "needs": ["promote"],
                "with": {"message": "console check {{ steps.promote.output.uri }}"},
            },
        ],
    }
    assert validate_workflow(document, {}).ok
    return document


@pytest.fixture(scope="module")
def data_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="choreo-console-"))
    yield directory
    choreo("down", "--purge", data_dir=directory, check=False)


@pytest.fixture(scope="module")
def env(data_dir: Path) -> dict[str, str]:
    info = json.loads(choreo("up", "--json", data_dir=data_dir).stdout)
    assert info["parts"]["console"]["status"] == "ready"
    return stack_env(data_dir)


@pytest.fixture(scope="module")
def url(env: dict[str, str]) -> str:
    return env["CHOREO_CONSOLE_URL"]


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="choreo-chromium-")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=DriverService(executable_path=DRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def start(env: dict[str, str], document: dict[str, Any], runid: str) -> None:
    async def go() -> None:
        client = await nats.connect(
            env["CHOREO_NATS_URL"],
            user=env["CHOREO_NATS_USER"],
            password=env["CHOREO_NATS_PASSWORD"],
        )
        try:
            await request_run(client.jetstream(), document, {}, runid=runid)
        finally:
            await client.close()

    asyncio.run(go())


def put(env: dict[str, str], key: str, body: bytes = b'[{"n": 2}]', bucket: str = "raw") -> None:
    async def go() -> None:
        async with stack_s3(env) as s3:
            await s3.put_object(Bucket=bucket, Key=key, Body=body)

    asyncio.run(go())


def wait(driver: WebDriver, condition: Callable[[WebDriver], Any], within: float = WAIT_S) -> Any:
    # The pages re-render as news arrives: an element found a moment ago may be gone.
    return WebDriverWait(
        driver, within, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,)
    ).until(condition)


def node_states(driver: WebDriver) -> dict[str, str]:
    """Each DAG node's state, read in one go (the page may re-render between two reads)."""
    found: dict[str, str] = driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#dag g.node')]"
        ".map((n) => [n.dataset.step, n.dataset.state]))"
    )
    return found


def run_status(driver: WebDriver) -> str:
    found: str = driver.execute_script(
        "const b = document.querySelector('#run-status .badge'); return b ? b.textContent : ''"
    )
    return found


def test_a_workflow_event_is_answered_by_its_stream_alone(env: dict[str, str]) -> None:
    """A JetStream publish is a request whose one reply must be the stream's ack: the
    console's live feed (a core NATS subscriber of `wf.>`) must not answer it too, or a
    publisher reading the first reply fails on an empty one."""
    event = run_requested(workflow(uuid7()), {}, uuid7(), source="choreo/test")

    async def replies() -> list[bytes]:
        client = await nats.connect(
            env["CHOREO_NATS_URL"],
            user=env["CHOREO_NATS_USER"],
            password=env["CHOREO_NATS_PASSWORD"],
        )
        try:
            inbox = client.new_inbox()
            subscription = await client.subscribe(inbox)
            await client.publish(event.type, event.to_bytes(), reply=inbox, headers=event.headers())
            received = [(await subscription.next_msg(timeout=10)).data]
            with contextlib.suppress(nats.errors.TimeoutError):
                while True:  # a second answer arrives within milliseconds, if at all
                    received.append((await subscription.next_msg(timeout=1)).data)
            return received
        finally:
            await client.close()

    answers = asyncio.run(replies())
    assert len(answers) == 1, answers
    assert json.loads(answers[0])["stream"] == "WORKFLOW"


def test_a_run_page_draws_the_dag_and_follows_it_live(
    browser: WebDriver, env: dict[str, str], url: str
) -> None:
    runid = uuid7()
    key = f"console/late-{runid}.json"
    browser.get(f"{url}/runs/{runid}")  # before the run exists: the page waits for it
    browser.execute_script("window.notReloaded = true")
    # promote's object is missing: its first attempt fails and it waits for a retry. Its
    # attempts, 3 s apart, leave a loaded machine a minute to see that and put the object.
    start(env, workflow(runid, source=f"s3://raw/{key}", attempts=20), runid)
    wait(browser, lambda d: node_states(d).get("promote") == "retrying")
    assert node_states(browser)["log"] == "waiting"
    put(env, key)
    seen: dict[str, set[str]] = {}

    def all_completed(driver: WebDriver) -> bool:
        states = node_states(driver)
        for step, state in states.items():
            seen.setdefault(step, set()).add(state)
        return set(states.values()) == {"completed"}

    wait(browser, all_completed)
    assert set(node_states(browser)) == {"land", "promote", "log"}
    # Both changed on the page as it was: no reload.
    assert {"retrying", "completed"} <= seen["promote"], seen
    assert browser.execute_script("return window.notReloaded") is True
    edges = browser.find_elements(By.CSS_SELECTOR, "#dag path.edge")
    assert len(edges) == 2
    wait(browser, lambda d: run_status(d) == "completed")

    # Per step: rendered `with` and output, the lake URI a link to the lake browser.
    def lake_links(driver: WebDriver) -> set[str]:
        found: list[str] = driver.execute_script(
            "return [...document.querySelectorAll(\"#step-promote a[href^='/lake?uri=']\")]"
            ".map((a) => a.textContent)"
        )
        return set(found)

    expected = {f"s3://raw/{key}", f"s3://curated/console/{runid}.json"}  # with, output
    wait(browser, lambda d: lake_links(d) == expected)
    # What the steps logged (store.promote says what it copied), per step.
    logged = wait(
        browser,
        lambda d: d.execute_script(
            "const p = document.querySelector('#step-promote pre.logs'); return p && p.textContent"
        ),
    )
    assert f"console/{runid}.json" in logged
    timeline = browser.find_element(By.ID, "timeline").text
    assert "wf.step.completed" in timeline
    assert "store" in timeline
    browser.save_screenshot(str(SCREENSHOT))


def test_a_failed_run_retried_from_its_page_completes(
    browser: WebDriver, env: dict[str, str], url: str
) -> None:
    runid = uuid7()
    missing = f"s3://raw/console/later-{runid}.json"
    start(env, workflow(runid, source=missing), runid)
    browser.get(f"{url}/runs/{runid}")
    wait(browser, lambda d: run_status(d) == "failed")
    assert node_states(browser)["promote"] == "failed"
    # The live state comes first; the step's error with the audit row, a moment later.
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#step-promote pre.error"))

    put(env, f"console/later-{runid}.json")

    # The page may re-render between finding the button and clicking it: found anew.
    def retry(driver: WebDriver) -> bool:
        driver.find_element(By.ID, "retry-run").click()
        return True

    wait(browser, retry)
    wait(browser, lambda d: run_status(d) == "completed")
    assert set(node_states(browser).values()) == {"completed"}


def test_the_runs_list_filters_and_shows_new_runs_live(
    browser: WebDriver, env: dict[str, str], url: str
) -> None:
    browser.get(f"{url}/?workflow=console-check")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr"))
    browser.execute_script("window.notReloaded = true")
    runid = uuid7()
    start(env, workflow(runid), runid)
    row = f"#runs-table tr[data-run='{runid}']"
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, row))
    assert browser.execute_script("return window.notReloaded") is True
    # Filtering by status through the form (the workflow filter stays).
    wait(browser, lambda d: "completed" in d.find_element(By.CSS_SELECTOR, row).text)
    select = browser.find_element(By.NAME, "status")
    select.find_element(By.CSS_SELECTOR, "option[value='completed']").click()
    browser.find_element(By.CSS_SELECTOR, "#filters button").click()
    wait(browser, lambda d: "status=completed" in d.current_url)
    rows = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr"))
    assert {r.find_element(By.CSS_SELECTOR, ".status").text for r in rows} == {"completed"}
    assert {r.find_elements(By.TAG_NAME, "td")[1].text for r in rows} == {"console-check"}
    assert runid in {r.get_attribute("data-run") for r in rows}
    # A run id prefix finds one run.
    browser.get(f"{url}/?runid={runid}")
    rows = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr"))
    assert [r.get_attribute("data-run") for r in rows] == [runid]


def test_an_events_page_shows_its_causation_chain(browser: WebDriver, url: str) -> None:
    browser.get(f"{url}/?workflow=console-check&status=completed")
    first = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr a"))
    first[0].click()
    completed = wait(
        browser,
        lambda d: [
            a
            for a in d.find_elements(By.CSS_SELECTOR, "#timeline a")
            if a.text == "wf.run.completed"
        ],
    )
    completed[0].click()
    rows = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#chain tbody tr"))
    types = [r.find_elements(By.TAG_NAME, "td")[2].text for r in rows]
    depths = [int(r.get_attribute("data-depth") or 0) for r in rows]
    assert types[0] == "wf.run.requested"
    assert "wf.step.completed" in types
    assert depths == sorted(depths)  # causes first ...
    assert depths[-1] == 0  # ... the event itself last (a run's end causes nothing)


def test_the_lake_previews_a_parquet_object(
    browser: WebDriver, env: dict[str, str], url: str, tmp_path: Path
) -> None:
    path = tmp_path / "sample.parquet"
    with duckdb.connect() as db:
        rows = "SELECT i AS id, 'row ' || i AS label FROM range(250) t(i)"
        db.execute(f"COPY ({rows}) TO '{path}' (FORMAT parquet)")
    key = f"console/{uuid7()}/sample.parquet"

    put(env, key, path.read_bytes(), bucket="curated")
    browser.get(f"{url}/lake?uri=s3://curated/{key.rsplit('/', 1)[0]}/")
    wait(browser, lambda d: d.find_elements(By.LINK_TEXT, "sample.parquet"))[0].click()
    rows = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#preview tbody tr"))
    assert len(rows) == 100
    headers = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "#preview th")]
    assert headers == ["id", "label"]
    assert rows[0].text.split() == ["0", "row", "0"]
    href = browser.find_element(By.ID, "download").get_attribute("href") or ""
    downloaded = httpx.get(href, follow_redirects=True, timeout=10)
    assert downloaded.status_code == 200
    assert downloaded.content == path.read_bytes()


def test_the_system_page_shows_parts_streams_and_lag(browser: WebDriver, url: str) -> None:
    browser.get(f"{url}/system")
    rows = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "tr[data-part]"))
    states = {
        r.get_attribute("data-part"): r.find_element(By.CSS_SELECTOR, ".badge").text for r in rows
    }
    assert states == dict.fromkeys(("ingest", "transform", "store", "audit", "fraud"), "ready")
    text = browser.find_element(By.ID, "system").text
    assert "WORKFLOW" in text
    assert "audit" in text  # a durable consumer, with its lag
    assert "Dead letters" in text


def test_actions_need_the_csrf_token(url: str, env: dict[str, str]) -> None:
    runid = uuid7()
    refused = httpx.post(f"{url}/api/runs/{runid}/cancel", timeout=10)
    assert refused.status_code == 403
    assert "x-choreo-csrf" in refused.json()["detail"]
    page = httpx.get(f"{url}/", timeout=10)
    token = page.cookies["choreo_csrf"]
    cross = httpx.post(
        f"{url}/api/runs/{runid}/cancel",
        cookies={"choreo_csrf": token},
        headers={"x-choreo-csrf": token, "origin": "http://evil.example"},
        timeout=10,
    )
    assert cross.status_code == 403
    allowed = httpx.post(
        f"{url}/api/runs/{runid}/cancel",
        cookies={"choreo_csrf": token},
        headers={"x-choreo-csrf": token},
        timeout=10,
    )
    assert allowed.status_code == 404  # past the guard: no such run in the audit trail
    assert env["CHOREO_NATS_PASSWORD"] not in page.text


def test_a_deployed_workflow_runs_from_its_form(
    browser: WebDriver, env: dict[str, str], url: str, data_dir: Path, tmp_path: Path
) -> None:
    document = {
        **workflow("deployed"),
        "name": "console-deployed",
        "inputs": {"label": {"type": "string", "default": "x"}},
    }
    document["steps"][2]["with"]["message"] = "label {{ inputs.label }}"
    file = tmp_path / "workflow.json"
    # Two versions: the page lists both, newest first.
    file.write_text(json.dumps({**document, "description": "the first version"}))
    choreo("deploy", str(file), data_dir=data_dir)
    file.write_text(json.dumps(document))
    choreo("deploy", str(file), data_dir=data_dir)
    # A workflow with triggers (which nothing in these tests matches), paused.
    triggered = {
        **workflow("triggered"),
        "name": "console-triggered",
        "inputs": {"event": {"type": "object"}},
        "on": [
            {"event": "console_never", "where": {"data.region": "eu"}},
            {"object": "raw/console-never/**.csv"},
        ],
    }
    file.write_text(json.dumps(triggered))
    choreo("deploy", str(file), data_dir=data_dir)
    choreo("trigger", "pause", "console-triggered", data_dir=data_dir)
    browser.get(f"{url}/workflows")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#dag-console-deployed g.node"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#dag-console-deployed path.edge")) == 2
    versions = browser.find_elements(
        By.CSS_SELECTOR, "#workflow-console-deployed .versions tr[data-version]"
    )
    assert [v.get_attribute("data-version") for v in versions] == ["2", "1"]
    section = browser.find_element(By.ID, "workflow-console-triggered")
    rows = section.find_elements(By.CSS_SELECTOR, ".triggers tr[data-trigger]")
    assert [r.get_attribute("textContent") for r in rows] == [
        'event console_neverdata.region = "eu"',
        "object writtenraw/console-never/**.csv",
    ]
    assert section.find_element(By.CSS_SELECTOR, ".triggers .badge").text == "paused"
    form = browser.find_element(By.CSS_SELECTOR, "form[data-workflow='console-deployed']")
    field = form.find_element(By.NAME, "label")
    field.clear()
    field.send_keys("from the form")
    form.find_element(By.TAG_NAME, "button").click()
    wait(browser, lambda d: "/runs/" in d.current_url)
    wait(browser, lambda d: run_status(d) == "completed")
    # The log step's rendered `with` holds the input typed into the form.
    wait(
        browser,
        lambda d: (
            "label from the form"
            in d.execute_script("return document.querySelector('#step-log')?.textContent ?? ''")
        ),
    )


def new_dead_letter(browser: WebDriver, env: dict[str, str], url: str) -> Any:
    """Publish an invalid sale to `data.in.sale` (ingest dead-letters it); its row on the
    dead letters page, once listed (the newest not replayed)."""
    bad = json.dumps({"id": f"console-{uuid7()}", "data": {"no_such_field": 1}}).encode()

    async def publish() -> None:
        client = await nats.connect(
            env["CHOREO_NATS_URL"],
            user=env["CHOREO_NATS_USER"],
            password=env["CHOREO_NATS_PASSWORD"],
        )
        try:
            await client.jetstream().publish("data.in.sale", bad)
        finally:
            await client.close()

    asyncio.run(publish())
    browser.get(f"{url}/dlq")

    def row(driver: WebDriver) -> Any:
        for candidate in driver.find_elements(By.CSS_SELECTOR, "#dlq-table tbody tr"):
            if (
                "data.in.sale" in candidate.text
                and not candidate.find_element(By.CSS_SELECTOR, ".replayed").text
            ):
                return candidate
        driver.refresh()
        return None

    return wait(browser, row)


def test_a_dead_letter_is_listed_shown_and_replayed(
    browser: WebDriver, env: dict[str, str], url: str
) -> None:
    found = new_dead_letter(browser, env, url)
    ident = found.get_attribute("data-dlq")
    found.find_element(By.CSS_SELECTOR, "button.show").click()
    payload = wait(
        browser,
        lambda d: d.find_element(By.CSS_SELECTOR, f"tr[data-dlq='{ident}'] pre.payload").text,
    )
    assert "no_such_field" in payload
    browser.find_element(By.CSS_SELECTOR, f"tr[data-dlq='{ident}'] button.replay").click()
    wait(
        browser,
        lambda d: d.find_element(By.CSS_SELECTOR, f"tr[data-dlq='{ident}'] .replayed").text,
    )


def test_old_dead_letters_are_purged_from_the_page(
    browser: WebDriver, env: dict[str, str], url: str
) -> None:
    ident = new_dead_letter(browser, env, url).get_attribute("data-dlq")
    time.sleep(2)  # so that it is older than the 1 s asked for below
    age = browser.find_element(By.ID, "purge-age")
    age.clear()
    age.send_keys("1s")
    browser.find_element(By.ID, "purge").click()
    browser.switch_to.alert.accept()
    note = wait(browser, lambda d: d.find_element(By.ID, "purge-note").text)
    assert note.startswith("purged "), note
    assert int(note.split()[1]) >= 1, note
    assert not browser.find_elements(By.CSS_SELECTOR, f"tr[data-dlq='{ident}']")
