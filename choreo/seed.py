"""Sample data for the example workflows: a deterministic `sales` table."""

import random
from datetime import date, timedelta
from decimal import Decimal

import asyncpg

REGIONS = ("north", "south", "east", "west")
PRODUCTS = {"widget": Decimal("9.50"), "gadget": Decimal("24.00"), "gizmo": Decimal("4.25")}
SALES_DDL = """
CREATE TABLE IF NOT EXISTS sales (
    order_id   text PRIMARY KEY,
    day        date          NOT NULL,
    region     text          NOT NULL,
    product    text          NOT NULL,
    quantity   integer       NOT NULL CHECK (quantity >= 0),
    unit_price numeric(10,2) NOT NULL CHECK (unit_price >= 0)
)
"""


def sales_rows(
    first_day: date, days: int, per_day: int, seed: int = 7
) -> list[tuple[str, date, str, str, int, Decimal]]:
    """`per_day` orders on each of `days` days from `first_day`, the same for a seed."""
    rng = random.Random(seed)  # noqa: S311 - sample data, not secrets
    rows = []
    for offset in range(days):
        day = first_day + timedelta(days=offset)
        for n in range(per_day):
            product = rng.choice(list(PRODUCTS))
            rows.append(
                (
                    f"o-{day:%Y%m%d}-{n:05d}",
                    day,
                    rng.choice(REGIONS),
                    product,
                    rng.randint(1, 12),
                    PRODUCTS[product],
                )
            )
    return rows


async def seed_sales(dsn: str, rows: list[tuple[str, date, str, str, int, Decimal]]) -> int:
    """Replace the `sales` table's contents with `rows`; return how many were written."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(SALES_DDL)
            await conn.execute("TRUNCATE sales")
            await conn.copy_records_to_table(
                "sales",
                records=rows,
                columns=["order_id", "day", "region", "product", "quantity", "unit_price"],
            )
    finally:
        await conn.close()
    return len(rows)
