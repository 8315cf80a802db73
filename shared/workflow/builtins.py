"""The built-in step kinds, each declared as a contract: pydantic models of its `with`
(unknown keys refused) and of its output, its owner, a one-line description and an example.

`shared.workflow.kinds` turns these into the table the validator reads, `choreo steps`
prints and docs/steps.md is generated from. The services implement them (`services/<owner>/
steps.py`) and keep their own run-time checks for what only the run can know.
"""

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from shared.subjects import NOTIFY

Layer = Literal["raw", "staging", "curated"]
OutputLayer = Literal["staging", "curated"]
# The pipelines the transform service ships (a unit test keeps these in step with it).
PathwayPipeline = Literal["clean", "sales_report", "summary"]
SqlPipeline = Literal["sales_report", "medallion"]


def exactly_one(*groups: tuple[str, ...]) -> ConfigDict:
    """`with` must hold exactly one key of each group."""
    return ConfigDict(
        extra="forbid",
        json_schema_extra={
            "allOf": [{"oneOf": [{"required": [key]} for key in group]} for group in groups]
        },
    )


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Output(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- ingest ---------------------------------------------------------------------------------


class PostgresQueryWith(Params):
    source: str = Field(
        description="a configured source's name (CHOREO_INGEST_SOURCES), never a connection string"
    )
    sql: str = Field(description="the query, run read-only")
    params: list[JsonValue] = Field(default=[], description="the values of $1, $2, ...")
    format: Literal["jsonl", "parquet"] = Field(default="jsonl", description="of the landed rows")


class PostgresQueryOutput(Output):
    uri: str = Field(description="where the rows landed (raw layer)")
    rows: int
    columns: list[str]
    format: str


class FileWith(Params):
    model_config = exactly_one(("path", "uri"))
    path: str | None = Field(
        default=None, description="below CHOREO_INGEST_FILE_ROOT; hidden files are never read"
    )
    uri: str | None = Field(default=None, description="an s3://bucket/key to land as is")
    format: Literal["csv", "json", "jsonl"] | None = Field(
        default=None, description="default: from the name's suffix"
    )


class FileOutput(Output):
    uri: str = Field(description="where the file landed (raw layer)")
    rows: int
    format: str


class HttpFetchWith(Params):
    url: str = Field(pattern=r"^https?://", description="http or https")
    headers: dict[str, str] = Field(default={}, description="request headers")


class HttpFetchOutput(Output):
    uri: str = Field(description="where the body landed (raw layer)")
    bytes: int
    status: int
    content_type: str


# -- transform ------------------------------------------------------------------------------


class PathwayWith(Params):
    pipeline: PathwayPipeline
    input: str = Field(description="s3:// URI of a JSON array or JSONL of row objects")
    params: dict[str, JsonValue] = Field(default={}, description="the pipeline's parameters")
    layer: OutputLayer = Field(default="staging", description="where the result is written")


class PathwayOutput(Output):
    uri: str
    rows: int
    rejected: int
    engine: str = Field(description="pathway or python")


class SqlWith(Params):
    model_config = exactly_one(("sql", "pipeline"))
    sql: str | None = Field(
        default=None, description="statements; the last one a query (its result: `result`)"
    )
    pipeline: SqlPipeline | None = Field(default=None, description="a shipped pipeline")
    inputs: dict[str, JsonValue] = Field(
        description="view name -> s3:// URI, prefix ending in /, wildcard key, list of these, "
        'or {"uri", "format"}'
    )
    params: dict[str, JsonValue] = Field(default={}, description="values of $name parameters")
    layer: OutputLayer = Field(default="staging", description="where outputs are written")
    key: str | None = Field(
        default=None,
        description="the output's key (a prefix with several outputs); default "
        "runs/<run>/<step>/<name>.parquet",
    )


class SqlOutput(Output):
    uri: str | None = Field(default=None, description="with one output")
    uris: dict[str, str] | None = Field(default=None, description="per output, with several")
    rows: int | dict[str, int]
    rejected: int
    engine: str


# -- store ----------------------------------------------------------------------------------


class PutWith(Params):
    model_config = exactly_one(("layer", "bucket"), ("data", "text"))
    key: str = Field(description="the object key")
    layer: Layer | None = None
    bucket: str | None = None
    data: JsonValue = Field(default=None, description="written as JSON")
    text: str | None = Field(default=None, description="written as is")


class PutOutput(Output):
    uri: str
    etag: str
    sha256: str
    bytes: int


class PromoteWith(Params):
    from_: str = Field(alias="from", description="s3:// URI of the object to copy")
    layer: Layer
    key: str


class PromoteOutput(Output):
    uri: str
    sha256: str


# -- audit ----------------------------------------------------------------------------------


class LogWith(Params):
    message: str
    details: dict[str, JsonValue] | None = None


class LogOutput(Output):
    event_id: str


NOTIFY_PREFIXES = [subject.removesuffix(".>") for subject in NOTIFY.subjects]


class NotifyWith(Params):
    subject: str = Field(
        pattern=rf"^({'|'.join(NOTIFY_PREFIXES)})\.[^\s*>]+$",
        description=f"under {' or '.join(NOTIFY.subjects)}",
        json_schema_extra={"x-error": f"must be under {' or '.join(NOTIFY.subjects)}"},
    )
    data: JsonValue = Field(description="the notification's data")


class NotifyOutput(Output):
    subject: str
    seq: int | None = Field(description="its sequence in the NOTIFY stream")


# -- fraud ----------------------------------------------------------------------------------


class ScoreBatchWith(Params):
    input: str = Field(description="s3:// URI of transactions, JSONL, optionally gzip'd")
    layer: OutputLayer = Field(default="curated", description="where the report is written")


class ScoreBatchOutput(Output):
    uri: str = Field(description="alerts.json")
    csv_uri: str = Field(description="alerts.csv")
    input: str
    scored: int
    skipped: int
    alerts: int
    decisions: dict[str, int]
    model: str
    thresholds: dict[str, float]


@dataclass(frozen=True)
class Contract:
    uses: str
    service: str
    description: str
    params: type[BaseModel]
    output: type[BaseModel]
    example: dict[str, Any]


BUILTINS: tuple[Contract, ...] = (
    Contract(
        "ingest.postgres_query",
        "ingest",
        "Run a read-only query on a configured PostgreSQL source; land the rows.",
        PostgresQueryWith,
        PostgresQueryOutput,
        {"source": "sales", "sql": "select * from sales where day = $1", "params": ["2026-01-31"]},
    ),
    Contract(
        "ingest.file",
        "ingest",
        "Land a local file or an S3 object in the raw layer and count its rows.",
        FileWith,
        FileOutput,
        {"path": "sales.csv"},
    ),
    Contract(
        "ingest.http_fetch",
        "ingest",
        "GET a URL and land the body in the raw layer (5xx, 408, 429 retried).",
        HttpFetchWith,
        HttpFetchOutput,
        {"url": "https://example.com/rates.json"},
    ),
    Contract(
        "transform.pathway",
        "transform",
        "Run a named row pipeline over a JSON or JSONL object; write the result.",
        PathwayWith,
        PathwayOutput,
        {"pipeline": "summary", "input": "{{ steps.fetch.output.uri }}"},
    ),
    Contract(
        "transform.sql",
        "transform",
        "DuckDB SQL (yours or a shipped pipeline) over lake objects; outputs as Parquet.",
        SqlWith,
        SqlOutput,
        {
            "pipeline": "sales_report",
            "inputs": {"sales": "{{ steps.extract.output.uri }}"},
            "layer": "curated",
        },
    ),
    Contract(
        "store.put",
        "store",
        "Write inline JSON data or text to a lake layer or bucket.",
        PutWith,
        PutOutput,
        {"layer": "curated", "key": "reports/{{ inputs.day }}.json", "data": {"ok": True}},
    ),
    Contract(
        "store.promote",
        "store",
        "Copy an object into a lake layer with lineage metadata.",
        PromoteWith,
        PromoteOutput,
        {"from": "{{ steps.report.output.uri }}", "layer": "curated", "key": "reports/daily"},
    ),
    Contract(
        "audit.log",
        "audit",
        "Write a message (and details) to the audit log, once per step.",
        LogWith,
        LogOutput,
        {"message": "report {{ steps.report.output.uri }} written"},
    ),
    Contract(
        "notify.publish",
        "audit",
        "Publish data on a subject under notify.> or reports.> (kept in stream NOTIFY).",
        NotifyWith,
        NotifyOutput,
        {"subject": "reports.daily", "data": {"uri": "{{ steps.report.output.uri }}"}},
    ),
    Contract(
        "fraud.score_batch",
        "fraud",
        "Score a batch of transactions; write the alerts report (JSON and CSV).",
        ScoreBatchWith,
        ScoreBatchOutput,
        {"input": "{{ steps.extract.output.uri }}"},
    ),
)
