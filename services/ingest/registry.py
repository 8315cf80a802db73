"""The schema registry: a JSON Schema (draft 2020-12) per event type and version.

Schemas are files named `<type>.v<N>.json`: the ones shipped in `services/ingest/schemas/`
plus those in `CHOREO_INGEST_SCHEMA_DIR`. A type's highest version is its current schema;
an event may name another with `schema_version`. A version, once shipped, is immutable: a
folder file with the type and version of a shipped schema is refused (ship `v2` instead).

Every schema is checked and compiled once, when the registry is built; validation reports
every problem of an event's `data`, each with the path of the field it concerns.

An event is checked by a compiled validator (jsonschema_rs, about 25x faster than
jsonschema on a `transaction`); only one it finds invalid is checked again by jsonschema,
which names each problem and has the last word (formats are jsonschema's checkers in
both).
"""

import json
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import jsonschema_rs
from jsonschema import Draft202012Validator, FormatChecker, SchemaError, ValidationError

from shared.subjects import data_subject

SCHEMA_FILE = re.compile(r"^(?P<type>[^.]+)\.v(?P<version>[1-9][0-9]{0,5})\.json$")
SHIPPED = "services.ingest.schemas"
MAX_MESSAGE = 300

# jsonschema checks `date-time` only when the optional rfc3339-validator is installed; this
# is the same check with the standard library: the RFC 3339 grammar (an offset is required),
# then a real calendar date and time.
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
FORMATS = FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _is_date_time(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    if not _RFC3339.fullmatch(instance):
        return False
    datetime.fromisoformat(instance.upper().replace("Z", "+00:00"))
    return True


def _conforms(name: str) -> Callable[[Any], bool]:
    return lambda instance: FORMATS.conforms(instance, name)


# The compiled validator checks formats with jsonschema's checkers, so both agree on them.
_COMPILED_FORMATS = {name: _conforms(name) for name in FORMATS.checkers}

SchemaKey = tuple[str, int]
"""(event type, version)"""

Problem = tuple[str, str]
"""(path of the field inside `data`, "" for `data` itself; what is wrong)"""


class UnknownSchema(LookupError):
    """No schema for the type, or for the version asked; `field` names what was wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class SchemaRegistry:
    """Compiled schemas by type and version."""

    def __init__(self, schemas: Mapping[SchemaKey, dict[str, Any]]) -> None:
        self._schemas: dict[SchemaKey, dict[str, Any]] = dict(schemas)
        self._validators: dict[SchemaKey, Draft202012Validator] = {}
        self._compiled: dict[SchemaKey, jsonschema_rs.Draft202012Validator] = {}
        for (event_type, version), schema in self._schemas.items():
            _check_type(f"schema {event_type}.v{version}", event_type)
            try:
                Draft202012Validator.check_schema(schema)
            except SchemaError as exc:
                raise ValueError(
                    f"schema {event_type}.v{version} is not a valid JSON Schema 2020-12: "
                    f"{exc.message} (at {'/'.join(map(str, exc.absolute_path)) or 'the root'})"
                ) from exc
            self._validators[event_type, version] = Draft202012Validator(
                schema, format_checker=FORMATS
            )
            self._compiled[event_type, version] = jsonschema_rs.Draft202012Validator(
                schema, validate_formats=True, formats=_COMPILED_FORMATS
            )

    @property
    def types(self) -> list[str]:
        return sorted({event_type for event_type, _ in self._schemas})

    def versions(self, event_type: str) -> list[int]:
        return sorted(v for t, v in self._schemas if t == event_type)

    def describe(self) -> list[dict[str, Any]]:
        """Every type with its versions and the current one (what `GET /v1/schemas` lists)."""
        return [
            {"type": t, "versions": self.versions(t), "current": self.versions(t)[-1]}
            for t in self.types
        ]

    def schema(self, event_type: str, version: int | None = None) -> dict[str, Any]:
        return self._schemas[self._key(event_type, version)]

    def check(self, event_type: str, data: Any, version: int | None = None) -> list[Problem]:
        """Every problem of `data` under the type's schema (UnknownSchema when it has none)."""
        key = self._key(event_type, version)
        if self._compiled[key].is_valid(data):
            return []
        problems: set[Problem] = set()
        for error in self._validators[key].iter_errors(data):
            problems.update(_problems(error))
        return sorted(problems)

    def _key(self, event_type: str, version: int | None) -> SchemaKey:
        versions = self.versions(event_type)
        if not versions:
            raise UnknownSchema(
                "type",
                f"unknown event type {event_type!r}; known types: {', '.join(self.types)} "
                "(add one with a <type>.v1.json file in CHOREO_INGEST_SCHEMA_DIR)",
            )
        if version is None:
            return event_type, versions[-1]
        if version not in versions:
            raise UnknownSchema(
                "schema_version",
                f"{event_type} has no schema version {version}; "
                f"versions: {', '.join(map(str, versions))}",
            )
        return event_type, version


def _problems(error: ValidationError) -> list[Problem]:
    """One problem per field: a missing or unexpected property is named in the path."""
    path = [str(part) for part in error.absolute_path]
    instance, schema = error.instance, error.schema
    if error.validator == "required" and isinstance(instance, dict):
        # jsonschema reports each missing property separately, all with the same path.
        required: list[str] = list(schema.get("required", [])) if isinstance(schema, dict) else []
        return [(".".join([*path, n]), "is required") for n in required if n not in instance]
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        known = schema.get("properties", {}) if isinstance(schema, dict) else {}
        patterns = schema.get("patternProperties", {}) if isinstance(schema, dict) else {}
        unexpected = [
            name
            for name in instance
            if name not in known and not any(re.search(p, name) for p in patterns)
        ]
        return [(".".join([*path, n]), "is not a field of this schema") for n in unexpected]
    message = error.message
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    hint = schema.get("description") if isinstance(schema, dict) else None
    if hint and error.validator in ("pattern", "format"):
        message = f"{message} (expected: {hint})"
    return [(".".join(path), message)]


def _check_type(where: str, event_type: str) -> None:
    try:
        data_subject(event_type)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc


def load_registry(extra_dir: Path | None = None) -> SchemaRegistry:
    """The shipped schemas plus those in `extra_dir` (ValueError naming a bad file)."""
    shipped = _read_schemas(resources.files(SHIPPED))
    extra: dict[SchemaKey, dict[str, Any]] = {}
    if extra_dir is not None:
        if not extra_dir.is_dir():
            raise ValueError(f"CHOREO_INGEST_SCHEMA_DIR={extra_dir} is not a directory")
        extra = _read_schemas(extra_dir)
    clashes = sorted(f"{t}.v{v}.json" for t, v in shipped.keys() & extra.keys())
    if clashes:
        raise ValueError(
            f"{extra_dir}: {', '.join(clashes)} would replace a shipped schema; a version is "
            "immutable, so add the next version instead"
        )
    return SchemaRegistry({**shipped, **extra})


def _read_schemas(folder: Traversable) -> dict[SchemaKey, dict[str, Any]]:
    schemas: dict[SchemaKey, dict[str, Any]] = {}
    for file in folder.iterdir():
        if not file.name.endswith(".json"):
            continue
        named = SCHEMA_FILE.fullmatch(file.name)
        if named is None:
            raise ValueError(f"{file}: a schema file is named <type>.v<N>.json, e.g. order.v1.json")
        _check_type(str(file), named["type"])
        try:
            schema = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{file}: not valid JSON: {exc}") from exc
        if not isinstance(schema, dict):
            raise ValueError(f"{file}: a schema is a JSON object")
        schemas[named["type"], int(named["version"])] = schema
    return schemas
