"""Fraud verdicts in the audit trail: `fraud.scored` -> fraud_scores, `fraud.alert` ->
fraud_alerts (once each, in the events' transaction), read by the audit API and shown by
its `GET /v1/audit/events/{id}`."""

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
from typer.testing import CliRunner

from choreo.cli import app
from choreo.servers.ports import free_port
from choreo.stack import ServiceProcess
from services.audit.adapters import PgEventStore
from services.audit.app import create_app as audit_app
from services.audit.domain import event_row
from services.audit.projections import fraud_row
from shared.envelope import Event, parse_envelope
from shared.ids import uuid7
from shared.settings import Settings
from tests.support import pulled, serve, settings_env, start_process, stop_process, wait_for

pytestmark = pytest.mark.integration


TX = {
    "card_id": "card-7",
    "terminal_id": "term-3",
    "amount": 912.5,
    "currency": "EUR",
    "timestamp": "2024-01-15T10:01:00Z",
}
REASONS = ["amount_vs_habit: 9.1x the card's usual amount 100.00", "new_country: FR"]
RULES = {"amount_vs_habit": 0.75, "new_country": 0.6}


def transaction(tx_id: str) -> Event:
    data = {"transaction_id": tx_id, **TX, "country": "FR"}
    return Event(id=f"evt-{tx_id}", type="transaction", source="tests", data=data)


def verdict(tx: Event, event_type: str, decision: str = "block", **changes: Any) -> Event:
    """A fraud.scored or fraud.alert event derived from `tx`, as the fraud service makes it."""
    assert isinstance(tx.data, dict)
    data = {
        "transaction_id": tx.data["transaction_id"],
        **TX,
        "transaction_event_id": tx.id,
        "score": 0.91,
        "decision": decision,
        "reasons": REASONS,
        "rules": RULES,
        "model": "test-model-1",
        **changes,
    }
    suffix = "scored" if event_type == "fraud.scored" else "alert"
    return tx.child(
        type=event_type, source="choreo/fraud", data=data, id=f"{tx.id}:{suffix}", subject=None
    )


async def record(store: PgEventStore, events: list[Event]) -> int:
    delivered = [pulled(e, n, subject=e.type, stream="FRAUD") for n, e in enumerate(events, 1)]
    return await store.insert_events(
        [event_row(p) for p in delivered],
        fraud=[r for r in (fraud_row(p.envelope) for p in delivered) if r is not None],
    )


async def test_verdicts_are_projected_once(store: PgEventStore, db: asyncpg.Connection) -> None:
    tx_id = f"tx-{uuid7()}"
    tx = transaction(tx_id)
    scored, alert = verdict(tx, "fraud.scored"), verdict(tx, "fraud.alert")
    assert await record(store, [scored, alert]) == 2
    # A redelivery, and a re-score of the same transaction under another event id (a
    # re-post): the transaction keeps its first score; the alert table keeps each alert id.
    rescored = verdict(tx, "fraud.scored", score=0.1, decision="allow")
    rescored = rescored.model_copy(update={"id": f"{scored.id}-again"})
    assert await record(store, [scored, alert, rescored]) == 1

    score = await store.fraud_score(tx_id)
    assert score is not None
    assert score["score"] == pytest.approx(0.91)
    assert (score["decision"], score["model"], score["scored_event_id"]) == (
        "block",
        "test-model-1",
        scored.id,
    )
    assert score["timestamp"] == datetime(2024, 1, 15, 10, 1, tzinfo=UTC)
    assert score["scored_at"] == scored.time
    assert (score["rules"], score["reasons"]) == (RULES, REASONS)
    alerts = await db.fetch(
        "SELECT id, decision, amount, created_at FROM fraud_alerts WHERE transaction_id = $1",
        tx_id,
    )
    assert [tuple(a) for a in alerts] == [(alert.id, "block", 912.5, alert.time)]


async def test_a_verdict_that_breaks_the_contract_is_audited_but_not_projected(
    store: PgEventStore, db: asyncpg.Connection
) -> None:
    tx_id = f"tx-{uuid7()}"
    broken = verdict(transaction(tx_id), "fraud.scored", score="high")
    assert fraud_row(parse_envelope(broken.to_bytes())) is None
    assert await record(store, [broken]) == 1
    assert await db.fetchval("SELECT type FROM events WHERE id = $1", broken.id) == "fraud.scored"
    assert await store.fraud_score(tx_id) is None


