"""DuckDB over local files: the part of `transform.sql` that knows neither S3 nor workflows.

`run` opens an in-memory DuckDB, registers each input as a view named after it, locks the
database in a sandbox, runs the SQL and writes each output relation as a Parquet file. It
is synchronous and CPU-bound: the step calls it in a worker thread.

The sandbox: once the inputs are registered, DuckDB may touch only the input files and the
job's working directory (`allowed_paths`, `allowed_directories`, then
`enable_external_access=false`), no setting can be changed back (`lock_configuration`),
extensions cannot be installed or loaded, and Python variables are not visible as tables
(`python_enable_replacements=false`). So free-form SQL sees the step's inputs and nothing
else of the machine.
"""

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import duckdb

RESULT: Final = "result"
"""The output name of free-form SQL (its last statement's result)."""
REJECTED: Final = "rejected"
"""A relation of this name, when the SQL creates one, holds the rows it set aside."""

FORMATS: Final = {
    ".parquet": "parquet",
    ".csv": "csv",
    ".csv.gz": "csv",
    ".json": "json",
    ".json.gz": "json",
    ".jsonl": "json",
    ".jsonl.gz": "json",
    ".ndjson": "json",
    ".ndjson.gz": "json",
}
"""File suffix -> format. DuckDB reads gzip from the `.gz` suffix, so a local copy keeps it."""
IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# What DuckDB raises for the machine, not the SQL or the data: running again may succeed.
_TRANSIENT: Final = (duckdb.OutOfMemoryException, duckdb.InterruptException, duckdb.FatalException)


class SqlError(ValueError):
    """The SQL or an input is wrong: running it again cannot help."""


@dataclass(frozen=True)
class InputFiles:
    """One input: local files of one format, read as one view."""

    format: str
    paths: tuple[Path, ...]


@dataclass(frozen=True)
class SqlJob:
    script: str
    """One or more statements."""
    outputs: tuple[str, ...] = ()
    """Relations the script creates, written in this order. Empty: the script's last
    statement is a query, and its result is the output `result`."""
    params: Mapping[str, Any] = field(default_factory=dict)
    """Values of `$name` parameters; each statement is given those it uses."""
    text_inputs: frozenset[str] = frozenset()
    """Inputs whose CSV columns are all read as text."""


@dataclass(frozen=True)
class SqlResult:
    files: dict[str, Path]
    """Output name -> its Parquet file."""
    rows: dict[str, int]
    rejected: int


def input_suffix(key: str) -> str:
    """The suffix of FORMATS an object key ends with; ValueError when none."""
    # Longest first, so "x.jsonl.gz" is ".jsonl.gz", not ".gz" (which is no format).
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if key.lower().endswith(suffix):
            return suffix
    raise ValueError(f"{key!r}: unsupported file type; use one of {', '.join(FORMATS)}")


def run(
    inputs: Mapping[str, InputFiles],
    job: SqlJob,
    workdir: Path,
    opened: Callable[[duckdb.DuckDBPyConnection], object] | None = None,
) -> SqlResult:
    """Run `job` over `inputs` in a sandbox confined to `workdir`; outputs go to
    `workdir/out`. SqlError for a mistake in the SQL or the inputs. `opened` gets the
    connection first, so another thread can `interrupt()` it."""
    out_dir = workdir / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    with closing(connect(workdir)) as con:
        if opened is not None:
            opened(con)
        register_inputs(con, inputs, job.text_inputs)
        confine(con, workdir, [path for files in inputs.values() for path in files.paths])
        return execute(con, job, out_dir)


