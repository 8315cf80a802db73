-- medallion: raw customers -> bronze (as landed, with audit columns) -> silver (typed,
-- cleaned, de-duplicated) -> gold (aggregates). The contract (columns and rules) is in
-- services/transform/sql/pipelines.py.
--
-- Input view `customers` (read as text): customer_id, name, email, country, signup_date,
-- plan, monthly_spend. Parameters bound by the step: $run_id, $started_at, $customers_uri.

-- Bronze: every input row exactly as read, plus where and when it was ingested and a hash
-- of its text (the seven fields joined with commas, a missing field as empty text).
CREATE TABLE bronze AS
WITH landed AS (
    SELECT
        CAST(customer_id AS VARCHAR) AS customer_id,
        CAST(name AS VARCHAR) AS name,
        CAST(email AS VARCHAR) AS email,
        CAST(country AS VARCHAR) AS country,
        CAST(signup_date AS VARCHAR) AS signup_date,
        CAST(plan AS VARCHAR) AS plan,
        CAST(monthly_spend AS VARCHAR) AS monthly_spend
    FROM customers
)
SELECT
    *,
    CAST($started_at AS TIMESTAMPTZ) AS ingested_at,
    CAST($customers_uri AS VARCHAR) AS source,
    CAST($run_id AS VARCHAR) AS run_id,
    md5(concat_ws(',',
        coalesce(customer_id, ''), coalesce(name, ''), coalesce(email, ''),
        coalesce(country, ''), coalesce(signup_date, ''), coalesce(plan, ''),
        coalesce(monthly_spend, '')
    )) AS row_hash
FROM landed;

-- Every bronze row typed and trimmed, with the first rule it breaks (NULL: none).
CREATE TABLE checked AS
WITH cleaned AS (
    SELECT
        nullif(trim(customer_id), '') AS customer_id,
        nullif(trim(name), '') AS name,
        nullif(lower(trim(email)), '') AS email,
        nullif(upper(trim(country)), '') AS country,
        nullif(trim(signup_date), '') AS signup_date_text,
        -- Strict formats, so that what is valid does not depend on DuckDB's casts.
        CASE WHEN regexp_full_match(trim(signup_date), '[0-9]{4}-[0-9]{2}-[0-9]{2}')
            THEN TRY_CAST(trim(signup_date) AS DATE) END AS signup_date,
        nullif(lower(trim(plan)), '') AS plan,
        nullif(trim(monthly_spend), '') AS monthly_spend_text,
        CASE WHEN regexp_full_match(trim(monthly_spend), '-?[0-9]{1,10}(\.[0-9]{1,2})?')
            THEN CAST(trim(monthly_spend) AS DECIMAL(12, 2)) END AS monthly_spend,
        row_hash
    FROM bronze
)
SELECT
    customer_id, name, email, country, signup_date, plan, monthly_spend, row_hash,
    CASE
        WHEN customer_id IS NULL THEN 'missing customer_id'
        WHEN email IS NULL THEN 'missing email'
        WHEN NOT regexp_full_match(email, '[^@\s]+@[^@\s]+\.[^@\s]+') THEN 'invalid email'
        WHEN country IS NULL THEN 'missing country'
        WHEN signup_date_text IS NULL THEN 'missing signup_date'
        WHEN signup_date IS NULL THEN 'invalid signup_date'
        WHEN plan IS NULL THEN 'missing plan'
        WHEN monthly_spend_text IS NULL THEN 'missing monthly_spend'
        WHEN monthly_spend IS NULL THEN 'invalid monthly_spend'
        WHEN monthly_spend < 0 THEN 'negative monthly_spend'
    END AS reason
FROM cleaned;

-- Set aside, with the reason; the step reports their count as `rejected`.
CREATE VIEW rejected AS
SELECT * FROM checked WHERE reason IS NOT NULL;

-- Silver: the valid rows, one per customer: the latest signup_date wins (ties: the greater
-- row_hash, so the choice never depends on the order rows were read in).
CREATE TABLE silver AS
SELECT customer_id, name, email, country, signup_date, plan, monthly_spend, row_hash
FROM checked
WHERE reason IS NULL
QUALIFY row_number() OVER (
    PARTITION BY customer_id ORDER BY signup_date DESC, row_hash DESC
) = 1
ORDER BY customer_id;

-- Gold: customers and monthly spend per country and plan.
CREATE VIEW gold AS
SELECT
    country,
    plan,
    count(*) AS customers,
    sum(monthly_spend) AS total_monthly_spend,
    round(avg(monthly_spend), 2) AS avg_monthly_spend
FROM silver
GROUP BY country, plan
ORDER BY country, plan;