async def test_alerts_since_newest_first(store: PgEventStore) -> None:
    now = datetime.now(UTC)
    txs = [transaction(f"tx-{uuid7()}") for _ in range(3)]
    alerts = [
        verdict(tx, "fraud.alert").model_copy(update={"time": now - timedelta(minutes=m)})
        for tx, m in zip(txs, (90, 20, 5), strict=True)
    ]
    await record(store, alerts)
    ours = {a.id for a in alerts}
    recent = [a["id"] for a in await store.fraud_alerts(now - timedelta(hours=1), 1000)]
    assert [i for i in recent if i in ours] == [alerts[2].id, alerts[1].id]
    everything = [a["id"] for a in await store.fraud_alerts(None, 1000)]
    assert [i for i in everything if i in ours] == [alerts[2].id, alerts[1].id, alerts[0].id]
    assert len(await store.fraud_alerts(None, 1)) == 1


async def test_audit_api_and_event_lookup_show_the_fraud_verdict(settings: Settings) -> None:
    tx_id = f"tx-{uuid7()}"
    tx, unscored = transaction(tx_id), transaction(f"tx-{uuid7()}")
    scored, alert = verdict(tx, "fraud.scored"), verdict(tx, "fraud.alert")
    client = await nats.connect(settings.nats_url)
    try:
        js = client.jetstream()
        async with serve(audit_app(settings)) as audit:
            for event in (tx, unscored):
                await js.publish("data.transaction", event.to_bytes(), headers=event.headers())
            for event in (scored, alert):
                await js.publish(event.type, event.to_bytes(), headers=event.headers())

            async def lookup() -> dict[str, Any]:
                response = await audit.get(f"/v1/audit/events/{tx.id}")
                return dict(response.json()) if response.status_code == 200 else {}

            found = await wait_for(lookup, lambda body: body.get("fraud") is not None)
            plain = await wait_for(
                lambda: audit.get(f"/v1/audit/events/{unscored.id}"),
                lambda r: r.status_code == 200,
            )
            alerts = (await audit.get("/v1/audit/fraud/alerts", params={"since": "1h"})).json()
            future = await audit.get(
                "/v1/audit/fraud/alerts",
                params={"since": (datetime.now(UTC) + timedelta(hours=1)).isoformat()},
            )
            bad_since = await audit.get("/v1/audit/fraud/alerts", params={"since": "yesterday"})
            score = await audit.get(f"/v1/audit/fraud/scores/{tx_id}")
            missing = await audit.get("/v1/audit/fraud/scores/never-scored")
    finally:
        await client.close()

    assert found["fraud"] == {
        "score": 0.91,
        "decision": "block",
        "reasons": REASONS,
        "model": "test-model-1",
        "scored_at": scored.time.isoformat(),
    }
    assert found["event"]["type"] == "transaction"
    assert plain.json()["fraud"] is None
    ours = [a for a in alerts if a["id"] == alert.id]
    assert len(ours) == 1
    assert ours[0]["transaction_id"] == tx_id
    assert (ours[0]["decision"], ours[0]["card_id"], ours[0]["amount"]) == (
        "block",
        "card-7",
        912.5,
    )
    assert all(a["id"] != alert.id for a in future.json())
    assert bad_since.status_code == 422
    assert "since 'yesterday'" in bad_since.text
    assert score.status_code == 200
    assert score.json()["scored_event_id"] == scored.id
    assert score.json()["rules"] == RULES
    assert missing.status_code == 404


async def test_choreo_fraud_alerts_lists_the_newest_alerts(
    settings: Settings, store: PgEventStore, tmp_path: Path
) -> None:
    tx_id = f"tx-{uuid7()}"
    card = f"card-{tx_id}"
    alert = verdict(transaction(tx_id), "fraud.alert", "review", score=0.64, card_id=card)
    await record(store, [alert])
    env = {**os.environ, **settings_env(settings), "CHOREO_HTTP_PORT": str(free_port())}
    audit = ServiceProcess("audit", int(env["CHOREO_HTTP_PORT"]), env, tmp_path / "audit.log")
    cli_env = {"CHOREO_DATA_DIR": str(tmp_path), "CHOREO_AUDIT_URL": audit.url, "COLUMNS": "250"}
    runner = CliRunner()
    await start_process(audit)
    try:
        table = runner.invoke(app, ["fraud", "alerts", "--since", "10m"], env=cli_env)
        as_json = runner.invoke(app, ["fraud", "alerts", "--json", "--limit", "1000"], env=cli_env)
        bad = runner.invoke(app, ["fraud", "alerts", "--since", "soon"], env=cli_env)
    finally:
        await stop_process(audit)
    down = runner.invoke(app, ["fraud", "alerts"], env=cli_env)

    assert table.exit_code == 0, table.output
    row = next(line for line in table.output.splitlines() if card in line)
    for shown in ("review", "0.64", "term-3", "912.50 EUR", REASONS[0]):
        assert shown in row
    assert as_json.exit_code == 0, as_json.output
    ours = [a for a in json.loads(as_json.output) if a["id"] == alert.id]
    assert [a["transaction_id"] for a in ours] == [tx_id]
    assert bad.exit_code == 1
    assert "since 'soon'" in bad.output
    assert down.exit_code == 1
    assert "is the stack running?" in down.output
