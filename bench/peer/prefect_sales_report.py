"""The peer: the `sales-report` work as a Prefect 3 flow, run in Prefect's default local mode.

Runs in its own virtual environment (bench/.peer-venv, made by bench/peer.py from
requirements.txt beside this file), never in Choreo's. The same work as the Choreo
workflow `workflows/sales-report`: query one day of the `sales` source database, aggregate
it (the `sales_report` contract: per day/region/product, per day, and overall: orders,
quantity, revenue), store the report as JSON lines in the same S3 server's curated bucket,
and log the completion to the same PostgreSQL (`audit_log`). Choreo's run also publishes a
NATS notification, which has no counterpart here.

Usage: python prefect_sales_report.py CONFIG.json; prints one JSON document of timings.
Each task returns the seconds its own body took, so the flow can tell Prefect's overhead
per task (the task call's wall time minus its body) from the work.
"""

import json
import sys
import time
import uuid
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import psycopg
from prefect import flow, task


@task
def query_sales(dsn: str, day: str) -> tuple[list[tuple[Any, ...]], float]:
    started = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "select order_id, day, region, product, quantity, unit_price from sales"
            " where day = %s::date order by order_id",
            (day,),
        ).fetchall()
    return rows, time.perf_counter() - started


@task
def aggregate(rows: list[tuple[Any, ...]]) -> tuple[list[dict[str, Any]], float]:
    started = time.perf_counter()
    groups: dict[tuple[str | None, ...], list[Any]] = defaultdict(lambda: [set(), 0, Decimal(0)])
    for order_id, day, region, product, quantity, unit_price in rows:
        for key in ((str(day), region, product), (str(day), None, None), (None, None, None)):
            total = groups[key]
            total[0].add(order_id)
            total[1] += quantity
            total[2] += quantity * unit_price
    report = [
        {
            "day": day,
            "region": region,
            "product": product,
            "orders": len(orders),
            "quantity": quantity,
            "revenue": float(round(revenue, 2)),
        }
        for (day, region, product), (orders, quantity, revenue) in sorted(
            groups.items(), key=lambda item: tuple((v is None, v or "") for v in item[0])
        )
    ]
    return report, time.perf_counter() - started


@task
def store_report(s3: dict[str, str], key: str, report: list[dict[str, Any]]) -> tuple[str, float]:
    started = time.perf_counter()
    client = boto3.client(
        "s3",
        endpoint_url=s3["endpoint"],
        aws_access_key_id=s3["access_key"],
        aws_secret_access_key=s3["secret_key"],
        region_name="us-east-1",
    )
    body = "\n".join(json.dumps(row) for row in report).encode()
    client.put_object(Bucket=s3["bucket"], Key=key, Body=body)
    return f"s3://{s3['bucket']}/{key}", time.perf_counter() - started


@task
def log_completion(dsn: str, message: str, orders: int) -> float:
    started = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "insert into audit_log (id, runid, stepid, message, details)"
            " values (%s, %s, %s, %s, %s::jsonb)",
            (
                f"prefect:{uuid.uuid4()}",
                None,
                "log-completion",
                message,
                json.dumps({"orders": orders}),
            ),
        )
    return time.perf_counter() - started


@flow
def sales_report(config: dict[str, Any]) -> dict[str, float]:
    """The four tasks in sequence; returns wall and body seconds per task."""
    timings: dict[str, float] = {}

    def timed(name: str, call: Any) -> Any:
        started = time.perf_counter()
        result = call()
        timings[f"{name}_wall_s"] = time.perf_counter() - started
        return result

    rows, timings["query_s"] = timed(
        "query", lambda: query_sales(config["sales_dsn"], config["date"])
    )
    report, timings["aggregate_s"] = timed("aggregate", lambda: aggregate(rows))
    key = f"{config['key_prefix']}{config['date']}.json"
    uri, timings["store_s"] = timed("store", lambda: store_report(config["s3"], key, report))
    message = f"sales report for {config['date']} stored at {uri}"
    timings["log_s"] = timed("log", lambda: log_completion(config["audit_dsn"], message, len(rows)))
    return timings


@task
def noop() -> float:
    return 0.0


@flow
def noop_chain(length: int) -> list[float]:
    """`length` no-op tasks in sequence; the wall time of each call."""
    walls = []
    for _ in range(length):
        started = time.perf_counter()
        noop()
        walls.append(time.perf_counter() - started)
    return walls


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    started = time.perf_counter()
    sales_report(config)  # warm-up: starts Prefect's temporary local server, imports
    warm_up_s = time.perf_counter() - started
    runs = []
    for _ in range(config["repeat"]):
        started = time.perf_counter()
        timings = sales_report(config)
        runs.append({"wall_s": time.perf_counter() - started, **timings})
    noop_calls = [
        wall for _ in range(config["chains"]) for wall in noop_chain(config["chain_length"])
    ]
    print(json.dumps({"warm_up_s": warm_up_s, "runs": runs, "noop_task_s": noop_calls}))


if __name__ == "__main__":
    main()
