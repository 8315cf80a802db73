-- sales_report: revenue, orders and quantity per day, region and product, with per-day
-- totals and a grand total. The contract (columns, rules, order) is in
-- services/transform/sql/pipelines.py; the Pathway pipeline of the same name must match it.
--
-- Input view `sales`: order_id, day, region, product, quantity, unit_price (any types that
-- cast: Parquet, CSV or JSON rows, or `sale` events from the lake).

-- Typed rows and whether each one is valid. Every condition is NULL-safe: a NULL field
-- makes its IS NOT NULL test false, so `valid` is never NULL.
CREATE VIEW typed_sales AS
WITH cast_sales AS (
    SELECT
        CAST(order_id AS VARCHAR) AS order_id,
        TRY_CAST(day AS DATE) AS day,
        CAST(region AS VARCHAR) AS region,
        CAST(product AS VARCHAR) AS product,
        -- As DOUBLE first: casting 2.5 straight to BIGINT would round it to 3.
        TRY_CAST(quantity AS DOUBLE) AS quantity,
        TRY_CAST(unit_price AS DOUBLE) AS unit_price
    FROM sales
)
SELECT
    *,
    order_id IS NOT NULL AND order_id <> ''
    AND day IS NOT NULL
    AND region IS NOT NULL AND region <> ''
    AND product IS NOT NULL AND product <> ''
    AND quantity IS NOT NULL AND quantity >= 0 AND quantity = floor(quantity)
    AND unit_price IS NOT NULL AND unit_price >= 0 AS valid
FROM cast_sales;

-- The rows left out of the report; the step reports their count as `rejected`.
CREATE VIEW rejected AS
SELECT * EXCLUDE (valid) FROM typed_sales WHERE NOT valid;

-- One row per (day, region, product), then that day's total (region and product NULL),
-- then, last, the grand total (day too NULL).
CREATE VIEW sales_report AS
SELECT
    day,
    region,
    product,
    count(DISTINCT order_id) AS orders,
    coalesce(CAST(sum(quantity) AS BIGINT), 0) AS quantity,
    coalesce(round(sum(quantity * unit_price), 2), 0.0) AS revenue
FROM typed_sales
WHERE valid
GROUP BY GROUPING SETS ((day, region, product), (day), ())
ORDER BY day NULLS LAST, region NULLS LAST, product NULLS LAST;