def connect(workdir: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory database that spills to `workdir`, sees no Python variables and draws
    no progress bar (it would write to the service's log)."""
    con = duckdb.connect(
        config={"temp_directory": str(workdir / "spill"), "python_enable_replacements": False}
    )
    con.execute("SET enable_progress_bar = false")  # a connection setting, not a global one
    return con


def register_inputs(
    con: duckdb.DuckDBPyConnection,
    inputs: Mapping[str, InputFiles],
    text_inputs: frozenset[str] = frozenset(),
) -> None:
    """A view per input, named after it. JSON rows that are CloudEvents envelopes (a
    `specversion` and an object `data`, as the lake lander writes them) are unwrapped: the
    view's rows are their payloads."""
    for name, files in inputs.items():
        if not IDENTIFIER.fullmatch(name):
            raise SqlError(f"input name {name!r} must be a SQL identifier ([A-Za-z_][A-Za-z0-9_]*)")
        reader = _reader(files, as_text=name in text_inputs)
        with _translated(f"input {name!r}"):
            con.execute(f"CREATE VIEW {_ident(name)} AS SELECT * FROM {reader}")
            if files.format == "json" and _is_envelope(con, name):
                con.execute(f"CREATE OR REPLACE VIEW {_ident(name)} AS SELECT data.* FROM {reader}")


def confine(con: duckdb.DuckDBPyConnection, workdir: Path, files: Sequence[Path] = ()) -> None:
    """From now on, `con` touches no file but `files` and those under `workdir`, for good."""
    directory = _literal(str(workdir.resolve()).rstrip("/") + "/")
    con.execute(f"SET allowed_directories = [{directory}]")
    if files:
        paths = ", ".join(_literal(str(path.resolve())) for path in files)
        con.execute(f"SET allowed_paths = [{paths}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def execute(con: duckdb.DuckDBPyConnection, job: SqlJob, out_dir: Path) -> SqlResult:
    """Run the script, then write each output to `out_dir/<name>.parquet`."""
    with _translated("the SQL"):
        statements = con.extract_statements(job.script)
    if not statements:
        raise SqlError("the SQL has no statement")
    outputs: dict[str, duckdb.Statement | str]
    if job.outputs:
        outputs = {name: f"FROM {_ident(name)}" for name in job.outputs}
    else:
        *statements, last = statements
        if last.type != duckdb.StatementType.SELECT:
            raise SqlError(
                f"the last statement must be a query (SELECT ...): its result is the output;"
                f" got {last.type.name}: {_head(last.query)}"
            )
        outputs = {RESULT: last}
    for number, statement in enumerate(statements, start=1):
        values = _values(statement, job.params)
        with _translated(f"statement {number} ({_head(statement.query)})", parameters=bool(values)):
            con.execute(statement.query, values)
    files: dict[str, Path] = {}
    rows: dict[str, int] = {}
    for name, query in outputs.items():
        files[name] = out_dir / f"{name}.parquet"
        rows[name] = _copy(con, query, files[name], job.params, name)
    return SqlResult(files, rows, _rejected(con))


def _copy(
    con: duckdb.DuckDBPyConnection,
    query: "duckdb.Statement | str",
    path: Path,
    params: Mapping[str, Any],
    name: str,
) -> int:
    """Write `query`'s rows to `path` as Parquet; the number of rows."""
    text, values = (query, {}) if isinstance(query, str) else (query.query, _values(query, params))
    sql = f"COPY ({_bare(text)}) TO {_literal(str(path))} (FORMAT parquet)"
    with _translated(f"output {name!r}"):
        written = con.execute(sql, values).fetchone()
    return int(written[0]) if written else 0


def _bare(query: str) -> str:
    """`query` without its trailing semicolons and comments (a statement's text keeps
    them), so that it can be wrapped in `COPY (...)`."""
    end = len(query)
    for position, kind in reversed(duckdb.tokenize(query)):
        if kind != duckdb.token_type.comment and not query.startswith(";", position):
            break
        end = position
    return query[:end]


def _rejected(con: duckdb.DuckDBPyConnection) -> int:
    try:
        counted = con.execute(f"SELECT count(*) FROM {_ident(REJECTED)}").fetchone()
    except duckdb.CatalogException:
        return 0  # the SQL set nothing aside
    except duckdb.Error as exc:
        raise SqlError(f"relation {REJECTED!r}: {exc}") from exc
    return int(counted[0]) if counted else 0


def _values(statement: duckdb.Statement, params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters `statement` uses, each with its value."""
    used = sorted(statement.named_parameters)
    missing = [name for name in used if name not in params]
    if missing:
        raise SqlError(
            f"{_head(statement.query)}: no value for "
            f"{', '.join('$' + name for name in missing)} (set it in with.params)"
        )
    return {name: params[name] for name in used}


def _reader(files: InputFiles, *, as_text: bool) -> str:
    paths = "[" + ", ".join(_literal(str(path.resolve())) for path in files.paths) + "]"
    if files.format == "parquet":
        return f"read_parquet({paths}, union_by_name = true)"
    if files.format == "csv":
        text = ", all_varchar = true, header = true" if as_text else ""
        return f"read_csv({paths}, union_by_name = true{text})"
    if files.format == "json":
        return f"read_json_auto({paths}, union_by_name = true)"
    raise SqlError(f"unknown input format {files.format!r}")


def _is_envelope(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    described = con.execute(f"SELECT column_name, column_type FROM (DESCRIBE {_ident(name)})")
    columns = dict(described.fetchall())
    return "specversion" in columns and str(columns.get("data", "")).startswith("STRUCT(")


@contextmanager
def _translated(what: str, *, parameters: bool = False) -> Iterator[None]:
    """DuckDB's errors about the SQL or the data as SqlError naming `what`; errors of the
    machine (memory, disk) pass through, to be retried."""
    try:
        yield
    except duckdb.Error as exc:
        # A full disk is an IOException, and so is a corrupt input (a bad gzip stream).
        if isinstance(exc, _TRANSIENT) or "No space left" in str(exc):
            raise
        hint = ""
        if parameters and "prepared parameter" in str(exc):
            # DuckDB's own message does not say which statements take parameters.
            hint = " ($parameters work in queries and CREATE TABLE ... AS, not in a view)"
        raise SqlError(f"{what}: {exc}{hint}") from exc


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _head(sql: str, width: int = 60) -> str:
    """The start of a statement on one line, to say which one failed."""
    flat = " ".join(sql.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."
