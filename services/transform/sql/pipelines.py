r"""The named pipelines of `transform.sql`: a SQL script each (`<name>.sql` beside this
module), plus what the step needs to know about it: the input views it reads and the
relations it writes.

A script may create any tables and views. Each output is a relation the script creates,
written as one Parquet object; a relation named `rejected`, if the script creates one,
holds the rows it set aside, and its row count is the step's `rejected`.

`sales_report` (input `sales`: order_id, day, region, product, quantity, unit_price)
    One output, `sales_report`, with columns
    `day` DATE, `region` VARCHAR, `product` VARCHAR, `orders` BIGINT, `quantity` BIGINT,
    `revenue` DOUBLE, and these rows (sorted by day, region, product, NULLs last):
    - per (day, region, product): `orders` = distinct order_id, `quantity` = sum of
      quantity, `revenue` = sum of quantity * unit_price, rounded to 2 decimals;
    - after each day's rows, that day's total: region and product NULL;
    - last, the grand total: day, region and product NULL (always present: 0, 0, 0.0
      when no row is valid).
    A totals row counts each order once, however many products it has.
    Rejected (left out, counted): a row whose order_id, region or product is NULL or
    empty, whose day does not cast to DATE, whose quantity is not a whole number >= 0, or
    whose unit_price is not a number >= 0. Region and product are never NULL in a valid
    row, so a NULL in them always marks a totals row.

`medallion` (input `customers`, read as text: customer_id, name, email, country,
signup_date, plan, monthly_spend)
    Three outputs:
    - `bronze`: every input row, its fields as text exactly as read, plus `ingested_at`
      (TIMESTAMPTZ: when the step started), `source` (the input's URI), `run_id`, and
      `row_hash` (md5 of the seven fields joined with commas, a missing field as "").
    - `silver`: the valid rows, trimmed and typed: customer_id, name, email (lower case),
      country (upper case), signup_date DATE, plan (lower case), monthly_spend
      DECIMAL(12,2), row_hash; one per customer_id, the latest signup_date winning (ties:
      the greater row_hash).
    - `gold`: per (country, plan): `customers`, `total_monthly_spend` DECIMAL,
      `avg_monthly_spend` DOUBLE rounded to 2 decimals; ordered by country, plan.
    Rejected (set aside, before de-duplication, with the first rule broken): customer_id,
    email, country, signup_date, plan or monthly_spend blank once trimmed; an email not
    matching `[^@\s]+@[^@\s]+\.[^@\s]+`; a signup_date not `YYYY-MM-DD` or not a real
    date; a monthly_spend not matching `-?[0-9]{1,10}(\.[0-9]{1,2})?`, or negative. A name
    may be blank.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

SQL_DIR: Final = Path(__file__).parent


@dataclass(frozen=True)
class SqlPipeline:
    name: str
    inputs: tuple[str, ...]
    """The views the script reads; the step's `inputs` must name exactly these."""
    outputs: tuple[str, ...]
    """The relations the script creates that the step writes, in this order."""
    text_inputs: frozenset[str] = field(default_factory=frozenset)
    """Inputs whose CSV columns are read as text, untyped (a raw layer keeps "0012")."""

    @property
    def path(self) -> Path:
        return SQL_DIR / f"{self.name}.sql"

    def script(self) -> str:
        return self.path.read_text()


PIPELINES: Final[dict[str, SqlPipeline]] = {
    pipeline.name: pipeline
    for pipeline in (
        SqlPipeline("sales_report", inputs=("sales",), outputs=("sales_report",)),
        SqlPipeline(
            "medallion",
            inputs=("customers",),
            outputs=("bronze", "silver", "gold"),
            text_inputs=frozenset({"customers"}),
        ),
    )
}
